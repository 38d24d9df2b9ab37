//! imaged-transfer: the owner of every byte — blobs, layers and registry
//! traffic — and of the download and upload limits.

mod archive;
mod commit;
mod containerd;
mod containers;
mod export;
#[cfg(test)]
mod fuzz;
mod grpc;
mod import;
mod limits;
mod load;
mod metrics;
mod neighbours;
mod pull;
mod push;
mod registry;
mod storage;
mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use clap::Parser;
use imaged_api::internal::v1::transfer_server::{SERVICE_NAME, TransferServer};
use imaged_common::config::{CommonArgs, PeerArgs, Service, ServiceConfig};
use imaged_common::durable;
use imaged_common::events::Publisher;
use imaged_common::server;

/// imaged-transfer: content store, layer store, registry pull and push,
/// tar load, save and import.
#[derive(Parser, Debug)]
#[command(name = "imaged-transfer", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub peers: PeerArgs,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
    #[command(flatten)]
    pub pull: pull::PullArgs,
    #[command(flatten)]
    pub containerd: containerd::ContainerdArgs,
    /// Storage driver: `auto` (overlay2 when overlayfs mounts here, else
    /// vfs), `overlay2` (fail if overlayfs cannot be mounted) or `vfs`.
    #[arg(long, env = "IMAGED_STORAGE_DRIVER", default_value = "auto")]
    pub storage_driver: storage::driver::DriverChoice,
    /// The most bytes one layer may inflate to, uncompressed; past it (or
    /// past the free space of the store) a pull, load or import is refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "IMAGED_MAX_LAYER_SIZE", default_value_t = 64 << 30)]
    pub max_layer_size: u64,
    /// Where containerd reaches imaged as a proxy snapshotter
    /// (`[proxy_plugins.imaged] type = "snapshot"`, `address` = this);
    /// default `<root>/run/snapshots.sock`.
    #[arg(long, env = "IMAGED_SNAPSHOTS_SOCKET")]
    pub snapshots_socket: Option<std::path::PathBuf>,
    /// Serve the content store read-only over the OCI distribution API on
    /// this address (`IP:PORT`, plain HTTP), for other nodes to list as a
    /// mirror: blobs by digest, of images this node holds.
    #[arg(long, env = "IMAGED_SERVE_CONTENT")]
    pub serve_content: Option<std::net::SocketAddr>,
    /// Serve --serve-content over TLS with this certificate (PEM); peers
    /// whose client certificate --serve-content-tls-client-ca signed get
    /// every blob this node holds, others only what it fetched without
    /// credentials.
    #[arg(long, env = "IMAGED_SERVE_CONTENT_TLS_CERT", requires_all = ["serve_content_tls_key", "serve_content_tls_client_ca", "serve_content"])]
    pub serve_content_tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --serve-content-tls-cert.
    #[arg(
        long,
        env = "IMAGED_SERVE_CONTENT_TLS_KEY",
        requires = "serve_content_tls_cert"
    )]
    pub serve_content_tls_key: Option<std::path::PathBuf>,
    /// The fleet's CA (PEM): peers with a client certificate it signed may
    /// have private blobs from --serve-content.
    #[arg(
        long,
        env = "IMAGED_SERVE_CONTENT_TLS_CLIENT_CA",
        requires = "serve_content_tls_cert"
    )]
    pub serve_content_tls_client_ca: Option<std::path::PathBuf>,
}

impl Args {
    /// The TLS of --serve-content, read and checked now (a bad file stops
    /// the start).
    fn serve_content_tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        let (Some(cert), Some(key), Some(ca)) = (
            &self.serve_content_tls_cert,
            &self.serve_content_tls_key,
            &self.serve_content_tls_client_ca,
        ) else {
            return Ok(None);
        };
        let read = |path: &std::path::PathBuf, what: &str| {
            std::fs::read(path).with_context(|| {
                format!("cannot read --serve-content-tls-{what} {}", path.display())
            })
        };
        let acceptor = imaged_common::http::tls_acceptor(
            &read(cert, "cert")?,
            &read(key, "key")?,
            &read(ca, "client-ca")?,
        )
        .context("--serve-content-tls-*")?;
        Ok(Some(acceptor))
    }
}

/// Ingests untouched this long are not resumed but collected at start-up.
const STALE_INGEST: Duration = Duration::from_secs(24 * 3600);

