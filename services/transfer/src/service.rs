//! The `imaged.v1.Transfer` gRPC service.

use imaged_api::v1::{
    GetLayersRequest, GetLayersResponse, KeyValue, TransferInfoRequest, TransferInfoResponse,
    transfer_server::Transfer,
};
use imaged_common::Error;
use tonic::{Request, Response, Status};

use crate::driver::Driver;
use crate::limits::Limits;

/// Serves the transfer contract.
pub struct TransferService {
    driver: Driver,
    limits: Limits,
}

impl TransferService {
    pub fn new(driver: Driver, limits: Limits) -> Self {
        TransferService { driver, limits }
    }
}

#[tonic::async_trait]
impl Transfer for TransferService {
    async fn info(
        &self,
        _request: Request<TransferInfoRequest>,
    ) -> Result<Response<TransferInfoResponse>, Status> {
        let layer_store_status = self
            .driver
            .status()
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect();
        Ok(Response::new(TransferInfoResponse {
            storage_driver: self.driver.name().to_string(),
            layer_store_status,
            max_concurrent_downloads: self.limits.max_concurrent_downloads(),
            max_concurrent_uploads: self.limits.max_concurrent_uploads(),
            max_download_attempts: self.limits.max_download_attempts(),
        }))
    }

    /// The layer store holds no layers until pulls, loads and imports
    /// register them, so every chain asked for is missing.
    async fn get_layers(
        &self,
        request: Request<GetLayersRequest>,
    ) -> Result<Response<GetLayersResponse>, Status> {
        match request.get_ref().chain_ids.first() {
            None => Ok(Response::new(GetLayersResponse { layers: Vec::new() })),
            Some(chain_id) => Err(Error::NotFound(format!(
                "failed to get layer {chain_id}: layer does not exist"
            ))
            .into()),
        }
    }
}
