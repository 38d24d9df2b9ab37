//! imaged-events: the record of every image action, live and replayable.

mod filter;
mod log;
mod service;

use clap::Parser;
use imaged_api::v1::event_log_server::{EventLogServer, SERVICE_NAME};
use imaged_common::config::{self, CommonArgs, Service};
use imaged_common::server;

/// imaged-events: the persisted event log and its subscribers.
#[derive(Parser, Debug)]
#[command(name = "imaged-events", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    log: log::LogArgs,
}

fn main() {
    let args: Args = config::parse();
    server::run_main(Service::Events, &args.common, |config| async move {
        let log = log::EventLog::open(&config.data_dir, &args.log)?;
        let routes =
            tonic::service::Routes::new(EventLogServer::new(service::EventLogService::new(log)));
        server::serve(&config, routes, &[SERVICE_NAME]).await
    })
}
