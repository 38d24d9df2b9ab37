//! `make bench`: imaged-events publish rate with 0, 10 and 100 live
//! subscribers, delivery latency to those subscribers, and replay speed
//! from the persisted log, against the real imaged-events process.
//!
//! `EVENTS_RUNS=k100,p10` runs only the runs of those names (see `plan`).

use std::time::{Duration, Instant};

use imaged_api::internal::v1::PublishRequest;
use imaged_api::internal::v1::event_log_client::EventLogClient;
use imaged_api::v1::{Actor, Event, SubscribeRequest};
use imaged_common::config::Service;
use imaged_e2e::Imaged;
use imaged_e2e::figures::{CpuTime, Figures, Unit};

const BATCH: usize = 500;
const PUBLISHERS: usize = 4;

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn event(i: usize) -> Event {
    Event {
        sequence: 0,
        r#type: "image".into(),
        action: "tag".into(),
        actor: Some(Actor {
            id: format!("sha256:{i:064x}"),
            attributes: [("name".to_string(), format!("bench/app:{i}"))]
                .into_iter()
                .collect(),
        }),
        scope: "local".into(),
        time_nano: now_nanos(),
        time: None,
    }
}

struct Run {
    subscribers: usize,
    rate: Option<u64>,
    events: usize,
    publish_rate: f64,
    p50: Duration,
    p99: Duration,
    /// The share of CPU time the hypervisor took during the run.
    stolen: f64,
}

/// Publishes `events` with `subscribers` listening. With `rate` set, the
/// publishers are paced to that many events per second (to measure
/// delivery latency at that load); without it they go flat out.
async fn run(
    imaged: &Imaged,
    subscribers: usize,
    events: usize,
    rate: Option<u64>,
    source: &str,
) -> Run {
    let mut tasks = Vec::new();
    for s in 0..subscribers {
        // Each subscriber has a connection of its own, as separate clients
        // (a `docker events` each) would.
        let channel = imaged.channel(Service::Events);
        let mut client = EventLogClient::new(channel);
        let mut stream = client
            .subscribe(SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(events);
            while latencies.len() < events {
                match stream.message().await {
                    Ok(Some(e)) => latencies.push((now_nanos() - e.time_nano).max(0) as u64),
                    other => panic!("subscriber {s} stopped: {other:?}"),
                }
            }
            latencies
        }));
    }
    // Let every subscription reach imaged-events.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let cpu = CpuTime::now();
    let per_publisher = events / PUBLISHERS;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut client = EventLogClient::new(imaged.channel(Service::Events));
        let source = format!("{source}/{p}");
        publishers.push(tokio::spawn(async move {
            // Paced: send what is due by now, so a slow answer makes the
            // next batch bigger rather than lowering the offered rate.
            let per_second = rate.map(|r| r as f64 / PUBLISHERS as f64);
            let begun = Instant::now();
            let mut sent = 0;
            while sent < per_publisher {
                let n = match per_second {
                    None => BATCH.min(per_publisher - sent),
                    Some(per_second) => {
                        let due = (per_second * begun.elapsed().as_secs_f64()) as usize;
                        let n = due
                            .saturating_sub(sent)
                            .min(BATCH)
                            .min(per_publisher - sent);
                        if n == 0 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                        n
                    }
                };
                let request = PublishRequest {
                    source: source.clone(),
                    first_source_sequence: sent as u64 + 1,
                    events: (sent..sent + n).map(event).collect(),
                };
                client.publish(request).await.unwrap();
                sent += n;
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let publish_time = start.elapsed();
    let mut latencies: Vec<u64> = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map(|n| Duration::from_nanos(*n))
            .unwrap_or_default()
    };
    Run {
        subscribers,
        rate,
        events: per_publisher * PUBLISHERS,
        publish_rate: (per_publisher * PUBLISHERS) as f64 / publish_time.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        stolen: cpu.and_then(CpuTime::stolen_since).unwrap_or(f64::NAN),
    }
}

#[tokio::main]
async fn main() {
    let mut figures = Figures::new("events");
    let imaged = Imaged::builder()
        .arg(Service::Events, "--max-events=1000000")
        .arg(Service::Events, "--max-bytes=1073741824")
        .arg(Service::Events, "--subscriber-backlog=1000000")
        .start()
        .await
        .expect("start imaged");
    const PACE: Option<u64> = Some(50_000);
    // Subscribers, events, offered rate (flat out when none), and a name
    // (the producer's source): `EVENTS_RUNS=k100` runs only the runs so
    // named, to profile one.
    let plan = [
        (0, 200_000, None, "s0"),
        (10, 100_000, None, "s10"),
        (10, 100_000, PACE, "p10"),
        (100, 20_000, None, "s100"),
        (100, 50_000, PACE, "p100"),
        (100, 20_000, Some(10_000), "q100"),
        (100, 10_000, Some(1_000), "k100"),
    ];
    let only = std::env::var("EVENTS_RUNS").unwrap_or_default();
    let mut runs = Vec::new();
    for (subscribers, events, rate, name) in plan {
        if only.is_empty() || only.split(',').any(|n| n == name) {
            runs.push(run(&imaged, subscribers, events, rate, name).await);
        }
    }

    // Replay: everything in the log, from the start.
    let mut client = EventLogClient::new(imaged.channel(Service::Events));
    let start = Instant::now();
    let mut stream = client
        .subscribe(SubscribeRequest {
            since: "0".into(),
            until: format!("{}", now_nanos() / 1_000_000_000 + 1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut replayed = 0usize;
    while let Some(_event) = stream.message().await.unwrap() {
        replayed += 1;
    }
    let replay_rate = replayed as f64 / start.elapsed().as_secs_f64();

    println!(
        "\nimaged-events ({PUBLISHERS} publishers, {BATCH} events per Publish; latency = event creation to subscriber receipt)"
    );
    println!(
        "{:>12} {:>14} {:>9} {:>14} {:>12} {:>12} {:>8}",
        "subscribers", "offered/s", "events", "published/s", "p50", "p99", "stolen"
    );
    for r in &runs {
        let offered = r
            .rate
            .map(|r| r.to_string())
            .unwrap_or_else(|| "max".into());
        println!(
            "{:>12} {:>14} {:>9} {:>14.0} {:>12.2?} {:>12.2?} {:>7.1}%",
            r.subscribers,
            offered,
            r.events,
            r.publish_rate,
            r.p50,
            r.p99,
            r.stolen * 100.0
        );
    }
    println!("replay from the log: {replayed} events at {replay_rate:.0} events/s");
    println!(
        "targets: p99 delivery < 10 ms for 100 subscribers at 1,000 events/s and for 10 at 50,000 events/s"
    );
    println!("stolen: the share of CPU time the hypervisor gave to others during the run");
    for r in &runs {
        let Some(rate) = r.rate else {
            if r.subscribers > 0 {
                figures.info(
                    format!("events published flat out, {} subscribers", r.subscribers),
                    Unit::PerSecond,
                    r.publish_rate,
                );
            }
            continue;
        };
        let figure = format!(
            "event delivery p99, {} subscribers at {rate}/s",
            r.subscribers
        );
        let goal = (r.subscribers, rate) == (100, 1_000) || (r.subscribers, rate) == (10, 50_000);
        if goal {
            figures.at_most(figure, Unit::Seconds, r.p99.as_secs_f64(), 0.010);
        } else {
            figures.info(figure, Unit::Seconds, r.p99.as_secs_f64());
        }
    }
    figures.info("events replayed from the log", Unit::PerSecond, replay_rate);
    figures.write();
}
