//! An image's signatures, wherever registries.d says they are: simple
//! signing blobs in the lookaside, and sigstore signatures attached in
//! the registry (read through [`Attachments`], the pull engine's registry
//! connection, so mirrors, auth and limits are the pull's own).

use std::collections::BTreeMap;

use imaged_common::Error;
use imaged_model::signature::registries_d::RegistriesD;
use imaged_model::{Digest, Reference};

use super::lookaside;

/// One signature of an image, as found (nothing about it is trusted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signature {
    /// A simple-signing blob, from the lookaside.
    Simple(Vec<u8>),
    /// A layer of the image's sigstore attachment manifest.
    Sigstore(Attachment),
}

/// One layer of a sigstore attachment manifest: its media type, its
/// bytes (the payload, for a signature) and its annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    pub media_type: String,
    pub payload: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

/// The registry an image is pulled from, as the policy reads it.
#[tonic::async_trait]
pub trait Attachments: Send + Sync {
    /// The layers of the sigstore attachment manifest of `manifest`
    /// (the tag `sha256-<hex>.sig` of the image's repository); none when
    /// there is no such tag. A registry that cannot be read is an error
    /// (no decision can be made), not an empty answer.
    async fn sigstore(&self, manifest: &Digest) -> Result<Vec<Attachment>, Error>;
}

/// Attachments from memory, or a registry that fails with a code (unit
/// tests).
#[cfg(test)]
pub struct MemoryAttachments(pub Result<Vec<Attachment>, tonic::Code>);

#[cfg(test)]
impl MemoryAttachments {
    /// A registry with no attachments.
    pub fn none() -> MemoryAttachments {
        MemoryAttachments(Ok(Vec::new()))
    }
}

#[cfg(test)]
#[tonic::async_trait]
impl Attachments for MemoryAttachments {
    async fn sigstore(&self, _manifest: &Digest) -> Result<Vec<Attachment>, Error> {
        match &self.0 {
            Ok(found) => Ok(found.clone()),
            Err(code) => Err(Error::new(*code, "the registry failed")),
        }
    }
}

/// Every signature of `manifest` of `reference`: the lookaside's, then
/// the registry's attachments when registries.d enables them for it (as
/// containers/image reads both).
pub async fn read(
    registries: &RegistriesD,
    http: &reqwest::Client,
    attachments: &dyn Attachments,
    reference: &Reference,
    manifest: &Digest,
) -> Result<Vec<Signature>, Error> {
    let base = registries.read_url(reference);
    let mut found: Vec<Signature> = lookaside::read_signatures(http, &base, reference, manifest)
        .await?
        .into_iter()
        .map(Signature::Simple)
        .collect();
    let attached = registries
        .section(reference)
        .is_some_and(|s| s.use_sigstore_attachments);
    if attached {
        let layers = attachments.sigstore(manifest).await?;
        found.extend(layers.into_iter().map(Signature::Sigstore));
    }
    Ok(found)
}
