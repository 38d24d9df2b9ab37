//! The content store: blobs (layers, configs, manifests) by digest.
//!
//! Bytes arrive in `ingest/<hex>`, are hashed as they are written (around
//! the page cache: see `direct_write`), and become `blobs/sha256/<hex>`
//! only after the digest is verified, the file fsynced and renamed. A
//! digest mismatch is never committed. An ingest left by an interrupted
//! download keeps its whole blocks, so the next attempt can resume it with
//! a range request.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imaged_common::Error;
use imaged_model::Digest;
use imaged_model::digest::DigestMismatch;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::store::direct_write::DirectWriter;
use crate::store::marks::Marks;

/// Blobs by digest under `<transfer root>/content`.
#[derive(Clone, Debug)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    /// `owners/<image ID hex>`: the manifests and config each image's
    /// pull or push stored, one digest a line, so they go with the last
    /// image that needs them.
    pub(super) owners: PathBuf,
    /// Held while an owners file is read and rewritten; holds how many
    /// images own each small blob and stand on each chain, counted from
    /// the files on first use and kept current from then on (see
    /// `crate::store::holds`).
    pub(super) owning: Arc<Mutex<Option<super::holds::Counts>>>,
    /// One writer per ingest at a time (two layers can share a blob).
    writers: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
    /// The blobs anyone may have (see [`crate::store::marks`]).
    public: Marks,
    /// The registry repositories each blob is known to be in, for
    /// cross-repository mounts (see [`crate::store::marks`]).
    known_at: Marks,
}

/// The right to write the ingest of one blob, taken in turns by the
/// downloads that want it; see [`ContentStore::ingest_turns`].
pub struct IngestTurns {
    blob: Digest,
    turn: Arc<tokio::sync::Mutex<()>>,
    writers: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
}

impl IngestTurns {
    /// Waits until no other download writes this blob's ingest; the
    /// ingest is this caller's while the guard lives.
    pub async fn take(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }
}

impl Drop for IngestTurns {
    fn drop(&mut self) {
        let mut writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        // The table's and this one: nobody else waits for the blob.
        if Arc::strong_count(&self.turn) == 2 {
            writers.remove(&self.blob);
        }
    }
}

