//! The image service's state and the helpers its operations share.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use imaged_common::events::ImageEvents;

use crate::layer_store::{HeldImage, LayerStore};
use crate::store::{Image, Index, Store};

/// Everything the metadata operations work with.
pub struct Images {
    pub store: Store,
    /// imaged-transfer: layer sizes, and what gone images leave unused.
    pub transfer: Arc<dyn LayerStore>,
    pub events: Arc<dyn ImageEvents>,
    /// Held while a prune runs; a second one is refused.
    pub prune_lock: tokio::sync::Mutex<()>,
    /// Orders layer releases against images being recorded (see
    /// [`Images::publish`]).
    pub layer_gate: tokio::sync::Mutex<()>,
    /// The last unfiltered ListImages answer, encoded.
    pub list_cache: std::sync::Mutex<Option<ListCache>>,
    /// imaged-transfer's storage driver and layer directory, asked once.
    pub layout: tokio::sync::OnceCell<crate::inspect::Layout>,
}

/// An encoded unfiltered ListImages answer and what it was computed from.
pub struct ListCache {
    pub generation: u64,
    pub all: bool,
    pub shared_size: bool,
    pub encoded: bytes::Bytes,
}

/// An event decided inside a store update, published once it committed.
pub struct PendingEvent {
    action: String,
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// For a delete: the image, whose layers, manifests and config may
    /// go (imaged-transfer decides).
    deleted_image: Option<String>,
}

impl PendingEvent {
    /// The prune event: no actor, the bytes reclaimed.
    pub fn prune(reclaimed: u64) -> Self {
        PendingEvent {
            action: "prune".into(),
            id: String::new(),
            name: String::new(),
            labels: [("reclaimed".to_string(), reclaimed.to_string())]
                .into_iter()
                .collect(),
            deleted_image: None,
        }
    }

    /// An image event carrying the image's labels as they are now (none
    /// once the image is gone) and `name`.
    pub fn image(index: &Index, action: &'static str, id: &str, name: &str) -> Self {
        PendingEvent {
            action: action.into(),
            id: id.to_string(),
            name: name.to_string(),
            labels: index
                .image(id)
                .map(|i| i.config.labels.clone())
                .unwrap_or_default(),
            deleted_image: None,
        }
    }

    /// A delete event, which also tells imaged-transfer the image is gone.
    pub fn deleted(index: &Index, image: &Image) -> Self {
        let id = image.id.to_string();
        let mut event = Self::image(index, "delete", &id, &id);
        event.deleted_image = Some(id);
        event
    }

    /// Events of transfer's operations name their own action and actor
    /// (pull: the familiar reference).
    pub fn set_action_and_actor(&mut self, action: &str, actor: &str) {
        self.action = action.to_string();
        self.id = actor.to_string();
    }
}

/// The last event a change published, to wait for ([`Images::logged`]).
#[must_use = "an answer goes back once its events are logged"]
pub struct Logged(Option<u64>);

impl Images {
    /// Waits until the events a change published are in the event log
    /// (bounded; see [`imaged_common::events::ImageEvents::delivered`]).
    pub async fn logged(&self, logged: Logged) {
        if let Logged(Some(sequence)) = logged {
            self.events.delivered(sequence).await;
        }
    }

