//! `make bench`: the cost of the gateway hop, measured on the real
//! processes. SystemInfo through the gateway (which fans out to all three
//! services) against the same three Info calls made directly, in the same
//! run, so the ratio shows what the gateway adds.

use std::time::{Duration, Instant};

use imaged_api::internal::v1::event_log_client::EventLogClient;
use imaged_api::internal::v1::metadata_client::MetadataClient;
use imaged_api::internal::v1::transfer_client::TransferClient;
use imaged_api::internal::v1::{EventLogInfoRequest, MetadataInfoRequest, TransferInfoRequest};
use imaged_api::v1::SystemInfoRequest;
use imaged_common::config::Service;
use imaged_e2e::Imaged;
use imaged_e2e::figures::{Figures, Unit};

const WARMUP: usize = 200;
const CALLS: usize = 3000;

struct Stats {
    median: Duration,
    p99: Duration,
    ops: f64,
}

async fn measure<F, Fut>(mut call: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..WARMUP {
        call().await;
    }
    let mut samples = Vec::with_capacity(CALLS);
    let start = Instant::now();
    for _ in 0..CALLS {
        let t = Instant::now();
        call().await;
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    samples.sort();
    Stats {
        median: samples[CALLS / 2],
        p99: samples[CALLS * 99 / 100],
        ops: CALLS as f64 / total.as_secs_f64(),
    }
}

fn row(name: &str, stats: &Stats, baseline: &Stats) {
    println!(
        "{name:<44} {:>10.1?} {:>10.1?} {:>10.0} {:>8.2}x",
        stats.median,
        stats.p99,
        stats.ops,
        stats.median.as_secs_f64() / baseline.median.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let mut figures = Figures::new("gateway_hop");
    let imaged = Imaged::start().await.expect("start imaged");
    let gateway = imaged.images();
    let metadata = MetadataClient::new(imaged.channel(Service::Metadata));
    let transfer = TransferClient::new(imaged.channel(Service::Transfer));
    let events = EventLogClient::new(imaged.channel(Service::Events));

    let direct = measure(|| {
        let (mut m, mut t, mut e) = (metadata.clone(), transfer.clone(), events.clone());
        async move {
            let (a, b, c) = tokio::join!(
                m.info(MetadataInfoRequest {}),
                t.info(TransferInfoRequest {}),
                e.info(EventLogInfoRequest {})
            );
            a.unwrap();
            b.unwrap();
            c.unwrap();
        }
    })
    .await;
    let through_gateway = measure(|| {
        let mut g = gateway.clone();
        async move {
            g.system_info(SystemInfoRequest {}).await.unwrap();
        }
    })
    .await;

    println!("\ngateway hop ({CALLS} sequential calls each, after {WARMUP} warm-up calls)");
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>9}",
        "call", "median", "p99", "ops/s", "vs direct"
    );
    row("direct: metadata+transfer+events Info", &direct, &direct);
    row("gateway: Images/SystemInfo", &through_gateway, &direct);
    figures.info(
        "SystemInfo through the gateway (fans out to 3), median",
        Unit::Seconds,
        through_gateway.median.as_secs_f64(),
    );
    figures.info(
        "the same 3 Info calls made directly, median",
        Unit::Seconds,
        direct.median.as_secs_f64(),
    );
    figures.write();
}
