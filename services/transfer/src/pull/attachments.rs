//! The policy's view of the registry a pull reads: the image's sigstore
//! attachments (cosign's `sha256-<hex>.sig` tag), fetched as the pull
//! fetches manifests and configs (mirrors that may answer a tag first,
//! then the registry with retries; bounded; digests checked).

use imaged_model::media_type::OCI_MANIFEST;
use imaged_model::signature::attachment;
use oci_client::manifest::OciImageManifest;

use super::*;
use crate::trust::lookaside::{MAX_SIGNATURE, MAX_SIGNATURES};

/// At most this many bytes of signatures are read for one image.
const MAX_ATTACHED: u64 = 16 << 20;
use crate::trust::signatures::{Attachment, Attachments};

/// The registry (and mirrors) of one pull's target.
struct PullAttachments<'a> {
    puller: &'a Puller,
    target: &'a Target,
}

impl Puller {
    /// Checks the signature policy (`namespace`'s, else the global one)
    /// for `target`, whose top manifest is `manifest`: signatures are read
    /// from the lookaside and from `target`'s registry.
    pub(super) async fn check_trust(
        &self,
        target: &Target,
        manifest: &Digest,
        namespace: Option<&str>,
    ) -> Result<(), Error> {
        let attachments = PullAttachments {
            puller: self,
            target,
        };
        self.trust
            .check(
                self.registries.http(),
                &attachments,
                &target.reference,
                manifest,
                namespace,
            )
            .await
    }
}

#[tonic::async_trait]
impl Attachments for PullAttachments<'_> {
    async fn sigstore(&self, manifest: &Digest) -> Result<Vec<Attachment>, Error> {
        let (puller, target) = (self.puller, self.target);
        let tag = attachment::tag(manifest);
        let what = format!("sigstore attachments of {}", target.shown);
        let fetched = puller
            .first_answer(
                target,
                &what,
                |source| source.resolves,
                &|e| registry::pull_error(&target.reference, e),
                |source| {
                    let oref = source.at_tag(&tag);
                    let fetcher = Arc::clone(&puller.fetcher);
                    Box::pin(async move {
                        fetcher
                            .manifest(source, &oref, &[OCI_MANIFEST], MAX_MANIFEST)
                            .await
                    })
                },
                Ok,
            )
            .await;
        let bytes = match fetched {
            Ok((bytes, _)) => bytes,
            // No such tag: the image has no attachments.
            Err(e) if e.is(tonic::Code::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let parsed: OciImageManifest = serde_json::from_slice(&bytes).map_err(|e| {
            Error::failed_precondition(format!("{what}: not an OCI image manifest: {e}"))
        })?;
        if parsed
            .media_type
            .as_deref()
            .is_some_and(|m| m != OCI_MANIFEST)
        {
            return Err(Error::failed_precondition(format!(
                "{what}: unexpected media type {:?}",
                parsed.media_type
            )));
        }
        let mut found = Vec::new();
        let mut read = 0;
        for layer in parsed.layers.iter().take(MAX_SIGNATURES) {
            // Other attachments (attestations, …) are counted by the
            // policy, not read. Signatures are bounded by their bytes, not
            // by what the manifest says of them.
            let payload = if layer.media_type == attachment::SIGNATURE_MEDIA_TYPE {
                let left = MAX_ATTACHED.saturating_sub(read).min(MAX_SIGNATURE);
                let payload = puller.fetch_at_most(target, layer, &what, left).await?;
                read += payload.len() as u64;
                payload
            } else {
                Vec::new()
            };
            found.push(Attachment {
                media_type: layer.media_type.clone(),
                payload,
                annotations: layer
                    .annotations
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            });
        }
        Ok(found)
    }
}
