//! The images imaged pulls, registered in containerd, so that kubelet can
//! run with `--image-service-endpoint` at imaged and containerd as its
//! runtime: containerd (and its CRI plugin) must know every image kubelet
//! asks it to run.
//!
//! For each image this writes, as containerd's own unpacking pull would:
//! - the snapshot records of its layers, in the namespace, through
//!   containerd's snapshot service with imaged as the snapshotter (each
//!   Prepare names the layer by `containerd.io/snapshot.ref`, imaged's
//!   proxy snapshotter has it and answers ALREADY_EXISTS, so nothing is
//!   copied);
//! - the index, manifest and config into containerd's content store, with
//!   the `containerd.io/gc.ref.*` labels that make its garbage collector
//!   keep the config, the layers' snapshot and the manifest through the
//!   image;
//! - an image record per name (each tag, each digest reference and the
//!   image ID, as the CRI plugin names what it pulls).
//!
//! All of it under a containerd lease until the records exist. A pull
//! registers its image before it answers. Everything else follows imaged's
//! events ([`Containerd::follow`]) and, at start-up, every stored image:
//! [`Containerd::sync`] makes containerd's names of an image those imaged
//! has, deleting the names imaged no longer has and registering an image
//! that came without a registry manifest (load, import, commit) under an
//! OCI manifest made from its config and layers.

pub(crate) mod snapshots;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imaged_api::containerd::services::content::v1 as content;
use imaged_api::containerd::services::images::v1 as images;
use imaged_api::containerd::services::leases::v1 as leases;
use imaged_api::containerd::services::snapshots::v1 as snapshots_api;
use imaged_api::containerd::types::Descriptor;
use imaged_api::v1::SubscribeRequest;
use imaged_common::Error;
use imaged_common::clients::EventLogClient;
use imaged_common::peer::Peer;
use imaged_model::image_config::ImageConfig;
use imaged_model::{Digest, Reference};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::config::ContainerdArgs;
use crate::containerd::snapshots::REF_LABEL;
use crate::neighbours::Recorder;
use crate::neighbours::recorder::StoredImage;
use crate::registry::manifest::{uncompressed_layer, uncompressed_manifest};
use crate::store::layers::LayerStore;

/// The label naming the imaged image a containerd image record mirrors.
pub const IMAGE_LABEL: &str = "io.imaged.image";

/// The label containerd's CRI plugin puts on the images it manages.
const CRI_LABEL: &str = "io.cri-containerd.image";

/// How long a registration's lease lasts at most if imaged dies midway.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

pub use crate::neighbours::registrar::{Blob, Image};

/// A containerd to register images in.
#[derive(Clone)]
pub struct Containerd {
    address: PathBuf,
    channel: Channel,
    namespace: String,
    snapshotter: String,
    /// Where the sizes of layers come from for a made manifest.
    layers: Arc<LayerStore>,
}

impl Containerd {
    /// The containerd `args` name, if any (connected on first use).
    pub fn new(args: &ContainerdArgs, layers: Arc<LayerStore>) -> Option<Self> {
        let address = args.containerd_address.clone()?;
        let channel = tonic::transport::Endpoint::from_static("http://containerd")
            .connect_with_connector_lazy(imaged_common::endpoint::unix_connector(address.clone()));
        Some(Containerd {
            address,
            channel,
            namespace: args.containerd_namespace.clone(),
            snapshotter: args.containerd_snapshotter.clone(),
            layers,
        })
    }

    /// Registers `image` in containerd (see the module doc).
    pub(crate) async fn register_image(&self, image: &Image) -> Result<(), Error> {
        let top = image
            .blobs
            .first()
            .ok_or_else(|| Error::internal("an image to register has no manifest"))?;
        let lease = self.lease().await?;
        let result = self.register_leased(image, top, &lease).await;
        let mut client = leases::leases_client::LeasesClient::new(self.channel.clone());
        if let Err(status) = client
            .delete(self.request(
                leases::DeleteRequest {
                    id: lease,
                    sync: false,
                },
                None,
            ))
            .await
        {
            tracing::warn!("cannot end the containerd lease: {}", status.message());
        }
        result
    }

    async fn register_leased(&self, image: &Image, top: &Blob, lease: &str) -> Result<(), Error> {
        self.snapshots(&image.chains, lease).await?;
        let (target_type, labels) = describe(image, &self.snapshotter);
        for (blob, labels) in image.blobs.iter().zip(labels) {
            self.write(blob, labels, lease).await?;
        }
        let target = Descriptor {
            media_type: target_type,
            digest: top.digest.to_string(),
            size: top.bytes.len() as i64,
            annotations: HashMap::new(),
        };
        let mut names = image.names.clone();
        names.push(image.id.to_string());
        for name in names {
            self.image_record(&name, &image.id, &target).await?;
        }
        Ok(())
    }

