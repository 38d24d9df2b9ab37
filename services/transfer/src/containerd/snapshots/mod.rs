//! containerd snapshots on imaged's layers: the store behind the proxy
//! snapshotter ([`service`]), with containerd's overlayfs snapshotter's
//! semantics.
//!
//! - A committed snapshot is either an imaged layer (named by its chain
//!   ID, its parent the layer below: containerd finds it through the
//!   `containerd.io/snapshot.ref` label), or a directory containerd filled
//!   and committed itself.
//! - An active snapshot is a read-write layer made by the storage driver,
//!   as a container's is ([`crate::storage`]): with overlay2 an overlay of
//!   its parents' directories (imaged's layer directories are lowers as
//!   they are, never copied) and its own `diff/`.
//! - A view is read-only: the parents' directories, or an empty one.
//!
//! Records live in `<transfer>/snapshots/index.json`, replaced whole and
//! durably on every change; directories in `<transfer>/snapshots/<id>/`.
//! Each snapshot holds the imaged layer it stands on in the lease table
//! ([`crate::store::leases`]), so imaged's GC never takes a layer from under
//! containerd; an imaged `rmi` leaves containerd's containers running.

pub mod filter;
pub mod service;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use imaged_common::Error;
use imaged_model::Digest;
use serde::{Deserialize, Serialize};

use crate::storage::{self, LayerDir, Mount, StorageDriver, Usage};
use crate::store::layers::LayerStore;
use crate::store::leases::{Leases, snapshot_hold};
use filter::{Fields, Filter};

/// The label containerd puts on a layer snapshot: the chain ID it is
/// committed as.
pub const REF_LABEL: &str = "containerd.io/snapshot.ref";

/// What a snapshot is, in containerd's three kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    /// The name containerd's filters use.
    pub fn name(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// One snapshot as containerd sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    /// The committed snapshot below; empty for none.
    pub parent: String,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub created: i64,
    pub updated: i64,
}

/// A record: the info and where the files are.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    info: Info,
    /// Its own directory under the store (`None` for an imaged layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dir: Option<String>,
    /// The imaged layer this committed snapshot is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer: Option<Digest>,
}

/// The snapshot store.
pub struct Snapshots {
    dir: PathBuf,
    storage: Arc<dyn StorageDriver>,
    layers: Arc<LayerStore>,
    leases: Arc<Leases>,
    records: Mutex<BTreeMap<String, Record>>,
}

impl Snapshots {
    /// Opens `<data_dir>/snapshots`: loads the records, drops those whose
    /// layer or directory is gone, and holds what each stands on.
    pub fn open(
        data_dir: &Path,
        storage: Arc<dyn StorageDriver>,
        layers: Arc<LayerStore>,
        leases: Arc<Leases>,
    ) -> anyhow::Result<Self> {
        let dir = data_dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        let mut records: BTreeMap<String, Record> = match fs::read(dir.join("index.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(err.into()),
        };
        let before = records.len();
        records.retain(|name, r| {
            let there = match (&r.layer, &r.dir) {
                (Some(chain), _) => layers.get(chain).is_some(),
                (None, Some(id)) => dir.join(id).is_dir(),
                (None, None) => false,
            };
            if !there {
                tracing::warn!(snapshot = %name, "dropping a snapshot whose files are gone");
            }
            there
        });
        let store = Snapshots {
            dir,
            storage,
            layers,
            leases,
            records: Mutex::new(records),
        };
        {
            let records = store.lock();
            for name in records.keys() {
                store.hold(&records, name);
            }
            if records.len() != before {
                store.save(&records)?;
            }
        }
        store.cleanup()?;
        Ok(store)
    }

    /// Makes the active (or, `read_only`, view) snapshot `key` on `parent`
    /// and answers its mounts.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        read_only: bool,
    ) -> Result<Vec<Mount>, Error> {
        if key.is_empty() {
            return Err(Error::invalid_argument("a snapshot key is required"));
        }
        let mut records = self.lock();
        if records.contains_key(key) {
            return Err(Error::already_exists(format!(
                "snapshot {key} already exists"
            )));
        }
        let lowers = self.lowers(&records, parent)?;
        let id = format!("{:032x}", rand::random::<u128>());
        let own = self.dir.join(&id);
        let made = (|| -> Result<(), Error> {
            fs::create_dir_all(own.join("diff"))?;
            // A view on overlay2 shows its parents' dirs directly; anything
            // else is made by the driver (a vfs copy).
            if !read_only || !self.storage.stacked() {
                self.storage.create(&LayerDir {
                    own: &own,
                    lowers: &lowers,
                })?;
            }
            Ok(())
        })();
        if let Err(err) = made {
            let _ = fs::remove_dir_all(&own);
            return Err(err);
        }
        let now = imaged_model::timestamp::now_nanos() as i64;
        let record = Record {
            info: Info {
                name: key.to_string(),
                parent: parent.to_string(),
                kind: if read_only { Kind::View } else { Kind::Active },
                labels,
                created: now,
                updated: now,
            },
            dir: Some(id),
            layer: None,
        };
        records.insert(key.to_string(), record);
        if let Err(err) = self.save(&records) {
            records.remove(key);
            let _ = fs::remove_dir_all(&own);
            return Err(err);
        }
        self.hold(&records, key);
        self.mounts_of(&records, key)
    }

