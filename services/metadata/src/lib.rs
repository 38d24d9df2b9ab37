//! imaged-metadata: the owner of images, references and container records.

mod cache;
mod create;
mod delete;
mod grpc;
mod images;
mod inspect;
mod layer_store;
mod list;
mod put;
mod resolve;
mod store;
mod tag;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use imaged_api::internal::v1::metadata_server::{MetadataServer, SERVICE_NAME};
use imaged_common::config::{CommonArgs, PeerArgs, Service, ServiceConfig};
use imaged_common::events::{DEFAULT_CAPACITY, Publisher};
use imaged_common::server;

/// imaged-metadata: images, references (tags and digests), parent/child
/// links and container records, stored in redb.
#[derive(Parser, Debug)]
#[command(name = "imaged-metadata", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub peers: PeerArgs,
}

/// Runs imaged-metadata on `config` (its root checked by the bootstrap)
/// until SIGTERM or SIGINT. The process's `main` only parses the flags and
/// hands this to [`server::run_main`].
pub async fn run(config: ServiceConfig, args: Args) -> anyhow::Result<()> {
    let store = tokio::task::block_in_place(|| store::Store::open(&config.data_dir))?
        .publish_versions(imaged_common::version::Publisher::create(
            &imaged_common::version::path(&config.root),
        )?)?;
    let events = Publisher::start(
        args.peers.peer(Service::Events, &config.root)?,
        Service::Metadata.process(),
        DEFAULT_CAPACITY,
    );
    let transfer = grpc::transfer::Transfer {
        peer: args.peers.peer(Service::Transfer, &config.root)?,
    };
    let images = Arc::new(images::Images {
        store,
        transfer: Arc::new(transfer),
        events: Arc::new(events.clone()),
        prune_lock: tokio::sync::Mutex::new(()),
        list_cache: std::sync::Mutex::new(None),
        layer_gate: tokio::sync::Mutex::new(()),
        layout: tokio::sync::OnceCell::new(),
    });
    tokio::spawn(Arc::clone(&images).reconcile_layers());
    let routes = tonic::service::Routes::new(
        MetadataServer::new(grpc::service::MetadataService::new(images))
            .max_decoding_message_size(server::INTERNAL_MESSAGE_LIMIT),
    );
    let served = server::serve(&config, routes, &[SERVICE_NAME]).await;
    if !events.flush(Duration::from_secs(2)).await {
        tracing::warn!(
            pending = events.pending(),
            "stopping with events not yet delivered to imaged-events"
        );
    }
    served
}
