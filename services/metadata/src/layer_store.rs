//! imaged-transfer as imaged-metadata sees it: the layer store, which
//! alone decides what of a gone image is unused. The gRPC client
//! (`crate::grpc::transfer`) is the real one; unit tests use
//! [`MemoryLayers`].

#[cfg(test)]
use std::collections::{BTreeMap, BTreeSet};
#[cfg(test)]
use std::sync::Mutex;

use imaged_common::Error;

use crate::inspect::Layout;

/// An image and the top of its layer chain (empty without layers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldImage {
    pub id: String,
    pub top_chain: String,
}

/// What a reconciliation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Layers removed because no image stands on them.
    pub removed: usize,
    /// Chains an image stands on that the store lacks.
    pub missing: Vec<String>,
}

/// The calls imaged-metadata makes to imaged-transfer.
#[tonic::async_trait]
pub trait LayerStore: Send + Sync {
    /// The sizes of the layers `chains` (bottom first), held for the image
    /// `image` from now on. `NotFound` when one is not stored.
    async fn hold(&self, chains: Vec<String>, image: &str) -> Result<Vec<i64>, Error>;

    /// Says these images are gone; answers how many layers went with them.
    async fn release(&self, images: Vec<String>) -> Result<usize, Error>;

    /// Makes the store hold exactly what `images` stand on (after a crash
    /// either side may know more).
    async fn retain(&self, images: Vec<HeldImage>) -> Result<Retained, Error>;

    /// The storage driver and where the layers are.
    async fn layout(&self) -> Result<Layout, Error>;
}

/// A layer store in memory: the test double of imaged-transfer.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryLayers {
    state: Mutex<MemoryState>,
}

#[cfg(test)]
#[derive(Default)]
struct MemoryState {
    /// Stored layers by chain ID, with their sizes.
    layers: BTreeMap<String, i64>,
    /// Images (by ID) and the chains each was given.
    holds: BTreeMap<String, Vec<String>>,
    released: BTreeSet<String>,
}

#[cfg(test)]
impl MemoryLayers {
    /// Stores a layer.
    pub fn add(&self, chain: &str, size: i64) {
        self.lock().layers.insert(chain.to_string(), size);
    }

    /// The images said to be gone so far.
    pub fn released(&self) -> BTreeSet<String> {
        self.lock().released.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[tonic::async_trait]
impl LayerStore for MemoryLayers {
    async fn hold(&self, chains: Vec<String>, image: &str) -> Result<Vec<i64>, Error> {
        let mut state = self.lock();
        let sizes = chains
            .iter()
            .map(|c| {
                state
                    .layers
                    .get(c)
                    .copied()
                    .ok_or_else(|| Error::not_found(format!("layer {c} does not exist")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        state.holds.insert(image.to_string(), chains);
        Ok(sizes)
    }

    async fn release(&self, images: Vec<String>) -> Result<usize, Error> {
        let mut state = self.lock();
        for image in images {
            state.holds.remove(&image);
            state.released.insert(image);
        }
        Ok(0)
    }

    async fn retain(&self, images: Vec<HeldImage>) -> Result<Retained, Error> {
        let state = self.lock();
        let missing = images
            .iter()
            .filter(|i| !i.top_chain.is_empty() && !state.layers.contains_key(&i.top_chain))
            .map(|i| i.top_chain.clone())
            .collect();
        Ok(Retained {
            removed: 0,
            missing,
        })
    }

    async fn layout(&self) -> Result<Layout, Error> {
        Ok(Layout {
            driver: "vfs".into(),
            layers_dir: "/nonexistent/layers".into(),
        })
    }
}
