//! Unpacking one layer tar into its own directory, the overlay2 way.
//!
//! The `tar` crate (synchronous, on a thread of its own, fed by the one
//! that inflates and hashes the stream) reads the archive; every entry is
//! written here, through [`crate::beneath::Root`], so that no path,
//! however the layer's symlinks are laid, is resolved outside the layer's
//! directory (small regular files by [`crate::writers`], side by side).
//! [`crate::tar_limits::TarGuard`] bounds header extensions and the bytes
//! a layer may inflate to. Kept: modes, owners (when root), times with PAX
//! precision (directories restored after their children), symlinks,
//! hardlinks, xattrs other than overlayfs's own, devices, FIFOs and sparse
//! files' holes. Whiteouts take the form overlayfs
//! reads (`.wh.NAME` becomes a 0/0 character device, `.wh..wh..opq` the
//! `trusted.overlay.opaque=y` xattr on its directory). The diffID is the
//! sha256 of the uncompressed stream.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use imaged_common::Error;
use imaged_model::Digest;
use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};
use tar::EntryType;

use crate::beneath::{At, Identity, Kind, Root, quote};
use crate::layers::Budget;
use crate::sparse;
use crate::tar_limits::{MAX_PATH, TarGuard};
use crate::whiteout;
use crate::writers::{MAX_SMALL_FILE, Meta, Writers};

/// What unpacking learnt about the layer.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Bytes of regular files (Docker's DiffSize, hardlinks counted once).
    pub size: u64,
    /// Entries written (files, directories, links, whiteouts): the inodes
    /// the layer takes, for the CRI's ImageFsInfo.
    pub entries: u64,
    /// Bytes of the uncompressed tar (what `docker save` writes).
    pub tar_size: u64,
    /// Where the time went.
    pub timings: Timings,
}

/// Where an unpack's time went, for the pull's log line (and `make
/// bench`'s breakdown). Source, inflate and hash interleave on one
/// thread, create runs beside them on another: each is the time spent in
/// it, not a phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Reading the layer as it arrives: for a pull, waiting for the
    /// registry's bytes, storing them and hashing the blob.
    pub source: Duration,
    /// Inflating gzip or zstd.
    pub inflate: Duration,
    /// Hashing the uncompressed tar (the diffID).
    pub hash: Duration,
    /// Reading the tar and creating the files (on a thread of its own,
    /// while the stream is read, inflated and hashed on another), not
    /// counting its waits for that stream.
    pub create: Duration,
}

/// A reader that adds the time spent in `inner` to `spent`.
struct Timed<'a, R> {
    inner: R,
    spent: &'a Cell<Duration>,
}

impl<R: Read> Read for Timed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        let read = self.inner.read(buf);
        self.spent.set(self.spent.get() + started.elapsed());
        read
    }
}

/// Unpacks the layer file at `path` into a new staging directory and keeps
/// the file as a blob, reading it once: its digest is computed as it is
/// unpacked. For layers that arrive as files (load, import, commit).
pub fn unpack_and_keep(
    content: &crate::content::ContentStore,
    layers: &crate::layers::LayerStore,
    path: &Path,
) -> Result<(Digest, Unpacked, crate::layers::Staging), Error> {
    let staging = layers.stage()?;
    let mut file = HashingReader::new(std::fs::File::open(path)?);
    let unpacked = unpack(&mut file, &staging.diff(), staging.budget())?;
    io::copy(&mut file, &mut io::sink()).map_err(classify)?;
    let (blob, _) = file.finish()?;
    content.adopt(path, &blob)?;
    Ok((blob, unpacked, staging))
}

