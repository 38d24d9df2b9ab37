//! Docker's PushImage: for each tag pushed, upload the config and the
//! layers as gzip (compressing, once, layers that are not) under the upload
//! limit, skipping what the registry has and mounting across repositories
//! of the same registry; then a Docker schema 2 manifest, as Docker v28
//! with its graph-driver store writes it. The pushed `name@digest` is
//! recorded on the image and the `push` event sent by imaged-metadata.

use std::sync::Arc;

use futures::TryStreamExt;
use imaged_api::internal::v1::PutImageRequest;
use imaged_api::v1::{PushImageProgress, PushImageRequest};
use imaged_common::Error;
use imaged_model::image_config::ImageConfig;
use imaged_model::media_type::{DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST};
use imaged_model::{Digest, Reference};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::archive::compress;
use crate::grpc::metadata::Metadata;
use crate::limits::Limits;
use crate::registry::{self, Registries, Retry};
use crate::store::content::ContentStore;
use crate::store::layers::LayerStore;
use crate::store::leases::Leases;

/// What a push sends its caller.
pub type Progress = mpsc::Sender<Result<PushImageProgress, tonic::Status>>;

/// Tries per blob upload, as Docker's push makes.
const UPLOAD_ATTEMPTS: u32 = 5;

/// The push engine.
pub struct Pusher {
    content: ContentStore,
    layers: Arc<LayerStore>,
    leases: Arc<Leases>,
    limits: Arc<Limits>,
    registries: Arc<Registries>,
    metadata: Metadata,
}

/// One blob to upload.
struct Upload {
    digest: Digest,
    size: u64,
    /// What progress lines call it (Docker: the layer's short diffID);
    /// `None` for the config, which Docker uploads without a line.
    shown_as: Option<String>,
}

/// A Docker image manifest v2 schema 2, fields in Docker's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Schema2 {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    size: u64,
    digest: String,
}

impl Schema2 {
    /// The bytes Docker writes: Go's `json.MarshalIndent` with three spaces.
    fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
        self.serialize(&mut serializer).map_err(Error::internal)?;
        Ok(out)
    }
}

impl Pusher {
    pub fn new(
        content: ContentStore,
        layers: Arc<LayerStore>,
        leases: Arc<Leases>,
        limits: Arc<Limits>,
        registries: Arc<Registries>,
        metadata: Metadata,
    ) -> Self {
        Pusher {
            content,
            layers,
            leases,
            limits,
            registries,
            metadata,
        }
    }

