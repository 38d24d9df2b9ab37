//! Docker's PushImage: for each tag pushed, upload the config and the
//! layers as gzip (compressing, once, layers that are not) under the upload
//! limit, skipping what the registry has and mounting across repositories
//! of the same registry; then a Docker schema 2 manifest, as Docker v28
//! with its graph-driver store writes it. The pushed `name@digest` is
//! recorded on the image and the `push` event sent by imaged-metadata.

use std::sync::Arc;

use crate::neighbours::recorder::Record;
use imaged_common::Error;
use imaged_model::image_config::ImageConfig;
use imaged_model::media_type::{DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST};
use imaged_model::{Digest, Platform, Reference};
use oci_client::secrets::RegistryAuth;
use serde::Serialize;

use crate::archive::compress;
use crate::limits::Limits;
use crate::neighbours::Recorder;
use crate::neighbours::destination::Destination;
use crate::registry;
use crate::store::content::ContentStore;
use crate::store::layers::LayerStore;
use crate::store::leases::Leases;

pub mod events;
mod upload;

use events::{Progress, PushEvent, Step, say};

/// What to push, as the caller asked for it.
#[derive(Clone, Debug)]
pub struct PushOrder {
    /// The local reference to push (`latest` when it names no tag).
    pub reference: String,
    /// Every local tag of the repository (`docker push --all-tags`).
    pub all_tags: bool,
    /// Which platform's image, for a multi-platform one.
    pub platform: Option<Platform>,
    /// The credentials for the registry.
    pub auth: RegistryAuth,
}

/// The push engine.
pub struct Pusher {
    content: ContentStore,
    layers: Arc<LayerStore>,
    leases: Arc<Leases>,
    limits: Arc<Limits>,
    registry: Arc<dyn Destination>,
    metadata: Arc<dyn Recorder>,
}

/// One blob to upload.
struct Upload {
    digest: Digest,
    size: u64,
    /// The layer's diffID, which progress names it by; `None` for the
    /// config, which Docker uploads without a line.
    layer: Option<Digest>,
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
        registry: Arc<dyn Destination>,
        metadata: Arc<dyn Recorder>,
    ) -> Self {
        Pusher {
            content,
            layers,
            leases,
            limits,
            registry,
            metadata,
        }
    }

    /// Pushes the local image `order.reference` names to its registry:
    /// that tag (`latest` when none), or with `all_tags` every local tag of
    /// the repository. Its span names the reference, and per tag the
    /// manifest digest and bytes.
    #[tracing::instrument(
        name = "push",
        skip_all,
        fields(
            image.reference = %order.reference,
            image.manifest_digest = tracing::field::Empty,
            image.bytes = tracing::field::Empty,
        )
    )]
    pub async fn push(self: &Arc<Self>, order: PushOrder, tx: Progress) -> Result<(), Error> {
        let reference = Reference::parse(&order.reference)?;
        if reference.digest().is_some() {
            return Err(Error::invalid_argument("cannot push a digest reference"));
        }
        if order.all_tags && reference.tag().is_some() {
            return Err(Error::invalid_argument(
                "tag can't be used with --all-tags/-a",
            ));
        }
        // As Docker: said first, so that a missing image is an error in
        // the stream, after it.
        say(
            &tx,
            PushEvent::Started {
                repository: reference.name(),
            },
        )
        .await;
        let tags = self.tags_to_push(&reference, order.all_tags).await?;
        for tag in tags {
            self.push_tag(&tag, &order, &tx).await?;
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
            Error::not_found(format!(
                "An image does not exist locally with the tag: {}",
                reference.familiar_name()
            ))
        };
        if !all_tags {
            let tag = reference.clone().with_default_tag();
            if self.metadata.image(&tag.familiar(), None).await.is_ok() {
                return Ok(vec![tag]);
            }
            let (tags, digests) = self.metadata.repository_refs(reference).await?;
            return Err(if tags.is_empty() && digests.is_empty() {
                no_image()
            } else {
                Error::not_found(format!("tag does not exist: {}", tag.familiar()))
            });
        }
        let (tags, digests) = self.metadata.repository_refs(reference).await?;
        match (tags.is_empty(), digests.is_empty()) {
            (false, _) => Ok(tags),
            (true, true) => Err(no_image()),
            (true, false) => Err(Error::not_found(format!(
                "no tags to push for {}",
                reference.familiar_name()
            ))),
        }
    }

    /// Pushes one tag: blobs, then the manifest; records `name@digest`.
    async fn push_tag(
        &self,
        reference: &Reference,
        order: &PushOrder,
        tx: &Progress,
    ) -> Result<(), Error> {
        let shown = reference.familiar();
        let image = self.metadata.image(&shown, order.platform.as_ref()).await?;
        let config = ImageConfig::parse(&image.config)?;
        let chains = &config.chain_ids;
        // Held so that no rmi takes the layers (or a gzip made of one)
        // from under the upload.
        let _lease = self.leases.lease(chains);
        // Docker says "Preparing" for each layer from the top down, before
        // any is compressed.
        for chain in chains.iter().rev() {
            if let Some(layer) = self.layers.get(chain) {
                say(tx, PushEvent::layer(&layer.diff_id, Step::Preparing)).await;
            }
        }
        let mut uploads = Vec::new();
        for chain in chains {
            uploads.push(self.layer_upload(chain, &shown).await?);
        }
        let config_digest: Digest = image.id.parse()?;
        self.content.write(&config_digest, &image.config)?;

        let what = format!("push to {}", reference.name());
        let session = self
            .registry
            .open(reference, &order.auth)
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
            layer: None,
        };
        futures::future::try_join_all(
            uploads
                .iter()
                .chain(std::iter::once(&config_upload))
                .map(|upload| self.upload(&*session, reference, &sources, upload, tx)),
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
        self.content.hold(
            &config_digest,
            &[config_digest.clone(), digest.clone()],
            None,
        )?;
        session
            .push_manifest(body, DOCKER_MANIFEST)
            .await
            .map_err(|e| registry::error(&format!("manifest for {shown}"), e))?;
        crate::metrics::moved(crate::metrics::Kind::Push, bytes);

        // As Docker: the image gains `name@digest`; metadata sends `push`.
        self.metadata
            .record(Record {
                config: image.config.clone(),
                digests: vec![format!("{}@{digest}", reference.name())],
                action: "push".into(),
                event_ref: shown.clone(),
                ..Default::default()
            })
            .await?;

        say(
            tx,
            PushEvent::Pushed {
                tag: reference.tag().unwrap_or("latest").to_string(),
                digest,
                size,
            },
        )
        .await;
        Ok(())
    }

    /// The gzip blob to push for the stored layer `chain`: the blob it came
    /// from when that is gzip, else the one an earlier push made, else a
    /// new one made now and remembered.
    async fn layer_upload(&self, chain: &Digest, shown: &str) -> Result<Upload, Error> {
        let layer = self.layers.get(chain).ok_or_else(|| {
            Error::failed_precondition(format!(
                "layer {chain} of {shown} is not in the layer store"
            ))
        })?;
        let blob = layer.blob.clone().ok_or_else(|| {
            Error::failed_precondition(format!(
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
            layer: Some(layer.diff_id.clone()),
        })
    }
}

#[cfg(test)]
mod tests;
