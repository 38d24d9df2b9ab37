//! Writing a downloaded blob around the page cache (`O_DIRECT`).
//!
//! A plain buffered write leaves every byte in the page cache: a 5 GB pull
//! takes 5 GB of cache from the node (charged to imaged-transfer's cgroup),
//! and every new cache page costs the kernel far more than the copy. On a
//! VM that hands free memory back to its host (virtio-balloon free page
//! reporting, as on the machines this was measured on) writing into cache
//! costs about 3 ms of kernel CPU per MiB, against 0.1 ms per MiB written
//! direct. The blob is read again only by a push or a save, long after;
//! unpacking reads its bytes as they arrive.
//!
//! So [`DirectWriter`] gathers bytes into an aligned buffer and writes it
//! with `O_DIRECT` once full. `O_DIRECT` needs the file offset, the length
//! and the memory aligned to the device's block: the file is kept a whole
//! number of [`ALIGN`] blocks long while written (a resumed ingest is cut
//! back to a block boundary), and the last partial block is written through
//! the cache by [`DirectWriter::finish`]. Where `O_DIRECT` is refused (a
//! filesystem without it) the writer falls back to plain writes.
//!
//! Nothing here replaces the caller's fsync: `O_DIRECT` writes the data,
//! not the file's metadata.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The alignment `O_DIRECT` gets: a page, the largest logical block size
/// of the disks imaged runs on.
pub const ALIGN: usize = 4096;

/// Bytes gathered before each direct write.
const BUFFER: usize = 1 << 20;

/// A file written at its end, around the page cache; see the module
/// documentation.
pub struct DirectWriter {
    file: File,
    /// Whether `file` is open with `O_DIRECT`.
    direct: bool,
    /// Memory with room for an aligned [`BUFFER`]; see [`DirectWriter::buffer`].
    memory: Vec<u8>,
    /// Where in `memory` the aligned buffer starts.
    start: usize,
    /// Bytes gathered in the buffer, not yet written.
    pending: usize,
    /// Bytes in the file: what a reader of it sees.
    on_disk: u64,
}

impl DirectWriter {
    /// Opens `path` (created if missing) for appending and reading, and
    /// cuts it back to a whole number of blocks; answers the writer and
    /// the file's length. Bytes cut are fetched again by the caller.
    pub fn open(path: &Path) -> io::Result<(Self, u64)> {
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        let (file, direct) = match options.clone().custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => (file, true),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => (options.open(path)?, false),
            Err(err) => return Err(err),
        };
        let len = file.metadata()?.len();
        let kept = len - len % ALIGN as u64;
        if kept != len {
            file.set_len(kept)?;
        }
        let memory = vec![0; BUFFER + ALIGN];
        let start = memory.as_ptr().align_offset(ALIGN).min(ALIGN);
        let writer = DirectWriter {
            file,
            direct,
            memory,
            start,
            pending: 0,
            on_disk: kept,
        };
        Ok((writer, kept))
    }

    /// Empties the file and drops the bytes gathered: writing starts
    /// again from its first byte.
    pub fn truncate(&mut self) -> io::Result<()> {
        self.pending = 0;
        self.on_disk = 0;
        self.file.set_len(0)
    }

    /// Bytes in the file (written out, not gathered): what a reader of
    /// the file sees.
    pub fn on_disk(&self) -> u64 {
        self.on_disk
    }

    /// Drops the bytes gathered and not written (the file is going).
    pub fn forget(&mut self) {
        self.pending = 0;
    }

    /// Writes every byte gathered, the last partial block through the
    /// cache; the file is complete once this returns (fsync still to come).
    pub fn finish(&mut self) -> io::Result<()> {
        let whole = self.pending - self.pending % ALIGN;
        self.write_out(whole)?;
        if self.pending > 0 {
            self.stop_direct()?;
            let tail = self.start..self.start + self.pending;
            self.file.write_all(&self.memory[tail])?;
            self.on_disk += self.pending as u64;
            self.pending = 0;
        }
        Ok(())
    }

    /// Goes on with plain writes: for the last partial block, or where a
    /// device wants a bigger alignment than [`ALIGN`].
    fn stop_direct(&mut self) -> io::Result<()> {
        if self.direct {
            let flags = rustix::fs::fcntl_getfl(&self.file)?;
            rustix::fs::fcntl_setfl(&self.file, flags - rustix::fs::OFlags::DIRECT)?;
            self.direct = false;
        }
        Ok(())
    }

    /// The aligned buffer.
    fn buffer(&mut self) -> &mut [u8] {
        &mut self.memory[self.start..self.start + BUFFER]
    }

    /// Writes the first `len` gathered bytes (a whole number of blocks)
    /// and keeps the rest at the start of the buffer. On an error, what
    /// was written is dropped from the buffer all the same, so a later
    /// flush never writes it twice.
    fn write_out(&mut self, len: usize) -> io::Result<()> {
        let mut done = 0;
        let result = loop {
            if done == len {
                break Ok(());
            }
            match self
                .file
                .write(&self.memory[self.start + done..self.start + len])
            {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // A device with bigger blocks than ALIGN: write plainly.
                Err(err) if self.direct && err.raw_os_error() == Some(libc::EINVAL) => {
                    if let Err(err) = self.stop_direct() {
                        break Err(err);
                    }
                }
                Err(err) => break Err(err),
            }
        };
        let from = self.start + done;
        self.memory
            .copy_within(from..self.start + self.pending, self.start);
        self.pending -= done;
        self.on_disk += done as u64;
        result
    }
}

