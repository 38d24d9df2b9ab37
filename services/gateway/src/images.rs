//! The public `imaged.v1.Images` service.

use imaged_api::internal::v1::*;
use imaged_api::v1::images_server::Images;
use imaged_api::v1::*;
use imaged_common::clients::EventLogClient;
use imaged_common::clients::MetadataClient;
use imaged_common::clients::TransferClient;
use std::sync::Arc;

use imaged_common::peer::Peer;
use imaged_common::{deadline, version};
use tonic::{Request, Response, Status};

use crate::forward::forward;
use crate::kept::Kept;
use crate::peers::Peers;
use crate::read_model::ReadModel;

/// Serves `imaged.v1.Images` by calling the internal services.
pub struct ImagesService {
    peers: Peers,
    /// Every image's InspectImage answer, while the store does not change
    /// ([`crate::read_model`]).
    read_model: Arc<ReadModel>,
    /// InspectImage answers by request, kept while the store does not
    /// change ([`crate::kept`]): after a change, until the read model is
    /// loaded again.
    inspected: Kept<InspectImageRequest, ImageInspect>,
}

/// How many InspectImage answers are kept at most.
const KEPT_INSPECTS: usize = 1024;

impl ImagesService {
    /// `version`: imaged-metadata's published version.
    pub fn new(peers: Peers, version: Arc<version::Reader>) -> Self {
        ImagesService {
            read_model: ReadModel::new(peers.clone(), Arc::clone(&version)),
            peers,
            inspected: Kept::new(version, KEPT_INSPECTS),
        }
    }
}

#[tonic::async_trait]
impl Images for ImagesService {
    /// Docker: CountImages, StorageDriver, LayerStoreStatus.
    async fn system_info(
        &self,
        _request: Request<SystemInfoRequest>,
    ) -> Result<Response<SystemInfoResponse>, Status> {
        let metadata =
            self.peers
                .metadata
                .rpc(|mut client: MetadataClient| async move {
                    client.info(MetadataInfoRequest {}).await
                });
        let transfer =
            self.peers
                .transfer
                .rpc(|mut client: TransferClient| async move {
                    client.info(TransferInfoRequest {}).await
                });
        let events =
            self.peers
                .events
                .rpc(|mut client: EventLogClient| async move {
                    client.info(EventLogInfoRequest {}).await
                });
        let (metadata, transfer, events) = tokio::try_join!(metadata, transfer, events)?;
        Ok(Response::new(SystemInfoResponse {
            images: metadata.images,
            storage_driver: transfer.storage_driver,
            layer_store_status: transfer.layer_store_status,
            max_concurrent_downloads: transfer.max_concurrent_downloads,
            max_concurrent_uploads: transfer.max_concurrent_uploads,
            max_download_attempts: transfer.max_download_attempts,
            event_log: Some(events),
        }))
    }

