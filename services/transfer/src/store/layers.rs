//! The layer store: each layer unpacked once into `layers/<chainID hex>/diff`
//! with its description in `layer.json`, the overlay2 way (a layer holds
//! only its own changes; a container's root is an overlay over the chain).
//!
//! A layer is unpacked into `staging/` and renamed into place only when
//! complete and synced, so a crash leaves either the whole layer or none.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use imaged_common::Error;
use imaged_model::Digest;
use serde::{Deserialize, Serialize};

/// One layer of the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layer {
    pub chain_id: Digest,
    pub diff_id: Digest,
    /// Chain ID of the layer below; `None` for a base layer.
    pub parent: Option<Digest>,
    /// Bytes of the layer's own files (Docker's DiffSize).
    pub size: u64,
    /// The compressed blob it came from, when it came from a registry.
    pub blob: Option<Digest>,
    /// Inodes the unpacked layer takes.
    #[serde(default)]
    pub inodes: u64,
    /// Bytes of the uncompressed layer tar (0 when unknown).
    #[serde(default)]
    pub tar_size: u64,
    /// The gzip blob a push made of a layer whose `blob` is not gzip
    /// (import, load, commit, zstd), kept so later pushes send the same
    /// bytes, or skip them when the registry has them (Docker's v2
    /// metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gzip: Option<Digest>,
}

impl Layer {
    /// The record of a layer just unpacked from the stored blob `blob`, on
    /// top of `parent` (its chain ID follows from the parent's).
    pub fn unpacked(
        parent: Option<Digest>,
        blob: Digest,
        unpacked: &crate::archive::unpack::Unpacked,
    ) -> Layer {
        Layer {
            chain_id: imaged_model::digest::child_chain(parent.as_ref(), &unpacked.diff_id),
            diff_id: unpacked.diff_id.clone(),
            parent,
            size: unpacked.size,
            blob: Some(blob),
            inodes: unpacked.entries,
            tar_size: unpacked.tar_size,
            gzip: None,
        }
    }

    /// The blobs stored for this layer: the one it came from and the gzip
    /// one a push made.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.blob.iter().chain(self.gzip.iter())
    }
}

/// Layers by chain ID, on disk and indexed in memory.
pub struct LayerStore {
    dir: PathBuf,
    staging: PathBuf,
    layers: RwLock<HashMap<Digest, Arc<Layer>>>,
    /// The most uncompressed bytes one layer may take (`--max-layer-size`).
    max_layer_bytes: u64,
}

/// A layer taken out of the store whose files are still to delete.
pub struct Detached {
    layer: Arc<Layer>,
    trash: PathBuf,
}

impl Detached {
    /// Deletes the files (slow for big layers: run it on a blocking thread).
    pub fn purge(self) -> Result<Arc<Layer>, Error> {
        fs::remove_dir_all(&self.trash)?;
        Ok(self.layer)
    }
}

/// A layer being unpacked; removed on drop unless committed.
pub struct Staging {
    path: PathBuf,
    synced: bool,
    budget: Budget,
}

/// What one layer may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Uncompressed tar bytes: the store's limit, or the free space where
    /// it is unpacked, whichever is less.
    pub stream: u64,
    /// The apparent size of its files, sparse holes included: the store's
    /// limit. A hole costs no disk, but what reads the layer later (a
    /// push, an export, a container) pays for its length.
    pub apparent: u64,
    /// The free space where it is unpacked: what a whole archive being
    /// loaded may take.
    pub free: u64,
}

#[cfg(test)]
impl Budget {
    /// No limit (for tests).
    pub const UNLIMITED: Budget = Budget {
        stream: u64::MAX,
        apparent: u64::MAX,
        free: u64::MAX,
    };
}

impl Staging {
    /// Where the layer's files go.
    pub fn diff(&self) -> PathBuf {
        self.path.join("diff")
    }

