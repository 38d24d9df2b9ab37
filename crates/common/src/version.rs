//! The metadata store's version, published in a small file beside the
//! sockets (`<root>/run/metadata.version`) so that a reader in another
//! process (the gateway's CRI answers) can tell with one `pread` whether
//! what it keeps is still current, without a call.
//!
//! imaged-metadata writes the file under its write lock after every
//! committed change and before the change returns to its caller; so an
//! answer kept at version V is current while the file still says V, and
//! no caller ever sees an answer older than its own completed change.
//! The epoch, random per start of imaged-metadata, keeps versions of two
//! runs apart.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A version of the metadata store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    /// Random per start of imaged-metadata.
    pub epoch: u64,
    /// Committed changes since that start.
    pub generation: u64,
}

impl Version {
    fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.epoch.to_le_bytes());
        bytes[8..].copy_from_slice(&self.generation.to_le_bytes());
        bytes
    }

    fn from_bytes(bytes: [u8; 16]) -> Self {
        let (epoch, generation) = bytes.split_at(8);
        Version {
            epoch: u64::from_le_bytes(epoch.try_into().expect("8 bytes")),
            generation: u64::from_le_bytes(generation.try_into().expect("8 bytes")),
        }
    }
}

impl From<Version> for imaged_api::internal::v1::StoreVersion {
    fn from(v: Version) -> Self {
        imaged_api::internal::v1::StoreVersion {
            epoch: v.epoch,
            generation: v.generation,
        }
    }
}

impl From<imaged_api::internal::v1::StoreVersion> for Version {
    fn from(v: imaged_api::internal::v1::StoreVersion) -> Self {
        Version {
            epoch: v.epoch,
            generation: v.generation,
        }
    }
}

/// Where the version file of the root `root` is.
pub fn path(root: &Path) -> PathBuf {
    root.join("run").join("metadata.version")
}

/// imaged-metadata's side: writes each new version.
#[derive(Debug)]
pub struct Publisher {
    file: File,
    epoch: u64,
}

impl Publisher {
    /// Creates (or truncates) the file at `path` for a new epoch.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(Publisher {
            file,
            epoch: rand::random(),
        })
    }

    /// This run's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Publishes `generation` (one `pwrite`; not synced: the file only
    /// matters while imaged-metadata runs).
    pub fn publish(&self, generation: u64) -> std::io::Result<()> {
        let version = Version {
            epoch: self.epoch,
            generation,
        };
        self.file.write_all_at(&version.to_bytes(), 0)
    }
}

/// A reader's side: the version now, if imaged-metadata publishes one.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: std::sync::OnceLock<File>,
}

impl Reader {
    pub fn new(path: PathBuf) -> Self {
        Reader {
            path,
            file: std::sync::OnceLock::new(),
        }
    }

    /// The published version; `None` when there is none to read (then
    /// nothing kept may be trusted).
    pub fn current(&self) -> Option<Version> {
        let file = match self.file.get() {
            Some(file) => file,
            None => {
                let file = File::open(&self.path).ok()?;
                self.file.get_or_init(|| file)
            }
        };
        let mut bytes = [0; 16];
        file.read_exact_at(&mut bytes, 0).ok()?;
        Some(Version::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_sees_each_published_version_and_epochs_differ() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.version");
        let reader = Reader::new(path.clone());
        assert_eq!(reader.current(), None, "nothing published yet");
        let first = Publisher::create(&path).unwrap();
        first.publish(0).unwrap();
        let v0 = reader.current().unwrap();
        first.publish(7).unwrap();
        let v7 = reader.current().unwrap();
        assert_eq!((v7.epoch, v7.generation), (v0.epoch, 7));
        let restarted = Publisher::create(&path).unwrap();
        restarted.publish(7).unwrap();
        assert_ne!(reader.current().unwrap(), v7, "a new run is a new epoch");
    }
}
