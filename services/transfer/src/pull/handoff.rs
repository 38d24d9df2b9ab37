//! A layer's bytes between the network and the unpacker (the transfer
//! redesign of issue 31): a writer thread stores every chunk in the
//! ingest (hashed, resumable, what fleet peers read while it arrives) and
//! hands it on in memory; the unpacker takes chunks from memory while it
//! keeps up, and reads the ingest file for what it is behind on.
//!
//! How far behind the unpacker may fall:
//! - A pull for this node alone: not at all. The queue is bounded and the
//!   writer waits for room, so the download goes at the unpack's pace, as
//!   it always did, and nothing is read back from disk.
//! - A blob this node fetches for the fleet (`ahead`): as far as the
//!   download gets. The writer never waits; chunks that do not fit in the
//!   queue are read back from the ingest file. The download, and the
//!   peers streaming the ingest, go at the link's pace, not at this
//!   node's unpack's.
//!
//! Memory: at most [`QUEUE_BYTES`] queued, whatever the layer's size.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use imaged_common::Error;
use tokio::sync::mpsc;

use super::download::Chunk;
use crate::store::content::Ingest;

/// Bytes handed on in memory, at most: what the channel it replaced held
/// (a pull of a 500 MB image stays under 64 MiB of RSS, `make bench`).
const QUEUE_BYTES: usize = 512 << 10;

/// What the writer and the unpacker share.
pub(super) struct Handoff {
    state: Mutex<Shared>,
    changed: Condvar,
    /// Whether the download runs ahead of the unpack (see the module).
    ahead: bool,
}

struct Shared {
    /// Chunks in order, contiguous from `queue_start`.
    queue: VecDeque<Bytes>,
    queue_start: u64,
    queued: usize,
    /// Bytes the unpacker took (from memory or from the file).
    taken: u64,
    /// Bytes in the ingest file, readable.
    on_disk: u64,
    /// Bytes received (in the file or gathered for it).
    received: u64,
    /// The download ended: `Some(true)` when it failed.
    failed: Option<bool>,
    /// The unpacker stopped reading: nothing waits for it.
    closed: bool,
}

impl Shared {
    /// Queues `bytes`, the download's bytes from `at`.
    fn push(&mut self, at: u64, bytes: Bytes) {
        if self.queued == 0 {
            self.queue_start = at;
        }
        self.queued += bytes.len();
        self.queue.push_back(bytes);
    }
}

