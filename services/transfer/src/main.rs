//! imaged-transfer: the owner of every byte — blobs, layers and registry
//! traffic — and of the download and upload limits.

mod driver;
mod limits;
mod service;

use clap::Parser;
use imaged_api::v1::transfer_server::{SERVICE_NAME, TransferServer};
use imaged_common::config::{self, CommonArgs, PeerArgs, Service};
use imaged_common::server;

/// imaged-transfer: content store, layer store, registry pull and push,
/// tar load, save and import.
#[derive(Parser, Debug)]
#[command(name = "imaged-transfer", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    peers: PeerArgs,
    #[command(flatten)]
    limits: limits::LimitArgs,
    /// Storage driver: `auto` (overlay2 when overlayfs mounts here, else
    /// vfs), `overlay2` (fail if overlayfs cannot be mounted) or `vfs`.
    #[arg(long, env = "IMAGED_STORAGE_DRIVER", default_value = "auto")]
    storage_driver: driver::DriverChoice,
}

fn main() {
    let args: Args = config::parse();
    server::run_main(Service::Transfer, &args.common, |config| async move {
        let driver = driver::Driver::select(args.storage_driver, &config.data_dir)?;
        tracing::info!(driver = driver.name(), "storage driver selected");
        let limits = limits::Limits::new(&args.limits);
        let service = service::TransferService::new(driver, limits);
        let routes = tonic::service::Routes::new(TransferServer::new(service));
        server::serve(&config, routes, &[SERVICE_NAME]).await
    })
}
