//! The `imaged.internal.v1.Transfer` gRPC service.

use std::sync::Arc;

use imaged_api::internal::v1::{
    ContentSizeRequest, ContentSizeResponse, GetLayersRequest, GetLayersResponse, LayerInfo,
    ReleaseLayersRequest, ReleaseLayersResponse, RetainLayersRequest, RetainLayersResponse,
    TransferInfoRequest, TransferInfoResponse, transfer_server::Transfer,
};
use imaged_api::v1::{
    ChangesRequest, ChangesResponse, CommitImageRequest, CommitImageResponse, CreateLayerRequest,
    CreateLayerResponse, ExportImagesChunk, ExportImagesRequest, GetLayerRequest, GetLayerResponse,
    ImportImageRequest, ImportImageResponse, KeyValue, LayerSizeRequest, LayerSizeResponse,
    LoadImagesRequest, LoadImagesResponse, LoginRequest, LoginResponse, MountImageRequest,
    MountImageResponse, PullImageProgress, PullImageRequest, PushImageProgress, PushImageRequest,
    ReleaseImageRequest, ReleaseImageResponse, ReleaseLayerRequest, ReleaseLayerResponse,
    SetContainerStateRequest, SetContainerStateResponse, SquashImageRequest, SquashImageResponse,
    UpdateConfigRequest, UpdateConfigResponse,
};
use imaged_common::Error;
use imaged_model::{Digest, Reference};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{convert, layers, progress};
use crate::commit::Committer;
use crate::containers::RwLayers;
use crate::export::Exporter;
use crate::import::Importer;
use crate::limits::Limits;
use crate::load::Loader;
use crate::pull::share::PullShare;
use crate::push::Pusher;
use crate::storage::driver::Driver;
use crate::store::content::ContentStore;
use crate::store::gc::Gc;
use crate::store::layers::LayerStore;

/// Serves the transfer contract: the stores and the engines that work on
/// them, built in `main`.
pub struct TransferService {
    pub data_dir: std::path::PathBuf,
    pub driver: Driver,
    pub limits: Arc<Limits>,
    pub content: ContentStore,
    pub layers: Arc<LayerStore>,
    pub pulls: Arc<PullShare>,
    pub pusher: Arc<Pusher>,
    /// The registry clients, for logins.
    pub registries: Arc<crate::registry::Registries>,
    pub exporter: Arc<Exporter>,
    pub loader: Arc<Loader>,
    pub importer: Arc<Importer>,
    pub rw_layers: Arc<RwLayers>,
    pub committer: Arc<Committer>,
    pub gc: Arc<Gc>,
}

fn parse_digests(digests: &[String]) -> Result<Vec<Digest>, Error> {
    digests
        .iter()
        .map(|c| c.parse::<Digest>().map_err(Error::from))
        .collect()
}

/// Messages a progress stream holds for a slow caller.
const PROGRESS_BUFFER: usize = 64;
/// Archive chunks (1 MiB each) an export holds for a slow caller.
const CHUNK_BUFFER: usize = 4;

/// Runs a streaming operation on its own task, holding at most `buffer`
/// messages for the caller; a caller that drops the stream cancels it.
fn stream_task<T, F, Fut>(buffer: usize, run: F) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(buffer);
    let work = run(tx.clone());
    // The work is the call's: it runs in the call's span, which stays open
    // until the work ends.
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        tokio::select! {
            result = work => {
                if let Err(err) = result {
                    let _ = tx.send(Err(err.into())).await;
                }
            }
            _ = tx.closed() => tracing::info!("caller went away; operation cancelled"),
        }
    }));
    ReceiverStream::new(rx)
}

