//! A store in a temporary directory for the operations' unit tests.

use imaged_model::Reference;

use crate::store::{Image, Store};

/// A store in a temporary directory, filled through the same
/// transactions the service uses.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub store: Store,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Fixture { _dir: dir, store }
    }

    /// Adds an image whose config is made from `seed`, with `parent`,
    /// tagged `tags`; answers its ID.
    pub fn image(&self, seed: &str, parent: Option<&str>, tags: &[&str]) -> String {
        self.layered(seed, parent, tags, &[])
    }

    /// [`Fixture::image`] with layers, each named by a seed of its
    /// diffID and 10 bytes big.
    pub fn layered(
        &self,
        seed: &str,
        parent: Option<&str>,
        tags: &[&str],
        layers: &[&str],
    ) -> String {
        self.made(seed, "2024-01-01T00:00:00Z", parent, tags, layers)
    }

    /// [`Fixture::layered`], created at `created` (RFC 3339).
    pub fn made(
        &self,
        seed: &str,
        created: &str,
        parent: Option<&str>,
        tags: &[&str],
        layers: &[&str],
    ) -> String {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| format!("\"{}\"", imaged_model::Digest::sha256_of(l.as_bytes())))
            .collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","created":"{created}","config":{{"Labels":{{"seed":"{seed}"}}}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        );
        let bytes = config.into_bytes();
        let id = imaged_model::Digest::sha256_of(&bytes);
        let image = Image {
            id: id.clone(),
            config: imaged_model::image_config::ImageConfig::parse(&bytes).unwrap(),
            config_bytes: bytes,
            meta: crate::store::ImageMeta {
                parent: parent.map(str::to_string),
                layer_sizes: vec![10; layers.len()],
                ..Default::default()
            },
        };
        self.store
            .update(|tx| {
                tx.put_image(image);
                for tag in tags {
                    tx.put_ref(Reference::parse(tag).unwrap().store_key(), &id.to_string());
                }
                Ok(())
            })
            .unwrap();
        id.to_string()
    }

    pub fn container(&self, cid: &str, image: &str, running: bool) {
        self.store
            .update(|tx| {
                tx.put_container(
                    cid,
                    crate::store::Container {
                        image_id: image.to_string(),
                        running,
                    },
                );
                Ok(())
            })
            .unwrap();
    }

    /// Whether the image `id` is stored.
    pub fn has(&self, id: &str) -> bool {
        self.store.read().image(id).is_some()
    }
}

/// The service's state on a fresh store, with imaged-transfer and
/// imaged-events replaced by doubles; the directory lives as long as it.
pub struct Service {
    _dir: tempfile::TempDir,
    pub images: std::sync::Arc<crate::images::Images>,
    pub layers: std::sync::Arc<crate::layer_store::MemoryLayers>,
    pub events: std::sync::Arc<imaged_common::events::MemoryEvents>,
}

impl Service {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let layers = std::sync::Arc::new(crate::layer_store::MemoryLayers::default());
        let events = std::sync::Arc::new(imaged_common::events::MemoryEvents::default());
        let images = std::sync::Arc::new(crate::images::Images {
            store: Store::open(dir.path()).unwrap(),
            transfer: layers.clone(),
            events: events.clone(),
            prune_lock: tokio::sync::Mutex::new(()),
            layer_gate: tokio::sync::Mutex::new(()),
            list_cache: std::sync::Mutex::new(None),
            layout: tokio::sync::OnceCell::new(),
        });
        Service {
            _dir: dir,
            images,
            layers,
            events,
        }
    }

    /// The actions of the events published so far, with their names.
    pub fn said(&self) -> Vec<String> {
        self.events
            .kept()
            .into_iter()
            .map(|e| format!("{} {}", e.action, e.name.unwrap_or_default()))
            .collect()
    }
}
