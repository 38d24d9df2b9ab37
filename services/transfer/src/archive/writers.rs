//! A layer's small regular files, created and written side by side.
//!
//! Unpacking a layer of many small files is bound by creating inodes, not
//! by writing bytes: on this project's machines (ext4) a create costs
//! 0.5–1 ms, part waiting for inode table blocks, part the allocator's
//! scan, while a write into the page cache costs microseconds; and creates
//! in different directories proceed side by side (16 threads, each in its
//! own directory, made 1,600 files 6× faster than one thread). A root
//! filesystem layer is thousands of small files in hundreds of
//! directories, so one thread creating them one by one bounds its unpack.
//!
//! The tar is still read in order on the unpacking thread, which resolves
//! every entry's directory beneath the layer root (so each symlink and
//! directory an earlier entry laid is honoured exactly as in a one-thread
//! unpack) and does everything but small regular files itself. A small
//! file's resolved directory, name, bytes and metadata go to [`Writers`],
//! a few threads that create and write it. What keeps the result the same
//! as one thread's:
//!
//! - an entry that touches a name a pending file has (to replace it, to
//!   whiteout it, to hardlink to it) waits for that file first
//!   ([`Writers::wait_for`]), the name compared by [`Identity`], so a path
//!   through a symlink is the same name;
//! - removing a directory tree waits for every pending file
//!   ([`Writers::wait_all`]), which may be inside it;
//! - directory times are restored only after every file is written.
//!
//! Each directory's files go to one writer (chosen by the directory's
//! inode): the kernel creates a directory's entries one at a time under
//! its lock, and writers contending for it only spin.
//!
//! A file that is a parent of a later entry fails the unpack either way
//! (it is not a directory), whichever thread is first. Memory stays
//! bounded: at most [`MAX_PENDING_BYTES`] of file data wait for a writer.
//! Hand-offs are batched both ways (a full queue is drained to half before
//! more files go out; writers report in batches), so a thread wakes once
//! for many files, not once per file in each direction.

use std::collections::HashMap;
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use imaged_common::Error;

use crate::archive::beneath::{At, Identity};

/// Files at most this large are handed to a writer; larger ones are
/// written on the unpacking thread, where their bytes stream through.
pub const MAX_SMALL_FILE: u64 = 256 * 1024;

/// Bytes of file data waiting for or in a writer, at most.
const MAX_PENDING_BYTES: usize = 2 * 1024 * 1024;

/// Files waiting for or in a writer, at most.
const MAX_PENDING_FILES: usize = 256;

/// Files a writer reports on at once, at most.
const REPORT_BATCH: usize = 32;

/// Writer threads of one unpack, at most. Each is started when the first
/// file for it arrives, so a layer of one directory starts one.
const MAX_WRITERS: usize = 16;

/// What a regular file is given besides its bytes.
pub struct Meta {
    pub mode: u32,
    /// Set when unpacking as root.
    pub owner: Option<(u32, u32)>,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
    pub mtime: (i64, u32),
}

/// One small file to create.
struct Job {
    at: At,
    identity: Identity,
    data: Vec<u8>,
    meta: Meta,
    /// The entry's name in the tar, for errors.
    raw: PathBuf,
}

/// A writer's report on one job.
struct Done {
    identity: Identity,
    bytes: usize,
    result: Result<(), Error>,
}

/// How a job is carried out: [`crate::archive::unpack`] gives the same function it
/// uses for the files it writes itself.
pub type WriteFn = fn(&At, &[u8], &Meta, &std::path::Path) -> Result<(), Error>;

/// The writer threads of one unpack and what they have not finished.
pub struct Writers {
    write: WriteFn,
    /// Each writer's queue, once started; all dropped to stop them.
    queues: Vec<Option<Sender<Job>>>,
    done_tx: Sender<Vec<Done>>,
    done: Receiver<Vec<Done>>,
    threads: Vec<JoinHandle<()>>,
    /// Pending files by name (a count: a name can be queued again only
    /// after waiting, but counting keeps that assumption out of here).
    pending: HashMap<Identity, usize>,
    pending_files: usize,
    pending_bytes: usize,
    /// The first failure, reported at the next wait.
    failed: Option<Error>,
}

impl Writers {
    /// No threads yet: they start as files are handed over.
    pub fn new(write: WriteFn) -> Writers {
        let (done_tx, done) = mpsc::channel();
        Writers {
            write,
            queues: (0..MAX_WRITERS).map(|_| None).collect(),
            done_tx,
            done,
            threads: Vec::new(),
            pending: HashMap::new(),
            pending_files: 0,
            pending_bytes: 0,
            failed: None,
        }
    }

