//! imaged-events: the record of every image action, live and replayable.

mod filter;
mod log;
mod service;

use clap::Parser;
use imaged_api::internal::v1::event_log_server::{EventLogServer, SERVICE_NAME};
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

/// The event log's size and its live subscribers, read at each collection.
fn register_gauges(log: log::EventLog) {
    let meter = opentelemetry::global::meter("imaged-events");
    let reader = log.clone();
    meter
        .u64_observable_gauge("imaged.events.subscribers")
        .with_description("live subscribers")
        .with_callback(move |observer| observer.observe(reader.subscribers(), &[]))
        .build();
    let reader = log.clone();
    meter
        .u64_observable_gauge("imaged.events.log.events")
        .with_description("events kept in the log")
        .with_callback(move |observer| observer.observe(reader.count(), &[]))
        .build();
    meter
        .u64_observable_gauge("imaged.events.log.bytes")
        .with_unit("By")
        .with_description("bytes of the events kept in the log")
        .with_callback(move |observer| observer.observe(log.bytes(), &[]))
        .build();
}

fn main() {
    let args: Args = config::parse();
    server::run_main(Service::Events, &args.common, |config| async move {
        let log = log::EventLog::open(&config.data_dir, &args.log)?;
        register_gauges(log.clone());
        let routes =
            tonic::service::Routes::new(EventLogServer::new(service::EventLogService::new(log)));
        server::serve(&config, routes, &[SERVICE_NAME]).await
    })
}