/// Unpacks the (gzip, zstd or uncompressed, detected from the first bytes)
/// layer tar read from `reader` into the empty directory `dest`, reading
/// at most `budget.stream` uncompressed bytes into files whose apparent
/// sizes add up to at most `budget.apparent`.
/// Errors: INVALID_ARGUMENT for a malformed or unsafe archive,
/// RESOURCE_EXHAUSTED for a full disk or a layer past its budget.
pub fn unpack(reader: impl Read, dest: &Path, budget: Budget) -> Result<Unpacked, Error> {
    let (source, decompressing) = (Cell::new(Duration::ZERO), Cell::new(Duration::ZERO));
    let source_reader = Timed {
        inner: reader,
        spent: &source,
    };
    let mut hashing = HashingReader::new(Timed {
        inner: decompressed(source_reader)?,
        spent: &decompressing,
    });
    let mut guard = TarGuard::new(&mut hashing, budget.stream);
    // Two stages on two threads: this one reads, inflates, hashes and
    // bounds the stream; the other reads the tar from it and makes the
    // files. A layer then takes the longer of the two, not their sum.
    let failed = AtomicBool::new(false);
    let (created, feeding) = std::thread::scope(|scope| {
        let (chunks, arriving) = mpsc::sync_channel::<Vec<u8>>(STAGE_CHUNKS);
        // Read chunks come back to be filled again.
        let (spent, spare) = mpsc::channel::<Vec<u8>>();
        let failed = &failed;
        let maker = std::thread::Builder::new()
            .name("layer-unpack".into())
            .spawn_scoped(scope, move || {
                let started = Instant::now();
                let mut tar = ChunkReader {
                    arriving,
                    spent,
                    chunk: Vec::new(),
                    at: 0,
                    waited: Duration::ZERO,
                };
                let made = unpack_entries(&mut tar, dest, budget.apparent);
                failed.store(made.is_err(), Ordering::Relaxed);
                (made, started.elapsed().saturating_sub(tar.waited))
            });
        let maker = match maker {
            Ok(maker) => maker,
            Err(err) => {
                let err = Error::Internal(format!("starting a layer unpack thread: {err}"));
                return (Err(err), Ok(()));
            }
        };
        let feeding = feed(&mut guard, &chunks, &spare, failed);
        drop(chunks);
        let made = maker.join().unwrap_or_else(|_| {
            (
                Err(Error::Internal("layer unpack thread panicked".into())),
                Duration::ZERO,
            )
        });
        (made.0.map(|counts| (counts, made.1)), feeding)
    });
    // A failure of the stream (past its budget, a bad gzip) is the cause
    // of whatever the tar reader then saw.
    feeding?;
    let ((size, entries), create) = created?;
    let hash = hashing.hashing;
    let (diff_id, tar_size) = hashing.finish()?;
    let reading = decompressing.get().max(source.get());
    Ok(Unpacked {
        diff_id,
        size,
        entries,
        tar_size,
        timings: Timings {
            source: source.get(),
            inflate: reading - source.get(),
            hash,
            create,
        },
    })
}

/// Chunks of the tar in flight between the two stages of an unpack, at
/// most (of [`STAGE_CHUNK`] bytes each; read ones are filled again).
const STAGE_CHUNKS: usize = 4;
const STAGE_CHUNK: usize = 256 * 1024;

/// Reads the whole stream from `guard` (so the diffID covers every byte,
/// past the tar's end-of-archive blocks included) and hands it on in
/// chunks while the tar stage takes them. Stops early only when that stage
/// failed.
fn feed(
    guard: &mut dyn Read,
    chunks: &SyncSender<Vec<u8>>,
    spare: &Receiver<Vec<u8>>,
    failed: &AtomicBool,
) -> Result<(), Error> {
    let mut taken = true;
    loop {
        let mut chunk = spare.try_recv().unwrap_or_default();
        chunk.resize(STAGE_CHUNK, 0);
        let n = match guard.read(&mut chunk) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(classify(err)),
        };
        if n == 0 {
            return Ok(());
        }
        chunk.truncate(n);
        if taken && chunks.send(chunk).is_err() {
            // The tar stage is done: at its end (read the rest for the
            // hash) or failed (its error is the answer).
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            taken = false;
        }
    }
}

