//! The `imaged.internal.v1.Metadata` gRPC service: request in, the operation's
//! module, answer out.

use std::sync::Arc;

use imaged_api::internal::v1::metadata_server::Metadata;
use imaged_api::internal::v1::*;
use imaged_api::v1::*;
use imaged_common::Error;
use tonic::{Request, Response, Status};

use super::convert::{list_query, platform, record};
use super::{inspect as shown, list as listed, render};
use crate::images::{Images, Logged};
use crate::resolve::get_image;
use crate::store::Container;
use crate::{cache, create, delete, inspect, list, put, tag};

/// Serves the metadata contract.
pub struct MetadataService {
    images: Arc<Images>,
}

impl MetadataService {
    pub fn new(images: Arc<Images>) -> Self {
        MetadataService { images }
    }

    /// Runs a blocking store operation off the async workers' hot path.
    /// InspectImage, and the store's version it was read at.
    async fn inspect_at(
        &self,
        request: InspectImageRequest,
    ) -> Result<(ImageInspect, imaged_common::version::Version), Status> {
        let platform = platform(request.platform.as_ref())?;
        let layout = self.images.layout().await;
        let index = self.images.store.read();
        let image = get_image(&index, &request.image, platform.as_ref())?;
        let inspect = shown::inspect_image(&index, image, layout);
        Ok((inspect, self.images.store.version_of(&index)))
    }

    fn blocking<T>(
        &self,
        f: impl FnOnce(&Arc<Images>) -> Result<T, Error>,
    ) -> Result<Response<T>, Status> {
        tokio::task::block_in_place(|| f(&self.images))
            .map(Response::new)
            .map_err(Status::from)
    }

    /// [`Self::blocking`] for a change that publishes events: its answer
    /// goes back once they are logged, as dockerd answers after logging.
    async fn changing<T>(
        &self,
        f: impl FnOnce(&Arc<Images>) -> Result<(T, Logged), Error>,
    ) -> Result<Response<T>, Status> {
        let (answer, logged) = tokio::task::block_in_place(|| f(&self.images))?;
        self.images.logged(logged).await;
        Ok(Response::new(answer))
    }
}

