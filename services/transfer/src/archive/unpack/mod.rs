//! Unpacking one layer tar into its own directory, the overlay2 way.
//!
//! The `tar` crate (synchronous, on a thread of its own, fed by the one
//! that inflates and hashes the stream) reads the archive; every entry is
//! written here, through [`crate::archive::beneath::Root`], so that no path,
//! however the layer's symlinks are laid, is resolved outside the layer's
//! directory (small regular files by [`crate::archive::writers`], side by side).
//! [`crate::archive::tar_limits::TarGuard`] bounds header extensions and the bytes
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

use crate::archive::tar_limits::LayerTooLarge;
use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};
use tar::EntryType;

use crate::archive::beneath::{At, Identity, Kind, Root, quote};
use crate::archive::sparse;
use crate::archive::tar_limits::{MAX_PATH, TarGuard};
use crate::archive::whiteout;
use crate::archive::writers::{MAX_SMALL_FILE, Meta, Writers};
use crate::store::layers::Budget;

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
    content: &crate::store::content::ContentStore,
    layers: &crate::store::layers::LayerStore,
    path: &Path,
) -> Result<(Digest, Unpacked, crate::store::layers::Staging), Error> {
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
                let err = Error::internal(format!("starting a layer unpack thread: {err}"));
                return (Err(err), Ok(()));
            }
        };
        let feeding = feed(&mut guard, &chunks, &spare, failed);
        drop(chunks);
        let made = maker.join().unwrap_or_else(|_| {
            (
                Err(Error::internal("layer unpack thread panicked")),
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

/// [`classify`], naming the entry a bad archive failed at.
fn classify_entry(raw: &Path, err: io::Error) -> Error {
    let err = classify(err);
    if err.is(tonic::Code::InvalidArgument) {
        invalid(raw, err.message().trim_start_matches("invalid layer tar: "))
    } else {
        err
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
    Error::invalid_argument(format!(
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
        let inner = current
            .downcast_ref::<io::Error>()
            .and_then(|e| e.get_ref())
            .map(|e| e as &(dyn std::error::Error + 'static));
        if let Some(too_large) = inner.unwrap_or(current).downcast_ref::<LayerTooLarge>() {
            return Error::caused(tonic::Code::ResourceExhausted, too_large.clone())
                .with_message(text);
        }
        if let Some(io_err) = current.downcast_ref::<io::Error>()
            && io_err.kind() == io::ErrorKind::FileTooLarge
        {
            return Error::resource_exhausted(text);
        }
        if let Some(io_err) = current.downcast_ref::<io::Error>()
            && let Some(code) = io_err.raw_os_error()
        {
            match code {
                libc::ENOSPC | libc::EDQUOT => {
                    return Error::resource_exhausted(format!("no space left on device: {text}"));
                }
                libc::EIO | libc::EROFS | libc::EACCES | libc::EMFILE | libc::ENFILE => {
                    return Error::internal(format!("unpacking layer: {text}"));
                }
                _ => {}
            }
        }
        source = current.source();
    }
    Error::invalid_argument(format!("invalid layer tar: {text}"))
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
pub fn rehearse(layers: &crate::store::layers::LayerStore) -> Result<(), Error> {
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

mod entries;
use entries::unpack_entries;
#[cfg(test)]
mod tests;