    /// Docker: Images. Served by `list_relay` (bytes passed through);
    /// this typed path answers the same for any other wiring of the service.
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            list_images
        )))
    }

    /// Docker: ImageInspect, GetImage.
    async fn inspect_image(
        &self,
        request: Request<InspectImageRequest>,
    ) -> Result<Response<ImageInspect>, Status> {
        if let Some(answer) = self.read_model.inspect(request.get_ref()) {
            return answer.map(Response::new);
        }
        if let Some(inspect) = self.inspected.get(request.get_ref()) {
            return Ok(Response::new(inspect));
        }
        let key = request.get_ref().clone();
        let answer = forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            inspect_image_at
        );
        let inspect = answer
            .inspect
            .ok_or_else(|| Status::internal("imaged-metadata answered no inspect"))?;
        self.inspected.keep(key, answer.version, inspect.clone());
        Ok(Response::new(inspect))
    }

    /// Docker: ImageHistory.
    async fn image_history(
        &self,
        request: Request<ImageHistoryRequest>,
    ) -> Result<Response<ImageHistoryResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            image_history
        )))
    }

    /// Docker: TagImage.
    async fn tag_image(
        &self,
        request: Request<TagImageRequest>,
    ) -> Result<Response<TagImageResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            tag_image
        )))
    }

    /// Docker: ImageDelete.
    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            remove_image
        )))
    }

    /// Docker: ImagesPrune.
    async fn prune_images(
        &self,
        request: Request<PruneImagesRequest>,
    ) -> Result<Response<PruneImagesResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            prune_images
        )))
    }

    /// Docker: Children.
    async fn image_children(
        &self,
        request: Request<ImageChildrenRequest>,
    ) -> Result<Response<ImageChildrenResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            image_children
        )))
    }

    /// Docker: CreateImage.
    async fn create_image(
        &self,
        request: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            create_image
        )))
    }

    /// Docker: ImageDiskUsage. Image and layer sizes from metadata (which
    /// has them from the layer store).
    async fn disk_usage(
        &self,
        _request: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        let images = self
            .peers
            .metadata
            .rpc(|mut client: MetadataClient| async move {
                client.disk_usage(DiskUsageRequest {}).await
            });
        let content = self
            .peers
            .transfer
            .rpc(|mut client: TransferClient| async move {
                client.content_size(ContentSizeRequest {}).await
            });
        let (mut answer, content) = tokio::try_join!(images, content)?;
        answer.content_size = content.content_size;
        answer.pulled_from = content.pulled_from;
        answer.served_to_peers = content.served_to_peers;
        Ok(Response::new(answer))
    }

    type PullImageStream = Relay<PullImageProgress>;

    /// Docker: PullImage. Dropping the stream cancels the upstream pull.
    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        let stream = forward!(self.peers.transfer, TransferClient, request, pull);
        Ok(Response::new(relay(&self.peers.transfer, stream)))
    }

    type PushImageStream = Relay<PushImageProgress>;

    /// Docker: PushImage.
    async fn push_image(
        &self,
        request: Request<PushImageRequest>,
    ) -> Result<Response<Self::PushImageStream>, Status> {
        let stream = forward!(self.peers.transfer, TransferClient, request, push);
        Ok(Response::new(relay(&self.peers.transfer, stream)))
    }

    type ExportImagesStream = Relay<ExportImagesChunk>;

    /// Docker: ExportImage (`docker save`).
    async fn export_images(
        &self,
        request: Request<ExportImagesRequest>,
    ) -> Result<Response<Self::ExportImagesStream>, Status> {
        let stream = forward!(self.peers.transfer, TransferClient, request, export);
        Ok(Response::new(relay(&self.peers.transfer, stream)))
    }

    type LoadImagesStream = Relay<LoadImagesResponse>;

    /// Docker: LoadImage (`docker load`). The archive streams through to
    /// imaged-transfer as it arrives; it is never held here.
    async fn load_images(
        &self,
        request: Request<tonic::Streaming<LoadImagesRequest>>,
    ) -> Result<Response<Self::LoadImagesStream>, Status> {
        let (deadline, inbound) = deadline::split(request);
        // A broken client stream ends the archive early, which the load
        // reports as a truncated archive.
        let outbound = tokio_stream::StreamExt::map_while(inbound, Result::ok);
        let upstream = (self.peers.transfer.client::<TransferClient>())
            .load(deadline::attach(outbound, deadline))
            .await?
            .into_inner();
        Ok(Response::new(relay(&self.peers.transfer, upstream)))
    }

    /// Docker: ImportImage (`docker import`). The tar streams through to
    /// imaged-transfer as it arrives.
    async fn import_image(
        &self,
        request: Request<tonic::Streaming<ImportImageRequest>>,
    ) -> Result<Response<ImportImageResponse>, Status> {
        let (deadline, inbound) = deadline::split(request);
        let outbound = tokio_stream::StreamExt::map_while(inbound, Result::ok);
        let answer = (self.peers.transfer.client::<TransferClient>())
            .import(deadline::attach(outbound, deadline))
            .await?;
        Ok(Response::new(answer.into_inner()))
    }

    /// Docker: MakeImageCache (the classic builder's cache).
    async fn image_cache_lookup(
        &self,
        request: Request<ImageCacheLookupRequest>,
    ) -> Result<Response<ImageCacheLookupResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.metadata,
            MetadataClient,
            request,
            image_cache_lookup
        )))
    }

    /// Docker: CommitImage, CommitBuildStep.
    async fn commit_image(
        &self,
        request: Request<CommitImageRequest>,
    ) -> Result<Response<CommitImageResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            commit
        )))
    }

    /// Docker: SquashImage.
    async fn squash_image(
        &self,
        request: Request<SquashImageRequest>,
    ) -> Result<Response<SquashImageResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            squash
        )))
    }

    /// Docker: UpdateConfig (the download and upload limits).
    async fn update_config(
        &self,
        request: Request<UpdateConfigRequest>,
    ) -> Result<Response<UpdateConfigResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            update_config
        )))
    }
}

/// A server stream relayed from an internal service.
pub type Relay<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Relays `stream` from `peer`, naming the peer when the stream breaks.
pub fn relay<T: Send + 'static>(peer: &Peer, stream: tonic::Streaming<T>) -> Relay<T> {
    let peer = peer.clone();
    Box::pin(tokio_stream::StreamExt::map(stream, move |item| {
        item.map_err(|status| peer.stream_status(status))
    }))
}