    /// Pushes the local image `request.reference` names to its registry:
    /// that tag (`latest` when none), or with `all_tags` every local tag of
    /// the repository. Its span names the reference, and per tag the
    /// manifest digest and bytes.
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
                "cannot push a digest reference".into(),
            ));
        }
        if request.all_tags && reference.tag().is_some() {
            return Err(Error::InvalidArgument(
                "tag can't be used with --all-tags/-a".into(),
            ));
        }
        // As Docker: said first, so that a missing image is an error in
        // the stream, after it.
        send(
            &tx,
            line(
                "",
                format!("The push refers to repository [{}]", reference.name()),
            ),
        )
        .await;
        let tags = self.tags_to_push(&reference, request.all_tags).await?;
        for tag in tags {
            self.push_tag(&tag, &request, &tx).await?;
        }
        Ok(())
    }

    /// The tags a push sends, as Docker picks them: the one asked for, or
    /// every tag of the repository.
    async fn tags_to_push(
        &self,
        reference: &Reference,
        all_tags: bool,
    ) -> Result<Vec<Reference>, Error> {
        let no_image = || {
            Error::NotFound(format!(
                "An image does not exist locally with the tag: {}",
                reference.familiar_name()
            ))
        };
        if !all_tags {
            let tag = reference.clone().with_default_tag();
            if self
                .metadata
                .image_config(&tag.familiar(), None)
                .await
                .is_ok()
            {
                return Ok(vec![tag]);
            }
            let (tags, digests) = self.metadata.repository_refs(reference).await?;
            return Err(if tags.is_empty() && digests.is_empty() {
                no_image()
            } else {
                Error::NotFound(format!("tag does not exist: {}", tag.familiar()))
            });
        }
        let (tags, digests) = self.metadata.repository_refs(reference).await?;
        match (tags.is_empty(), digests.is_empty()) {
            (false, _) => Ok(tags),
            (true, true) => Err(no_image()),
            (true, false) => Err(Error::NotFound(format!(
                "no tags to push for {}",
                reference.familiar_name()
            ))),
        }
    }

    /// Pushes one tag: blobs, then the manifest; records `name@digest`.
    async fn push_tag(
        &self,
        reference: &Reference,
        request: &PushImageRequest,
        tx: &Progress,
    ) -> Result<(), Error> {
        let shown = reference.familiar();
        let image = self
            .metadata
            .image_config(&shown, request.platform.clone())
            .await?;
        let config = ImageConfig::parse(&image.config)?;
        let chains = &config.chain_ids;
        // Held so that no rmi takes the layers (or a gzip made of one)
        // from under the upload.
        let _lease = self.leases.lease(chains);
        // Docker says "Preparing" for each layer from the top down, before
        // any is compressed.
        for chain in chains.iter().rev() {
            if let Some(layer) = self.layers.get(chain) {
                send(tx, line(layer.diff_id.short(), "Preparing".into())).await;
            }
        }
        let mut uploads = Vec::new();
        for chain in chains {
            uploads.push(self.layer_upload(chain, &shown).await?);
        }
        let config_digest: Digest = image.id.parse()?;
        self.content.write(&config_digest, &image.config)?;

        let auth = registry::auth(request.auth.as_ref());
        let client = self.registries.client(reference, &auth);
        let oref = registry::oci_reference(reference);
        let what = format!("push to {}", reference.name());
        // The token exchange in imaged's own bounded code (token.rs);
        // oci-client is handed the token, so it never asks a realm itself.
        let upstream = self.registries.registry(reference, &auth);
        let token = crate::registry::fetch::push_token(&upstream, &oref)
            .await
            .map_err(|e| registry::error(&what, e))?;
        let pushing_as = token.map_or_else(|| auth.clone(), RegistryAuth::Bearer);
        client
            .auth(&oref, &pushing_as, RegistryOperation::Push)
            .await
            .map_err(|e| registry::error(&what, e))?;

        // Other repositories of the same registry the image came from.
        let sources: Vec<oci_client::Reference> = image
            .repo_digests
            .iter()
            .chain(image.repo_tags.iter())
            .filter_map(|r| Reference::parse(r).ok())
            .filter(|r| r.domain() == reference.domain() && r.path() != reference.path())
            .map(|r| registry::oci_reference(&r))
            .collect();

        let config_upload = Upload {
            digest: config_digest.clone(),
            size: image.config.len() as u64,
            shown_as: None,
        };
        futures::future::try_join_all(
            uploads
                .iter()
                .chain(std::iter::once(&config_upload))
                .map(|upload| self.upload(&client, reference, &sources, upload, tx)),
        )
        .await?;

        let manifest = Schema2 {
            schema_version: 2,
            media_type: DOCKER_MANIFEST,
            config: Descriptor {
                media_type: DOCKER_CONFIG,
                size: config_upload.size,
                digest: config_digest.to_string(),
            },
            layers: uploads
                .iter()
                .map(|u| Descriptor {
                    media_type: DOCKER_LAYER_GZIP,
                    size: u.size,
                    digest: u.digest.to_string(),
                })
                .collect(),
        };
        let body = manifest.to_bytes()?;
        let digest = Digest::sha256_of(&body);
        let size = body.len() as i64;
        let span = tracing::Span::current();
        span.record("image.manifest_digest", digest.to_string());
        let bytes = uploads.iter().map(|u| u.size).sum::<u64>() + config_upload.size;
        span.record("image.bytes", bytes);
        self.content.write(&digest, &body)?;
        self.content
            .own(&config_digest, &[config_digest.clone(), digest.clone()])?;
        client
            .push_manifest_raw(
                &oref,
                body,
                DOCKER_MANIFEST.parse().map_err(Error::internal)?,
            )
            .await
            .map_err(|e| registry::error(&format!("manifest for {shown}"), e))?;
        crate::metrics::moved(crate::metrics::Kind::Push, bytes);

        // As Docker: the image gains `name@digest`; metadata sends `push`.
        self.metadata
            .put_image(PutImageRequest {
                config: image.config.clone(),
                digests: vec![format!("{}@{digest}", reference.name())],
                action: "push".into(),
                event_ref: shown.clone(),
                ..Default::default()
            })
            .await?;

        let tag = reference.tag().unwrap_or("latest").to_string();
        let mut last = line("", format!("{tag}: digest: {digest} size: {size}"));
        last.digest = digest.to_string();
        last.size = size;
        last.tag = tag;
        send(tx, last).await;
        Ok(())
    }

    /// The gzip blob to push for the stored layer `chain`: the blob it came
    /// from when that is gzip, else the one an earlier push made, else a
    /// new one made now and remembered.
    async fn layer_upload(&self, chain: &Digest, shown: &str) -> Result<Upload, Error> {
        let layer = self.layers.get(chain).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "layer {chain} of {shown} is not in the layer store"
            ))
        })?;
        let blob = layer.blob.clone().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "layer {} of {shown} has no stored blob to push",
                layer.diff_id
            ))
        })?;
        let content = self.content.clone();
        let made = layer.gzip.clone();
        let layers = Arc::clone(&self.layers);
        let chain = chain.clone();
        let (digest, size) =
            tokio::task::spawn_blocking(move || -> Result<(Digest, u64), Error> {
                let digest = if compress::is_gzip(&content, &blob)? {
                    blob
                } else if let Some(made) = made.filter(|d| content.contains(d)) {
                    made
                } else {
                    let (gzip, _) = compress::gzip_into_store(&content, &blob)?;
                    layers.set_gzip(&chain, gzip.clone())?;
                    gzip
                };
                let size = std::fs::metadata(content.path(&digest))?.len();
                Ok((digest, size))
            })
            .await
            .map_err(Error::internal)??;
        Ok(Upload {
            digest,
            size,
            shown_as: Some(layer.diff_id.short().to_string()),
        })
    }

    /// Uploads one blob unless the registry has it or can mount it; a
    /// transport failure is tried again ([`Retry`]), saying so.
    async fn upload(
        &self,
        client: &Client,
        target: &Reference,
        image_sources: &[oci_client::Reference],
        upload: &Upload,
        tx: &Progress,
    ) -> Result<(), Error> {
        let oref = &registry::oci_reference(target);
        let sources = &self.mount_sources(target, &upload.digest, image_sources);
        let say = |status: String| async {
            if let Some(id) = &upload.shown_as {
                send(tx, line(id, status)).await;
            }
        };
        // "Waiting" only when the upload limit holds this one back, as
        // Docker says it.
        let _admitted = self
            .limits
            .uploads
            .admit_or(|| {
                if let Some(id) = &upload.shown_as {
                    let _ = tx.try_send(Ok(line(id, "Waiting".into())));
                }
            })
            .await;
        let retry = Retry {
            attempts: UPLOAD_ATTEMPTS,
        };
        let mut attempt = 1;
        loop {
            match self.upload_once(client, oref, sources, upload, tx).await {
                Ok(status) => {
                    if upload.shown_as.is_some() {
                        // As Docker's distribution metadata: the next push
                        // to this registry can mount it from here.
                        self.content
                            .known_at()
                            .mark(&upload.digest, &target.name())?;
                    }
                    say(status).await;
                    return Ok(());
                }
                Err(err) => match retry.after(attempt, &err) {
                    Some(wait) => {
                        tracing::warn!(blob = %upload.digest, attempt, "upload failed, retrying: {err}");
                        say(format!("Retrying in {} seconds", wait.as_secs())).await;
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => return Err(err),
                },
            }
        }
    }

    /// Where `blob` may be mounted from in `target`'s registry: the other
    /// repositories there it was last pushed to or pulled from (Docker's
    /// distribution metadata, newest first, three at most, as Docker
    /// tries), then those the image itself is known under.
    fn mount_sources(
        &self,
        target: &Reference,
        blob: &Digest,
        image_sources: &[oci_client::Reference],
    ) -> Vec<oci_client::Reference> {
        let known = self.content.known_at().repositories(blob);
        let mut sources: Vec<oci_client::Reference> = known
            .iter()
            .rev()
            .filter_map(|name| Reference::parse(name).ok())
            .filter(|r| r.domain() == target.domain() && r.path() != target.path())
            .take(3)
            .map(|r| registry::oci_reference(&r))
            .collect();
        for source in image_sources {
            if !sources
                .iter()
                .any(|s| s.repository() == source.repository())
            {
                sources.push(source.clone());
            }
        }
        sources
    }

    /// One try of [`Pusher::upload`]; answers the line that ends it.
    async fn upload_once(
        &self,
        client: &Client,
        oref: &oci_client::Reference,
        sources: &[oci_client::Reference],
        upload: &Upload,
        tx: &Progress,
    ) -> Result<String, Error> {
        let what = format!("blob {}", upload.digest);
        let digest = upload.digest.to_string();
        if client
            .blob_exists(oref, &digest)
            .await
            .map_err(|e| registry::error(&what, e))?
        {
            return Ok("Layer already exists".into());
        }
        for source in sources {
            if client.mount_blob(oref, source, &digest).await.is_ok()
                && client.blob_exists(oref, &digest).await.unwrap_or(false)
            {
                return Ok(format!("Mounted from {}", source.repository()));
            }
        }
        let file = tokio::fs::File::open(self.content.path(&upload.digest)).await?;
        let total = upload.size as i64;
        let progress = upload.shown_as.clone().map(|id| (tx.clone(), id));
        let mut sent = 0i64;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_err(oci_client::errors::OciDistributionError::from)
            .inspect_ok(move |chunk| {
                sent += chunk.len() as i64;
                if let Some((tx, id)) = &progress {
                    let mut message = line(id, "Pushing".into());
                    message.current = sent;
                    message.total = total;
                    let _ = tx.try_send(Ok(message));
                }
            });
        client
            .push_blob_stream(oref, body, &digest, Some(upload.size))
            .await
            .map_err(|e| registry::error(&what, e))?;
        Ok("Pushed".into())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_is_written_as_docker_writes_it() {
        let manifest = Schema2 {
            schema_version: 2,
            media_type: DOCKER_MANIFEST,
            config: Descriptor {
                media_type: DOCKER_CONFIG,
                size: 7,
                digest: "sha256:c".into(),
            },
            layers: vec![Descriptor {
                media_type: DOCKER_LAYER_GZIP,
                size: 3,
                digest: "sha256:l".into(),
            }],
        };
        // Go's json.MarshalIndent(m, "", "   ") of distribution's schema2.
        let expected = "{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n   \"config\": {\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": 7,\n      \"digest\": \"sha256:c\"\n   },\n   \"layers\": [\n      {\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": 3,\n         \"digest\": \"sha256:l\"\n      }\n   ]\n}";
        assert_eq!(
            String::from_utf8(manifest.to_bytes().unwrap()).unwrap(),
            expected
        );
    }
}
