//! The metadata store: images, references and container records, kept in
//! redb under `<root>/metadata/` and mirrored in memory for reads.
//!
//! Every change runs through [`Store::update`]: the closure sees and edits
//! the in-memory [`Index`] through a [`Tx`] under the write lock, and the
//! touched keys are then written in one redb transaction. If the closure
//! fails or the commit fails, the index is put back as it was, so a failed
//! call changes nothing, and two concurrent writers never lose each
//! other's changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use anyhow::Context;
use imaged_common::Error;
use imaged_model::{Digest, Reference};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use imaged_model::image_config::ImageConfig;

/// Image ID → config bytes, exactly as received.
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Image ID → [`ImageMeta`] as JSON.
const IMAGE_META: TableDefinition<&str, &[u8]> = TableDefinition::new("image_meta");
/// Fully qualified reference → image ID.
const REFS: TableDefinition<&str, &str> = TableDefinition::new("refs");
/// Container ID → [`Container`] as JSON.
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

/// Per-image facts that are not part of the config.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageMeta {
    /// Parent image ID (commit, builder), if any.
    pub parent: Option<String>,
    /// Last TagImage, Unix nanoseconds.
    pub last_tag_time: Option<i128>,
    /// Made here (CreateImage, commit) rather than pulled or loaded.
    pub built_locally: bool,
    /// Diff size of each layer, bottom first (from the layer store).
    pub layer_sizes: Vec<i64>,
    /// Bytes of the image as its registry holds it (index, manifest,
    /// config, compressed layers) when pulled; 0 otherwise.
    #[serde(default)]
    pub content_size: i64,
}

/// One image: its ID, config and metadata.
#[derive(Clone, Debug)]
pub struct Image {
    pub id: Digest,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub meta: ImageMeta,
}

impl Image {
    /// Total bytes of the image's layers.
    pub fn size(&self) -> i64 {
        self.meta.layer_sizes.iter().sum()
    }
}

/// A container's use of an image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    pub image_id: String,
    pub running: bool,
}

/// Everything, in memory, with the derived maps reads need.
#[derive(Default)]
pub struct Index {
    /// Counts committed updates: what a cached answer was computed from.
    generation: u64,
    /// By ID, ordered so that an ID prefix is a range ([`Index::by_id_prefix`]).
    images: BTreeMap<String, Arc<Image>>,
    refs: BTreeMap<String, (Reference, String)>,
    refs_by_image: HashMap<String, BTreeSet<String>>,
    children: HashMap<String, BTreeSet<String>>,
    containers: BTreeMap<String, Container>,
}

