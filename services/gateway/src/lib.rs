//! imaged-gateway: the one public endpoint. It owns nothing on disk; it
//! serves `imaged.v1` and orchestrates the calls that span services.

mod cri;
mod docker;
mod events;
mod forward;
mod images;
mod kept;
mod layers;
mod list_relay;
mod peers;
mod read_model;
mod registries;

use clap::Parser;
use imaged_api::cri::image_service_server::{self, ImageServiceServer};
use imaged_api::v1::events_server::{self, EventsServer};
use imaged_api::v1::images_server::{self, ImagesServer};
use imaged_api::v1::layers_server::{self, LayersServer};
use imaged_api::v1::registries_server::{self, RegistriesServer};
use imaged_common::config::{CommonArgs, PeerArgs, ServiceConfig};
use imaged_common::server;

/// imaged-gateway: the public imaged.v1 API over the three internal services.
#[derive(Parser, Debug)]
#[command(name = "imaged-gateway", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub peers: PeerArgs,
    /// Images the CRI answers as pinned (kubelet's image GC never removes
    /// them), usually the sandbox ("pause") image: references or IDs,
    /// comma-separated.
    #[arg(long, env = "IMAGED_PINNED_IMAGES", value_delimiter = ',')]
    pub pinned_images: Vec<String>,
    /// Where the Docker Engine API (image endpoints) is served; default
    /// `<root>/run/docker.sock`.
    #[arg(long, env = "IMAGED_DOCKER_SOCKET")]
    pub docker_socket: Option<std::path::PathBuf>,
}

/// Largest request message the gateway accepts.
const MAX_REQUEST: usize = 4 << 20;
/// Largest answer it sends: kubelet's CRI client limit.
const MAX_ANSWER: usize = 16 << 20;

/// Runs imaged-gateway on `config` (its root checked by the bootstrap)
/// until SIGTERM or SIGINT. The process's `main` only parses the flags and
/// hands this to [`server::run_main`].
pub async fn run(config: ServiceConfig, args: Args) -> anyhow::Result<()> {
    let peers = peers::Peers::new(&args.peers, &config.root)?;
    // Requests are small (configs, references); answers may be large
    // (ListImages of a big store) but stay under kubelet's 16 MiB.
    // imaged-metadata's published version: what the kept answers are
    // checked against.
    let version = std::sync::Arc::new(imaged_common::version::Reader::new(
        imaged_common::version::path(&config.root),
    ));
    let images = ImagesServer::new(images::ImagesService::new(
        peers.clone(),
        std::sync::Arc::clone(&version),
    ))
    .max_decoding_message_size(MAX_REQUEST)
    .max_encoding_message_size(MAX_ANSWER);
    let routes = tonic::service::Routes::new(list_relay::with_list_relay(
        images,
        peers.clone(),
        std::sync::Arc::clone(&version),
    ))
    .add_service(events::with_event_relay(
        EventsServer::new(events::EventsService::new(peers.clone()))
            .max_decoding_message_size(MAX_REQUEST),
        peers.clone(),
    ))
    .add_service(
        LayersServer::new(layers::LayersService::new(peers.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        RegistriesServer::new(registries::RegistriesService::new(peers.clone()))
            .max_decoding_message_size(MAX_REQUEST),
    )
    .add_service(
        ImageServiceServer::new(cri::CriImageService::new(
            peers,
            &args.pinned_images,
            version,
        ))
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(MAX_ANSWER),
    );
    let docker_socket = args
        .docker_socket
        .unwrap_or_else(|| config.root.join("run").join("docker.sock"));
    let docker = docker::serve(
        docker::bind(&docker_socket, config.socket_gid)?,
        config.root.clone(),
        docker::in_process(routes.clone()),
    );
    let grpc = server::serve(
        &config,
        routes,
        &[
            images_server::SERVICE_NAME,
            events_server::SERVICE_NAME,
            layers_server::SERVICE_NAME,
            registries_server::SERVICE_NAME,
            image_service_server::SERVICE_NAME,
        ],
    );
    let result = tokio::select! {
        served = grpc => served,
        failed = docker => failed,
    };
    let _ = std::fs::remove_file(&docker_socket);
    result
}