    /// Creates (or points at `target`) the image record `name`.
    async fn image_record(
        &self,
        name: &str,
        id: &Digest,
        target: &Descriptor,
    ) -> Result<(), Error> {
        let record = images::Image {
            name: name.to_string(),
            labels: HashMap::from([
                (CRI_LABEL.to_string(), "managed".to_string()),
                (IMAGE_LABEL.to_string(), id.to_string()),
            ]),
            target: Some(target.clone()),
            created_at: None,
            updated_at: None,
        };
        let mut client = images::images_client::ImagesClient::new(self.channel.clone());
        let created = client
            .create(self.request(
                images::CreateImageRequest {
                    image: Some(record.clone()),
                },
                None,
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                client
                    .update(self.request(
                        images::UpdateImageRequest {
                            image: Some(record),
                            update_mask: None,
                        },
                        None,
                    ))
                    .await
                    .map_err(|s| self.error("update image", name, s))?;
                Ok(())
            }
            Err(status) => Err(self.error("create image", name, status)),
        }
    }

    /// Makes containerd's snapshot records of `chains` (bottom first) in
    /// the namespace, each answered by imaged's proxy snapshotter. Each
    /// layer is added to the registration's lease first, so that
    /// containerd's garbage collector cannot take it before the config that
    /// references it is written: containerd (1.6) answers ALREADY_EXISTS
    /// for a layer it has without leasing it, and one it has may be one
    /// that a removed image left for its next collection.
    async fn snapshots(&self, chains: &[Digest], lease: &str) -> Result<(), Error> {
        let mut client =
            snapshots_api::snapshots_client::SnapshotsClient::new(self.channel.clone());
        let mut lease_client = leases::leases_client::LeasesClient::new(self.channel.clone());
        let mut parent = String::new();
        for chain in chains {
            let name = chain.to_string();
            lease_client
                .add_resource(self.request(
                    leases::AddResourceRequest {
                        id: lease.to_string(),
                        resource: Some(leases::Resource {
                            id: name.clone(),
                            r#type: format!("snapshots/{}", self.snapshotter),
                        }),
                    },
                    None,
                ))
                .await
                .map_err(|s| self.error("lease snapshot", &name, s))?;
            let key = format!("imaged-register-{:016x} {name}", rand::random::<u64>());
            let prepared = client
                .prepare(self.request(
                    snapshots_api::PrepareSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: HashMap::from([(REF_LABEL.to_string(), name.clone())]),
                    },
                    Some(lease),
                ))
                .await;
            match prepared {
                Err(status) if status.code() == Code::AlreadyExists => {}
                Err(status) => return Err(self.error("prepare snapshot", &name, status)),
                Ok(_) => {
                    // The snapshotter did not know the layer: not ours.
                    let _ = client
                        .remove(self.request(
                            snapshots_api::RemoveSnapshotRequest {
                                snapshotter: self.snapshotter.clone(),
                                key,
                            },
                            None,
                        ))
                        .await;
                    return Err(Error::failed_precondition(format!(
                        "containerd at {}: snapshotter {:?} does not have layer {name}; is it imaged's?",
                        self.address.display(),
                        self.snapshotter
                    )));
                }
            }
            parent = name;
        }
        Ok(())
    }

    /// Puts `blob` in containerd's content store with `labels`, or sets
    /// the labels on the blob already there.
    async fn write(
        &self,
        blob: &Blob,
        labels: BTreeMap<String, String>,
        lease: &str,
    ) -> Result<(), Error> {
        const CHUNK: usize = 1 << 20;
        let digest = blob.digest.to_string();
        let total = blob.bytes.len();
        let mut messages = Vec::new();
        let mut offset = 0;
        loop {
            let end = (offset + CHUNK).min(total);
            let last = end == total;
            messages.push(content::WriteContentRequest {
                action: if last {
                    content::WriteAction::Commit
                } else {
                    content::WriteAction::Write
                } as i32,
                r#ref: format!("imaged-{digest}"),
                total: total as i64,
                expected: digest.clone(),
                offset: offset as i64,
                data: blob.bytes.slice(offset..end).to_vec(),
                labels: if last {
                    labels.clone().into_iter().collect()
                } else {
                    HashMap::new()
                },
            });
            if last {
                break;
            }
            offset = end;
        }
        let mut client = content::content_client::ContentClient::new(self.channel.clone());
        let written = async {
            let mut responses = client
                .write(self.request(tokio_stream::iter(messages), Some(lease)))
                .await?
                .into_inner();
            while responses.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        }
        .await;
        match written {
            Ok(()) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
                client
                    .update(self.request(
                        content::UpdateRequest {
                            info: Some(content::Info {
                                digest: digest.clone(),
                                labels: labels.into_iter().collect(),
                                ..Default::default()
                            }),
                            update_mask: Some(prost_types::FieldMask { paths }),
                        },
                        None,
                    ))
                    .await
                    .map_err(|s| self.error("label content", &digest, s))?;
                Ok(())
            }
            Err(status) => Err(self.error("write content", &digest, status)),
        }
    }

    /// A lease that keeps what a registration writes until it is done (it
    /// expires by itself should imaged stop midway).
    async fn lease(&self) -> Result<String, Error> {
        let expiry = chrono::Utc::now() + LEASE_EXPIRY;
        let mut client = leases::leases_client::LeasesClient::new(self.channel.clone());
        let lease = client
            .create(self.request(
                leases::CreateRequest {
                    id: String::new(),
                    labels: HashMap::from([(
                        "containerd.io/gc.expire".to_string(),
                        expiry.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    )]),
                },
                None,
            ))
            .await
            .map_err(|s| self.error("create lease", "", s))?
            .into_inner()
            .lease
            .ok_or_else(|| Error::internal("containerd answered no lease"))?;
        Ok(lease.id)
    }

    /// A request in the namespace (and `lease`).
    fn request<T>(&self, message: T, lease: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = self.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", value);
        }
        if let Some(value) = lease.and_then(|l| l.parse().ok()) {
            request.metadata_mut().insert("containerd-lease", value);
        }
        request
    }

    fn error(&self, what: &str, name: &str, status: tonic::Status) -> Error {
        let message = format!(
            "containerd at {}: {what} {name}: {}",
            self.address.display(),
            status.message()
        );
        match status.code() {
            Code::Unavailable | Code::Unknown => Error::unavailable(message),
            _ => Error::from(tonic::Status::new(status.code(), message)),
        }
    }
}

