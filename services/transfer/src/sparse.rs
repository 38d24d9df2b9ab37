//! Files with holes: written so that a hole costs neither disk nor time.
//!
//! A GNU sparse tar entry carries a map of its data blocks; everything
//! between them is a hole. The tar reader hands such an entry out as its
//! data with zeros read in place of the holes, so reading it costs time in
//! proportion to its apparent size: a 1.5 KB entry with a 1 TiB hole would
//! pin a CPU for minutes. [`write_gnu_sparse`] has the tar crate write it
//! from its map instead, seeking over each hole in one step. Other files
//! are written by [`write_sparse`], which leaves runs of zeros it reads as
//! holes, so a file keeps the disk its data needs.

use std::fs::File;
use std::io::{self, Read, Seek, Write};

use crate::beneath::At;

/// Creates the regular file `at` (which must be free) with the data of the
/// GNU sparse entry `entry`, its holes skipped from the entry's map, and
/// answers it open. The map was checked by the tar reader (blocks in
/// order, not overlapping, adding up to the entry's sizes): an
/// inconsistent one fails the entry before anything is written.
pub fn write_gnu_sparse<R: Read>(entry: &mut tar::Entry<'_, R>, at: &At) -> io::Result<File> {
    entry.set_preserve_mtime(false);
    entry.set_preserve_permissions(false);
    entry.set_unpack_xattrs(false);
    // The tar crate creates it with O_CREAT|O_EXCL at our directory's
    // descriptor and a plain name: nothing planted there is followed.
    match entry.unpack(at.proc_path())? {
        tar::Unpacked::File(file) => Ok(file),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a sparse entry was not unpacked as a file",
        )),
    }
}

/// How much of a file is checked for zeros at a time: a chunk of zeros
/// becomes a hole.
const SPARSE_CHUNK: usize = 128 * 1024;

/// Writes an entry's data, leaving runs of zeros as holes: a sparse file
/// (GNU sparse entries arrive as data with zeros for their holes) takes
/// the disk its data needs, not its length. Returns the bytes written.
pub fn write_sparse(data: &mut dyn Read, file: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; SPARSE_CHUNK];
    let mut length = 0u64;
    let mut hole = false;
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hole = write_chunk(&buf[..n], file)?;
        length += n as u64;
    }
    if hole {
        file.set_len(length)?;
    }
    Ok(length)
}

/// [`write_sparse`] for data already in memory (a writer thread's small
/// file), with no buffer to fill: no copy, and no 128 KiB allocated and
/// zeroed per file.
pub fn write_sparse_bytes(data: &[u8], file: &mut File) -> io::Result<()> {
    let mut hole = false;
    for chunk in data.chunks(SPARSE_CHUNK) {
        hole = write_chunk(chunk, file)?;
    }
    if hole {
        file.set_len(data.len() as u64)?;
    }
    Ok(())
}

/// Writes `chunk` at the file's offset, or skips past it when it is all
/// zeros; answers whether it was skipped (the file must then be given
/// its length at the end).
fn write_chunk(chunk: &[u8], file: &mut File) -> io::Result<bool> {
    if chunk.iter().all(|b| *b == 0) {
        file.seek(io::SeekFrom::Current(chunk.len() as i64))?;
        Ok(true)
    } else {
        file.write_all(chunk)?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    use imaged_common::Error;
    use imaged_fixtures::{Compression, LayerBuilder};

    use crate::layers::Budget;
    use crate::unpack::unpack;

    const TIB: u64 = 1 << 40;

    fn one_tib_hole() -> Vec<u8> {
        let mut head = b"head".to_vec();
        head.resize(512, 0);
        LayerBuilder::new()
            .sparse_file("hole", &[(0, &head), (TIB - 4, b"tail")], TIB)
            .build(Compression::None)
            .unwrap()
            .data
    }

    #[test]
    fn a_hole_costs_one_seek_whatever_its_size() {
        let tar = one_tib_hole();
        assert!(tar.len() < 4096, "{} bytes", tar.len());
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let unpacked = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        // Reading the hole as zeros took 7 minutes a TiB; a seek, nothing.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(unpacked.size, TIB);
        let path = dir.path().join("hole");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), TIB);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let mut file = std::fs::File::open(&path).unwrap();
        let mut head = [0u8; 4];
        std::io::Read::read_exact(&mut file, &mut head).unwrap();
        assert_eq!(&head, b"head");
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(TIB - 4)).unwrap();
        std::io::Read::read_exact(&mut file, &mut head).unwrap();
        assert_eq!(&head, b"tail");
    }

    #[test]
    fn the_apparent_size_counts_against_the_layer_limit() {
        let tar = one_tib_hole();
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            apparent: 64 << 30,
            ..Budget::UNLIMITED
        };
        let err = unpack(tar.as_slice(), dir.path(), budget).unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
        assert!(!dir.path().join("hole").exists());
    }

    #[test]
    fn an_inconsistent_map_is_refused() {
        // Blocks out of order: the second starts before the first ends.
        let tar = LayerBuilder::new()
            .sparse_file("bad", &[(4096, &[1u8; 512]), (0, &[2u8; 512])], 8192)
            .build(Compression::None)
            .unwrap()
            .data;
        let dir = tempfile::tempdir().unwrap();
        let err = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        // A map that ends past the size it declares.
        let tar = LayerBuilder::new()
            .sparse_file("bad", &[(0, &[1u8; 512]), (8192, &[2u8; 512])], 4096)
            .build(Compression::None)
            .unwrap()
            .data;
        let err = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}
