//! The public `imaged.v1.Images` service.

use imaged_api::v1::event_log_client::EventLogClient;
use imaged_api::v1::images_server::Images;
use imaged_api::v1::metadata_client::MetadataClient;
use imaged_api::v1::transfer_client::TransferClient;
use imaged_api::v1::{
    EventLogInfoRequest, MetadataInfoRequest, SystemInfoRequest, SystemInfoResponse,
    TransferInfoRequest,
};
use tonic::{Request, Response, Status};

use crate::peers::Peers;

/// Serves `imaged.v1.Images` by calling the internal services.
pub struct ImagesService {
    peers: Peers,
}

impl ImagesService {
    pub fn new(peers: Peers) -> Self {
        ImagesService { peers }
    }
}

#[tonic::async_trait]
impl Images for ImagesService {
    /// Docker: CountImages, StorageDriver, LayerStoreStatus.
    async fn system_info(
        &self,
        _request: Request<SystemInfoRequest>,
    ) -> Result<Response<SystemInfoResponse>, Status> {
        let metadata = self.peers.metadata.call(|channel| async move {
            MetadataClient::new(channel)
                .info(MetadataInfoRequest {})
                .await
        });
        let transfer = self.peers.transfer.call(|channel| async move {
            TransferClient::new(channel)
                .info(TransferInfoRequest {})
                .await
        });
        let events = self.peers.events.call(|channel| async move {
            EventLogClient::new(channel)
                .info(EventLogInfoRequest {})
                .await
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
}