    /// Records the imaged layer `chain` as the committed snapshot named by
    /// its chain ID (with `labels` added), if it is not one already:
    /// containerd asked for it by `containerd.io/snapshot.ref`. Its parent
    /// is the layer below, recorded first when containerd has not.
    pub fn adopt_layer(
        &self,
        chain: &Digest,
        labels: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let mut records = self.lock();
        let mut added = Vec::new();
        let mut next = Some(chain.clone());
        while let Some(current) = next {
            let name = current.to_string();
            if records.contains_key(&name) {
                break;
            }
            let layer = self
                .layers
                .get(&current)
                .ok_or_else(|| Error::not_found(format!("layer {current} is not stored")))?;
            let now = imaged_model::timestamp::now_nanos() as i64;
            let mut own_labels = if current == *chain {
                labels.clone()
            } else {
                BTreeMap::new()
            };
            own_labels.insert(REF_LABEL.to_string(), name.clone());
            records.insert(
                name.clone(),
                Record {
                    info: Info {
                        name: name.clone(),
                        parent: layer
                            .parent
                            .as_ref()
                            .map(Digest::to_string)
                            .unwrap_or_default(),
                        kind: Kind::Committed,
                        labels: own_labels,
                        created: now,
                        updated: now,
                    },
                    dir: None,
                    layer: Some(current),
                },
            );
            added.push(name);
            next = layer.parent.clone();
        }
        if let Err(err) = self.save(&records) {
            for name in &added {
                records.remove(name);
            }
            return Err(err);
        }
        for name in &added {
            self.hold(&records, name);
        }
        Ok(())
    }

