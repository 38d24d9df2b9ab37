//! Containers' read-write layers, under `<transfer root>/containers/<id>/`:
//! `container.json` (what it was made from), `diff/` (the container's
//! writes) and, with overlay2, `work/` (overlayfs' work dir). With overlay2
//! the caller mounts an overlay of the image's layer dirs and `diff/`; with
//! vfs `diff/` starts as a full copy of the image's files and is bind
//! mounted. Records are written atomically; each container holds the image
//! layers it stands on in the lease table ([`crate::store::leases`]) while it
//! exists.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use imaged_common::Error;
use imaged_model::Digest;
use serde::{Deserialize, Serialize};

use crate::storage::{Changes, LayerDir, Mount, StorageDriver};
use crate::store::layers::LayerStore;
use crate::store::leases::{Leases, container_hold};

/// What a container's layer was made from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Container {
    pub container_id: String,
    /// Docker's mount ID: the layer's own name.
    pub mount_id: String,
    /// The image it was made from; empty for scratch.
    pub image_id: String,
    /// Top chain of the image's layers; `None` for scratch.
    pub chain_id: Option<Digest>,
    #[serde(default)]
    pub mount_label: String,
}

/// The containers' read-write layers.
pub struct Containers {
    dir: PathBuf,
    storage: Arc<dyn StorageDriver>,
    layers: Arc<LayerStore>,
    leases: Arc<Leases>,
    records: RwLock<HashMap<String, Container>>,
}

impl Containers {
    /// Opens `<data_dir>/containers`, loading every complete record and
    /// holding the image layers each stands on.
    pub fn open(
        data_dir: &Path,
        storage: Arc<dyn StorageDriver>,
        layers: Arc<LayerStore>,
        leases: Arc<Leases>,
    ) -> anyhow::Result<Self> {
        let dir = data_dir.join("containers");
        fs::create_dir_all(&dir)?;
        let mut records = HashMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                // A layer being made or removed when the process stopped.
                fs::remove_dir_all(&path)?;
                continue;
            }
            match fs::read(path.join("container.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Container>(&b).ok())
            {
                Some(c) if path.ends_with(&c.container_id) => {
                    if let Some(chain) = &c.chain_id {
                        leases.hold(container_hold(&c.container_id), chain.clone());
                    }
                    records.insert(c.container_id.clone(), c);
                }
                _ => {
                    tracing::warn!(path = %path.display(), "removing an incomplete container layer");
                    fs::remove_dir_all(&path)?;
                }
            }
        }
        Ok(Containers {
            dir,
            storage,
            layers,
            leases,
            records: RwLock::new(records),
        })
    }

