//! A registry as the push engine writes to it: a [`Destination`] opens a
//! [`PushSession`] on one repository, which checks, mounts and uploads
//! blobs and then puts the manifest. oci-client behind
//! `crate::registry::push::Http` is the real one; unit tests push into
//! [`super::fakes::FakeRegistry`].

use bytes::Bytes;
use futures::stream::BoxStream;
use imaged_model::Reference;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

/// A blob's bytes on their way to the registry.
pub type BlobBody = BoxStream<'static, Result<Bytes, OciDistributionError>>;

/// Where pushes go.
#[tonic::async_trait]
pub trait Destination: Send + Sync {
    /// Starts pushing to `target`'s repository as `auth` (exchanging it
    /// for a token where the registry asks for one).
    async fn open(
        &self,
        target: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Box<dyn PushSession>, OciDistributionError>;
}

/// Pushing to one repository.
#[tonic::async_trait]
pub trait PushSession: Send + Sync {
    /// Whether the repository has the blob `digest`.
    async fn blob_exists(&self, digest: &str) -> Result<bool, OciDistributionError>;

    /// Asks the registry to mount the blob `digest` from `source`, another
    /// repository of the same registry (it may decline; check with
    /// [`PushSession::blob_exists`]).
    async fn mount_blob(
        &self,
        digest: &str,
        source: &oci_client::Reference,
    ) -> Result<(), OciDistributionError>;

    /// Uploads the blob `digest` of `size` bytes.
    async fn push_blob(
        &self,
        digest: &str,
        size: u64,
        body: BlobBody,
    ) -> Result<(), OciDistributionError>;

    /// Puts the manifest `body` of `media_type` at the target's tag.
    async fn push_manifest(
        &self,
        body: Vec<u8>,
        media_type: &str,
    ) -> Result<(), OciDistributionError>;
}