    /// Hands a file to a writer, first waiting while too much is pending.
    /// The caller has waited for any pending file of the same name.
    pub fn submit(
        &mut self,
        at: At,
        identity: Identity,
        data: Vec<u8>,
        meta: Meta,
        raw: PathBuf,
    ) -> Result<(), Error> {
        if self.pending_files >= MAX_PENDING_FILES
            || (self.pending_files > 0 && self.pending_bytes + data.len() > MAX_PENDING_BYTES)
        {
            // Down to half before handing out more: one wake-up of this
            // thread for many files, not one per file.
            while self.pending_files > MAX_PENDING_FILES / 2
                || (self.pending_files > 0 && self.pending_bytes > MAX_PENDING_BYTES / 2)
            {
                self.wait_one()?;
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        identity.directory().hash(&mut hasher);
        let slot = (hasher.finish() % MAX_WRITERS as u64) as usize;
        if self.queues[slot].is_none() {
            self.queues[slot] = Some(self.start_writer()?);
        }
        self.pending_files += 1;
        self.pending_bytes += data.len();
        *self.pending.entry(identity.clone()).or_default() += 1;
        let job = Job {
            at,
            identity,
            data,
            meta,
            raw,
        };
        let sent = self.queues[slot]
            .as_ref()
            .map(|queue| queue.send(job).is_ok());
        if sent != Some(true) {
            return Err(Error::internal("layer file writers stopped"));
        }
        Ok(())
    }

    /// Waits until no file named `identity` is pending.
    pub fn wait_for(&mut self, identity: &Identity) -> Result<(), Error> {
        while self.pending.contains_key(identity) {
            self.wait_one()?;
        }
        self.check()
    }

    /// Waits until every file handed over is written.
    pub fn wait_all(&mut self) -> Result<(), Error> {
        while self.pending_files > 0 {
            self.wait_one()?;
        }
        self.check()
    }

    /// Waits for every file and stops the threads; the first failure of
    /// any file is the answer.
    pub fn finish(mut self) -> Result<(), Error> {
        let waited = self.wait_all();
        self.stop();
        waited
    }

    fn check(&mut self) -> Result<(), Error> {
        match self.failed.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Waits for the next reports of the writers.
    fn wait_one(&mut self) -> Result<(), Error> {
        let reports = self
            .done
            .recv()
            .map_err(|_| Error::internal("layer file writers stopped"))?;
        for done in reports {
            self.pending_files -= 1;
            self.pending_bytes -= done.bytes;
            if let Some(count) = self.pending.get_mut(&done.identity) {
                *count -= 1;
                if *count == 0 {
                    self.pending.remove(&done.identity);
                }
            }
            if let Err(err) = done.result
                && self.failed.is_none()
            {
                self.failed = Some(err);
            }
        }
        self.check()
    }

    /// Starts a writer; answers its queue.
    fn start_writer(&mut self) -> Result<Sender<Job>, Error> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let done = self.done_tx.clone();
        let write = self.write;
        let thread = std::thread::Builder::new()
            .name("layer-writer".into())
            .spawn(move || {
                // Reports go back in batches: when this writer has nothing
                // queued, or every REPORT_BATCH files.
                let mut reports = Vec::new();
                loop {
                    let job = match jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => {
                            if !reports.is_empty()
                                && done.send(std::mem::take(&mut reports)).is_err()
                            {
                                return;
                            }
                            match jobs.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        }
                        Err(TryRecvError::Disconnected) => {
                            let _ = done.send(reports);
                            return;
                        }
                    };
                    let result = write(&job.at, &job.data, &job.meta, &job.raw);
                    reports.push(Done {
                        identity: job.identity,
                        bytes: job.data.len(),
                        result,
                    });
                    if reports.len() >= REPORT_BATCH
                        && done.send(std::mem::take(&mut reports)).is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(|err| Error::internal(format!("starting a layer file writer: {err}")))?;
        self.threads.push(thread);
        Ok(queue)
    }

    fn stop(&mut self) {
        self.queues.iter_mut().for_each(|queue| *queue = None);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Writers {
    /// An unpack that failed midway still waits for its writers: they hold
    /// descriptors in a directory the caller is about to remove.
    fn drop(&mut self) {
        self.stop();
    }
}
