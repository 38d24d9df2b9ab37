//! Docker's PushImage: upload the config and layer blobs under the upload
//! limit (skipping what the registry has, mounting across repositories of
//! the same registry), then the manifest; send the `push` event.

use std::sync::Arc;

use futures::TryStreamExt;
use imaged_api::v1::{PushImageProgress, PushImageRequest};
use imaged_common::Error;
use imaged_common::events::Publisher;
use imaged_model::digest::chain_ids;
use imaged_model::{Digest, Reference};
use oci_client::{Client, RegistryOperation};
use serde_json::json;
use tokio::sync::mpsc;

use crate::content::ContentStore;
use crate::layers::LayerStore;
use crate::limits::Limits;
use crate::metadata::{Metadata, config_diff_ids, config_labels};
use crate::registry::{self, Registries};

use imaged_model::media_type::{OCI_CONFIG, OCI_MANIFEST};

/// What a push sends its caller.
pub type Progress = mpsc::Sender<Result<PushImageProgress, tonic::Status>>;

/// The push engine.
pub struct Pusher {
    content: ContentStore,
    layers: Arc<LayerStore>,
    limits: Arc<Limits>,
    registries: Arc<Registries>,
    metadata: Metadata,
    events: Publisher,
}

/// One blob to upload.
struct Upload {
    digest: Digest,
    size: u64,
    media_type: &'static str,
}

impl Pusher {
    pub fn new(
        content: ContentStore,
        layers: Arc<LayerStore>,
        limits: Arc<Limits>,
        registries: Arc<Registries>,
        metadata: Metadata,
        events: Publisher,
    ) -> Self {
        Pusher {
            content,
            layers,
            limits,
            registries,
            metadata,
            events,
        }
    }