    /// The record of `container_id`.
    pub fn get(&self, container_id: &str) -> Result<Container, Error> {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(container_id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no layer for container {container_id}")))
    }

    /// Makes the read-write layer (blocking: a vfs copy can be long).
    pub fn create(
        &self,
        container_id: &str,
        image_id: &str,
        chain_id: Option<Digest>,
        mount_label: &str,
    ) -> Result<Container, Error> {
        check_id(container_id)?;
        check_label(mount_label)?;
        if self.get(container_id).is_ok() {
            return Err(Error::already_exists(format!(
                "container {container_id} already has a layer"
            )));
        }
        let mount_id = format!("{:032x}", rand::random::<u128>());
        let record = Container {
            container_id: container_id.to_string(),
            mount_id,
            image_id: image_id.to_string(),
            chain_id,
            mount_label: mount_label.to_string(),
        };
        let staging = self.dir.join(format!(".{container_id}.creating"));
        let _ = fs::remove_dir_all(&staging);
        let result = (|| -> Result<(), Error> {
            fs::create_dir_all(staging.join("diff"))?;
            let lowers = self.lower_dirs(record.chain_id.as_ref())?;
            if let Some(chain) = &record.chain_id {
                // Held before the layer exists, so GC cannot take the
                // image's layers from under the copy or the record.
                self.leases
                    .hold(container_hold(container_id), chain.clone());
            }
            self.storage.create(&LayerDir {
                own: &staging,
                lowers: &lowers,
            })?;
            fs::write(
                staging.join("container.json"),
                serde_json::to_vec_pretty(&record).map_err(Error::internal)?,
            )?;
            fs::rename(&staging, self.dir.join(container_id))?;
            fs::File::open(&self.dir)?.sync_all()?;
            Ok(())
        })();
        if let Err(err) = result {
            let _ = fs::remove_dir_all(&staging);
            self.leases.release(&container_hold(container_id));
            return Err(err);
        }
        self.records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(container_id.to_string(), record.clone());
        Ok(record)
    }

    /// Removes a container's layer; an unknown one is not an error.
    pub fn release(&self, container_id: &str) -> Result<Option<Container>, Error> {
        let Some(record) = self
            .records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(container_id)
        else {
            return Ok(None);
        };
        let trash = self.dir.join(format!(".{container_id}.removing"));
        fs::rename(self.dir.join(container_id), &trash)?;
        self.leases.release(&container_hold(container_id));
        fs::remove_dir_all(&trash)?;
        Ok(Some(record))
    }

    /// The mounts and folders of a container's layer.
    pub fn mounts(&self, record: &Container) -> Result<(Vec<Mount>, Vec<String>), Error> {
        let own = self.dir.join(&record.container_id);
        let lowers = self.lower_dirs(record.chain_id.as_ref())?;
        let layer = LayerDir {
            own: &own,
            lowers: &lowers,
        };
        let mut folders: Vec<String> = lowers
            .iter()
            .rev()
            .map(|d| d.display().to_string())
            .collect();
        folders.push(layer.upper().display().to_string());
        // Checked here too: a record written before labels were checked.
        check_label(&record.mount_label)?;
        let label =
            (!record.mount_label.is_empty()).then(|| format!("context=\"{}\"", record.mount_label));
        Ok((vec![self.storage.mount(&layer, label)], folders))
    }

    /// The diff dirs of the chain, top first; none for scratch.
    fn lower_dirs(&self, chain: Option<&Digest>) -> Result<Vec<PathBuf>, Error> {
        chain.map_or(Ok(Vec::new()), |chain| self.layers.diff_dirs(chain))
    }

    /// What the container changed, Docker's way, sorted by path.
    pub fn changes(&self, record: &Container) -> Result<Changes, Error> {
        self.with_layer(record, |layer| self.storage.changes(layer))
    }

    /// Writes the container's changes into the empty directory `dir`, in
    /// overlay form (whiteouts for deletions): the layer a commit makes.
    pub fn diff_into(&self, record: &Container, dir: &Path) -> Result<(), Error> {
        self.with_layer(record, |layer| self.storage.diff_into(layer, dir))
    }

    /// Bytes the container wrote.
    pub fn rw_size(&self, record: &Container) -> Result<u64, Error> {
        self.with_layer(record, |layer| self.storage.size(layer))
    }

    /// Runs `work` on the container's layer directory.
    fn with_layer<T>(
        &self,
        record: &Container,
        work: impl FnOnce(&LayerDir<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let own = self.dir.join(&record.container_id);
        let lowers = self.lower_dirs(record.chain_id.as_ref())?;
        work(&LayerDir {
            own: &own,
            lowers: &lowers,
        })
    }
}

/// Container IDs name directories: keep them plain.
fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "invalid container ID {id:?}: use 1 to 128 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// A mount label becomes a mount option (`context="…"`): it must be an
/// SELinux context, `user:role:type[:level]`, and nothing else. A quote
/// would end the option and what follows would be options of its own
/// (`x",upperdir=/…`); a comma is allowed only between categories of the
/// level (`s0:c1,c2`), where what follows it can only be another category.
fn check_label(label: &str) -> Result<(), Error> {
    if label.is_empty() || selinux_context(label) {
        return Ok(());
    }
    Err(Error::invalid_argument(format!(
        "invalid mount label {:?}: not an SELinux context (user:role:type[:level])",
        label.chars().take(200).collect::<String>()
    )))
}

fn selinux_context(label: &str) -> bool {
    let word = |s: &str| {
        !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let mut parts = label.splitn(4, ':');
    let (Some(user), Some(role), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if !(word(user) && word(role) && word(kind)) {
        return false;
    }
    parts
        .next()
        .is_none_or(|level| level.split('-').all(mls_level))
}

/// One MLS level: `s0`, or `s0:c1,c3.c7`.
fn mls_level(level: &str) -> bool {
    let numbered = |s: &str, prefix: char| {
        s.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.len() <= 5 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let (sensitivity, categories) = match level.split_once(':') {
        Some((s, c)) => (s, Some(c)),
        None => (level, None),
    };
    numbered(sensitivity, 's')
        && categories.is_none_or(|c| c.split([',', '.']).all(|category| numbered(category, 'c')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_label_is_an_selinux_context_or_refused() {
        for good in [
            "",
            "system_u:object_r:container_file_t:s0",
            "system_u:object_r:container_file_t:s0:c1,c2",
            "system_u:object_r:container_file_t:s0-s0:c0.c1023",
            "u:r:t",
        ] {
            assert!(check_label(good).is_ok(), "{good}");
        }
        for bad in [
            "x\",upperdir=/etc,workdir=/tmp",
            "system_u:object_r:t:s0\",upperdir=/",
            "system_u:object_r:container_file_t:s0:c1,volatile",
            "system_u:object_r:t:s0,ro",
            "a:b",
            "a:b:c d",
            "a:b:c:s0:c1\nx",
            "a:b:c:",
        ] {
            assert!(
                check_label(bad)
                    .as_ref()
                    .is_err_and(|e| e.is(tonic::Code::InvalidArgument)),
                "{bad}"
            );
        }
    }

    #[test]
    fn records_survive_reopen_and_half_made_layers_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let layers = Arc::new(LayerStore::open(dir.path()).unwrap());
        let leases = Arc::new(Leases::new());
        let containers = Containers::open(
            dir.path(),
            Arc::new(crate::storage::overlay::Overlay),
            Arc::clone(&layers),
            Arc::clone(&leases),
        )
        .unwrap();
        let made = containers.create("c1", "", None, "").unwrap();
        assert!(
            containers
                .create("c1", "", None, "")
                .as_ref()
                .is_err_and(|e| e.is(tonic::Code::AlreadyExists))
        );
        assert!(
            containers
                .create("../x", "", None, "")
                .as_ref()
                .is_err_and(|e| e.is(tonic::Code::InvalidArgument))
        );
        // A crash while making another one.
        let half = dir.path().join("containers/.c2.creating");
        fs::create_dir_all(half.join("diff")).unwrap();
        fs::write(
            half.join("container.json"),
            serde_json::to_vec(&made).unwrap(),
        )
        .unwrap();
        drop(containers);

        let containers = Containers::open(
            dir.path(),
            Arc::new(crate::storage::overlay::Overlay),
            layers,
            leases,
        )
        .unwrap();
        assert_eq!(containers.get("c1").unwrap().mount_id, made.mount_id);
        assert!(!half.exists());
        let (mounts, folders) = containers.mounts(&made).unwrap();
        assert_eq!(
            mounts[0].kind, "bind",
            "scratch: a bind mount of its own dir"
        );
        assert_eq!(folders.len(), 1);
        containers.release("c1").unwrap();
        assert!(containers.get("c1").is_err());
        assert!(containers.release("c1").unwrap().is_none());
    }
}