/// The tar stage's side of the pipe: the chunks as one stream.
struct ChunkReader {
    arriving: Receiver<Vec<u8>>,
    /// Where read chunks go back to the first stage.
    spent: mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    /// Time spent waiting for the first stage.
    waited: Duration,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            let waiting = Instant::now();
            let next = self.arriving.recv();
            self.waited += waiting.elapsed();
            match next {
                Ok(chunk) => {
                    let read = std::mem::replace(&mut self.chunk, chunk);
                    if read.capacity() > 0 {
                        // The first stage may be gone; the chunk is freed.
                        let _ = self.spent.send(read);
                    }
                    self.at = 0;
                }
                // The stream ended (or its stage failed: its error wins).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Unpacks every entry into `dest`; small regular files are written by
/// [`Writers`] while the tar is read on.
fn unpack_entries(reader: &mut dyn Read, dest: &Path, apparent: u64) -> Result<(u64, u64), Error> {
    let root = Root::open(dest).map_err(classify)?;
    let mut writers = Writers::new(write_file);
    let unpacked = unpack_each(reader, dest, apparent, &root, &mut writers);
    // Every file handed out is written (or has failed) before directory
    // times are restored, and before the caller keeps or removes `dest`.
    let written = writers.finish();
    let (size, entries, dir_times) = unpacked?;
    written?;
    // Children changed their directories' times; put them back, deepest
    // first. A directory a later entry removed is skipped.
    for (dir, (secs, nanos)) in dir_times.iter().rev() {
        if let Ok(at) = root.existing(dir)
            && at.stat().ok().flatten() == Some(Kind::Dir)
        {
            at.set_times(*secs, *nanos).map_err(classify)?;
        }
    }
    Ok((size, entries))
}

/// Directories and the times to give them once their children are made.
type DirTimes = Vec<(PathBuf, (i64, u32))>;

fn unpack_each(
    reader: &mut dyn Read,
    dest: &Path,
    apparent: u64,
    root: &Root,
    writers: &mut Writers,
) -> Result<(u64, u64, DirTimes), Error> {
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut archive = tar::Archive::new(reader);
    let mut size = 0u64;
    let mut entries = 0u64;
    let mut dir_times = Vec::new();
    // The directory of the last regular file, resolved: the next files of
    // that directory are made in it without resolving it again. Forgotten
    // at any other entry, and when making room for a file removed
    // something: only those can change where a path leads.
    let mut last_dir: Option<(PathBuf, At, Identity)> = None;
    for entry in archive.entries().map_err(classify)? {
        let mut entry = entry.map_err(classify)?;
        let raw = entry.path().map_err(classify)?.into_owned();
        // A PAX sparse file is named by its records, not its header.
        let pax_sparse = sparse::pax_sparse(&mut entry).map_err(|e| classify_entry(&raw, e))?;
        let raw = match &pax_sparse {
            Some(found) => PathBuf::from(OsStr::from_bytes(&found.name)),
            None => raw,
        };
        let path = relative_path(&raw)?;
        let Some(name) = path.file_name().map(|n| n.as_bytes().to_vec()) else {
            continue; // the layer root itself ("./")
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        let refuse = |err: io::Error| classify_entry(&raw, err);
        let kind = entry.header().entry_type();
        let tar_name = whiteout::tar_name(&name);
        let is_file = tar_name == whiteout::TarName::Plain
            && matches!(
                kind,
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
            );
        if !(is_file && last_dir.as_ref().is_some_and(|(dir, _, _)| dir == parent)) {
            last_dir = None;
        }
        let hidden = match tar_name {
            whiteout::TarName::Plain => None,
            whiteout::TarName::Meta => continue, // meaningless to overlay
            whiteout::TarName::Whiteout(hidden) => Some(hidden),
            whiteout::TarName::Opaque => {
                root.create_dirs(parent).map_err(refuse)?;
                let dir = if parent.as_os_str().is_empty() {
                    std::fs::File::open(dest).map_err(classify)?
                } else {
                    root.existing(parent)
                        .and_then(|at| at.open_dir())
                        .map_err(refuse)?
                };
                xattr::FileExt::set_xattr(&dir, whiteout::OPAQUE_XATTR, b"y").map_err(refuse)?;
                entries += 1;
                continue;
            }
        };
        if let Some(hidden) = hidden {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(invalid(&raw, "whiteout of no plain name"));
            }
            let at = root
                .entry(&parent.join(OsStr::from_bytes(hidden)))
                .map_err(refuse)?;
            let identity = at.identity().map_err(refuse)?;
            clear(&at, &identity, writers, false, &raw)?;
            at.whiteout().map_err(refuse)?;
            entries += 1;
            continue;
        }
        let file_name = OsStr::from_bytes(&name);
        let (at, identity) = match &last_dir {
            Some((_, dir, in_dir)) => (dir.sibling(file_name), in_dir.sibling(file_name)),
            None => {
                let at = root.entry(&path).map_err(refuse)?;
                let identity = at.identity().map_err(refuse)?;
                (at, identity)
            }
        };
        // A later entry replaces an earlier one of the same name, except
        // that a directory over a directory keeps what is in it (Docker).
        let found = clear(&at, &identity, writers, kind == EntryType::Directory, &raw)?;
        if !is_file || found {
            last_dir = None;
        } else if last_dir.is_none() {
            last_dir = Some((
                parent.to_path_buf(),
                at.sibling(file_name),
                identity.clone(),
            ));
        }
        let extensions = Extensions::read(&mut entry, &raw)?;
        let header = entry.header();
        let mode = header.mode().map_err(classify)?;
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let meta = Meta {
            mode,
            owner: as_root.then_some((uid as u32, gid as u32)),
            xattrs: extensions.xattrs,
            mtime: extensions.mtime,
        };
        let apparent_size = pax_sparse.as_ref().map_or(entry.size(), |s| s.real_size);
        if is_file && size.saturating_add(apparent_size) > apparent {
            return Err(Error::ResourceExhausted(format!(
                "{}: the layer's files are larger than the {apparent} bytes a layer may take",
                quote(raw.as_os_str())
            )));
        }
        // A sparse file is never read whole: its holes would cost reading.
        if is_file
            && kind != EntryType::GNUSparse
            && pax_sparse.is_none()
            && entry.size() <= MAX_SMALL_FILE
        {
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut data).map_err(classify)?;
            size += data.len() as u64;
            entries += 1;
            writers.submit(at, identity, data, meta, raw)?;
            continue;
        }
        // Whether the entry still needs its owner, mode, xattrs and times,
        // set by name after the match.
        let mut settle_by_name = true;
        match kind {
            EntryType::Directory => {
                if at.stat().map_err(refuse)?.is_none() {
                    at.mkdir().map_err(refuse)?;
                }
                dir_times.push((path.clone(), meta.mtime));
            }
            EntryType::GNUSparse => {
                // Its holes are skipped in one step each, from its map.
                let file = sparse::write_gnu_sparse(&mut entry, &at).map_err(classify)?;
                size += entry.size();
                settle(&file, kind, &meta).map_err(refuse)?;
                settle_by_name = false; // settled through its descriptor
            }
            EntryType::Regular | EntryType::Continuous if pax_sparse.is_some() => {
                let found = pax_sparse.as_ref().expect("matched as sparse");
                let mut file = at.create_file().map_err(refuse)?;
                let stored = entry.size();
                sparse::write_pax_sparse(&mut entry, stored, found, &mut file).map_err(refuse)?;
                size += found.real_size;
                settle(&file, kind, &meta).map_err(refuse)?;
                settle_by_name = false; // settled through its descriptor
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut file = at.create_file().map_err(refuse)?;
                size += sparse::write_sparse(&mut entry, &mut file).map_err(classify)?;
                settle(&file, kind, &meta).map_err(refuse)?;
                settle_by_name = false; // settled through its descriptor
            }
            EntryType::Symlink => {
                let link = link_name(&mut entry, &raw)?;
                at.symlink(&link).map_err(refuse)?;
                // Docker's layer size counts a symlink as its lstat size:
                // the bytes of its target.
                size += link.as_os_str().len() as u64;
            }
            EntryType::Link => {
                let link = relative_path(&link_name(&mut entry, &raw)?)?;
                let source = root.existing(&link).map_err(refuse)?;
                // The source may be a file a writer has not made yet.
                writers.wait_for(&source.identity().map_err(refuse)?)?;
                at.hardlink_to(&source).map_err(refuse)?;
                settle_by_name = false; // the inode is the source's
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                at.mknod(file_type, major, minor).map_err(refuse)?;
            }
            // PAX global headers, GNU volume labels and the like carry no
            // file.
            _ => continue,
        }
        entries += 1;
        if settle_by_name {
            settle(&at, kind, &meta).map_err(refuse)?;
        }
    }
    Ok((size, entries, dir_times))
}

/// Makes room for the entry `raw` at `at` (named `identity`): waits for
/// a pending file of that name, then removes what is there, unless
/// `keep_dir` and it is a directory. Removing a directory waits for every
/// pending file, which may be in it. Answers whether something was there.
fn clear(
    at: &At,
    identity: &Identity,
    writers: &mut Writers,
    keep_dir: bool,
    raw: &Path,
) -> Result<bool, Error> {
    let refuse = |err: io::Error| classify_entry(raw, err);
    writers.wait_for(identity)?;
    match at.stat().map_err(refuse)? {
        Some(Kind::Dir) if keep_dir => {}
        Some(Kind::Dir) => {
            writers.wait_all()?;
            at.remove().map_err(refuse)?;
        }
        Some(Kind::Other) => at.remove().map_err(refuse)?,
        None => return Ok(false),
    }
    Ok(true)
}

/// Creates the regular file `at` with `data` and its metadata: what a
/// writer thread does for each small file.
fn write_file(at: &At, data: &[u8], meta: &Meta, raw: &Path) -> Result<(), Error> {
    let refuse = |err: io::Error| classify_entry(raw, err);
    let mut file = at.create_file().map_err(refuse)?;
    sparse::write_sparse_bytes(data, &mut file).map_err(classify)?;
    settle(&file, EntryType::Regular, meta).map_err(refuse)
}

/// An inode given its owner, mode, xattrs and times: by name, beneath the
/// layer's root ([`At`]), or through the descriptor of a regular file this
/// process just made and still holds open, with no lookup of its name.
trait Inode {
    fn chown(&self, uid: u32, gid: u32) -> io::Result<()>;
    fn chmod(&self, mode: u32) -> io::Result<()>;
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()>;
    fn set_times(&self, secs: i64, nanos: u32) -> io::Result<()>;
}

impl Inode for At {
    fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        At::chown(self, uid, gid)
    }
    fn chmod(&self, mode: u32) -> io::Result<()> {
        At::chmod(self, mode)
    }
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()> {
        At::set_xattr(self, name, value)
    }
    fn set_times(&self, secs: i64, nanos: u32) -> io::Result<()> {
        At::set_times(self, secs, nanos)
    }
}

