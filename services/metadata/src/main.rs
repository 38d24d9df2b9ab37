//! imaged-metadata: the owner of images, references and container records.

mod service;
mod store;

use clap::Parser;
use imaged_api::v1::metadata_server::{MetadataServer, SERVICE_NAME};
use imaged_common::config::{self, CommonArgs, PeerArgs, Service};
use imaged_common::server;

/// imaged-metadata: images, references (tags and digests), parent/child
/// links and container records, stored in redb.
#[derive(Parser, Debug)]
#[command(name = "imaged-metadata", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    peers: PeerArgs,
}

fn main() {
    let args: Args = config::parse();
    server::run_main(Service::Metadata, &args.common, |config| async move {
        let store = store::Store::open(&config.data_dir)?;
        let routes =
            tonic::service::Routes::new(MetadataServer::new(service::MetadataService::new(store)));
        server::serve(&config, routes, &[SERVICE_NAME]).await
    })
}