    /// What this layer may take.
    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Flushes the unpacked files to disk now (a pull does it right after
    /// unpacking, in parallel with other layers, rather than at commit,
    /// which runs in chain order).
    pub fn sync(&mut self) -> Result<(), Error> {
        sync_filesystem(&self.path)?;
        self.synced = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl LayerStore {
    /// Opens the store under `data_dir`: loads every complete layer and
    /// clears staging left by a crash.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.join("layers");
        let staging = data_dir.join("staging");
        fs::create_dir_all(&dir)?;
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        fs::create_dir_all(&staging)?;
        let mut layers = HashMap::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            match fs::read(path.join("layer.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Layer>(&bytes).ok())
            {
                Some(layer) if path.ends_with(layer.chain_id.hex()) => {
                    layers.insert(layer.chain_id.clone(), Arc::new(layer));
                }
                _ => {
                    tracing::warn!(path = %path.display(), "removing an incomplete layer");
                    fs::remove_dir_all(&path)?;
                }
            }
        }
        Ok(LayerStore {
            dir,
            staging,
            layers: RwLock::new(layers),
            max_layer_bytes: u64::MAX,
        })
    }

    /// Caps what one layer may inflate to (a decompression bomb is refused
    /// with RESOURCE_EXHAUSTED before it fills the disk).
    pub fn with_max_layer_bytes(mut self, max: u64) -> Self {
        self.max_layer_bytes = max;
        self
    }

    /// The layer with this chain ID, if stored.
    pub fn get(&self, chain_id: &Digest) -> Option<Arc<Layer>> {
        self.read().get(chain_id).cloned()
    }

    /// Every stored layer.
    pub fn all(&self) -> Vec<Arc<Layer>> {
        self.read().values().cloned().collect()
    }

    /// The layer store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a stored layer's files are.
    pub fn diff_path(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(chain_id.hex()).join("diff")
    }

    /// The diff dirs of `chain` and its parents, top first (overlayfs'
    /// lowerdir order); FAILED_PRECONDITION when one is not stored.
    pub fn diff_dirs(&self, chain: &Digest) -> Result<Vec<PathBuf>, Error> {
        let mut dirs = Vec::new();
        let mut next = Some(chain.clone());
        while let Some(chain) = next {
            let layer = self.get(&chain).ok_or_else(|| {
                Error::failed_precondition(format!("layer {chain} is not in the layer store"))
            })?;
            dirs.push(self.diff_path(&chain));
            next = layer.parent.clone();
        }
        Ok(dirs)
    }

    /// A fresh directory to unpack a layer into.
    pub fn stage(&self) -> Result<Staging, Error> {
        let path = self.staging.join(format!(
            "{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir_all(path.join("diff"))?;
        let free = free_bytes(&self.staging)?;
        let budget = Budget {
            stream: self.max_layer_bytes.min(free),
            apparent: self.max_layer_bytes,
            free,
        };
        Ok(Staging {
            path,
            synced: false,
            budget,
        })
    }

    /// Moves an unpacked layer into place. The parent must be stored. When
    /// the layer is already there (another pull won), the staging copy is
    /// dropped and the stored one answered.
    pub fn commit(&self, mut staging: Staging, layer: Layer) -> Result<Arc<Layer>, Error> {
        if let Some(parent) = &layer.parent
            && self.get(parent).is_none()
        {
            return Err(Error::internal(format!(
                "layer {} committed before its parent {parent}",
                layer.chain_id
            )));
        }
        if let Some(existing) = self.get(&layer.chain_id) {
            return Ok(existing);
        }
        let meta = staging.path.join("layer.json");
        fs::write(
            &meta,
            serde_json::to_vec_pretty(&layer).map_err(Error::internal)?,
        )?;
        fs::File::open(&meta)?.sync_all()?;
        if !staging.synced {
            staging.sync()?;
        }
        let target = self.dir.join(layer.chain_id.hex());
        fs::rename(&staging.path, &target)?;
        fs::File::open(&self.dir)?.sync_all()?;
        let layer = Arc::new(layer);
        self.write()
            .insert(layer.chain_id.clone(), Arc::clone(&layer));
        Ok(layer)
    }

    /// Records the gzip blob a push made of the stored layer `chain_id`;
    /// `layer.json` is replaced atomically. NOT_FOUND when the layer is
    /// gone.
    pub fn set_gzip(&self, chain_id: &Digest, gzip: Digest) -> Result<Arc<Layer>, Error> {
        let mut layers = self.write();
        let stored = layers.get(chain_id).ok_or_else(|| {
            Error::not_found(format!("layer {chain_id} is not in the layer store"))
        })?;
        let mut layer = (**stored).clone();
        layer.gzip = Some(gzip);
        crate::durable::replace(
            &self.dir.join(chain_id.hex()).join("layer.json"),
            &serde_json::to_vec_pretty(&layer).map_err(Error::internal)?,
        )?;
        let layer = Arc::new(layer);
        layers.insert(chain_id.clone(), Arc::clone(&layer));
        Ok(layer)
    }

    /// Takes a layer out of the store at once (index entry gone, files
    /// moved to staging); [`Detached::purge`] deletes the files later.
    pub fn detach(&self, chain_id: &Digest) -> Result<Option<Detached>, Error> {
        let mut layers = self.write();
        let Some(layer) = layers.remove(chain_id) else {
            return Ok(None);
        };
        let trash = self.staging.join(format!(
            "remove-{}-{:08x}",
            chain_id.hex(),
            rand::random::<u32>()
        ));
        if let Err(err) = fs::rename(self.dir.join(chain_id.hex()), &trash) {
            layers.insert(chain_id.clone(), layer);
            return Err(err.into());
        }
        Ok(Some(Detached { layer, trash }))
    }

    /// Removes a layer and its files.
    #[cfg(test)]
    pub fn remove(&self, chain_id: &Digest) -> Result<Option<Arc<Layer>>, Error> {
        let Some(detached) = self.detach(chain_id)? else {
            return Ok(None);
        };
        Ok(Some(detached.purge()?))
    }

    /// Layers with children among the stored ones: not removable alone.
    pub fn children(&self, chain_id: &Digest) -> usize {
        self.read()
            .values()
            .filter(|l| l.parent.as_ref() == Some(chain_id))
            .count()
    }

    /// Bytes of all stored layers.
    pub fn total_size(&self) -> u64 {
        self.read().values().map(|l| l.size).sum()
    }

    /// Inodes of all stored layers.
    pub fn total_inodes(&self) -> u64 {
        self.read().values().map(|l| l.inodes).sum()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Digest, Arc<Layer>>> {
        self.layers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Digest, Arc<Layer>>> {
        self.layers.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Result<u64, Error> {
    let stat = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Flushes the filesystem holding `path` (one syncfs for a whole layer,
/// rather than an fsync per file).
fn sync_filesystem(path: &Path) -> Result<(), Error> {
    let dir = fs::File::open(path)?;
    // SAFETY: the descriptor is valid for the life of `dir`.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(diff: &str, parent: Option<&Digest>) -> Layer {
        let diff_id = Digest::sha256_of(diff.as_bytes());
        let chain_id = match parent {
            None => diff_id.clone(),
            Some(p) => Digest::sha256_of(format!("{p} {diff_id}").as_bytes()),
        };
        Layer {
            chain_id,
            diff_id,
            parent: parent.cloned(),
            size: 3,
            blob: None,
            inodes: 1,
            tar_size: 0,
            gzip: None,
        }
    }

    #[test]
    fn commits_in_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        let base = layer("a", None);
        let top = layer("b", Some(&base.chain_id));

        let staged = store.stage().unwrap();
        assert!(store.commit(staged, top.clone()).is_err(), "parent first");

        let staged = store.stage().unwrap();
        fs::write(staged.diff().join("f"), b"abc").unwrap();
        store.commit(staged, base.clone()).unwrap();
        store.commit(store.stage().unwrap(), top.clone()).unwrap();
        assert_eq!(store.children(&base.chain_id), 1);

        // A torn layer and leftover staging are cleared on open.
        fs::create_dir_all(dir.path().join("layers").join("torn")).unwrap();
        let left = store.stage().unwrap();
        std::mem::forget(left);
        drop(store);
        let store = LayerStore::open(dir.path()).unwrap();
        assert_eq!(store.all().len(), 2);
        assert_eq!(
            fs::read(store.diff_path(&base.chain_id).join("f")).unwrap(),
            b"abc"
        );
        assert!(!dir.path().join("layers").join("torn").exists());
        assert_eq!(fs::read_dir(dir.path().join("staging")).unwrap().count(), 0);

        store.remove(&top.chain_id).unwrap();
        assert!(store.get(&top.chain_id).is_none());
        assert_eq!(store.total_size(), 3);
    }
}
