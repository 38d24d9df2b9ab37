//! The image service's state and the helpers its operations share.

use std::collections::BTreeMap;

use imaged_common::events::Publisher;
use imaged_common::peer::Peer;

use crate::store::{Index, Store};

/// Everything the metadata operations work with.
pub struct Images {
    pub store: Store,
    /// imaged-transfer, for layer sizes.
    pub transfer: Peer,
    pub events: Publisher,
    /// Held while a prune runs; a second one is refused.
    pub prune_lock: tokio::sync::Mutex<()>,
}

/// An event decided inside a store update, published once it committed.
pub struct PendingEvent {
    action: &'static str,
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
}

impl PendingEvent {
    /// The prune event: no actor, the bytes reclaimed.
    pub fn prune(reclaimed: u64) -> Self {
        PendingEvent {
            action: "prune",
            id: String::new(),
            name: String::new(),
            labels: [("reclaimed".to_string(), reclaimed.to_string())]
                .into_iter()
                .collect(),
        }
    }

    /// An image event carrying the image's labels as they are now (none
    /// once the image is gone) and `name`.
    pub fn image(index: &Index, action: &'static str, id: &str, name: &str) -> Self {
        PendingEvent {
            action,
            id: id.to_string(),
            name: name.to_string(),
            labels: index
                .image(id)
                .map(|i| i.config.labels.clone())
                .unwrap_or_default(),
        }
    }
}

impl Images {
    /// Publishes events of a committed change, in order.
    pub fn publish(&self, events: Vec<PendingEvent>) {
        for e in events {
            let name = (!e.name.is_empty()).then_some(e.name.as_str());
            self.events.image(e.action, &e.id, &e.labels, name);
        }
    }
}