#[tonic::async_trait]
impl Metadata for MetadataService {
    async fn info(
        &self,
        _: Request<MetadataInfoRequest>,
    ) -> Result<Response<MetadataInfoResponse>, Status> {
        let images = self.images.store.read().image_count() as u64;
        Ok(Response::new(MetadataInfoResponse { images }))
    }

    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let query = list_query(request.into_inner());
        self.blocking(|images| {
            let index = images.store.read();
            Ok(ListImagesResponse {
                images: listed::summaries(list::list(&index, &query)?),
            })
        })
    }

    async fn list_images_encoded(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<EncodedListImagesResponse>, Status> {
        let query = list_query(request.into_inner());
        self.blocking(|images| {
            let (encoded, version) = listed::list_encoded(images, &query)?;
            Ok(EncodedListImagesResponse {
                list_images_response: encoded,
                version: Some(version.into()),
            })
        })
    }

    async fn inspect_image(
        &self,
        request: Request<InspectImageRequest>,
    ) -> Result<Response<ImageInspect>, Status> {
        let (inspect, _) = self.inspect_at(request.into_inner()).await?;
        Ok(Response::new(inspect))
    }

    async fn inspect_image_at(
        &self,
        request: Request<InspectImageRequest>,
    ) -> Result<Response<InspectImageAtResponse>, Status> {
        let (inspect, version) = self.inspect_at(request.into_inner()).await?;
        Ok(Response::new(InspectImageAtResponse {
            inspect: Some(inspect),
            version: Some(version.into()),
        }))
    }

    async fn inspect_all(
        &self,
        request: Request<InspectAllRequest>,
    ) -> Result<Response<InspectAllResponse>, Status> {
        let max = request.into_inner().max_images as usize;
        let layout = self.images.layout().await;
        self.blocking(|images| {
            let index = images.store.read();
            if max > 0 && index.image_count() > max {
                return Err(Error::failed_precondition(format!(
                    "{} images: more than the {max} asked for",
                    index.image_count()
                )));
            }
            let (images_at, references) = shown::inspect_all(&index, layout);
            Ok(InspectAllResponse {
                images: images_at,
                references,
                version: Some(images.store.version_of(&index).into()),
            })
        })
    }

    async fn image_history(
        &self,
        request: Request<ImageHistoryRequest>,
    ) -> Result<Response<ImageHistoryResponse>, Status> {
        let request = request.into_inner();
        let platform = platform(request.platform.as_ref())?;
        let index = self.images.store.read();
        let rows = inspect::history(&index, &request.image, platform.as_ref())?;
        Ok(Response::new(ImageHistoryResponse {
            items: render::history(rows),
        }))
    }

    async fn tag_image(
        &self,
        request: Request<TagImageRequest>,
    ) -> Result<Response<TagImageResponse>, Status> {
        let request = request.into_inner();
        self.changing(|images| {
            let mut events = Vec::new();
            images
                .store
                .update(|tx| tag::tag(tx, &request.source, &request.target, &mut events))?;
            Ok((TagImageResponse {}, images.publish(events)))
        })
        .await
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let prune = request.prune_children.unwrap_or(true);
        self.changing(|images| {
            let mut events = Vec::new();
            let items = images.store.update(|tx| {
                delete::remove(tx, &request.image, request.force, prune, &mut events)
            })?;
            let items = render::delete_items(items);
            Ok((RemoveImageResponse { items }, images.publish(events)))
        })
        .await
    }

    async fn prune_images(
        &self,
        request: Request<PruneImagesRequest>,
    ) -> Result<Response<PruneImagesResponse>, Status> {
        let request = request.into_inner();
        let Ok(_running) = self.images.prune_lock.try_lock() else {
            return Err(Error::failed_precondition("a prune operation is already running").into());
        };
        self.changing(|images| {
            let mut events = Vec::new();
            let (deleted, space_reclaimed) = images
                .store
                .update(|tx| delete::prune(tx, &request.filters, &mut events))?;
            let answer = PruneImagesResponse {
                deleted: render::delete_items(deleted),
                space_reclaimed,
            };
            Ok((answer, images.publish(events)))
        })
        .await
    }

    async fn image_children(
        &self,
        request: Request<ImageChildrenRequest>,
    ) -> Result<Response<ImageChildrenResponse>, Status> {
        let index = self.images.store.read();
        let ids = inspect::children(&index, &request.get_ref().image)?;
        Ok(Response::new(ImageChildrenResponse { ids }))
    }

    async fn create_image(
        &self,
        request: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        let request = request.into_inner();
        let id = create::create(&self.images, request.config, &request.parent).await?;
        Ok(Response::new(CreateImageResponse { id }))
    }

    async fn disk_usage(
        &self,
        _: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        self.blocking(|images| Ok(listed::disk_usage(list::disk_usage(&images.store.read()))))
    }

    async fn set_container(
        &self,
        request: Request<SetContainerRequest>,
    ) -> Result<Response<SetContainerResponse>, Status> {
        let request = request.into_inner();
        if request.container_id.is_empty() {
            return Err(Error::invalid_argument("container ID cannot be empty").into());
        }
        self.blocking(|images| {
            let image_id = images.store.update(|tx| {
                let image_id = get_image(tx.index(), &request.image, None)?.id.to_string();
                tx.put_container(
                    &request.container_id,
                    Container {
                        image_id: image_id.clone(),
                        running: request.running,
                    },
                );
                Ok(image_id)
            })?;
            Ok(SetContainerResponse { image_id })
        })
    }

    async fn put_image(
        &self,
        request: Request<PutImageRequest>,
    ) -> Result<Response<PutImageResponse>, Status> {
        let record = record(request.into_inner());
        let _gate = self.images.layer_gate.lock().await;
        self.changing(|images| {
            let (recorded, logged) = put::put(images, record)?;
            Ok((render::recorded(recorded), logged))
        })
        .await
    }

    async fn image_config(
        &self,
        request: Request<InspectImageRequest>,
    ) -> Result<Response<ImageConfigResponse>, Status> {
        let index = self.images.store.read();
        let stored = put::config(&index, &request.get_ref().image)?;
        Ok(Response::new(render::config(stored)))
    }

    async fn export_set(
        &self,
        request: Request<ExportImagesRequest>,
    ) -> Result<Response<ExportSetResponse>, Status> {
        let request = request.into_inner();
        let wanted = platform(request.platform.as_ref())?;
        let index = self.images.store.read();
        let images = put::export_set(&index, &request.names, wanted.as_ref())?;
        Ok(Response::new(render::export_set(images)))
    }

    async fn image_cache_lookup(
        &self,
        request: Request<ImageCacheLookupRequest>,
    ) -> Result<Response<ImageCacheLookupResponse>, Status> {
        let request = request.into_inner();
        self.blocking(|images| {
            let id = images.store.update(|tx| {
                cache::lookup(tx, &request.parent, &request.config, &request.source_refs)
            })?;
            Ok(ImageCacheLookupResponse {
                id: id.unwrap_or_default(),
            })
        })
    }

    async fn cri_image(
        &self,
        request: Request<InspectImageRequest>,
    ) -> Result<Response<CriImageResponse>, Status> {
        let request = request.into_inner();
        let index = self.images.store.read();
        let image = match get_image(&index, &request.image, None) {
            Ok(image) => Some(listed::summary(list::row(&index, image))),
            Err(e) if e.is(tonic::Code::NotFound) => None,
            Err(err) => return Err(err.into()),
        };
        Ok(Response::new(CriImageResponse {
            image,
            version: Some(self.images.store.version_of(&index).into()),
        }))
    }

    async fn cri_images(
        &self,
        _request: Request<CriImagesRequest>,
    ) -> Result<Response<CriImagesResponse>, Status> {
        let index = self.images.store.read();
        // The rows of an unfiltered ListImages (no intermediates).
        let images = listed::summaries(list::list(&index, &list::ListQuery::default())?);
        Ok(Response::new(CriImagesResponse {
            images,
            version: Some(self.images.store.version_of(&index).into()),
        }))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let request = request.into_inner();
        self.blocking(|images| {
            images.store.update(|tx| {
                tx.delete_container(&request.container_id);
                Ok(())
            })?;
            Ok(RemoveContainerResponse {})
        })
    }
}
