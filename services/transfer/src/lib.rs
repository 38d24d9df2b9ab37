//! imaged-transfer: the owner of every byte — blobs, layers and registry
//! traffic — and of the download and upload limits.

mod archive;
mod commit;
mod config;
mod containerd;
mod containers;
mod export;
mod fleet;
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
mod trust;

use std::sync::Arc;
use std::time::Duration;

use imaged_api::internal::v1::transfer_server::{SERVICE_NAME, TransferServer};
use imaged_common::config::{Service, ServiceConfig};
use imaged_common::durable;
use imaged_common::events::Publisher;
use imaged_common::server;

pub use config::Args;

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
    let fleet = fleet::Fleet::new(&args.fleet, args.serve_content, serve_content_tls.is_some())?;
    let serving_content = {
        let (content, layers) = (content.clone(), Arc::clone(&layers));
        let in_flight = fleet.as_ref().map(|f| {
            (
                f.in_flight(),
                Duration::from_secs(args.pull.stall_timeout_secs),
            )
        });
        async move {
            match args.serve_content {
                Some(addr) => {
                    registry::serve_content::serve(
                        addr,
                        serve_content_tls,
                        content,
                        layers,
                        in_flight,
                    )
                    .await
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
    let trust = Arc::new(
        trust::Trust::read(
            args.trust.signature_policy.as_deref(),
            args.trust.signature_policy_dir.as_deref(),
            args.trust.registries_d.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("signature policy: {e}"))?,
    );
    if trust.enforcing() {
        tracing::info!("every pull is checked against the signature policy");
    }
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
        .with_trust(Arc::clone(&trust))
        .with_fleet(fleet)
        .with_containerd(
            containerd
                .clone()
                .map(|c| Arc::new(c) as Arc<dyn neighbours::Registrar>),
        ),
    );
    let pusher = Arc::new(push::Pusher::new(
        content.clone(),
        Arc::clone(&layers),
        Arc::clone(&leases),
        Arc::clone(&limits),
        Arc::new(registry::push::Http {
            registries: Arc::clone(&registries),
        }),
        metadata.clone(),
    ));
    let exporter = Arc::new(export::Exporter::new(
        content.clone(),
        Arc::clone(&layers),
        metadata.clone(),
        Arc::new(events.clone()),
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
