//! The imaged.v1.Layers operations: container layers made on an image's
//! layers, with the container recorded in imaged-metadata (so `rmi` sees
//! it as a user of the image) and the image's layers kept meanwhile.

pub(crate) mod records;

use std::sync::Arc;

use imaged_common::Error;
use imaged_model::Digest;
use imaged_model::digest::chain_id;
use serde_json::Value;

use crate::containers::records::{Container, Containers};
use crate::neighbours::Recorder;
use crate::neighbours::recorder::config_diff_ids;
use crate::storage::{self, Changes, Mount};
use crate::store::layers::LayerStore;
use crate::store::leases::{Leases, mount_hold};

/// A container layer to make.
#[derive(Clone, Debug, Default)]
pub struct NewLayer {
    pub container_id: String,
    /// Name or ID of the image; empty for a layer from scratch.
    pub image: String,
    /// SELinux mount label, added as the `context=` mount option.
    pub mount_label: String,
}

/// A container layer and how to mount it.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The layer's own ID (Docker's mount ID).
    pub mount_id: String,
    pub mounts: Vec<Mount>,
    /// The layer's directories, image layers first, the container's last.
    pub folders: Vec<String>,
    /// The image the layer was made from; empty for scratch.
    pub image_id: String,
}

/// What a container layer takes on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerSize {
    /// The container's own files.
    pub rw: u64,
    /// The container's own files and its image's layers.
    pub virtual_size: u64,
}

/// A read-only view of an image's files, held until released.
#[derive(Clone, Debug)]
pub struct ImageMount {
    pub lease_id: String,
    pub mount: Mount,
    pub image_id: String,
}

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

    /// Makes a container layer on `request.image`'s layers and records the
    /// container in imaged-metadata. `FailedPrecondition` when the image's
    /// layers are missing, `AlreadyExists` for a known container.
    pub async fn create(&self, request: NewLayer) -> Result<Layer, Error> {
        let (image_id, chain) = match request.image.as_str() {
            "" => (String::new(), None),
            image => self.image_chain(image, None).await?,
        };
        if let Some(chain) = &chain
            && self.layers.get(chain).is_none()
        {
            return Err(Error::failed_precondition(format!(
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
                if !err.is(tonic::Code::AlreadyExists) {
                    self.forget(&request.container_id).await;
                }
                return Err(err);
            }
        };
        self.layer(record)
    }

    /// The container's layer; `NotFound` for an unknown container.
    pub fn get(&self, container_id: &str) -> Result<Layer, Error> {
        self.layer(self.containers.get(container_id)?)
    }

    fn layer(&self, record: Container) -> Result<Layer, Error> {
        let (mounts, folders) = self.containers.mounts(&record)?;
        Ok(Layer {
            mount_id: record.mount_id,
            mounts,
            folders,
            image_id: record.image_id,
        })
    }

    /// Removes the container's layer and forgets the container.
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

    /// Docker's ContainerChanges: what the container changed, by path.
    pub async fn changes(&self, container_id: &str) -> Result<Changes, Error> {
        let record = self.containers.get(container_id)?;
        let containers = Arc::clone(&self.containers);
        tokio::task::spawn_blocking(move || containers.changes(&record))
            .await
            .map_err(Error::internal)?
    }

    /// The container's own size and its size with its image's layers.
    pub async fn size(&self, container_id: &str) -> Result<LayerSize, Error> {
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
        Ok(LayerSize {
            rw,
            virtual_size: rw + image_size,
        })
    }

    /// A read-only mount of `image`'s files, its layers kept until
    /// [`RwLayers::release_image`]. `InvalidArgument` for an image without
    /// layers.
    pub async fn mount_image(
        &self,
        image: &str,
        platform: Option<&imaged_model::Platform>,
    ) -> Result<ImageMount, Error> {
        let (image_id, chain) = self.image_chain(image, platform).await?;
        let chain = chain.ok_or_else(|| {
            Error::invalid_argument(format!("image {image} has no layers to mount"))
        })?;
        let mount = storage::read_only_view(&self.layers.diff_dirs(&chain)?);
        let lease_id = format!("{:032x}", rand::random::<u128>());
        self.leases.hold(mount_hold(&lease_id), chain);
        Ok(ImageMount {
            lease_id,
            mount,
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