    /// Pushes the local image `request.reference` names to its registry.
    /// Its span names the image, the manifest digest and the bytes of the
    /// layers and config.
    #[tracing::instrument(
        name = "push",
        skip_all,
        fields(
            image.reference = %request.reference,
            image.manifest_digest = tracing::field::Empty,
            image.bytes = tracing::field::Empty,
        )
    )]
    pub async fn push(
        self: &Arc<Self>,
        request: PushImageRequest,
        tx: Progress,
    ) -> Result<(), Error> {
        let reference = Reference::parse(&request.reference)?;
        if reference.digest().is_some() {
            return Err(Error::InvalidArgument(
                "cannot push a digest reference; push a tag".into(),
            ));
        }
        let reference = reference.with_default_tag();
        let shown = reference.familiar();
        let image = match self
            .metadata
            .image_config(&shown, request.platform.clone())
            .await
        {
            Err(Error::NotFound(_)) => {
                return Err(Error::NotFound(format!(
                    "An image does not exist locally with the tag: {}",
                    reference.familiar_name()
                )));
            }
            other => other?,
        };
        let config: serde_json::Value = serde_json::from_slice(&image.config)
            .map_err(|e| Error::Internal(format!("stored config of {shown}: {e}")))?;
        let diff_ids = config_diff_ids(&config)?;
        let mut uploads = Vec::new();
        for chain in chain_ids(&diff_ids) {
            let layer = self.layers.get(&chain).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "layer {chain} of {shown} is not in the layer store"
                ))
            })?;
            let blob = layer.blob.clone().ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "layer {} of {shown} has no compressed blob to push",
                    layer.diff_id
                ))
            })?;
            let path = self.content.path(&blob);
            let (size, media_type) = tokio::task::spawn_blocking(move || blob_kind(&path))
                .await
                .map_err(Error::internal)??;
            uploads.push(Upload {
                digest: blob,
                size,
                media_type,
            });
        }
        let config_digest: Digest = image.id.parse()?;
        self.content.write(&config_digest, &image.config)?;

        let auth = registry::auth(request.auth.as_ref());
        let client = self.registries.client(&reference, &auth);
        let oref = registry::oci_reference(&reference);
        client
            .auth(&oref, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| registry::error(&format!("push to {}", reference.name()), e))?;
        send(
            &tx,
            line(
                "",
                format!("The push refers to repository [{}]", reference.name()),
            ),
        )
        .await;

        // Other repositories of the same registry the image came from.
        let sources: Vec<oci_client::Reference> = image
            .repo_digests
            .iter()
            .chain(image.repo_tags.iter())
            .filter_map(|r| Reference::parse(r).ok())
            .filter(|r| r.domain() == reference.domain() && r.path() != reference.path())
            .map(|r| registry::oci_reference(&r))
            .collect();

        let mut all = uploads.iter().collect::<Vec<_>>();
        for upload in &all {
            send(&tx, line(upload.digest.short(), "Preparing".into())).await;
        }
        let config_upload = Upload {
            digest: config_digest.clone(),
            size: image.config.len() as u64,
            media_type: OCI_CONFIG,
        };
        all.push(&config_upload);
        futures::future::try_join_all(
            all.iter()
                .map(|upload| self.upload(&client, &oref, &sources, upload, &tx)),
        )
        .await?;

        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": image.config.len()},
            "layers": uploads.iter().map(|u| json!({
                "mediaType": u.media_type, "digest": u.digest.to_string(), "size": u.size,
            })).collect::<Vec<_>>(),
        });
        let body = serde_json::to_vec(&manifest).map_err(Error::internal)?;
        let digest = Digest::sha256_of(&body);
        let size = body.len() as i64;
        let span = tracing::Span::current();
        span.record("image.manifest_digest", digest.to_string());
        let bytes = uploads.iter().map(|u| u.size).sum::<u64>() + image.config.len() as u64;
        span.record("image.bytes", bytes);
        self.content.write(&digest, &body)?;
        client
            .push_manifest_raw(&oref, body, OCI_MANIFEST.parse().map_err(Error::internal)?)
            .await
            .map_err(|e| registry::error(&format!("manifest for {shown}"), e))?;

        crate::metrics::moved(crate::metrics::Kind::Push, bytes);
        let labels = config_labels(&config);
        self.events.image("push", &shown, &labels, Some(&shown));

        let tag = reference.tag().unwrap_or("latest").to_string();
        let mut last = line("", format!("{tag}: digest: {digest} size: {size}"));
        last.digest = digest.to_string();
        last.size = size;
        last.tag = tag;
        send(&tx, last).await;
        Ok(())
    }

    /// Uploads one blob unless the registry has it or can mount it.
    async fn upload(
        &self,
        client: &Client,
        oref: &oci_client::Reference,
        sources: &[oci_client::Reference],
        upload: &Upload,
        tx: &Progress,
    ) -> Result<(), Error> {
        let id = upload.digest.short().to_string();
        let what = format!("blob {}", upload.digest);
        send(tx, line(&id, "Waiting".into())).await;
        let _admitted = self.limits.uploads.admit().await;
        let digest = upload.digest.to_string();
        if client
            .blob_exists(oref, &digest)
            .await
            .map_err(|e| registry::error(&what, e))?
        {
            send(tx, line(&id, "Layer already exists".into())).await;
            return Ok(());
        }
        for source in sources {
            if client.mount_blob(oref, source, &digest).await.is_ok()
                && client.blob_exists(oref, &digest).await.unwrap_or(false)
            {
                send(
                    tx,
                    line(&id, format!("Mounted from {}", source.repository())),
                )
                .await;
                return Ok(());
            }
        }
        let file = tokio::fs::File::open(self.content.path(&upload.digest)).await?;
        let total = upload.size as i64;
        let progress_tx = tx.clone();
        let progress_id = id.clone();
        let mut sent = 0i64;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_err(oci_client::errors::OciDistributionError::from)
            .inspect_ok(move |chunk| {
                sent += chunk.len() as i64;
                let mut message = line(&progress_id, "Pushing".into());
                message.current = sent;
                message.total = total;
                let _ = progress_tx.try_send(Ok(message));
            });
        client
            .push_blob_stream(oref, body, &digest, Some(upload.size))
            .await
            .map_err(|e| registry::error(&what, e))?;
        send(tx, line(&id, "Pushed".into())).await;
        Ok(())
    }
}

/// A stored blob's size and layer media type, from its first bytes.
fn blob_kind(path: &std::path::Path) -> Result<(u64, &'static str), Error> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    Ok((size, imaged_model::media_type::oci_layer_for(&magic[..n])))
}

fn line(id: &str, status: String) -> PushImageProgress {
    PushImageProgress {
        id: id.to_string(),
        status,
        ..Default::default()
    }
}

async fn send(tx: &Progress, message: PushImageProgress) {
    let _ = tx.send(Ok(message)).await;
}