/// Runs imaged-transfer on `config` (its root checked by the bootstrap)
/// until SIGTERM or SIGINT. The process's `main` only parses the flags and
/// hands this to [`server::run_main`].
pub async fn run(config: ServiceConfig, args: Args) -> anyhow::Result<()> {
    let driver = storage::driver::Driver::select(args.storage_driver, &config.data_dir)?;
    tracing::info!(driver = driver.name(), "storage driver selected");
    let content = store::content::ContentStore::open(&config.data_dir.join("content"))?;
    let stale = content.remove_ingests_older_than(STALE_INGEST)?;
    if stale > 0 {
        tracing::info!(stale, "removed stale ingests");
    }
    let layers = Arc::new(
        store::layers::LayerStore::open(&config.data_dir)?
            .with_max_layer_bytes(args.max_layer_size),
    );
    let serve_content_tls = args.serve_content_tls()?;
    let serving_content = {
        let (content, layers) = (content.clone(), Arc::clone(&layers));
        async move {
            match args.serve_content {
                Some(addr) => {
                    registry::serve_content::serve(addr, serve_content_tls, content, layers).await
                }
                None => std::future::pending().await,
            }
        }
    };
    let limits = Arc::new(limits::Limits::new(&args.limits));
    metrics::register_gauges(Arc::clone(&limits), Arc::clone(&layers), content.clone());
    let root = &config.root;
    let metadata: Arc<dyn neighbours::Recorder> = Arc::new(grpc::metadata::Metadata::new(
        args.peers.peer(Service::Metadata, root)?,
    ));
    let events_peer = args.peers.peer(Service::Events, root)?;
    let events = Publisher::start(events_peer.clone(), Service::Transfer.process(), 4096);
    let leases = Arc::new(store::leases::Leases::new());
    let containerd = containerd::Containerd::new(&args.containerd, Arc::clone(&layers));
    if let Some(containerd) = containerd.clone() {
        tokio::spawn(containerd.follow(events_peer, metadata.clone()));
    }
    let registries = Arc::new(registry::Registries::new(
        args.pull.insecure_registries.clone(),
        registry::mirrors::MirrorConfig::new(
            args.pull.registry_config_dir.clone(),
            &args.pull.registry_mirrors,
        )?,
    ));
    tokio::task::spawn_blocking({
        let layers = Arc::clone(&layers);
        move || {
            if let Err(err) = archive::unpack::rehearse(&layers) {
                // A full disk, say: the first pull will say so.
                tracing::debug!("unpack rehearsal at start-up failed: {err}");
            }
        }
    });
    let puller = Arc::new(
        pull::Puller::new(
            store::Stores {
                content: content.clone(),
                layers: Arc::clone(&layers),
                leases: Arc::clone(&leases),
            },
            Arc::clone(&limits),
            Arc::clone(&registries),
            Arc::new(registry::fetch::Http),
            metadata.clone(),
            &args.pull,
        )
        .with_containerd(containerd.clone()),
    );
    let pusher = Arc::new(push::Pusher::new(
        content.clone(),
        Arc::clone(&layers),
        Arc::clone(&leases),
        Arc::clone(&limits),
        Arc::clone(&registries),
        metadata.clone(),
    ));
    let exporter = Arc::new(export::Exporter::new(
        content.clone(),
        Arc::clone(&layers),
        metadata.clone(),
        events.clone(),
    ));
    let loader = Arc::new(load::Loader::new(
        content.clone(),
        Arc::clone(&layers),
        Arc::clone(&leases),
        metadata.clone(),
    ));
    let importer = Arc::new(import::Importer::new(
        content.clone(),
        Arc::clone(&layers),
        Arc::clone(&leases),
        metadata.clone(),
    ));
    let containers = Arc::new(containers::records::Containers::open(
        &config.data_dir,
        driver.storage(),
        Arc::clone(&layers),
        Arc::clone(&leases),
    )?);
    let rw_layers = Arc::new(containers::RwLayers::new(
        Arc::clone(&containers),
        Arc::clone(&layers),
        Arc::clone(&leases),
        metadata.clone(),
    ));
    let committer = Arc::new(commit::Committer::new(
        content.clone(),
        Arc::clone(&layers),
        Arc::clone(&containers),
        Arc::clone(&leases),
        metadata.clone(),
    ));
    let snapshot_store = Arc::new(containerd::snapshots::Snapshots::open(
        &config.data_dir,
        driver.storage(),
        Arc::clone(&layers),
        Arc::clone(&leases),
    )?);
    let gc = Arc::new(store::gc::Gc::new(
        Arc::clone(&layers),
        content.clone(),
        leases,
    ));
    let snapshot_service = containerd::snapshots::service::SnapshotService {
        store: snapshot_store,
        puller: Arc::clone(&puller),
        gc: Arc::clone(&gc),
    };
    let service = grpc::service::TransferService {
        data_dir: config.data_dir.clone(),
        driver,
        limits,
        content,
        layers,
        pulls: Arc::new(pull::share::PullShare::new(puller)),
        pusher,
        registries,
        exporter,
        loader,
        importer,
        rw_layers,
        committer,
        gc,
    };
    let routes = tonic::service::Routes::new(
        TransferServer::new(service).max_decoding_message_size(server::INTERNAL_MESSAGE_LIMIT),
    );
    let snapshots_socket = args
        .snapshots_socket
        .clone()
        .unwrap_or_else(|| root.join("run").join("snapshots.sock"));
    let served = tokio::select! {
        served = server::serve(&config, routes, &[SERVICE_NAME]) => served,
        failed = containerd::snapshots::service::serve(&snapshots_socket, snapshot_service, config.socket_gid) => failed,
        failed = serving_content => failed,
    };
    let _ = std::fs::remove_file(&snapshots_socket);
    events.flush(Duration::from_secs(2)).await;
    served
}