    /// The mounts of an active snapshot or a view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        self.mounts_of(&self.lock(), key)
    }

    /// Turns the active snapshot `key` into the committed snapshot `name`.
    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let mut records = self.lock();
        let record = records
            .get(key)
            .ok_or_else(|| Error::not_found(format!("snapshot {key} does not exist")))?;
        if record.info.kind != Kind::Active {
            return Err(Error::failed_precondition(format!(
                "snapshot {key} is not active"
            )));
        }
        if name.is_empty() {
            return Err(Error::invalid_argument("a snapshot name is required"));
        }
        if records.contains_key(name) {
            return Err(Error::already_exists(format!(
                "snapshot {name} already exists"
            )));
        }
        let mut committed = record.clone();
        let now = imaged_model::timestamp::now_nanos() as i64;
        committed.info = Info {
            name: name.to_string(),
            kind: Kind::Committed,
            labels,
            created: now,
            updated: now,
            ..committed.info
        };
        let active = records.remove(key).expect("looked up above");
        records.insert(name.to_string(), committed);
        if let Err(err) = self.save(&records) {
            records.remove(name);
            records.insert(key.to_string(), active);
            return Err(err);
        }
        self.hold(&records, name);
        self.leases.release(&snapshot_hold(key));
        Ok(())
    }

    /// Removes a snapshot without children. An imaged layer leaves only
    /// containerd's view: the layer itself is imaged's GC's to remove.
    pub fn remove(&self, key: &str) -> Result<(), Error> {
        let mut records = self.lock();
        if !records.contains_key(key) {
            return Err(Error::not_found(format!("snapshot {key} does not exist")));
        }
        if records.values().any(|r| r.info.parent == key) {
            return Err(Error::failed_precondition(format!(
                "cannot remove snapshot {key} with child"
            )));
        }
        let record = records.remove(key).expect("looked up above");
        if let Err(err) = self.save(&records) {
            records.insert(key.to_string(), record);
            return Err(err);
        }
        drop(records);
        self.leases.release(&snapshot_hold(key));
        if let Some(id) = record.dir {
            let own = self.dir.join(&id);
            let trash = self.dir.join(format!(".{id}.removing"));
            fs::rename(&own, &trash)?;
            fs::remove_dir_all(&trash)?;
        }
        Ok(())
    }

    /// The snapshot `key`.
    pub fn stat(&self, key: &str) -> Result<Info, Error> {
        self.lock()
            .get(key)
            .map(|r| r.info.clone())
            .ok_or_else(|| Error::not_found(format!("snapshot {key} does not exist")))
    }

    /// Sets labels of `info.name`: all of them (`paths` empty or
    /// `labels`), or the `labels.<key>` named (removed when absent from
    /// `info`).
    pub fn update(&self, info: &Info, paths: &[String]) -> Result<Info, Error> {
        let mut records = self.lock();
        let record = records
            .get_mut(&info.name)
            .ok_or_else(|| Error::not_found(format!("snapshot {} does not exist", info.name)))?;
        let mut labels = record.info.labels.clone();
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            labels = info.labels.clone();
        } else {
            for path in paths {
                let key = path.strip_prefix("labels.").ok_or_else(|| {
                    Error::invalid_argument(format!("cannot update {path:?} of a snapshot"))
                })?;
                match info.labels.get(key) {
                    Some(value) => labels.insert(key.to_string(), value.clone()),
                    None => labels.remove(key),
                };
            }
        }
        let before = record.info.clone();
        record.info.labels = labels;
        record.info.updated = imaged_model::timestamp::now_nanos() as i64;
        let updated = record.info.clone();
        if let Err(err) = self.save(&records) {
            if let Some(r) = records.get_mut(&info.name) {
                r.info = before;
            }
            return Err(err);
        }
        Ok(updated)
    }

    /// Every snapshot matching any of `filters`, by name.
    pub fn list(&self, filters: &[Filter]) -> Vec<Info> {
        self.lock()
            .values()
            .filter(|r| {
                filter::any(
                    filters,
                    &Fields {
                        name: &r.info.name,
                        parent: &r.info.parent,
                        kind: r.info.kind.name(),
                        labels: &r.info.labels,
                    },
                )
            })
            .map(|r| r.info.clone())
            .collect()
    }

    /// What the snapshot's own files take (blocking: walks them).
    pub fn usage(&self, key: &str) -> Result<Usage, Error> {
        let record = self
            .lock()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("snapshot {key} does not exist")))?;
        if let Some(chain) = &record.layer {
            let layer = self
                .layers
                .get(chain)
                .ok_or_else(|| Error::not_found(format!("layer {chain} is not stored")))?;
            return Ok(Usage {
                size: layer.size,
                inodes: layer.inodes,
            });
        }
        match &record.dir {
            Some(id) => Ok(storage::tree_usage(&self.dir.join(id).join("diff"))?),
            None => Ok(Usage::default()),
        }
    }

    /// Removes directories no record names (left by a crash).
    pub fn cleanup(&self) -> Result<usize, Error> {
        let records = self.lock();
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type()?.is_dir() {
                continue;
            }
            if records
                .values()
                .all(|r| r.dir.as_deref() != Some(name.as_str()))
            {
                fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The committed snapshot `name`'s directories, top first, as the
    /// lowers of a snapshot made on it; none for no parent.
    fn lowers(
        &self,
        records: &BTreeMap<String, Record>,
        name: &str,
    ) -> Result<Vec<PathBuf>, Error> {
        let mut lowers = Vec::new();
        let mut next = name.to_string();
        while !next.is_empty() {
            let record = records.get(&next).ok_or_else(|| {
                Error::not_found(format!("parent snapshot {next} does not exist"))
            })?;
            if record.info.kind != Kind::Committed {
                return Err(Error::invalid_argument(format!(
                    "parent {next} is not a committed snapshot"
                )));
            }
            if let Some(chain) = &record.layer {
                lowers.extend(self.layers.diff_dirs(chain)?);
                break;
            }
            if let Some(id) = &record.dir {
                lowers.push(self.dir.join(id).join("diff"));
                if !self.storage.stacked() {
                    break; // a vfs copy is the whole tree
                }
            }
            next = record.info.parent.clone();
        }
        Ok(lowers)
    }

    fn mounts_of(
        &self,
        records: &BTreeMap<String, Record>,
        key: &str,
    ) -> Result<Vec<Mount>, Error> {
        let record = records
            .get(key)
            .ok_or_else(|| Error::not_found(format!("snapshot {key} does not exist")))?;
        let Some(id) = &record.dir else {
            return Err(Error::failed_precondition(format!(
                "snapshot {key} is committed: it has no mounts"
            )));
        };
        let own = self.dir.join(id);
        let lowers = self.lowers(records, &record.info.parent)?;
        let layer = LayerDir {
            own: &own,
            lowers: &lowers,
        };
        Ok(vec![match record.info.kind {
            Kind::Active => self.storage.mount(&layer, None),
            Kind::View if self.storage.stacked() && !lowers.is_empty() => {
                storage::read_only_view(&lowers)
            }
            Kind::View => storage::read_only_view(&[layer.upper()]),
            Kind::Committed => {
                return Err(Error::failed_precondition(format!(
                    "snapshot {key} is committed: it has no mounts"
                )));
            }
        }])
    }

    /// Holds, for the snapshot `name`, the imaged layer it stands on.
    fn hold(&self, records: &BTreeMap<String, Record>, name: &str) {
        let mut next = name;
        while let Some(record) = records.get(next) {
            if let Some(chain) = &record.layer {
                self.leases.hold(snapshot_hold(name), chain.clone());
                return;
            }
            next = &record.info.parent;
        }
    }

    fn save(&self, records: &BTreeMap<String, Record>) -> Result<(), Error> {
        let bytes = serde_json::to_vec(records).map_err(Error::internal)?;
        crate::durable::replace(&self.dir.join("index.json"), &bytes)?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