/// [`stream_task`] for an engine that speaks its own events: each is
/// worded for the wire by `word` as it comes.
fn event_stream<E, T, F, Fut>(
    buffer: usize,
    word: fn(E) -> T,
    run: F,
) -> ReceiverStream<Result<T, Status>>
where
    E: Send + 'static,
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<E>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    stream_task(buffer, move |tx| async move {
        let (events_tx, mut events) = mpsc::channel(buffer);
        let forward = async {
            while let Some(event) = events.recv().await {
                let _ = tx.send(Ok(word(event))).await;
            }
        };
        let (result, ()) = tokio::join!(run(events_tx), forward);
        result
    })
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
            downloads_in_flight: self.limits.downloads.in_flight() as u32,
            uploads_in_flight: self.limits.uploads.in_flight() as u32,
            layers_dir: std::path::absolute(self.layers.dir())
                .map_err(Error::from)?
                .display()
                .to_string(),
        }))
    }

    async fn get_layers(
        &self,
        request: Request<GetLayersRequest>,
    ) -> Result<Response<GetLayersResponse>, Status> {
        let mut layers = Vec::new();
        for chain in &request.get_ref().chain_ids {
            let digest: Digest = chain.parse().map_err(Error::from)?;
            let layer = self.layers.get(&digest).ok_or_else(|| {
                Error::not_found(format!("failed to get layer {chain}: layer does not exist"))
            })?;
            layers.push(LayerInfo {
                chain_id: layer.chain_id.to_string(),
                diff_id: layer.diff_id.to_string(),
                parent: layer
                    .parent
                    .as_ref()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                size: layer.size as i64,
            });
        }
        let image = &request.get_ref().hold_for_image;
        if !image.is_empty() {
            let image: Digest = image.parse().map_err(Error::from)?;
            let chains = parse_digests(&request.get_ref().chain_ids)?;
            self.gc.hold_image(&image, &chains)?;
        }
        Ok(Response::new(GetLayersResponse { layers }))
    }

    type PullStream = ReceiverStream<Result<PullImageProgress, Status>>;

    async fn pull(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let request = request.into_inner();
        Reference::parse(&request.reference).map_err(Error::from)?;
        let order = convert::pull_order(request);
        let pulls = Arc::clone(&self.pulls);
        Ok(Response::new(event_stream(
            PROGRESS_BUFFER,
            progress::pull_line,
            move |events| async move {
                let started = std::time::Instant::now();
                let result = pulls.pull(order, events).await;
                crate::metrics::finished(crate::metrics::Kind::Pull, started, &result);
                result
            },
        )))
    }

    type PushStream = ReceiverStream<Result<PushImageProgress, Status>>;

    /// Docker: `POST /auth`. Nothing is kept.
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let request = request.into_inner();
        let auth = convert::auth(request.auth.as_ref());
        let identity_token =
            crate::registry::login::login(&self.registries, &request.server, &auth).await?;
        Ok(Response::new(LoginResponse {
            status: "Login Succeeded".into(),
            identity_token: identity_token.unwrap_or_default(),
        }))
    }

    async fn push(
        &self,
        request: Request<PushImageRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let request = request.into_inner();
        Reference::parse(&request.reference).map_err(Error::from)?;
        let order = convert::push_order(request);
        let pusher = Arc::clone(&self.pusher);
        Ok(Response::new(event_stream(
            PROGRESS_BUFFER,
            progress::push_line,
            move |events| async move {
                let started = std::time::Instant::now();
                let result = pusher.push(order, events).await;
                crate::metrics::finished(crate::metrics::Kind::Push, started, &result);
                result
            },
        )))
    }

    type ExportStream = ReceiverStream<Result<ExportImagesChunk, Status>>;

    async fn export(
        &self,
        request: Request<ExportImagesRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let request = request.into_inner();
        let platform = request.platform.map(convert::platform);
        let exporter = Arc::clone(&self.exporter);
        Ok(Response::new(event_stream(
            CHUNK_BUFFER,
            |chunk| ExportImagesChunk { chunk },
            move |chunks| async move { exporter.export(request.names, platform, chunks).await },
        )))
    }

    type LoadStream = ReceiverStream<Result<LoadImagesResponse, Status>>;

    async fn load(
        &self,
        request: Request<tonic::Streaming<LoadImagesRequest>>,
    ) -> Result<Response<Self::LoadStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Err(Error::invalid_argument("empty archive").into());
        };
        let (options, chunks) = convert::load_stream(first, inbound);
        let loader = Arc::clone(&self.loader);
        Ok(Response::new(event_stream(
            PROGRESS_BUFFER,
            progress::load_line,
            move |events| async move { loader.load(options, chunks, events).await },
        )))
    }

    async fn import(
        &self,
        request: Request<tonic::Streaming<ImportImageRequest>>,
    ) -> Result<Response<ImportImageResponse>, Status> {
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Err(Error::invalid_argument("empty import").into());
        };
        let (order, chunks) = convert::import_stream(first, inbound);
        let id = self.importer.import(order, chunks).await?;
        Ok(Response::new(ImportImageResponse { id }))
    }

    async fn create_layer(
        &self,
        request: Request<CreateLayerRequest>,
    ) -> Result<Response<CreateLayerResponse>, Status> {
        let layer = self
            .rw_layers
            .create(layers::new_layer(request.into_inner()))
            .await?;
        Ok(Response::new(layers::created(layer)))
    }

    async fn get_layer(
        &self,
        request: Request<GetLayerRequest>,
    ) -> Result<Response<GetLayerResponse>, Status> {
        let layer = self.rw_layers.get(&request.get_ref().container_id)?;
        Ok(Response::new(layers::layer(layer)))
    }

    async fn release_layer(
        &self,
        request: Request<ReleaseLayerRequest>,
    ) -> Result<Response<ReleaseLayerResponse>, Status> {
        self.rw_layers
            .release(&request.get_ref().container_id)
            .await?;
        self.gc.collect_deferred().await?;
        Ok(Response::new(ReleaseLayerResponse {}))
    }

    async fn changes(
        &self,
        request: Request<ChangesRequest>,
    ) -> Result<Response<ChangesResponse>, Status> {
        let changes = self
            .rw_layers
            .changes(&request.get_ref().container_id)
            .await?;
        Ok(Response::new(layers::changes(changes)))
    }

    async fn layer_size(
        &self,
        request: Request<LayerSizeRequest>,
    ) -> Result<Response<LayerSizeResponse>, Status> {
        let size = self.rw_layers.size(&request.get_ref().container_id).await?;
        Ok(Response::new(layers::size(size)))
    }

    async fn mount_image(
        &self,
        request: Request<MountImageRequest>,
    ) -> Result<Response<MountImageResponse>, Status> {
        let request = request.into_inner();
        let platform = request.platform.map(convert::platform);
        let mount = self
            .rw_layers
            .mount_image(&request.image, platform.as_ref())
            .await?;
        Ok(Response::new(layers::image_mount(mount)))
    }

    async fn release_image(
        &self,
        request: Request<ReleaseImageRequest>,
    ) -> Result<Response<ReleaseImageResponse>, Status> {
        self.rw_layers.release_image(&request.get_ref().lease_id);
        self.gc.collect_deferred().await?;
        Ok(Response::new(ReleaseImageResponse {}))
    }

    async fn set_container_state(
        &self,
        request: Request<SetContainerStateRequest>,
    ) -> Result<Response<SetContainerStateResponse>, Status> {
        let request = request.into_inner();
        self.rw_layers
            .set_state(&request.container_id, request.running)
            .await?;
        Ok(Response::new(SetContainerStateResponse {}))
    }

    async fn commit(
        &self,
        request: Request<CommitImageRequest>,
    ) -> Result<Response<CommitImageResponse>, Status> {
        let order = layers::commit_order(request.into_inner());
        let id = self.committer.commit(order).await?;
        Ok(Response::new(CommitImageResponse { id }))
    }

    async fn squash(
        &self,
        request: Request<SquashImageRequest>,
    ) -> Result<Response<SquashImageResponse>, Status> {
        let request = request.into_inner();
        let id = self
            .committer
            .squash(&request.image, &request.parent)
            .await?;
        Ok(Response::new(SquashImageResponse { id }))
    }

    async fn update_config(
        &self,
        request: Request<UpdateConfigRequest>,
    ) -> Result<Response<UpdateConfigResponse>, Status> {
        let request = request.into_inner();
        self.limits.update(
            request.max_concurrent_downloads,
            request.max_concurrent_uploads,
        );
        tracing::info!(
            downloads = self.limits.max_concurrent_downloads(),
            uploads = self.limits.max_concurrent_uploads(),
            "transfer limits updated"
        );
        Ok(Response::new(UpdateConfigResponse {
            max_concurrent_downloads: self.limits.max_concurrent_downloads(),
            max_concurrent_uploads: self.limits.max_concurrent_uploads(),
            max_download_attempts: self.limits.max_download_attempts(),
        }))
    }

    async fn release_layers(
        &self,
        request: Request<ReleaseLayersRequest>,
    ) -> Result<Response<ReleaseLayersResponse>, Status> {
        let images = parse_digests(&request.get_ref().image_ids)?;
        let (removed, forgotten) = self.gc.release_images(&images).await?;
        tracing::debug!(layers = removed.len(), small_blobs = forgotten, "released");
        Ok(Response::new(ReleaseLayersResponse { removed }))
    }

    async fn retain_layers(
        &self,
        request: Request<RetainLayersRequest>,
    ) -> Result<Response<RetainLayersResponse>, Status> {
        let mut images = Vec::new();
        for held in &request.get_ref().images {
            let chain = match held.top_chain.as_str() {
                "" => None,
                chain => Some(chain.parse::<Digest>().map_err(Error::from)?),
            };
            images.push((held.id.parse::<Digest>().map_err(Error::from)?, chain));
        }
        let (removed, missing) = self.gc.retain(&images).await?;
        if !removed.is_empty() {
            tracing::info!(count = removed.len(), "removed layers no image holds");
        }
        Ok(Response::new(RetainLayersResponse { removed, missing }))
    }

    async fn content_size(
        &self,
        _request: Request<ContentSizeRequest>,
    ) -> Result<Response<ContentSizeResponse>, Status> {
        let content = self.content.clone();
        let blobs = tokio::task::spawn_blocking(move || content.list())
            .await
            .map_err(Error::internal)?
            .map_err(Error::from)?;
        let (pulled, served) = crate::metrics::since_start();
        Ok(Response::new(ContentSizeResponse {
            content_size: blobs.iter().map(|(_, size)| *size as i64).sum(),
            layers_size: self.layers.total_size() as i64,
            inodes_used: (blobs.len() as u64 + self.layers.total_inodes()) as i64,
            mountpoint: self.data_dir.display().to_string(),
            pulled_from: Some(super::progress::layer_sources(pulled)),
            served_to_peers: served as i64,
        }))
    }
}
