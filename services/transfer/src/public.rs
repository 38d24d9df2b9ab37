//! Which blobs anyone may have: those this node fetched anonymously, and
//! under which repositories. `--serve-content` gives a peer that does not
//! prove who it is only these, asked under one of these repositories.
//!
//! A blob is public when this node downloaded it without credentials (from
//! the registry or a mirror): whoever asks the same repository anonymously
//! gets it there too. Nothing else is: not a blob pulled with credentials,
//! not one that exists only here (loaded, imported, committed, pushed),
//! and not one an anonymous pull found already stored, since a hostile
//! registry can name any digest in a manifest of its own. A marker lost in
//! a crash makes a blob private, never the other way round.
//!
//! On disk: `<content>/public/<hex>`, the repositories one a line,
//! replaced durably.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use imaged_common::Error;
use imaged_model::Digest;

/// The public blobs of one content store.
#[derive(Clone, Debug)]
pub struct Public {
    dir: PathBuf,
    /// Held while a marker is read and rewritten.
    writing: Arc<Mutex<()>>,
}

impl Public {
    /// Opens (creating) `<content>/public`.
    pub fn open(content: &Path) -> io::Result<Public> {
        let dir = content.join("public");
        fs::create_dir_all(&dir)?;
        Ok(Public {
            dir,
            writing: Arc::default(),
        })
    }

    /// Records that `digest` was fetched anonymously from `repository`
    /// (its path at the registry: `library/busybox`).
    pub fn mark(&self, digest: &Digest, repository: &str) -> Result<(), Error> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut repositories = self.repositories(digest);
        if repositories.iter().any(|r| r == repository) {
            return Ok(());
        }
        repositories.push(repository.to_string());
        let text: String = repositories.iter().map(|r| format!("{r}\n")).collect();
        crate::durable::replace(&self.dir.join(digest.hex()), text.as_bytes())?;
        Ok(())
    }

    /// Whether anyone may have `digest` when asking for it under
    /// `repository`.
    pub fn allows(&self, digest: &Digest, repository: &str) -> bool {
        self.repositories(digest).iter().any(|r| r == repository)
    }

    /// Forgets `digest` (its blob was deleted).
    pub fn forget(&self, digest: &Digest) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let _ = fs::remove_file(self.dir.join(digest.hex()));
    }

    fn repositories(&self, digest: &Digest) -> Vec<String> {
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
        let public = Public::open(dir.path()).unwrap();
        let blob = Digest::sha256_of(b"layer");
        assert!(!public.allows(&blob, "library/app"));
        public.mark(&blob, "library/app").unwrap();
        public.mark(&blob, "team/app").unwrap();
        public.mark(&blob, "library/app").unwrap();
        assert!(public.allows(&blob, "library/app"));
        assert!(public.allows(&blob, "team/app"));
        assert!(!public.allows(&blob, "other/app"));
        let again = Public::open(dir.path()).unwrap();
        assert!(again.allows(&blob, "team/app"));
        again.forget(&blob);
        assert!(!public.allows(&blob, "library/app"));
    }
}
