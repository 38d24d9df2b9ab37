//! Per blob, the repositories it is tied to. A content store keeps two
//! such records:
//!
//! - **public**: which blobs anyone may have. `--serve-content` gives a
//!   peer that does not prove who it is only these, asked under one of
//!   these repositories. A blob is public when this node downloaded it
//!   without credentials (from the registry or a mirror): whoever asks the
//!   same repository anonymously gets it there too. Nothing else is: not a
//!   blob pulled with credentials, not one that exists only here (loaded,
//!   imported, committed, pushed), and not one an anonymous pull found
//!   already stored, since a hostile registry can name any digest in a
//!   manifest of its own. A marker lost in a crash makes a blob private,
//!   never the other way round.
//! - **known at**: the registry repositories a blob was pulled from or
//!   pushed to (`registry/path`), Docker's distribution metadata: a push
//!   to another repository of that registry mounts the blob from there
//!   instead of uploading it again. A lost marker costs an upload.
//!
//! On disk: `<content>/<kind>/<hex>`, the repositories one a line,
//! replaced whole: durably for public marks, by a plain rename for
//! known-at ones.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imaged_common::Error;
use imaged_model::Digest;

/// One record of repositories per blob.
#[derive(Clone, Debug)]
pub struct Marks {
    dir: PathBuf,
    /// Whether a mark is fsynced before it counts (see [`Marks::open`]).
    durable: bool,
    /// Held while a marker is read and rewritten.
    writing: Arc<Mutex<()>>,
}

impl Marks {
    /// Opens (creating) `<content>/<kind>`. A `durable` record fsyncs
    /// each mark; another only renames it into place, for marks whose loss
    /// costs nothing but work (a known-at mark lost in a crash costs an
    /// upload, where two fsyncs a layer cost every pull).
    pub fn open(content: &Path, kind: &str, durable: bool) -> io::Result<Marks> {
        let dir = content.join(kind);
        fs::create_dir_all(&dir)?;
        Ok(Marks {
            dir,
            durable,
            writing: Arc::default(),
        })
    }

    /// Ties `digest` to `repository` (for public: its path at the
    /// registry, `library/busybox`; for known-at: the full name).
    pub fn mark(&self, digest: &Digest, repository: &str) -> Result<(), Error> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut repositories = self.repositories(digest);
        if repositories.iter().any(|r| r == repository) {
            return Ok(());
        }
        repositories.push(repository.to_string());
        let text: String = repositories.iter().map(|r| format!("{r}\n")).collect();
        let path = self.dir.join(digest.hex());
        if self.durable {
            crate::durable::replace(&path, text.as_bytes())?;
        } else {
            let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
            io::Write::write_all(&mut temp, text.as_bytes())?;
            temp.persist(&path).map_err(|err| err.error)?;
        }
        Ok(())
    }

    /// Whether `digest` is tied to `repository` (for public: whether
    /// anyone may have it when asking under that repository).
    pub fn allows(&self, digest: &Digest, repository: &str) -> bool {
        self.repositories(digest).iter().any(|r| r == repository)
    }

    /// Forgets `digest` (its blob was deleted).
    pub fn forget(&self, digest: &Digest) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let _ = fs::remove_file(self.dir.join(digest.hex()));
    }

    /// The repositories `digest` is tied to, oldest first.
    pub fn repositories(&self, digest: &Digest) -> Vec<String> {
        fs::read_to_string(self.dir.join(digest.hex()))
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_public_only_under_the_repositories_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let public = Marks::open(dir.path(), "public", true).unwrap();
        let blob = Digest::sha256_of(b"layer");
        assert!(!public.allows(&blob, "library/app"));
        public.mark(&blob, "library/app").unwrap();
        public.mark(&blob, "team/app").unwrap();
        public.mark(&blob, "library/app").unwrap();
        assert!(public.allows(&blob, "library/app"));
        assert!(public.allows(&blob, "team/app"));
        assert!(!public.allows(&blob, "other/app"));
        let again = Marks::open(dir.path(), "public", true).unwrap();
        assert!(again.allows(&blob, "team/app"));
        again.forget(&blob);
        assert!(!public.allows(&blob, "library/app"));
    }
}