impl Inode for std::fs::File {
    fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(uid),
            rustix::fs::Gid::from_raw(gid),
        );
        Ok(rustix::fs::fchown(self, Some(uid), Some(gid))?)
    }
    fn chmod(&self, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::fchmod(
            self,
            rustix::fs::Mode::from_raw_mode(mode & 0o7777),
        )?)
    }
    fn set_xattr(&self, name: &OsStr, value: &[u8]) -> io::Result<()> {
        Ok(rustix::fs::fsetxattr(
            self,
            name,
            value,
            rustix::fs::XattrFlags::empty(),
        )?)
    }
    fn set_times(&self, secs: i64, nanos: u32) -> io::Result<()> {
        Ok(rustix::fs::futimens(
            self,
            &crate::beneath::timestamps(secs, nanos),
        )?)
    }
}

/// Gives an inode this process made its owner, mode, xattrs and (but for
/// a directory, whose children change it still) its times.
fn settle(inode: &impl Inode, kind: EntryType, meta: &Meta) -> io::Result<()> {
    if let Some((uid, gid)) = meta.owner {
        inode.chown(uid, gid)?;
    }
    if kind != EntryType::Symlink {
        // After chown, which clears set-id bits.
        inode.chmod(meta.mode)?;
    }
    for (name, value) in &meta.xattrs {
        inode.set_xattr(name, value)?;
    }
    if kind != EntryType::Directory {
        let (secs, nanos) = meta.mtime;
        inode.set_times(secs, nanos)?;
    }
    Ok(())
}

