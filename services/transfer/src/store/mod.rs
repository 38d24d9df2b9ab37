//! The stores imaged-transfer owns: blobs by digest (content, with the
//! per-blob marks of who may have them and where they are known), layers
//! by chain ID, the leases that hold chains against removal, and the
//! collector that removes what nothing holds.

pub(crate) mod content;
pub(crate) mod direct_write;
pub(crate) mod gc;
pub(crate) mod holds;
pub(crate) mod layers;
pub(crate) mod leases;
pub(crate) mod marks;

use std::sync::Arc;

/// The three stores every engine that writes works on, handed over
/// together.
#[derive(Clone)]
pub struct Stores {
    pub content: content::ContentStore,
    pub layers: Arc<layers::LayerStore>,
    /// What holds chains (and images) while an operation uses them.
    pub leases: Arc<leases::Leases>,
}