    /// Publishes events of a committed change, in order; the caller
    /// answers once they are [`Images::logged`].
    /// Then, in the background, tells imaged-transfer which images are
    /// gone: it alone decides what of theirs is unused.
    pub fn publish(self: &Arc<Self>, events: Vec<PendingEvent>) -> Logged {
        let mut deleted = Vec::new();
        let mut last = None;
        for e in events {
            let name = (!e.name.is_empty()).then_some(e.name.as_str());
            last = Some(self.events.image(&e.action, &e.id, &e.labels, name));
            deleted.extend(e.deleted_image);
        }
        if deleted.is_empty() {
            return Logged(last);
        }
        let images = Arc::clone(self);
        // On behalf of the call that released them: in its span.
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            // Decided and sent under the gate PutImage also takes: an image
            // recorded meanwhile is seen here, or waits until the release
            // is done (and its pull's lease kept its layers).
            let _gate = images.layer_gate.lock().await;
            let gone: Vec<String> = {
                let index = images.store.read();
                // An image stored again meanwhile keeps what it needs.
                deleted
                    .into_iter()
                    .filter(|id| index.image(id).is_none())
                    .collect()
            };
            if gone.is_empty() {
                return;
            }
            match images.transfer.release(gone).await {
                Ok(removed) => tracing::debug!(removed, "layers released"),
                // Start-up reconciliation removes them later.
                Err(err) => tracing::warn!("releasing layers failed: {err}"),
            }
        }));
        Logged(last)
    }

    /// Makes imaged-transfer hold exactly the layers of the stored images
    /// (after a crash either side may hold more), retrying until it answers.
    pub async fn reconcile_layers(self: Arc<Self>) {
        let _gate = self.layer_gate.lock().await;
        loop {
            // Read again for every attempt: an attempt answered after a
            // wait must say what the store holds then, not at the first.
            let (held, all_chains) = {
                let index = self.store.read();
                let held: Vec<HeldImage> = index
                    .images()
                    .map(|i| HeldImage {
                        id: i.id.to_string(),
                        top_chain: i
                            .config
                            .chain_ids
                            .last()
                            .map(|c| c.to_string())
                            .unwrap_or_default(),
                    })
                    .collect();
                (held, chains_in_use(&index).len())
            };
            match self.transfer.retain(held).await {
                Ok(answer) => {
                    if answer.removed > 0 {
                        tracing::info!(removed = answer.removed, "removed layers no image holds");
                    }
                    if !answer.missing.is_empty() {
                        let everything = answer.missing.len() == all_chains;
                        self.forget_images_missing_layers(answer.missing, everything);
                    }
                    return;
                }
                Err(err) => {
                    tracing::debug!("layer reconciliation waits for imaged-transfer: {err}");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        }
    }
}

impl Images {
    /// imaged-transfer's storage layout, asked the first time it is needed;
    /// `None` while transfer cannot be asked (within half a second: an
    /// inspect does not wait on a transfer that is down).
    pub async fn layout(&self) -> Option<&crate::inspect::Layout> {
        self.layout
            .get_or_try_init(|| async {
                let ask = self.transfer.layout();
                tokio::time::timeout(std::time::Duration::from_millis(500), ask)
                    .await
                    .map_err(|_| imaged_common::Error::deadline_exceeded("transfer info"))?
            })
            .await
            .ok()
    }

    /// After a crash or outside damage, images whose layers the layer
    /// store lacks cannot be used: they are forgotten (untag and delete
    /// events say which), so they can be pulled again. When the layer
    /// store lacks every layer, its root is more likely missing than the
    /// layers, and nothing is forgotten.
    fn forget_images_missing_layers(self: &Arc<Self>, missing: Vec<String>, everything: bool) {
        if everything {
            tracing::error!(
                missing = missing.len(),
                "the layer store holds none of the images' layers; is imaged-transfer's root the right one? no image is forgotten"
            );
            return;
        }
        let missing: HashSet<String> = missing.into_iter().collect();
        let mut events = Vec::new();
        let result = self.store.update(|tx| {
            let broken: Vec<Arc<Image>> = tx
                .index()
                .images()
                .filter(|image| {
                    image.config.chain_ids
                        .iter()
                        .any(|c| missing.contains(&c.to_string()))
                })
                .cloned()
                .collect();
            for image in broken {
                let id = image.id.to_string();
                let refs: Vec<_> = tx.index().refs_of(&id).into_iter().cloned().collect();
                tracing::warn!(image = %id, references = ?refs.iter().map(|r| r.familiar()).collect::<Vec<_>>(),
                    "forgetting an image whose layers are missing; pull it again");
                for reference in refs {
                    events.push(PendingEvent::image(tx.index(), "untag", &id, &id));
                    tx.delete_ref(&reference);
                }
                tx.delete_image(&id);
                events.push(PendingEvent::deleted(tx.index(), &image));
            }
            Ok(())
        });
        match result {
            // Nobody waits on this one: it is the start-up reconciliation.
            Ok(()) => drop(self.publish(events)),
            Err(err) => tracing::error!("forgetting images with missing layers failed: {err}"),
        }
    }
}

/// Every layer chain (with all its parents) some stored image holds.
pub fn chains_in_use(index: &Index) -> HashSet<String> {
    index
        .images()
        .flat_map(|image| image.config.chain_ids.iter().map(|c| c.to_string()))
        .collect()
}