fn link_name<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &Path) -> Result<PathBuf, Error> {
    let link = entry
        .link_name()
        .map_err(classify)?
        .ok_or_else(|| invalid(raw, "link without a target"))?
        .into_owned();
    if link.as_os_str().len() > MAX_PATH {
        return Err(invalid(raw, "link target too long"));
    }
    Ok(link)
}

/// What an entry's PAX records add: the precise modification time and the
/// extended attributes to keep.
struct Extensions {
    mtime: (i64, u32),
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Extensions {
    /// Reads the entry's PAX records. overlayfs's own attributes
    /// (`trusted.overlay.*`: redirects, opaque markers, metacopy) are
    /// dropped: only imaged's conversion of whiteouts may set them.
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>, raw: &Path) -> Result<Extensions, Error> {
        let mut mtime = (entry.header().mtime().unwrap_or(0) as i64, 0);
        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions().map_err(classify)? {
            for record in records {
                let record = record.map_err(classify)?;
                let Ok(key) = record.key() else { continue };
                if key == "mtime" {
                    if let Some(precise) = record.value().ok().and_then(parse_pax_time) {
                        mtime = precise;
                    }
                } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    if whiteout::is_overlay_xattr(name.as_ref()) {
                        tracing::debug!(path = %raw.display(), name, "dropping an overlayfs attribute from layer content");
                        continue;
                    }
                    xattrs.push((OsString::from(name), record.value_bytes().to_vec()));
                }
            }
        }
        Ok(Extensions { mtime, xattrs })
    }
}

/// A PAX time (`1700000000.123456789`) as seconds and nanoseconds.
fn parse_pax_time(value: &str) -> Option<(i64, u32)> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs = secs.parse::<i64>().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = format!("{digits:0<9}").parse::<u32>().unwrap_or(0);
    Some((secs, nanos))
}

/// [`classify`], naming the entry a bad archive failed at.
fn classify_entry(raw: &Path, err: io::Error) -> Error {
    match classify(err) {
        Error::InvalidArgument(text) => {
            invalid(raw, text.trim_start_matches("invalid layer tar: "))
        }
        other => other,
    }
}

/// The entry name as a path inside the layer: `./` and empty parts are
/// dropped; `..` and absolute names are refused.
pub fn relative_path(raw: &Path) -> Result<PathBuf, Error> {
    if raw.as_os_str().len() > MAX_PATH {
        return Err(invalid(
            raw,
            &format!("path too long: at most {MAX_PATH} bytes"),
        ));
    }
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid(raw, "path contains \"..\"")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(raw, "absolute path"));
            }
        }
    }
    Ok(out)
}

fn invalid(path: &Path, why: &str) -> Error {
    Error::InvalidArgument(format!(
        "invalid layer tar: {}: {why}",
        quote(path.as_os_str())
    ))
}

/// Sorts an unpacking failure: a full disk is the caller's limit, a fault
/// of our own filesystem is internal, anything else is a bad archive.
pub fn classify(err: io::Error) -> Error {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(current) = source {
        if let Some(io_err) = current.downcast_ref::<io::Error>()
            && io_err.kind() == io::ErrorKind::FileTooLarge
        {
            return Error::ResourceExhausted(text);
        }
        if let Some(io_err) = current.downcast_ref::<io::Error>()
            && let Some(code) = io_err.raw_os_error()
        {
            match code {
                libc::ENOSPC | libc::EDQUOT => {
                    return Error::ResourceExhausted(format!("no space left on device: {text}"));
                }
                libc::EIO | libc::EROFS | libc::EACCES | libc::EMFILE | libc::ENFILE => {
                    return Error::Internal(format!("unpacking layer: {text}"));
                }
                _ => {}
            }
        }
        source = current.source();
    }
    Error::InvalidArgument(format!("invalid layer tar: {text}"))
}

/// Hashes and counts what passes through: the diffID and size of the
/// uncompressed stream.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    /// Time spent hashing.
    hashing: Duration,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            hashing: Duration::ZERO,
        }
    }

    /// The digest and byte count of everything read so far.
    pub fn finish(self) -> Result<(Digest, u64), Error> {
        let digest = Digest::sha256_from_hex(&hex::encode(self.hasher.finalize()))?;
        Ok((digest, self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let started = Instant::now();
        self.hasher.update(&buf[..n]);
        self.hashing += started.elapsed();
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A reader of the layer tar inside `reader`, decompressing gzip or zstd
/// (detected from the first bytes) or passing a plain tar through.
pub fn decompressed<'a>(reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>, Error> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let magic = buffered.fill_buf().map_err(classify)?.to_vec();
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(classify)?)
    } else {
        Box::new(buffered)
    })
}

