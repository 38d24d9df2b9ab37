//! The imaged.v1.Layers operations: container layers made on an image's
//! layers, with the container recorded in imaged-metadata (so `rmi` sees
//! it as a user of the image) and the image's layers kept meanwhile.

pub(crate) mod records;

use std::sync::Arc;

use imaged_api::v1::{
    Change, ChangesResponse, CreateLayerRequest, CreateLayerResponse, GetLayerResponse,
    LayerSizeResponse, Mount, MountImageRequest, MountImageResponse, change,
};
use imaged_common::Error;
use imaged_model::Digest;
use imaged_model::digest::chain_id;
use serde_json::Value;

use crate::containers::records::{Container, Containers};
use crate::neighbours::Recorder;
use crate::neighbours::recorder::config_diff_ids;
use crate::storage::{self, ChangeKind};
use crate::store::layers::LayerStore;
use crate::store::leases::{Leases, mount_hold};

/// Container layers and image mounts.
pub struct RwLayers {
    pub containers: Arc<Containers>,
    layers: Arc<LayerStore>,
    leases: Arc<Leases>,
    metadata: Arc<dyn Recorder>,
}

impl RwLayers {
    pub fn new(
        containers: Arc<Containers>,
        layers: Arc<LayerStore>,
        leases: Arc<Leases>,
        metadata: Arc<dyn Recorder>,
    ) -> Self {
        RwLayers {
            containers,
            layers,
            leases,
            metadata,
        }
    }

    /// The image's ID and top chain (`None` for an image without layers).
    async fn image_chain(
        &self,
        image: &str,
        platform: Option<&imaged_model::Platform>,
    ) -> Result<(String, Option<Digest>), Error> {
        let answer = self.metadata.image(image, platform).await?;
        let config: Value = serde_json::from_slice(&answer.config).map_err(Error::internal)?;
        let diff_ids = config_diff_ids(&config)?;
        Ok((answer.id, chain_id(&diff_ids)))
    }

    pub async fn create(&self, request: CreateLayerRequest) -> Result<CreateLayerResponse, Error> {
        let (image_id, chain) = match request.image.as_str() {
            "" => (String::new(), None),
            image => self.image_chain(image, None).await?,
        };
        if let Some(chain) = &chain
            && self.layers.get(chain).is_none()
        {
            return Err(Error::FailedPrecondition(format!(
                "the layers of {} are not in the layer store; pull it again",
                request.image
            )));
        }
        if !image_id.is_empty() {
            self.record(&request.container_id, &image_id).await?;
        }
        let containers = Arc::clone(&self.containers);
        let (container_id, mount_label) =
            (request.container_id.clone(), request.mount_label.clone());
        let created = tokio::task::spawn_blocking(move || {
            containers.create(&container_id, &image_id, chain, &mount_label)
        })
        .await
        .map_err(Error::internal)?;
        let record = match created {
            Ok(record) => record,
            Err(err) => {
                if !matches!(err, Error::AlreadyExists(_)) {
                    self.forget(&request.container_id).await;
                }
                return Err(err);
            }
        };
        let (mounts, folders) = self.containers.mounts(&record)?;
        Ok(CreateLayerResponse {
            mount_id: record.mount_id,
            mounts: wire_mounts(mounts),
            folders,
        })
    }

    pub fn get(&self, container_id: &str) -> Result<GetLayerResponse, Error> {
        let record = self.containers.get(container_id)?;
        let (mounts, folders) = self.containers.mounts(&record)?;
        Ok(GetLayerResponse {
            mount_id: record.mount_id,
            mounts: wire_mounts(mounts),
            folders,
            image_id: record.image_id,
        })
    }

    pub async fn release(&self, container_id: &str) -> Result<(), Error> {
        let containers = Arc::clone(&self.containers);
        let id = container_id.to_string();
        let released: Option<Container> =
            tokio::task::spawn_blocking(move || containers.release(&id))
                .await
                .map_err(Error::internal)??;
        if released.is_some_and(|r| !r.image_id.is_empty()) {
            self.forget(container_id).await;
        }
        Ok(())
    }

    pub async fn changes(&self, container_id: &str) -> Result<ChangesResponse, Error> {
        let record = self.containers.get(container_id)?;
        let containers = Arc::clone(&self.containers);
        let changes = tokio::task::spawn_blocking(move || containers.changes(&record))
            .await
            .map_err(Error::internal)??;
        let changes = changes
            .into_iter()
            .map(|(path, kind)| Change {
                path,
                kind: match kind {
                    ChangeKind::Modify => change::Kind::Modify,
                    ChangeKind::Add => change::Kind::Add,
                    ChangeKind::Delete => change::Kind::Delete,
                } as i32,
            })
            .collect();
        Ok(ChangesResponse { changes })
    }

    pub async fn size(&self, container_id: &str) -> Result<LayerSizeResponse, Error> {
        let record = self.containers.get(container_id)?;
        let image_size: u64 = {
            let mut size = 0;
            let mut next = record.chain_id.clone();
            while let Some(chain) = next {
                let Some(layer) = self.layers.get(&chain) else {
                    break;
                };
                size += layer.size;
                next = layer.parent.clone();
            }
            size
        };
        let containers = Arc::clone(&self.containers);
        let rw = tokio::task::spawn_blocking(move || containers.rw_size(&record))
            .await
            .map_err(Error::internal)??;
        Ok(LayerSizeResponse {
            rw_size: rw as i64,
            virtual_size: (rw + image_size) as i64,
        })
    }

    pub async fn mount_image(
        &self,
        request: MountImageRequest,
    ) -> Result<MountImageResponse, Error> {
        let (image_id, chain) = self
            .image_chain(
                &request.image,
                request
                    .platform
                    .map(|p| imaged_model::Platform::new(&p.os, &p.architecture, &p.variant))
                    .as_ref(),
            )
            .await?;
        let chain = chain.ok_or_else(|| {
            Error::InvalidArgument(format!("image {} has no layers to mount", request.image))
        })?;
        let mount = storage::read_only_view(&self.layers.diff_dirs(&chain)?);
        let lease_id = format!("{:032x}", rand::random::<u128>());
        self.leases.hold(mount_hold(&lease_id), chain);
        Ok(MountImageResponse {
            lease_id,
            mounts: wire_mounts(vec![mount]),
            image_id,
        })
    }

    /// Ends a MountImage lease; an unknown one is not an error.
    pub fn release_image(&self, lease_id: &str) {
        self.leases.release(&mount_hold(lease_id));
    }

    /// Records the container against its image in imaged-metadata.
    async fn record(&self, container_id: &str, image_id: &str) -> Result<(), Error> {
        self.metadata
            .set_container(container_id, image_id, false)
            .await
    }

    /// Records whether the container runs, for metadata's delete
    /// conflicts; a container from scratch uses no image.
    pub async fn set_state(&self, container_id: &str, running: bool) -> Result<(), Error> {
        let record = self.containers.get(container_id)?;
        if record.image_id.is_empty() {
            return Ok(());
        }
        self.metadata
            .set_container(container_id, &record.image_id, running)
            .await
    }

    /// Forgets the container in imaged-metadata (best effort: a record left
    /// behind only blocks a non-forced rmi).
    async fn forget(&self, container_id: &str) {
        if let Err(err) = self.metadata.remove_container(container_id).await {
            tracing::warn!(
                container = container_id,
                "cannot forget the container in imaged-metadata: {err}"
            );
        }
    }
}

/// The storage driver's mounts as the wire carries them.
fn wire_mounts(mounts: Vec<storage::Mount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            options: m.options,
        })
        .collect()
}
