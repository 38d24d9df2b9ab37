//! imaged-events: the record of every image action, live and replayable.

mod filter;
mod log;
mod nats;
mod service;

use clap::Parser;
use imaged_api::internal::v1::event_log_server::SERVICE_NAME;
use imaged_common::config::{CommonArgs, ServiceConfig};
use imaged_common::server;

/// imaged-events: the persisted event log and its subscribers.
#[derive(Parser, Debug)]
#[command(name = "imaged-events", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub log: log::LogArgs,
    #[command(flatten)]
    pub nats: nats::NatsArgs,
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

/// Runs imaged-events on `config` (its root checked by the bootstrap)
/// until SIGTERM or SIGINT. The process's `main` only parses the flags and
/// hands this to [`server::run_main`].
pub async fn run(config: ServiceConfig, args: Args) -> anyhow::Result<()> {
    let log = log::EventLog::open(&config.data_dir, &args.log)?;
    register_gauges(log.clone());
    nats::start(log.clone(), &args.nats, &config.data_dir)?;
    let routes = tonic::service::Routes::new(service::server(log));
    server::serve(&config, routes, &[SERVICE_NAME]).await
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the flags (unique names and groups), which
    /// otherwise run only when the binary starts.
    #[test]
    fn the_flags_are_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