impl ContentStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let blobs = dir.join("blobs").join("sha256");
        let ingest = dir.join("ingest");
        let owners = dir.join("owners");
        fs::create_dir_all(&blobs)?;
        fs::create_dir_all(&ingest)?;
        fs::create_dir_all(&owners)?;
        Ok(ContentStore {
            blobs,
            ingest,
            owners,
            owning: Arc::default(),
            writers: Arc::default(),
            public: Marks::open(dir, "public", true)?,
            known_at: Marks::open(dir, "known-at", false)?,
        })
    }

    /// The blobs anyone may have.
    pub fn public(&self) -> &Marks {
        &self.public
    }

    /// The registry repositories each blob was pulled from or pushed to.
    pub fn known_at(&self) -> &Marks {
        &self.known_at
    }

    /// Turns at writing the ingest of `blob`, shared with every other
    /// download of the same blob in this process.
    pub fn ingest_turns(&self, blob: &Digest) -> IngestTurns {
        let turn = Arc::clone(
            self.writers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(blob.clone())
                .or_default(),
        );
        IngestTurns {
            blob: blob.clone(),
            turn,
            writers: Arc::clone(&self.writers),
        }
    }

    /// Where the committed blob `digest` lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether `digest` is committed.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The committed blob's bytes (for small blobs: configs, manifests).
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        fs::read(self.path(digest)).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => Error::not_found(format!("content {digest}: not found")),
            _ => err.into(),
        })
    }

    /// Stores `data` as `digest` after checking that it hashes to it. Safe
    /// to call from several pulls at once: each writes its own temporary
    /// file and the first rename wins.
    pub fn write(&self, digest: &Digest, data: &[u8]) -> Result<(), Error> {
        if self.contains(digest) {
            return Ok(());
        }
        let actual = Digest::sha256_of(data);
        if &actual != digest {
            let mismatch = DigestMismatch {
                expected: digest.clone(),
                got: actual,
            };
            return Err(Error::caused(Code::InvalidArgument, mismatch));
        }
        let mut temp = self.temp_file()?;
        temp.write_all(data)?;
        self.adopt_temp(temp, digest)
    }

    /// Takes the file at `path` (on the same filesystem) into the store as
    /// the blob `digest`, which the caller computed while reading it. A
    /// blob already stored stays (and the file, unless it is that blob, is
    /// removed).
    pub fn adopt(&self, path: &Path, digest: &Digest) -> Result<(), Error> {
        let target = self.path(digest);
        if self.contains(digest) {
            if path != target {
                fs::remove_file(path)?;
            }
            return Ok(());
        }
        Ok(crate::durable::rename(path, &target)?)
    }

    /// A blob whose digest is known only once it is written (the gzip a
    /// push makes): hashed as it is written, stored by [`NewBlob::commit`].
    pub fn new_blob(&self) -> io::Result<NewBlob> {
        Ok(NewBlob(Hashed::new(io::BufWriter::with_capacity(
            1 << 20,
            self.temp_file()?,
        ))))
    }

    fn temp_file(&self) -> io::Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(&self.ingest)
    }

    /// Takes a temporary file into the store as the blob `digest`, which
    /// the caller computed while writing it; when the blob is stored
    /// already the temporary file goes.
    fn adopt_temp(&self, temp: tempfile::NamedTempFile, digest: &Digest) -> Result<(), Error> {
        if self.contains(digest) {
            return Ok(());
        }
        Ok(crate::durable::persist(temp, &self.path(digest))?)
    }

    /// Where the ingest of `expected` is written while it downloads.
    pub fn ingest_path(&self, expected: &Digest) -> PathBuf {
        self.ingest.join(expected.hex())
    }

    /// Opens the ingest for `expected`, keeping bytes an earlier attempt
    /// left (see [`Ingest::offset`]).
    pub fn ingest(&self, expected: &Digest) -> Result<Ingest, Error> {
        let path = self.ingest_path(expected);
        let (writer, len) = DirectWriter::open(&path)?;
        // Re-hash what is there so the final digest covers every byte
        // (through a descriptor of its own: the writer's is O_DIRECT, which
        // reads only into aligned memory).
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 256 * 1024];
        let mut kept = File::open(&path)?.take(len);
        loop {
            let n = kept.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let out = Hashed {
            inner: writer,
            hasher,
            bytes: len,
        };
        Ok(Ingest {
            out,
            path,
            target: self.path(expected),
            expected: expected.clone(),
        })
    }

    /// Removes a committed blob; a missing one is not an error.
    pub fn delete(&self, digest: &Digest) -> io::Result<()> {
        self.public.forget(digest);
        self.known_at.forget(digest);
        match fs::remove_file(self.path(digest)) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Digests of every committed blob, with their sizes.
    pub fn list(&self) -> io::Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(digest) = name
                .to_str()
                .and_then(|hex| Digest::sha256_from_hex(hex).ok())
            else {
                continue;
            };
            out.push((digest, entry.metadata()?.len()));
        }
        Ok(out)
    }

    /// Drops ingests no pull is resuming (called at start-up, before any
    /// pull runs, for ingests older than `keep`).
    pub fn remove_ingests_older_than(&self, keep: std::time::Duration) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.ingest)? {
            let entry = entry?;
            let old = entry
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|age| age > keep);
            if old {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A writer that hashes and counts what it writes: how bytes enter the
/// store, downloads ([`Ingest`]) and made blobs ([`NewBlob`]) alike.
struct Hashed<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashed<W> {
    fn new(inner: W) -> Self {
        Hashed {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The digest of what was written so far.
    fn digest(&self) -> Result<Digest, Error> {
        Ok(Digest::sha256_from_hex(&hex::encode(
            self.hasher.clone().finalize(),
        ))?)
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A blob of a digest known once written; see [`ContentStore::new_blob`].
pub struct NewBlob(Hashed<io::BufWriter<tempfile::NamedTempFile>>);

impl NewBlob {
    /// Stores what was written under its digest (fsynced, renamed);
    /// answers the digest and size.
    pub fn commit(self, store: &ContentStore) -> Result<(Digest, u64), Error> {
        let (digest, bytes) = (self.0.digest()?, self.0.bytes);
        let temp = self.0.inner.into_inner().map_err(|e| e.into_error())?;
        store.adopt_temp(temp, &digest)?;
        Ok((digest, bytes))
    }
}

impl Write for NewBlob {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Bytes on their way into the store, hashed as they are written, and
/// written around the page cache (only a push or a save reads them again;
/// see [`DirectWriter`]).
pub struct Ingest {
    out: Hashed<DirectWriter>,
    path: PathBuf,
    target: PathBuf,
    expected: Digest,
}

impl Ingest {
    /// How many bytes are already here: where a resumed download starts.
    pub fn offset(&self) -> u64 {
        self.out.bytes
    }

    /// The file, for a reader that follows it as it is written (up to
    /// [`Ingest::on_disk`]).
    pub fn reopen(&self) -> io::Result<File> {
        File::open(&self.path)
    }

    /// Bytes in the file so far (the last ones written may still be
    /// gathered in memory, until [`Ingest::finish_writing`]).
    pub fn on_disk(&self) -> u64 {
        self.out.inner.on_disk()
    }

    /// Writes out every byte gathered: the whole ingest is in the file
    /// (not yet fsynced; [`Ingest::commit`] does that).
    pub fn finish_writing(&mut self) -> io::Result<()> {
        self.out.inner.finish()
    }

    /// Forgets what an earlier attempt left (the registry answered the
    /// whole blob instead of the range asked for).
    pub fn reset(&mut self) -> io::Result<()> {
        self.out.inner.truncate()?;
        self.out.hasher = Sha256::new();
        self.out.bytes = 0;
        Ok(())
    }

    /// Whether the bytes written so far are the expected blob.
    pub fn matches(&self) -> bool {
        self.out.digest().is_ok_and(|d| d == self.expected)
    }

    /// Verifies the digest, fsyncs and renames into place. On a mismatch
    /// the ingest is removed and nothing is committed.
    pub fn commit(mut self) -> Result<(), Error> {
        let actual = self.out.digest()?;
        if actual != self.expected {
            self.out.inner.forget();
            let _ = fs::remove_file(&self.path);
            let mismatch = DigestMismatch {
                expected: self.expected.clone(),
                got: actual,
            };
            return Err(Error::caused(Code::InvalidArgument, mismatch));
        }
        self.out.inner.finish()?;
        Ok(crate::durable::rename(&self.path, &self.target)?)
    }

    /// Removes the ingest (a failure that must not be resumed).
    pub fn discard(mut self) {
        self.out.inner.forget();
        let _ = fs::remove_file(&self.path);
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_verified_bytes_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let block = crate::store::direct_write::ALIGN;
        let data: Vec<u8> = (0..3 * block + 17).map(|i| (i % 253) as u8).collect();
        let digest = Digest::sha256_of(&data);

        let mut first = store.ingest(&digest).unwrap();
        first.write_all(&data[..2 * block + 5]).unwrap();
        drop(first); // interrupted: its whole blocks are kept

        let mut again = store.ingest(&digest).unwrap();
        assert_eq!(again.offset(), 2 * block as u64);
        assert_eq!(again.on_disk(), 2 * block as u64);
        let mut seen = Vec::new();
        again.reopen().unwrap().read_to_end(&mut seen).unwrap();
        assert!(seen == data[..2 * block], "the kept bytes differ");
        again.write_all(&data[2 * block..]).unwrap();
        // What a follower of the file sees: gathered bytes once written out.
        again.finish_writing().unwrap();
        assert_eq!(again.on_disk(), data.len() as u64);
        let mut seen = Vec::new();
        again.reopen().unwrap().read_to_end(&mut seen).unwrap();
        assert!(seen == data, "the written bytes differ");
        again.commit().unwrap();
        assert!(store.contains(&digest));
        assert_eq!(store.read(&digest).unwrap(), data);

        let wrong = Digest::sha256_of(b"other");
        let mut bad = store.ingest(&wrong).unwrap();
        bad.write_all(&data).unwrap();
        let err = bad.commit().unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        assert!(!store.contains(&wrong));
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn downloads_of_one_blob_write_its_ingest_in_turns() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let blob = Digest::sha256_of(b"shared");
        let first = store.ingest_turns(&blob);
        let second = store.ingest_turns(&blob);
        let other = store.ingest_turns(&Digest::sha256_of(b"other"));
        let writing = first.take().await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), second.take())
            .await
            .is_err();
        assert!(waiting, "two writers of one ingest at once");
        drop(other.take().await); // another blob is not held up
        drop(writing);
        drop(second.take().await);
        drop(first);
        drop(second);
        drop(other);
        assert!(
            store.writers.lock().unwrap().is_empty(),
            "no turn left behind"
        );
    }
}
