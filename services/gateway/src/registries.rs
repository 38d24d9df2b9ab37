//! The public `imaged.v1.Registries` service: logins, checked by
//! imaged-transfer (the owner of all registry traffic) and forwarded with
//! the caller's deadline. Nothing is kept, here or there.

use imaged_api::v1::registries_server::Registries;
use imaged_api::v1::{LoginRequest, LoginResponse};
use imaged_common::clients::TransferClient;
use tonic::{Request, Response, Status};

use crate::forward::forward;
use crate::peers::Peers;

/// Forwards logins to imaged-transfer.
pub struct RegistriesService {
    peers: Peers,
}

impl RegistriesService {
    pub fn new(peers: Peers) -> Self {
        RegistriesService { peers }
    }
}

#[tonic::async_trait]
impl Registries for RegistriesService {
    /// Docker: `POST /auth` (`docker login`).
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            login
        )))
    }
}