/// Unpacks a small layer made here into a staging directory of `layers`
/// and removes it: run once at start-up, so that the first pull is not the
/// first to run the unpacker (inflating, hashing, reading the tar, making
/// files on the writer threads), whose first run costs about 1.5 ms more
/// CPU than later ones.
pub fn rehearse(layers: &crate::layers::LayerStore) -> Result<(), Error> {
    let staging = layers.stage()?;
    let mut tar = tar::Builder::new(Vec::new());
    for (i, size) in [0usize, 100, 5_000, 70_000].into_iter().enumerate() {
        let mut header = tar::Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let data: Vec<u8> = (0..size).map(|n| (n * 7 + i) as u8).collect();
        tar.append_data(&mut header, format!("d/f{i}"), data.as_slice())?;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &tar.into_inner()?)?;
    unpack(gz.finish()?.as_slice(), &staging.diff(), staging.budget())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A tar of raw entries: (name, type, link target, data). Names are
    /// written into the header as given, `..` and absolute ones included.
    fn raw_tar(entries: &[(&str, EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, link, data) in entries {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(data.len() as u64);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn refused(tar: &[u8]) -> (Error, tempfile::TempDir) {
        let outside = tempfile::tempdir().unwrap();
        let dest = outside.path().join("layer");
        std::fs::create_dir(&dest).unwrap();
        let err = unpack(tar, &dest, Budget::UNLIMITED).expect_err("an unsafe layer was accepted");
        (err, outside)
    }

    #[test]
    fn keeps_sub_second_and_zero_times() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([("mtime", b"1700000000.123456789".as_slice())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        builder
            .append_data(&mut header, "precise", b"x".as_slice())
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder
            .append_data(&mut header, "epoch", b"y".as_slice())
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        let precise = std::fs::metadata(dir.path().join("precise")).unwrap();
        assert_eq!(
            (precise.mtime(), precise.mtime_nsec()),
            (1_700_000_000, 123_456_789)
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("epoch")).unwrap().mtime(),
            0
        );
    }

    #[test]
    fn refuses_parent_and_absolute_names() {
        for name in ["../escape", "a/../../escape", "/etc/escape"] {
            let tar = raw_tar(&[(name, EntryType::Regular, "", b"x")]);
            let (err, outside) = refused(&tar);
            assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err}");
            assert!(!outside.path().join("escape").exists(), "{name}");
        }
    }

    #[test]
    fn refuses_writes_through_symlinks_and_links_outside() {
        let tar = raw_tar(&[
            ("evil", EntryType::Symlink, "..", b""),
            ("evil/escape", EntryType::Regular, "", b"x"),
        ]);
        let (err, outside) = refused(&tar);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(!outside.path().join("escape").exists());

        let secret = tempfile::NamedTempFile::new().unwrap();
        let target = secret.path().to_str().unwrap().trim_start_matches('/');
        let tar = raw_tar(&[(
            "link",
            EntryType::Link,
            &format!("../../../../../../{target}"),
            b"",
        )]);
        let (err, _outside) = refused(&tar);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn refuses_malformed_headers() {
        let mut tar = raw_tar(&[("file", EntryType::Regular, "", b"data")]);
        tar[148] ^= 0x55; // checksum field
        let (err, _outside) = refused(&tar);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn size_counts_files_once_and_symlinks_by_their_target_as_docker() {
        let tar = raw_tar(&[
            ("bin/", EntryType::Directory, "", b""),
            ("bin/busybox", EntryType::Regular, "", b"12345678"),
            ("bin/ls", EntryType::Link, "bin/busybox", b""),
            ("bin/sh", EntryType::Symlink, "busybox", b""),
            ("etc/", EntryType::Directory, "", b""),
            ("etc/.wh.motd", EntryType::Regular, "", b""),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        // The file once (its hardlink is the same inode), the symlink as
        // the 7 bytes of "busybox", directories and whiteouts as nothing:
        // what Docker's overlay2 DiffSize sums over lstat.
        assert_eq!(unpacked.size, 8 + 7);
    }

    #[test]
    fn whiteouts_take_the_overlay_form_and_the_diff_id_covers_the_stream() {
        let tar = raw_tar(&[
            ("etc/", EntryType::Directory, "", b""),
            ("etc/.wh.motd", EntryType::Regular, "", b""),
            ("var/", EntryType::Directory, "", b""),
            ("var/.wh..wh..opq", EntryType::Regular, "", b""),
            ("var/kept", EntryType::Regular, "", b"kept"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let unpacked = unpack(
            gz.finish().unwrap().as_slice(),
            dir.path(),
            Budget::UNLIMITED,
        )
        .unwrap();
        assert_eq!(unpacked.diff_id, Digest::sha256_of(&tar));
        assert_eq!(unpacked.size, 4);
        let whiteout = std::fs::symlink_metadata(dir.path().join("etc/motd")).unwrap();
        assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
        assert!(!dir.path().join("etc/.wh.motd").exists());
        assert_eq!(
            xattr::get(dir.path().join("var"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(std::fs::read(dir.path().join("var/kept")).unwrap(), b"kept");
        let var = std::fs::metadata(dir.path().join("var")).unwrap();
        assert_eq!(var.mtime(), 1_700_000_000, "directory times restored last");
    }

    /// A layer whose first entry is a symlink to a host directory, then an
    /// entry of each kind under it: every one is refused and the host
    /// directory stays as it was.
    #[test]
    fn nothing_under_a_symlink_out_of_the_layer_touches_the_host() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("victim"), b"keep").unwrap();
        std::fs::create_dir(host.path().join("tree")).unwrap();
        std::fs::write(host.path().join("tree/leaf"), b"leaf").unwrap();
        let target = host.path().to_str().unwrap();
        let under: [(&str, EntryType); 8] = [
            ("x/.wh.victim", EntryType::Regular),
            ("x/.wh.tree", EntryType::Regular),
            ("x/.wh..wh..opq", EntryType::Regular),
            ("x/null", EntryType::Char),
            ("x/disk", EntryType::Block),
            ("x/pipe", EntryType::Fifo),
            ("x/dir/", EntryType::Directory),
            ("x/file", EntryType::Regular),
        ];
        for (name, kind) in under {
            let tar = raw_tar(&[
                ("x", EntryType::Symlink, target, b""),
                (name, kind, "", b""),
            ]);
            let (err, _layer) = refused(&tar);
            assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err}");
            assert!(
                err.to_string().contains("outside the layer"),
                "{name}: {err}"
            );
            let mut left: Vec<_> = std::fs::read_dir(host.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            left.sort();
            assert_eq!(left, ["tree", "victim"], "{name}");
            assert_eq!(std::fs::read(host.path().join("victim")).unwrap(), b"keep");
            assert_eq!(
                std::fs::read(host.path().join("tree/leaf")).unwrap(),
                b"leaf"
            );
            assert_eq!(
                xattr::get(host.path(), whiteout::OPAQUE_XATTR).unwrap(),
                None,
                "{name}"
            );
        }
        // A whiteout whose name walks up, through a symlinked parent or not.
        for name in ["a/.wh...", "a/.wh..", ".wh.."] {
            let tar = raw_tar(&[
                ("a", EntryType::Symlink, target, b""),
                (name, EntryType::Regular, "", b""),
            ]);
            let (err, _layer) = refused(&tar);
            assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err}");
            assert!(host.path().join("tree/leaf").exists(), "{name}");
        }
    }

    #[test]
    fn a_later_entry_replaces_an_earlier_one_of_another_kind() {
        let tar = raw_tar(&[
            ("a", EntryType::Regular, "", b"file"),
            ("a/", EntryType::Directory, "", b""),
            ("a/inner", EntryType::Regular, "", b"in"),
            ("b/", EntryType::Directory, "", b""),
            ("b/child", EntryType::Regular, "", b"c"),
            ("b", EntryType::Regular, "", b"now a file"),
            ("c", EntryType::Symlink, "/etc", b""),
            ("c/", EntryType::Directory, "", b""),
        ]);
        let dir = tempfile::tempdir().unwrap();
        unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/inner")).unwrap(), b"in");
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"now a file");
        assert!(
            std::fs::symlink_metadata(dir.path().join("c"))
                .unwrap()
                .is_dir()
        );
    }

    #[test]
    fn files_written_side_by_side_keep_the_order_of_the_tar() {
        // Small files go to writer threads; every later entry that touches
        // one of them (a hardlink, a replacement through a symlinked
        // directory, a whiteout, a directory tree replaced by a file) must
        // see it written, as a one-thread unpack would.
        let mut entries: Vec<(String, EntryType, String, Vec<u8>)> = Vec::new();
        for d in 0..40 {
            entries.push((format!("d{d}/"), EntryType::Directory, "".into(), vec![]));
            for f in 0..20 {
                let data = format!("d{d}/f{f}").repeat(50).into_bytes();
                entries.push((format!("d{d}/f{f}"), EntryType::Regular, "".into(), data));
            }
        }
        let more: [(&str, EntryType, &str, &[u8]); 8] = [
            ("d0/hard", EntryType::Link, "d0/f19", b""),
            ("alias", EntryType::Symlink, "d1", b""),
            (
                "alias/f3",
                EntryType::Regular,
                "",
                b"replaced through the alias",
            ),
            ("d2/.wh.f7", EntryType::Regular, "", b""),
            ("d3", EntryType::Regular, "", b"the tree is gone"),
            ("d4/f5", EntryType::Symlink, "f6", b""),
            ("d5/f0", EntryType::Regular, "", b"second"),
            ("d5/hard", EntryType::Link, "d5/f0", b""),
        ];
        for (name, kind, link, data) in more {
            entries.push((name.into(), kind, link.into(), data.to_vec()));
        }
        let borrowed: Vec<(&str, EntryType, &str, &[u8])> = entries
            .iter()
            .map(|(n, k, l, d)| (n.as_str(), *k, l.as_str(), d.as_slice()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let unpacked =
            unpack(raw_tar(&borrowed).as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        let read = |p: &str| std::fs::read(dir.path().join(p)).unwrap();
        assert_eq!(read("d9/f13"), b"d9/f13".repeat(50));
        assert_eq!(read("d0/hard"), read("d0/f19"));
        let hard = std::fs::metadata(dir.path().join("d0/hard")).unwrap();
        assert_eq!(hard.nlink(), 2);
        assert_eq!(read("d1/f3"), b"replaced through the alias");
        let whiteout = std::fs::symlink_metadata(dir.path().join("d2/f7")).unwrap();
        assert!(whiteout.file_type().is_char_device());
        assert_eq!(read("d3"), b"the tree is gone");
        let link = std::fs::read_link(dir.path().join("d4/f5")).unwrap();
        assert_eq!(link, Path::new("f6"));
        assert_eq!(read("d5/hard"), b"second");
        // Directory times are restored after their files were written.
        let times = std::fs::metadata(dir.path().join("d9")).unwrap();
        assert_eq!(times.mtime(), 1_700_000_000);
        assert_eq!(unpacked.entries, 40 + 800 + 8);
    }

    #[test]
    fn a_directory_is_resolved_again_once_a_file_replaced_part_of_its_path() {
        // "a/b" leads to the root through two symlinks; "a/b/a" replaces
        // the symlink "a" with a file, so "a/b/y" no longer leads anywhere
        // and the layer is refused, as one thread resolving each path
        // would refuse it.
        let tar = raw_tar(&[
            ("b", EntryType::Symlink, ".", b""),
            ("a", EntryType::Symlink, ".", b""),
            ("a/b/f1", EntryType::Regular, "", b"one"),
            ("a/b/a", EntryType::Regular, "", b"a file now"),
            ("a/b/y", EntryType::Regular, "", b"nowhere"),
        ]);
        let (err, dir) = refused(&tar);
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(!dir.path().join("layer/y").exists());
    }

    #[test]
    fn a_writer_failure_fails_the_unpack() {
        // "f" is a file (written by a writer); "f/x" needs it to be a
        // directory. Whichever thread is first, the layer is refused.
        for _ in 0..20 {
            let tar = raw_tar(&[
                ("f", EntryType::Regular, "", b"file"),
                ("f/x", EntryType::Regular, "", b"below a file"),
            ]);
            let (err, _dir) = refused(&tar);
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        }
    }

    #[test]
    fn sparse_files_keep_their_holes_and_overlay_attributes_are_dropped() {
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_pax_extensions([
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc".as_slice()),
                ("SCHILY.xattr.user.note", b"kept".as_slice()),
            ])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        let length = 64 << 20;
        header.set_size(length);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "zeros", io::repeat(0).take(length))
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let unpacked = unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        assert_eq!(unpacked.size, length);
        let meta = std::fs::metadata(dir.path().join("zeros")).unwrap();
        assert_eq!(meta.len(), length);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let path = dir.path().join("zeros");
        assert_eq!(xattr::get(&path, "trusted.overlay.redirect").unwrap(), None);
        if let Ok(Some(note)) = xattr::get(&path, "user.note") {
            assert_eq!(note, b"kept");
        }
    }

    #[test]
    fn small_files_written_side_by_side_keep_their_holes_and_bytes() {
        // At most MAX_SMALL_FILE: a writer thread makes these.
        let mut tail = vec![0u8; 200 * 1024];
        tail[150 * 1024..].fill(9);
        let tar = raw_tar(&[
            ("hole", EntryType::Regular, "", &[0u8; 250 * 1024]),
            ("tail", EntryType::Regular, "", &tail),
        ]);
        let dir = tempfile::tempdir().unwrap();
        unpack(tar.as_slice(), dir.path(), Budget::UNLIMITED).unwrap();
        let hole = std::fs::metadata(dir.path().join("hole")).unwrap();
        assert_eq!(hole.len(), 250 * 1024);
        assert!(hole.blocks() * 512 < 250 * 1024, "{} blocks", hole.blocks());
        assert!(
            std::fs::read(dir.path().join("hole"))
                .unwrap()
                .iter()
                .all(|b| *b == 0)
        );
        assert!(std::fs::read(dir.path().join("tail")).unwrap() == tail);
    }

    #[test]
    fn a_layer_past_its_budget_is_resource_exhausted() {
        let tar = raw_tar(&[("big", EntryType::Regular, "", &[7u8; 64 * 1024])]);
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget {
            stream: 16 * 1024,
            ..Budget::UNLIMITED
        };
        let err = unpack(tar.as_slice(), dir.path(), budget).unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    }

    #[test]
    fn overlong_paths_are_refused_with_their_reason() {
        let deep = "d/".repeat(3000);
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o755);
        header.set_entry_type(EntryType::Directory);
        builder
            .append_data(&mut header, &deep, io::empty())
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let (err, _layer) = refused(&tar);
        assert!(err.to_string().contains("path too long"), "{err}");
    }

    #[test]
    fn the_rehearsal_at_start_up_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let layers = crate::layers::LayerStore::open(dir.path()).unwrap();
        rehearse(&layers).unwrap();
        let staging = dir.path().join("staging");
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        assert!(layers.all().is_empty());
    }
}
