//! containerd as the pull engine sees it: where every pulled image is
//! registered too, so that `ctr` and CRI find it. [`crate::containerd`]
//! is the real one; unit tests use [`super::fakes::FakeRegistrar`].

use bytes::Bytes;
use imaged_common::Error;
use imaged_model::Digest;

/// One blob to put in containerd's content store.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: Digest,
    pub bytes: Bytes,
}

/// One image to register.
#[derive(Clone, Debug)]
pub struct Image {
    /// The image ID (its config's digest).
    pub id: Digest,
    /// The index (when pulled through one), the manifest and the config,
    /// in that order.
    pub blobs: Vec<Blob>,
    /// The image's layer chains, bottom first.
    pub chains: Vec<Digest>,
    /// References to record (`name:tag`, `name@digest`); the image ID is
    /// added.
    pub names: Vec<String>,
}

/// Registers images in another image store.
#[tonic::async_trait]
pub trait Registrar: Send + Sync {
    /// Registers `image` (its blobs, layers and names); an error fails
    /// the pull that made it.
    async fn register(&self, image: &Image) -> Result<(), Error>;
}
