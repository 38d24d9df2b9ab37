//! The public `imaged.v1.Layers` service: imaged-transfer's container
//! layers and image mounts, forwarded with the caller's deadline.

use imaged_api::v1::layers_server::Layers;
use imaged_api::v1::transfer_client::TransferClient;
use imaged_api::v1::*;
use imaged_common::deadline;
use tonic::{Request, Response, Status};

use crate::peers::Peers;

/// Forwards container-layer calls to imaged-transfer.
pub struct LayersService {
    peers: Peers,
}

impl LayersService {
    pub fn new(peers: Peers) -> Self {
        LayersService { peers }
    }
}

/// Forwards one unary call to imaged-transfer's method of the same name.
macro_rules! forward {
    ($self:ident, $request:ident, $method:ident) => {{
        let (deadline, request) = deadline::split($request);
        let answer = $self
            .peers
            .transfer
            .call(|ch| {
                let request = request.clone();
                async move {
                    TransferClient::new(ch)
                        .$method(deadline::attach(request, deadline))
                        .await
                }
            })
            .await?;
        Ok(Response::new(answer))
    }};
}

#[tonic::async_trait]
impl Layers for LayersService {
    /// Docker: CreateLayer, CreateLayerFromImage.
    async fn create_layer(
        &self,
        request: Request<CreateLayerRequest>,
    ) -> Result<Response<CreateLayerResponse>, Status> {
        forward!(self, request, create_layer)
    }

    /// Docker: GetLayerByID, GetLayerMountID, GetLayerFolders.
    async fn get_layer(
        &self,
        request: Request<GetLayerRequest>,
    ) -> Result<Response<GetLayerResponse>, Status> {
        forward!(self, request, get_layer)
    }

    /// Docker: ReleaseLayer.
    async fn release_layer(
        &self,
        request: Request<ReleaseLayerRequest>,
    ) -> Result<Response<ReleaseLayerResponse>, Status> {
        forward!(self, request, release_layer)
    }

    /// Docker: Changes.
    async fn changes(
        &self,
        request: Request<ChangesRequest>,
    ) -> Result<Response<ChangesResponse>, Status> {
        forward!(self, request, changes)
    }

    /// Docker: GetContainerLayerSize.
    async fn layer_size(
        &self,
        request: Request<LayerSizeRequest>,
    ) -> Result<Response<LayerSizeResponse>, Status> {
        forward!(self, request, layer_size)
    }

    /// Docker: GetImageAndReleasableLayer.
    async fn mount_image(
        &self,
        request: Request<MountImageRequest>,
    ) -> Result<Response<MountImageResponse>, Status> {
        forward!(self, request, mount_image)
    }

    /// Ends a MountImage lease.
    async fn release_image(
        &self,
        request: Request<ReleaseImageRequest>,
    ) -> Result<Response<ReleaseImageResponse>, Status> {
        forward!(self, request, release_image)
    }
}