impl Write for DirectWriter {
    /// Takes bytes into the buffer, writing it out first when full: a
    /// write that fails took none of `buf`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending == BUFFER {
            self.write_out(BUFFER)?;
        }
        let pending = self.pending;
        let n = buf.len().min(BUFFER - pending);
        self.buffer()[pending..pending + n].copy_from_slice(&buf[..n]);
        self.pending += n;
        Ok(n)
    }

    /// Writes the whole blocks gathered; a partial block waits for more
    /// bytes or [`DirectWriter::finish`].
    fn flush(&mut self) -> io::Result<()> {
        self.write_out(self.pending - self.pending % ALIGN)
    }
}

impl Drop for DirectWriter {
    /// An interrupted download keeps its whole blocks, for the next attempt
    /// to resume from.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn written(path: &Path) -> Vec<u8> {
        let mut back = Vec::new();
        File::open(path).unwrap().read_to_end(&mut back).unwrap();
        back
    }

    #[test]
    fn every_byte_is_written_in_order_whatever_the_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let (mut out, len) = DirectWriter::open(&path).unwrap();
        assert_eq!(len, 0);
        let data = data(3 * BUFFER + 12_345);
        for chunk in data.chunks(100_003) {
            out.write_all(chunk).unwrap();
        }
        out.finish().unwrap();
        assert!(
            written(&path) == data,
            "the file differs from what was written"
        );
    }

    #[test]
    fn an_interrupted_write_keeps_whole_blocks_and_resumes_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data = data(BUFFER + 3 * ALIGN + 100);
        let (mut out, _) = DirectWriter::open(&path).unwrap();
        out.write_all(&data[..BUFFER + 2 * ALIGN + 50]).unwrap();
        drop(out); // the download failed
        let (mut out, len) = DirectWriter::open(&path).unwrap();
        assert_eq!(len, (BUFFER + 2 * ALIGN) as u64);
        out.write_all(&data[len as usize..]).unwrap();
        out.finish().unwrap();
        assert!(written(&path) == data, "the resumed file differs");
    }

    #[test]
    fn a_partial_block_left_by_a_plain_writer_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![1; ALIGN + 7]).unwrap();
        let (_, len) = DirectWriter::open(&path).unwrap();
        assert_eq!(len, ALIGN as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ALIGN as u64);
    }

    #[test]
    fn a_write_that_fails_takes_none_of_its_bytes() {
        // Every write to /dev/full fails with ENOSPC.
        let (mut out, _) = DirectWriter::open(Path::new("/dev/full")).unwrap();
        assert_eq!(out.write(&data(BUFFER)).unwrap(), BUFFER);
        let err = out.write(b"more").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(out.pending, BUFFER, "the failed write took bytes");
        out.forget();
    }

    #[test]
    fn a_truncated_file_is_written_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let (mut out, _) = DirectWriter::open(&path).unwrap();
        out.write_all(&vec![7; 2 * ALIGN]).unwrap();
        out.truncate().unwrap();
        out.write_all(b"again").unwrap();
        out.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"again");
    }

    /// Which of the file's first `len` bytes' pages are in the page cache
    /// (`mincore` on a mapping of it).
    fn resident(path: &Path, len: usize) -> Vec<bool> {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        // SAFETY: a shared read-only mapping of `len` bytes of an open
        // file, unmapped before return; mincore writes one byte per page
        // into a vector of that many bytes.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut pages = vec![0u8; len.div_ceil(ALIGN)];
            assert_eq!(libc::mincore(map, len, pages.as_mut_ptr()), 0);
            libc::munmap(map, len);
            pages.iter().map(|p| p & 1 == 1).collect()
        }
    }

    #[test]
    fn written_blocks_stay_out_of_the_page_cache() {
        // On disk, not /tmp: tmpfs is the page cache.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("blob");
        let (mut out, _) = DirectWriter::open(&path).unwrap();
        assert!(out.direct, "this filesystem refused O_DIRECT");
        out.write_all(&data(2 * BUFFER + 10)).unwrap();
        out.finish().unwrap();
        let pages = resident(&path, 2 * BUFFER);
        assert!(
            pages.iter().all(|cached| !cached),
            "{} of {} pages written are cached",
            pages.iter().filter(|cached| **cached).count(),
            pages.len()
        );
    }
}
