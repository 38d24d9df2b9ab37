//! The public `imaged.v1.Layers` service: imaged-transfer's container
//! layers and image mounts, forwarded with the caller's deadline.

use imaged_api::v1::layers_server::Layers;
use imaged_api::v1::*;
use imaged_common::clients::TransferClient;
use tonic::{Request, Response, Status};

use crate::forward::forward;
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

#[tonic::async_trait]
impl Layers for LayersService {
    /// Docker: CreateLayer, CreateLayerFromImage.
    async fn create_layer(
        &self,
        request: Request<CreateLayerRequest>,
    ) -> Result<Response<CreateLayerResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            create_layer
        )))
    }

    /// Docker: GetLayerByID, GetLayerMountID, GetLayerFolders.
    async fn get_layer(
        &self,
        request: Request<GetLayerRequest>,
    ) -> Result<Response<GetLayerResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            get_layer
        )))
    }

    /// Docker: ReleaseLayer.
    async fn release_layer(
        &self,
        request: Request<ReleaseLayerRequest>,
    ) -> Result<Response<ReleaseLayerResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            release_layer
        )))
    }

    /// Docker: Changes.
    async fn changes(
        &self,
        request: Request<ChangesRequest>,
    ) -> Result<Response<ChangesResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            changes
        )))
    }

    /// Docker: GetContainerLayerSize.
    async fn layer_size(
        &self,
        request: Request<LayerSizeRequest>,
    ) -> Result<Response<LayerSizeResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            layer_size
        )))
    }

    /// Docker: GetImageAndReleasableLayer.
    async fn mount_image(
        &self,
        request: Request<MountImageRequest>,
    ) -> Result<Response<MountImageResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            mount_image
        )))
    }

    /// Ends a MountImage lease.
    async fn release_image(
        &self,
        request: Request<ReleaseImageRequest>,
    ) -> Result<Response<ReleaseImageResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            release_image
        )))
    }

    /// Whether the container on a layer runs (delete conflicts).
    async fn set_container_state(
        &self,
        request: Request<SetContainerStateRequest>,
    ) -> Result<Response<SetContainerStateResponse>, Status> {
        Ok(Response::new(forward!(
            self.peers.transfer,
            TransferClient,
            request,
            set_container_state
        )))
    }
}
