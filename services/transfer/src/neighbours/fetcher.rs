//! A registry (or a mirror, or a peer) as the pull engine reads it:
//! manifests, blobs from an offset, and tags, each from one [`Source`].
//! The HTTP client (`crate::registry::fetch::Http`) is the real one; unit
//! tests serve images from memory with [`super::fakes::FakeRegistry`].

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use oci_client::errors::OciDistributionError;

use crate::registry::Source;

/// A blob's answer: the bytes of the range asked (`partial`), or the
/// whole blob (the source ignored the range). The body is the caller's to
/// read and bound.
pub struct Blob {
    pub partial: bool,
    pub body: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// A range's end that means the blob's end.
pub const TO_THE_END: u64 = u64::MAX;

/// What the pull engine reads from a registry.
#[tonic::async_trait]
pub trait Fetcher: Send + Sync {
    /// The manifest or index `oref` names, at most `max` bytes, with its
    /// digest (checked against `oref`'s digest when it has one).
    async fn manifest(
        &self,
        source: &Source,
        oref: &oci_client::Reference,
        accepted: &[&str],
        max: usize,
    ) -> Result<(Bytes, String), OciDistributionError>;

    /// The bytes `range` of the blob `digest` of `source`'s repository
    /// ([`TO_THE_END`] as its end: up to the blob's end).
    async fn blob(
        &self,
        source: &Source,
        digest: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Blob, OciDistributionError>;

    /// The tags of `source`'s repository, in the registry's order.
    async fn tags(&self, source: &Source) -> Result<Vec<String>, OciDistributionError>;

    /// The blob `digest` whole, refused past `max` bytes.
    async fn small_blob(
        &self,
        source: &Source,
        digest: &str,
        max: u64,
    ) -> Result<Vec<u8>, OciDistributionError> {
        let mut answer = self.blob(source, digest, 0..TO_THE_END).await?;
        let mut data = Vec::new();
        while let Some(chunk) = answer.body.next().await {
            data.extend_from_slice(&chunk?);
            if data.len() as u64 > max {
                return Err(OciDistributionError::GenericError(Some(format!(
                    "blob larger than the {max} bytes allowed"
                ))));
            }
        }
        Ok(data)
    }
}
