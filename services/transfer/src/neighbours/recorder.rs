//! imaged-metadata as the engines see it: the recorder of images. The
//! gRPC client (`crate::grpc::metadata::Metadata`) is the real one; unit
//! tests use [`super::fakes::FakeRecorder`].

use std::collections::BTreeMap;

use imaged_common::Error;
use imaged_model::image_config::ImageConfig;
use imaged_model::{Digest, Platform, Reference};
use serde_json::Value;

pub use imaged_model::record::{ExportedImage, MovedTag, Record, Recorded, StoredImage};

/// The calls imaged-transfer's engines make to imaged-metadata.
#[tonic::async_trait]
pub trait Recorder: Send + Sync {
    /// The image `name` (a reference, ID or ID prefix) resolves to, of
    /// `platform` for a multi-platform one; `NotFound` when none.
    async fn image(&self, name: &str, platform: Option<&Platform>) -> Result<StoredImage, Error>;

    /// The local tags and digest references of `name`'s repository,
    /// sorted.
    async fn repository_refs(
        &self,
        name: &Reference,
    ) -> Result<(Vec<Reference>, Vec<Reference>), Error>;

    /// Records an image (and sends its event).
    async fn record(&self, record: Record) -> Result<Recorded, Error>;

    /// Stores a config made here (commit, squash) with `parent` (may be
    /// empty), or sets the parent link of a stored one; answers the ID.
    async fn create_image(&self, config: Vec<u8>, parent: &str) -> Result<String, Error>;

    /// Tags `id` as TagImage does.
    async fn tag(&self, id: &str, target: &str) -> Result<(), Error>;

    /// The images an export of `names` writes.
    async fn export_set(
        &self,
        names: Vec<String>,
        platform: Option<&Platform>,
    ) -> Result<Vec<ExportedImage>, Error>;

    /// The IDs of every stored image.
    async fn image_ids(&self) -> Result<Vec<String>, Error>;

    /// Records that a container's layer stands on `image_id`.
    async fn set_container(
        &self,
        container_id: &str,
        image_id: &str,
        running: bool,
    ) -> Result<(), Error>;

    /// Forgets a container's record.
    async fn remove_container(&self, container_id: &str) -> Result<(), Error>;
}

/// The diffIDs of an image config, bottom first; a config that is not
/// valid (a diffID that is not a digest among them) is refused, never
/// read in part.
pub fn config_diff_ids(config: &Value) -> Result<Vec<Digest>, Error> {
    Ok(ImageConfig::from_value(config)?.diff_ids)
}

/// The labels of an image config (events copy them).
pub fn config_labels(config: &Value) -> BTreeMap<String, String> {
    config["config"]["Labels"]
        .as_object()
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}
