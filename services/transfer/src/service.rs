//! The `imaged.v1.Transfer` gRPC service.

use imaged_api::v1::{
    KeyValue, TransferInfoRequest, TransferInfoResponse, transfer_server::Transfer,
};
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
}