/// Reads each of `image.blobs` (index, manifest, config) once: the media
/// type of the first (the image's target) and the GC labels of each, which
/// reference what it needs (the config: the top layer's snapshot).
fn describe(image: &Image, snapshotter: &str) -> (String, Vec<BTreeMap<String, String>>) {
    let mut target_type = String::new();
    let mut out = Vec::new();
    let count = image.blobs.len();
    for (i, blob) in image.blobs.iter().enumerate() {
        let mut labels = BTreeMap::new();
        if i + 1 == count {
            // The config: not read, only pointed at the snapshot.
            if let Some(top) = image.chains.last() {
                labels.insert(
                    format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                    top.to_string(),
                );
            }
            out.push(labels);
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&blob.bytes).unwrap_or_default();
        if i == 0 {
            target_type = media_type(&value);
        }
        if let Some(manifests) = value["manifests"].as_array() {
            for (n, m) in manifests.iter().enumerate() {
                if let Some(d) = m["digest"].as_str() {
                    labels.insert(format!("containerd.io/gc.ref.content.m.{n}"), d.to_string());
                }
            }
        } else {
            if let Some(d) = value["config"]["digest"].as_str() {
                labels.insert("containerd.io/gc.ref.content.config".into(), d.to_string());
            }
            for (n, l) in value["layers"].as_array().into_iter().flatten().enumerate() {
                if let Some(d) = l["digest"].as_str() {
                    labels.insert(format!("containerd.io/gc.ref.content.l.{n}"), d.to_string());
                }
            }
        }
        out.push(labels);
    }
    (target_type, out)
}

/// A manifest's or index's media type, from its `mediaType` or its shape.
fn media_type(value: &serde_json::Value) -> String {
    match value["mediaType"].as_str() {
        Some(media) => media.to_string(),
        None if value.get("manifests").is_some() => imaged_model::media_type::OCI_INDEX.to_string(),
        None => imaged_model::media_type::OCI_MANIFEST.to_string(),
    }
}

mod follow;
#[cfg(test)]
mod tests;

#[tonic::async_trait]
impl crate::neighbours::Registrar for Containerd {
    async fn register(&self, image: &Image) -> Result<(), Error> {
        self.register_image(image).await
    }
}