impl Index {
    /// Changes whenever a committed update changed the store.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn image(&self, id: &str) -> Option<&Arc<Image>> {
        self.images.get(id)
    }

    pub fn images(&self) -> impl Iterator<Item = &Arc<Image>> {
        self.images.values()
    }

    /// The images whose ID starts with `sha256:` and then `hex`, in ID
    /// order: a range of the ordered index, as Docker's digest set looks
    /// up a short ID, not a scan of every image.
    pub fn by_id_prefix<'a>(&'a self, hex: &str) -> impl Iterator<Item = &'a Arc<Image>> {
        self.images
            .range(format!("sha256:{hex}")..)
            .take_while(move |(_, image)| image.id.hex().starts_with(hex))
            .map(|(_, image)| image)
    }

    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// The image a reference (in store form) points to.
    pub fn resolve_ref(&self, full: &str) -> Option<&str> {
        self.refs.get(full).map(|(_, id)| id.as_str())
    }

    /// Every reference with the image ID it points at.
    pub fn refs(&self) -> impl Iterator<Item = (&Reference, &str)> {
        self.refs.values().map(|(r, id)| (r, id.as_str()))
    }

    /// An image's references, sorted by their fully qualified form.
    pub fn refs_of(&self, id: &str) -> Vec<&Reference> {
        self.refs_by_image
            .get(id)
            .map(|set| {
                set.iter()
                    .filter_map(|full| self.refs.get(full).map(|(r, _)| r))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// IDs of the images whose parent is `id`.
    pub fn children_of(&self, id: &str) -> Vec<&str> {
        self.children
            .get(id)
            .map(|set| set.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn has_children(&self, id: &str) -> bool {
        self.children.get(id).is_some_and(|c| !c.is_empty())
    }

    /// Containers using image `id`, by container ID.
    pub fn containers_of(&self, id: &str) -> impl Iterator<Item = (&String, &Container)> {
        self.containers
            .iter()
            .filter(move |(_, c)| c.image_id == id)
    }

    fn set_image(&mut self, id: &str, image: Option<Arc<Image>>) -> Option<Arc<Image>> {
        let old = match image {
            Some(image) => self.images.insert(id.to_string(), image),
            None => self.images.remove(id),
        };
        if let Some(parent) = old.as_ref().and_then(|i| i.meta.parent.as_ref())
            && let Some(set) = self.children.get_mut(parent)
        {
            set.remove(id);
        }
        if let Some(parent) = self.images.get(id).and_then(|i| i.meta.parent.clone()) {
            self.children
                .entry(parent)
                .or_default()
                .insert(id.to_string());
        }
        old
    }

    fn set_ref(
        &mut self,
        full: &str,
        value: Option<(Reference, String)>,
    ) -> Option<(Reference, String)> {
        let old = match value {
            Some(value) => self.refs.insert(full.to_string(), value),
            None => self.refs.remove(full),
        };
        if let Some((_, old_id)) = &old
            && let Some(set) = self.refs_by_image.get_mut(old_id)
        {
            set.remove(full);
        }
        if let Some((_, id)) = self.refs.get(full) {
            self.refs_by_image
                .entry(id.clone())
                .or_default()
                .insert(full.to_string());
        }
        old
    }

    fn set_container(&mut self, cid: &str, value: Option<Container>) -> Option<Container> {
        match value {
            Some(value) => self.containers.insert(cid.to_string(), value),
            None => self.containers.remove(cid),
        }
    }
}

/// An update in progress: edits the index, remembering the first value of
/// every key it touches so the edit can be written or undone.
pub struct Tx<'a> {
    index: &'a mut Index,
    images: HashMap<String, Option<Arc<Image>>>,
    refs: HashMap<String, Option<(Reference, String)>>,
    containers: HashMap<String, Option<Container>>,
}

impl Tx<'_> {
    /// The index as edited so far.
    pub fn index(&self) -> &Index {
        self.index
    }

    pub fn put_image(&mut self, image: Image) {
        let id = image.id.to_string();
        let old = self.index.set_image(&id, Some(Arc::new(image)));
        self.images.entry(id).or_insert(old);
    }

    pub fn delete_image(&mut self, id: &str) {
        let old = self.index.set_image(id, None);
        self.images.entry(id.to_string()).or_insert(old);
    }

    /// Points `reference` (store form) at image `id`.
    pub fn put_ref(&mut self, reference: Reference, id: &str) {
        let full = reference.to_string();
        let old = self.index.set_ref(&full, Some((reference, id.to_string())));
        self.refs.entry(full).or_insert(old);
    }

    pub fn delete_ref(&mut self, reference: &Reference) {
        let full = reference.to_string();
        let old = self.index.set_ref(&full, None);
        self.refs.entry(full).or_insert(old);
    }

    pub fn put_container(&mut self, cid: &str, container: Container) {
        let old = self.index.set_container(cid, Some(container));
        self.containers.entry(cid.to_string()).or_insert(old);
    }

    pub fn delete_container(&mut self, cid: &str) {
        let old = self.index.set_container(cid, None);
        self.containers.entry(cid.to_string()).or_insert(old);
    }

    fn undo(self) {
        for (id, old) in self.images {
            self.index.set_image(&id, old);
        }
        for (full, old) in self.refs {
            self.index.set_ref(&full, old);
        }
        for (cid, old) in self.containers {
            self.index.set_container(&cid, old);
        }
    }

    fn write(&self, db: &Database) -> Result<(), Error> {
        let txn = db.begin_write().map_err(Error::internal)?;
        {
            let mut images = txn.open_table(IMAGES).map_err(Error::internal)?;
            let mut metas = txn.open_table(IMAGE_META).map_err(Error::internal)?;
            for id in self.images.keys() {
                match self.index.images.get(id) {
                    Some(image) => {
                        let meta = serde_json::to_vec(&image.meta).map_err(Error::internal)?;
                        images
                            .insert(id.as_str(), image.config_bytes.as_slice())
                            .map_err(Error::internal)?;
                        metas
                            .insert(id.as_str(), meta.as_slice())
                            .map_err(Error::internal)?;
                    }
                    None => {
                        images.remove(id.as_str()).map_err(Error::internal)?;
                        metas.remove(id.as_str()).map_err(Error::internal)?;
                    }
                }
            }
            let mut refs = txn.open_table(REFS).map_err(Error::internal)?;
            for full in self.refs.keys() {
                match self.index.refs.get(full) {
                    Some((_, id)) => refs.insert(full.as_str(), id.as_str()).map(drop),
                    None => refs.remove(full.as_str()).map(drop),
                }
                .map_err(Error::internal)?;
            }
            let mut containers = txn.open_table(CONTAINERS).map_err(Error::internal)?;
            for cid in self.containers.keys() {
                match self.index.containers.get(cid) {
                    Some(c) => {
                        let json = serde_json::to_vec(c).map_err(Error::internal)?;
                        containers.insert(cid.as_str(), json.as_slice()).map(drop)
                    }
                    None => containers.remove(cid.as_str()).map(drop),
                }
                .map_err(Error::internal)?;
            }
        }
        txn.commit().map_err(|e| match e {
            redb::CommitError::Storage(redb::StorageError::Io(io)) => Error::from(io),
            other => Error::internal(other),
        })
    }
}

/// The image and reference store.
pub struct Store {
    db: Database,
    index: RwLock<Index>,
    /// Where each committed version is published for other processes.
    version: Option<imaged_common::version::Publisher>,
}

impl Store {
    /// Opens (or creates) the database in `dir` and loads it into memory.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("metadata.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open metadata store {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(IMAGES)?;
        txn.open_table(IMAGE_META)?;
        txn.open_table(REFS)?;
        txn.open_table(CONTAINERS)?;
        txn.commit()?;

        let mut index = Index::default();
        let txn = db.begin_read()?;
        let metas = txn.open_table(IMAGE_META)?;
        for entry in txn.open_table(IMAGES)?.iter()? {
            let (id, config) = entry?;
            let (id, config_bytes) = (id.value().to_string(), config.value().to_vec());
            let digest: Digest = match id.parse() {
                Ok(d) if Digest::sha256_of(&config_bytes) == d => d,
                _ => {
                    tracing::warn!(%id, "skipping an image whose config does not match its ID");
                    continue;
                }
            };
            let config = match ImageConfig::parse(&config_bytes) {
                Ok(c) => c,
                Err(err) => {
                    tracing::warn!(%id, "skipping an image with an invalid config: {err}");
                    continue;
                }
            };
            let meta = match metas.get(id.as_str())? {
                Some(m) => serde_json::from_slice(m.value()).unwrap_or_default(),
                None => ImageMeta::default(),
            };
            index.set_image(
                &id,
                Some(Arc::new(Image {
                    id: digest,
                    config_bytes,
                    config,
                    meta,
                })),
            );
        }
        for entry in txn.open_table(REFS)?.iter()? {
            let (full, id) = entry?;
            match Reference::parse(full.value()) {
                Ok(r) => {
                    index.set_ref(full.value(), Some((r, id.value().to_string())));
                }
                Err(err) => {
                    tracing::warn!(reference = full.value(), "skipping a bad reference: {err}")
                }
            }
        }
        for entry in txn.open_table(CONTAINERS)?.iter()? {
            let (cid, json) = entry?;
            if let Ok(c) = serde_json::from_slice::<Container>(json.value()) {
                index.set_container(cid.value(), Some(c));
            }
        }
        drop(metas);
        drop(txn);
        Ok(Store {
            db,
            index: RwLock::new(index),
            version: None,
        })
    }

    /// A consistent view for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` against the index and makes its edits durable in one
    /// transaction; on any error nothing is changed.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Tx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        let mut tx = Tx {
            index: &mut index,
            images: HashMap::new(),
            refs: HashMap::new(),
            containers: HashMap::new(),
        };
        let result = change(&mut tx).and_then(|value| tx.write(&self.db).map(|()| value));
        if result.is_err() {
            tx.undo();
        } else {
            drop(tx);
            index.generation += 1;
            // Under the write lock and before the change returns: a reader
            // that sees the old version read before this change.
            if let Some(publisher) = &self.version
                && let Err(err) = publisher.publish(index.generation)
            {
                tracing::warn!("cannot publish the store's version: {err}");
            }
        }
        result
    }

    /// Publishes every committed version through `publisher` from now on
    /// (the current one at once).
    pub fn publish_versions(
        mut self,
        publisher: imaged_common::version::Publisher,
    ) -> std::io::Result<Self> {
        publisher.publish(self.read().generation)?;
        self.version = Some(publisher);
        Ok(self)
    }

    /// The version `index` (a view of this store) is at.
    pub fn version_of(&self, index: &Index) -> imaged_common::version::Version {
        imaged_common::version::Version {
            epoch: self.version.as_ref().map_or(0, |p| p.epoch()),
            generation: index.generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(config: &str, parent: Option<&str>) -> Image {
        let bytes = config.as_bytes().to_vec();
        Image {
            id: Digest::sha256_of(&bytes),
            config: ImageConfig::parse(&bytes).unwrap(),
            config_bytes: bytes,
            meta: ImageMeta {
                parent: parent.map(str::to_string),
                ..Default::default()
            },
        }
    }

    const A: &str = r#"{"rootfs":{"type":"layers","diff_ids":[]},"config":{"Labels":{"n":"a"}}}"#;
    const B: &str = r#"{"rootfs":{"type":"layers","diff_ids":[]},"config":{"Labels":{"n":"b"}}}"#;

    #[test]
    fn changes_persist_and_failed_updates_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = image(A, None);
        let a_id = a.id.to_string();
        let b = image(B, Some(&a_id));
        let b_id = b.id.to_string();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .update(|tx| {
                    tx.put_image(a);
                    tx.put_image(b);
                    tx.put_ref(Reference::parse("app:1").unwrap(), &b_id);
                    Ok(())
                })
                .unwrap();
            let failed: Result<(), Error> = store.update(|tx| {
                tx.delete_ref(&Reference::parse("app:1").unwrap());
                tx.delete_image(&b_id);
                Err(Error::failed_precondition("no"))
            });
            assert!(failed.is_err());
            let index = store.read();
            assert_eq!(
                index.resolve_ref("docker.io/library/app:1"),
                Some(b_id.as_str())
            );
            assert_eq!(index.children_of(&a_id), vec![b_id.as_str()]);
        }
        let store = Store::open(dir.path()).unwrap();
        let index = store.read();
        assert_eq!(index.image_count(), 2);
        assert_eq!(index.refs_of(&b_id)[0].familiar(), "app:1");
        assert_eq!(index.children_of(&a_id), vec![b_id.as_str()]);
    }
}
