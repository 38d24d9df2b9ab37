//! The `imaged.v1.Metadata` gRPC service.

use std::sync::Arc;

use imaged_api::v1::{MetadataInfoRequest, MetadataInfoResponse, metadata_server::Metadata};
use tonic::{Request, Response, Status};

use crate::store::Store;

/// Serves the metadata contract over the store.
pub struct MetadataService {
    store: Arc<Store>,
}

impl MetadataService {
    pub fn new(store: Store) -> Self {
        MetadataService {
            store: Arc::new(store),
        }
    }
}

#[tonic::async_trait]
impl Metadata for MetadataService {
    async fn info(
        &self,
        _request: Request<MetadataInfoRequest>,
    ) -> Result<Response<MetadataInfoResponse>, Status> {
        let store = self.store.clone();
        let images = tokio::task::spawn_blocking(move || store.image_count())
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(MetadataInfoResponse { images }))
    }
}
