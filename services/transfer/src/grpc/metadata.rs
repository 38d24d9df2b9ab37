//! imaged-transfer's calls to imaged-metadata, in one place: the
//! [`Recorder`] the engines see, each call retried through the lazy peer,
//! its status passed on as an [`Error`] by the one mapping in
//! `imaged_common::error`.

use imaged_api::internal::v1::{PutImageRequest, RemoveContainerRequest, SetContainerRequest};
use imaged_api::v1::{
    CreateImageRequest, ExportImagesRequest, InspectImageRequest, ListImagesRequest,
    TagImageRequest,
};
use imaged_common::Error;
use imaged_common::clients::MetadataClient;
use imaged_common::peer::Peer;
use imaged_model::{Platform, Reference};

use crate::neighbours::recorder::{
    ExportedImage, MovedTag, Record, Recorded, Recorder, StoredImage,
};

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
}

fn wire_platform(platform: Option<&Platform>) -> Option<imaged_api::v1::Platform> {
    platform.map(|p| imaged_api::v1::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
    })
}

#[tonic::async_trait]
impl Recorder for Metadata {
    async fn image(&self, name: &str, platform: Option<&Platform>) -> Result<StoredImage, Error> {
        let request = InspectImageRequest {
            image: name.to_string(),
            platform: wire_platform(platform),
        };
        let answer = call!(self, image_config, request)?;
        Ok(StoredImage {
            id: answer.id,
            config: answer.config,
            repo_tags: answer.repo_tags,
            repo_digests: answer.repo_digests,
        })
    }

    async fn repository_refs(
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

    async fn record(&self, record: Record) -> Result<Recorded, Error> {
        let request = PutImageRequest {
            config: record.config,
            tags: record.tags,
            digests: record.digests,
            layer_sizes: record.layer_sizes,
            action: record.action,
            event_ref: record.event_ref,
            tag_events: record.tag_events,
            content_size: record.content_size,
        };
        let answer = call!(self, put_image, request)?;
        Ok(Recorded {
            id: answer.id,
            updated: answer.updated,
            moved: answer
                .moved
                .into_iter()
                .map(|m| MovedTag {
                    tag: m.tag,
                    from_id: m.from_id,
                })
                .collect(),
        })
    }

    async fn create_image(&self, config: Vec<u8>, parent: &str) -> Result<String, Error> {
        let request = CreateImageRequest {
            config,
            parent: parent.to_string(),
        };
        Ok(call!(self, create_image, request)?.id)
    }

    async fn tag(&self, id: &str, target: &str) -> Result<(), Error> {
        let request = TagImageRequest {
            source: id.to_string(),
            target: target.to_string(),
        };
        call!(self, tag_image, request).map(drop)
    }

    async fn export_set(
        &self,
        names: Vec<String>,
        platform: Option<&Platform>,
    ) -> Result<Vec<ExportedImage>, Error> {
        let request = ExportImagesRequest {
            names,
            platform: wire_platform(platform),
        };
        let answer = call!(self, export_set, request)?;
        Ok(answer
            .images
            .into_iter()
            .map(|i| ExportedImage {
                id: i.id,
                config: i.config,
                repo_tags: i.repo_tags,
                parent: i.parent,
            })
            .collect())
    }

    async fn set_container(
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

    async fn image_ids(&self) -> Result<Vec<String>, Error> {
        let request = ListImagesRequest {
            all: true,
            ..Default::default()
        };
        let listed = call!(self, list_images, request)?;
        Ok(listed.images.into_iter().map(|i| i.id).collect())
    }

    async fn remove_container(&self, container_id: &str) -> Result<(), Error> {
        let request = RemoveContainerRequest {
            container_id: container_id.to_string(),
        };
        call!(self, remove_container, request).map(drop)
    }
}
