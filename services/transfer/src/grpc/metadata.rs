//! imaged-transfer's calls to imaged-metadata, in one place: each a retried
//! call through the lazy peer, its status passed on as an [`Error`] by the
//! one mapping in `imaged_common::error`. Also the two things transfer
//! reads from an image config it gets back: its layers and its labels.

use std::collections::{BTreeMap, HashSet};

use imaged_api::internal::v1::{
    ChainsInUseRequest, ExportSetResponse, ImageConfigResponse, PutImageRequest, PutImageResponse,
    RemoveContainerRequest, SetContainerRequest,
};
use imaged_api::v1::{
    CreateImageRequest, ExportImagesRequest, InspectImageRequest, ListImagesRequest, Platform,
    TagImageRequest,
};
use imaged_common::Error;
use imaged_common::clients::MetadataClient;
use imaged_common::peer::Peer;
use imaged_model::image_config::ImageConfig;
use imaged_model::{Digest, Reference};
use serde_json::Value;

/// The metadata peer, with the calls transfer makes.
#[derive(Clone, Debug)]
pub struct Metadata {
    peer: Peer,
}

/// Calls `$method` with `$request` through the peer; a `Result<_, Error>`.
macro_rules! call {
    ($self:ident, $method:ident, $request:expr) => {{
        let request = $request;
        $self
            .peer
            .rpc(|mut client: MetadataClient| {
                let request = request.clone();
                async move { client.$method(request).await }
            })
            .await
            .map_err(Error::from)
    }};
}

impl Metadata {
    pub fn new(peer: Peer) -> Self {
        Metadata { peer }
    }

    /// An image's ID, exact config bytes and references.
    pub async fn image_config(
        &self,
        image: &str,
        platform: Option<Platform>,
    ) -> Result<ImageConfigResponse, Error> {
        call!(
            self,
            image_config,
            InspectImageRequest {
                image: image.to_string(),
                platform,
            }
        )
    }

    /// The local tags and digest references of the repository `name`
    /// names (its tag or digest, if any, left aside), sorted.
    pub async fn repository_refs(
        &self,
        name: &Reference,
    ) -> Result<(Vec<Reference>, Vec<Reference>), Error> {
        let request = ListImagesRequest {
            filters: vec![format!("reference={}", name.familiar_name())],
            ..Default::default()
        };
        let listed = call!(self, list_images, request)?;
        let of_repository = |refs: Vec<String>| -> Vec<Reference> {
            refs.iter()
                .filter_map(|r| Reference::parse(r).ok())
                .filter(|r| r.name() == name.name())
                .collect()
        };
        let (mut tags, mut digests) = (Vec::new(), Vec::new());
        for image in listed.images {
            tags.extend(of_repository(image.repo_tags));
            digests.extend(of_repository(image.repo_digests));
        }
        tags.sort_by_key(|r| r.to_string());
        digests.sort_by_key(|r| r.to_string());
        Ok((tags, digests))
    }

    /// Records an image transfer fetched, loaded or imported.
    pub async fn put_image(&self, request: PutImageRequest) -> Result<PutImageResponse, Error> {
        call!(self, put_image, request)
    }

    /// Stores a config made here (commit, squash), or sets a parent link.
    pub async fn create_image(&self, config: Vec<u8>, parent: &str) -> Result<String, Error> {
        let request = CreateImageRequest {
            config,
            parent: parent.to_string(),
        };
        Ok(call!(self, create_image, request)?.id)
    }

    /// Tags `id` as TagImage does.
    pub async fn tag(&self, id: &str, target: &str) -> Result<(), Error> {
        let request = TagImageRequest {
            source: id.to_string(),
            target: target.to_string(),
        };
        call!(self, tag_image, request).map(drop)
    }

    /// The images an export writes.
    pub async fn export_set(
        &self,
        request: ExportImagesRequest,
    ) -> Result<ExportSetResponse, Error> {
        call!(self, export_set, request)
    }

    /// Records that a container's layer stands on `image_id`, and whether
    /// the container runs.
    pub async fn set_container(
        &self,
        container_id: &str,
        image_id: &str,
        running: bool,
    ) -> Result<(), Error> {
        let request = SetContainerRequest {
            container_id: container_id.to_string(),
            image: image_id.to_string(),
            running,
        };
        call!(self, set_container, request).map(drop)
    }

    /// The IDs of every stored image.
    pub async fn image_ids(&self) -> Result<Vec<String>, Error> {
        let request = ListImagesRequest {
            all: true,
            ..Default::default()
        };
        let listed = call!(self, list_images, request)?;
        Ok(listed.images.into_iter().map(|i| i.id).collect())
    }

    /// Which of `chains` a stored image stands on.
    pub async fn chains_in_use(&self, chains: &[Digest]) -> Result<HashSet<Digest>, Error> {
        let request = ChainsInUseRequest {
            chain_ids: chains.iter().map(Digest::to_string).collect(),
        };
        let answer = call!(self, chains_in_use, request)?;
        Ok(answer
            .chain_ids
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect())
    }

    /// Forgets a container's record.
    pub async fn remove_container(&self, container_id: &str) -> Result<(), Error> {
        let request = RemoveContainerRequest {
            container_id: container_id.to_string(),
        };
        call!(self, remove_container, request).map(drop)
    }
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