impl Handoff {
    /// A download whose ingest already holds `kept` bytes (a resumed one);
    /// with `ahead`, it does not wait for the unpack.
    pub(super) fn new(kept: u64, ahead: bool) -> Arc<Handoff> {
        Arc::new(Handoff {
            state: Mutex::new(Shared {
                queue: VecDeque::new(),
                queue_start: kept,
                queued: 0,
                taken: 0,
                on_disk: kept,
                received: kept,
                failed: None,
                closed: false,
            }),
            changed: Condvar::new(),
            ahead,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        self.changed.wait(state).unwrap_or_else(|e| e.into_inner())
    }

    /// `bytes` were written to the ingest, which now has `on_disk` bytes
    /// in its file: queued for the unpacker (see the module).
    fn received(&self, bytes: Bytes, on_disk: u64) {
        let len = bytes.len();
        let mut state = self.lock();
        if self.ahead {
            // One step, never waiting: the chunk is queued only if it
            // continues what the unpacker has or what is queued, and
            // fits; else the unpacker reads it from the file.
            state.on_disk = on_disk;
            let at = state.received;
            state.received += len as u64;
            let continues = if state.queued == 0 {
                state.taken == at
            } else {
                state.queue_start + state.queued as u64 == at
            };
            let fits = state.queued == 0 || state.queued + len <= QUEUE_BYTES;
            if !state.closed && continues && fits {
                state.push(at, bytes);
            }
        } else {
            // In step with the unpacker: every chunk is queued, once
            // there is room. The file is read only for the kept bytes of
            // a resumed download (its `on_disk` is not published: the
            // unpacker must not read there what the queue will bring).
            while !state.closed && state.queued > 0 && state.queued + len > QUEUE_BYTES {
                state = self.wait(state);
            }
            let at = state.received;
            state.received += len as u64;
            if !state.closed {
                state.push(at, bytes);
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The download ended (failed or not); the file has `on_disk` bytes
    /// (read from only ahead of the unpack: in step, every byte past the
    /// kept ones was queued).
    fn ended(&self, on_disk: u64, failed: bool) {
        let mut state = self.lock();
        if self.ahead {
            state.on_disk = on_disk;
        }
        state.failed = Some(failed);
        drop(state);
        self.changed.notify_all();
    }
}

/// The writer thread: stores what `chunks` brings in `ingest` and hands
/// it on, until the download ends. Answers the ingest and, if the
/// download failed (or the ingest could not be written), why.
pub(super) fn write(
    handoff: &Handoff,
    mut ingest: Ingest,
    mut chunks: mpsc::Receiver<Chunk>,
) -> (Ingest, Option<Error>) {
    let failure = loop {
        match chunks.blocking_recv() {
            Some(Chunk::Data(bytes)) => {
                // A chunk the ingest missed must not reach the unpacker
                // (a full disk, mostly).
                if let Err(err) = ingest.write_all(&bytes) {
                    break Some(Error::from(err));
                }
                handoff.received(bytes, ingest.on_disk());
            }
            Some(Chunk::End) => break ingest.finish_writing().err().map(Error::from),
            Some(Chunk::Failed(err)) => break Some(err),
            None => break Some(Error::unavailable("download cancelled")),
        }
    };
    handoff.ended(ingest.on_disk(), failure.is_some());
    (ingest, failure)
}

/// The unpacker's reader: the layer from its first byte, from memory
/// while it keeps up and from the ingest file for the rest.
pub(super) struct Follower {
    handoff: Arc<Handoff>,
    file: File,
    current: Bytes,
}

impl Follower {
    /// Reads the download `handoff` carries, behind it from `file` (the
    /// ingest, opened for reading).
    pub(super) fn new(handoff: Arc<Handoff>, file: File) -> Follower {
        Follower {
            handoff,
            file,
            current: Bytes::new(),
        }
    }

    /// Copies from the chunk in hand.
    fn read_current(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        n
    }

    /// Reads `buf.len()` bytes of the file at `at`, then lets the kernel
    /// drop them from its cache: they are read once.
    fn read_file(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        self.file.read_exact_at(buf, at)?;
        let _ = rustix::fs::fadvise(
            &self.file,
            at,
            std::num::NonZeroU64::new(buf.len() as u64),
            rustix::fs::Advice::DontNeed,
        );
        Ok(buf.len())
    }
}

impl Read for Follower {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.current.is_empty() {
            return Ok(self.read_current(buf));
        }
        let handoff = Arc::clone(&self.handoff);
        let mut state = handoff.lock();
        loop {
            if state.queued > 0 && state.queue_start == state.taken {
                let chunk = state.queue.pop_front().expect("queued bytes are in chunks");
                let len = chunk.len();
                state.queued -= len;
                state.queue_start += len as u64;
                state.taken += len as u64;
                drop(state);
                handoff.changed.notify_all(); // room for the writer
                self.current = chunk;
                return Ok(self.read_current(buf));
            }
            // Behind the queue (or with none): from the file, as far as
            // it is written.
            let file_end = if state.queued > 0 {
                state.queue_start.min(state.on_disk)
            } else {
                state.on_disk
            };
            if state.taken < file_end {
                let at = state.taken;
                let n = buf.len().min((file_end - at) as usize);
                state.taken += n as u64;
                drop(state);
                return self.read_file(&mut buf[..n], at);
            }
            match state.failed {
                Some(true) => return Err(io::Error::other("download failed")),
                Some(false) if state.taken >= state.received => return Ok(0),
                Some(false) => {
                    return Err(io::Error::other("the ingest is shorter than the download"));
                }
                None => state = handoff.wait(state),
            }
        }
    }
}

impl Drop for Follower {
    /// The unpacker stopped: the writer no longer waits for room.
    fn drop(&mut self) {
        let mut state = self.handoff.lock();
        state.closed = true;
        state.queue.clear();
        state.queued = 0;
        drop(state);
        self.handoff.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::content::ContentStore;
    use imaged_model::Digest;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Sends `data` from `from` in chunks of `chunk` bytes through a
    /// handoff (an ingest already holding `data[..from]`), reading it
    /// back with the follower (only once the download ended, when
    /// `read_after`); answers what was read and the writer's failure.
    fn through(
        data: &[u8],
        from: usize,
        chunk: usize,
        ahead: bool,
        read_after: bool,
    ) -> (io::Result<Vec<u8>>, Option<Error>) {
        through_at(data, from, chunk, (ahead, read_after), false)
    }

    /// [`through`], the reader pausing now and then when `slow` (so the
    /// writer fills the queue and flushes ingest blocks meanwhile).
    fn through_at(
        data: &[u8],
        from: usize,
        chunk: usize,
        (ahead, read_after): (bool, bool),
        slow: bool,
    ) -> (io::Result<Vec<u8>>, Option<Error>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let digest = Digest::sha256_of(data);
        let mut kept = store.ingest(&digest).unwrap();
        kept.write_all(&data[..from]).unwrap();
        drop(kept); // its whole blocks stay
        let ingest = store.ingest(&digest).unwrap();
        let offset = ingest.offset() as usize;
        let handoff = Handoff::new(offset as u64, ahead);
        let file = ingest.reopen().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let writer = {
            let handoff = Arc::clone(&handoff);
            std::thread::spawn(move || write(&handoff, ingest, rx))
        };
        let sender = {
            let rest = data[offset..].to_vec();
            std::thread::spawn(move || {
                for part in rest.chunks(chunk) {
                    tx.blocking_send(Chunk::Data(Bytes::copy_from_slice(part)))
                        .unwrap();
                }
                tx.blocking_send(Chunk::End).unwrap();
            })
        };
        if read_after {
            sender.join().unwrap();
        }
        let mut follower = Follower::new(handoff, file);
        let mut read = Vec::new();
        let result = if slow {
            let mut buf = vec![0u8; 50_000];
            loop {
                match follower.read(&mut buf) {
                    Ok(0) => break Ok(read),
                    Ok(n) => read.extend_from_slice(&buf[..n]),
                    Err(err) => break Err(err),
                }
                if read.len() % 7 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        } else {
            follower.read_to_end(&mut read).map(|_| read)
        };
        drop(follower);
        let (ingest, failure) = writer.join().unwrap();
        assert!(ingest.matches() || failure.is_some());
        (result, failure)
    }

    #[test]
    fn the_unpacker_reads_every_byte_in_order_from_memory_or_the_file() {
        let data = data(5 * QUEUE_BYTES + 777);
        // Alone: the writer waits for the reader.
        let (read, failure) = through(&data, 0, 64 << 10, false, false);
        assert!(failure.is_none());
        assert!(read.unwrap() == data);
        // Resumed: the kept bytes from the file, then the rest.
        let (read, _) = through(&data, QUEUE_BYTES + 5000, 100_000, false, false);
        assert!(read.unwrap() == data);
        // Ahead: the download ends before the reader starts, the queue
        // holds what fits, the rest comes from the file.
        let (read, failure) = through(&data, 0, 64 << 10, true, true);
        assert!(failure.is_none());
        assert!(read.unwrap() == data);
        let (read, _) = through(&data, 3 * 4096 + 1, 300_000, true, false);
        assert!(read.unwrap() == data);
    }

    #[test]
    fn a_slow_reader_gets_every_byte_once_in_step_or_behind() {
        let data = data(12 << 20);
        for ahead in [false, true] {
            for chunk in [16 << 10, 64 << 10, 333_333] {
                let (read, failure) = through_at(&data, 0, chunk, (ahead, false), true);
                assert!(failure.is_none());
                let read = read.unwrap();
                assert!(
                    read == data,
                    "ahead {ahead}, chunks of {chunk}: {} bytes",
                    read.len()
                );
            }
        }
    }

    #[test]
    fn in_step_the_unpacker_reads_the_queue_not_the_file_past_the_kept_bytes() {
        // The file already holds more than was queued (an ingest block
        // written out while the writer waited for room): the unpacker
        // must still take the next bytes from the queue, not the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingest");
        std::fs::write(&path, vec![b'Z'; 8192]).unwrap();
        let handoff = Handoff::new(0, false);
        let reader = {
            let follower = Follower::new(Arc::clone(&handoff), File::open(&path).unwrap());
            std::thread::spawn(move || {
                let mut follower = follower;
                let mut read = Vec::new();
                follower.read_to_end(&mut read).map(|_| read)
            })
        };
        handoff.received(Bytes::from_static(b"AAAA"), 8192);
        std::thread::sleep(std::time::Duration::from_millis(50));
        handoff.received(Bytes::from_static(b"BBBB"), 8192);
        handoff.ended(8192, false);
        let read = reader.join().unwrap().unwrap();
        assert!(
            read == b"AAAABBBB",
            "{} bytes read, not the 8 queued",
            read.len()
        );
    }

    #[test]
    fn a_failed_download_fails_the_reader_and_a_stopped_reader_frees_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let ingest = store.ingest(&Digest::sha256_of(b"x")).unwrap();
        let handoff = Handoff::new(0, false);
        let file = ingest.reopen().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let writer = {
            let handoff = Arc::clone(&handoff);
            std::thread::spawn(move || write(&handoff, ingest, rx))
        };
        // A reader that stops at once: the writer, alone, never waits for
        // room however much arrives.
        drop(Follower::new(Arc::clone(&handoff), file));
        for _ in 0..(4 * QUEUE_BYTES / 65536) {
            tx.blocking_send(Chunk::Data(Bytes::from(vec![1u8; 65536])))
                .unwrap();
        }
        tx.blocking_send(Chunk::Failed(Error::unavailable("cut")))
            .unwrap();
        let (_, failure) = writer.join().unwrap();
        assert!(failure.is_some_and(|f| f.message().contains("cut")));

        // A reader that follows a download that fails gets an error.
        let ingest = store.ingest(&Digest::sha256_of(b"y")).unwrap();
        let handoff = Handoff::new(0, true);
        let file = ingest.reopen().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let writer = {
            let handoff = Arc::clone(&handoff);
            std::thread::spawn(move || write(&handoff, ingest, rx))
        };
        tx.blocking_send(Chunk::Data(Bytes::from_static(b"abc")))
            .unwrap();
        tx.blocking_send(Chunk::Failed(Error::unavailable("cut")))
            .unwrap();
        let mut read = Vec::new();
        let result = Follower::new(handoff, file).read_to_end(&mut read);
        assert!(result.is_err(), "{read:?}");
        writer.join().unwrap();
    }
}
