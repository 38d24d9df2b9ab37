//! `make bench`: a cold rollout across a fleet (issue 31). Eight full
//! stacks on loopback (127.0.0.2–9), one `nats-server -js`, and the
//! upstream registry behind a proxy that counts its bytes and shares one
//! 200 Mbit/s link among every connection. All eight pull the same fresh
//! image at the same moment, in two modes, each on fresh stacks:
//!
//! - before: peers from `hosts.toml` (each node lists the other seven),
//!   today's baseline: a node serves only what it finished, so at the
//!   same moment every node goes upstream;
//! - directory: peers found through NATS (`--peer-directory nats`), one
//!   claim per blob, blobs served while they arrive.
//!
//! Printed in the same run: upstream bytes ÷ image size, and each node's
//! pull time (p50 and max) against one node pulling alone. Goals:
//! upstream ≤ 1.1×; p50 ≤ 1.3× and max ≤ 1.6× the lone node's time.
//!
//! Also printed, as the floor this one machine sets: the eight nodes
//! pulling at once straight from the registry with no link limit (each
//! its own copy, at loopback speed). Eight stacks share two cores and one
//! disk, so their unpacks contend whatever the network does; no way of
//! sharing blobs can beat that row.
//!
//! Every root is on a fresh journaled ext4 ([`BenchFs`]), kept until its
//! image's rows are done ([`Graveyard`]): on this machine's own ext4 the
//! inode allocator makes creating files within minutes of a mass delete
//! (the previous mode's stacks) cost several times its usual CPU, and the
//! figures swing by 2× from run to run.
//! `FLEET_BENCH_IMAGES=rootfs` runs only the rootfs image.

use std::time::{Duration, Instant};

use imaged_common::config::Service;
use imaged_e2e::bench_fs::{BenchFs, Graveyard};
use imaged_e2e::figures::{Figures, Unit};
use imaged_e2e::nats::NatsServer;
use imaged_e2e::throttle::Throttle;
use imaged_e2e::{Imaged, TestRegistry, client, free_port};
use imaged_fixtures::{Compression, Image, ImageBuilder, LayerBuilder, MediaTypes};

const NODES: usize = 8;
/// 200 Mbit/s.
const LINK: u64 = 25 << 20;

/// About 500 MB: one 400 MB layer and one of 100 MB, incompressible.
fn big_image() -> Image {
    let layer = |name: &str, files: usize, seed: u64| {
        LayerBuilder::new()
            .dir(name)
            .generated_files(name, files, 1 << 20, seed)
            .build(Compression::Gzip)
            .expect("a layer")
    };
    ImageBuilder::new(MediaTypes::Oci)
        .layer(layer("big", 400, 71))
        .layer(layer("small", 100, 72))
        .build()
        .expect("the big image")
}

enum Mode {
    Alone,
    HostsToml,
    Directory,
}

/// `count` fresh stacks in `mode`; the hosts.toml directories live as
/// long as the stacks.
async fn stacks(
    mode: &Mode,
    count: usize,
    upstream: &str,
    nats: &str,
) -> (Vec<Imaged>, Vec<tempfile::TempDir>) {
    let port = free_port();
    let address = |i: usize| format!("127.0.0.{}:{port}", i + 2);
    let (mut nodes, mut configs) = (Vec::new(), Vec::new());
    for i in 0..count {
        let mut builder = Imaged::builder();
        match mode {
            Mode::Alone => {}
            Mode::HostsToml => {
                let others: Vec<String> = (0..count).filter(|&o| o != i).map(address).collect();
                let dir = imaged_e2e::peers_hosts_dir(upstream, &others);
                builder = builder
                    .arg(
                        Service::Transfer,
                        &format!("--registry-config-dir={}", dir.path().display()),
                    )
                    .arg(
                        Service::Transfer,
                        &format!("--serve-content={}", address(i)),
                    );
                configs.push(dir);
            }
            Mode::Directory => {
                builder = builder.fleet_node(&address(i), nats, &format!("bench{i}"));
            }
        }
        nodes.push(builder.start().await.expect("a stack"));
    }
    (nodes, configs)
}

/// Every node pulls `reference` at once; each one's time.
async fn all_at_once(nodes: &[Imaged], reference: &str) -> Vec<Duration> {
    let started = Instant::now();
    let pulls: Vec<_> = nodes
        .iter()
        .map(|node| {
            let pull = client::pull(node.images(), client::pull_request(reference));
            tokio::spawn(async move {
                pull.await.expect("a fleet pull");
                started.elapsed()
            })
        })
        .collect();
    let mut times = Vec::new();
    for pull in pulls {
        times.push(pull.await.unwrap());
    }
    times.sort();
    times
}

struct Outcome {
    upstream: u64,
    p50: Duration,
    max: Duration,
}

/// `count` fresh stacks in `mode` pull `repo` at once from `host` (the
/// counted link, or the registry itself for the floor); their roots go
/// to `graveyard`.
async fn rollout(
    mode: Mode,
    count: usize,
    (counted, host): (&Throttle, &str),
    nats: &str,
    repo: &str,
    graveyard: &mut Graveyard,
) -> Outcome {
    let (nodes, configs) = stacks(&mode, count, &counted.host, nats).await;
    let before = counted.bytes();
    let times = all_at_once(&nodes, &format!("{host}/{repo}")).await;
    let upstream = counted.bytes() - before;
    if std::env::var_os("FLEET_BENCH_LOGS").is_some() {
        for (i, node) in nodes.iter().enumerate() {
            for line in node.logs().lines().filter(|l| l.contains("unpacked")) {
                println!("  node {i}: {line}");
            }
        }
    }
    for node in nodes {
        graveyard.push(Box::new(node.stop()));
    }
    graveyard.push(Box::new(configs));
    Outcome {
        upstream,
        p50: times[times.len() / 2],
        max: *times.last().unwrap(),
    }
}

#[tokio::main]
async fn main() {
    let mut figures = Figures::new("fleet");
    let nats = NatsServer::start().await.expect("nats-server");
    let registry = TestRegistry::start().await.expect("docker-registry");
    let only = std::env::var("FLEET_BENCH_IMAGES").unwrap_or_default();
    let mut cases = vec![(
        "rootfs",
        "rootfs (74 MB, 1 layer)",
        imaged_fixtures::rootfs_image(7).expect("the rootfs image"),
    )];
    if only.is_empty() || only.contains("big") {
        cases.push(("big", "500 MB (one 400 MB layer)", big_image()));
    }
    let counted = Throttle::start_shared(&registry.host, LINK).await.unwrap();
    // Every root from here on is on a fresh filesystem.
    let bench_fs =
        BenchFs::mount(48).expect("a fresh filesystem for the roots (root, loop devices)");
    println!(
        "\nfleet: {NODES} nodes pull one fresh image at once; upstream behind one shared 200 Mbit/s link"
    );
    println!(
        "{:<28} {:<10} {:>9} {:>10} {:>10} {:>10}",
        "image", "mode", "upstream", "p50", "max", "alone"
    );
    for (short, name, image) in cases {
        let size: u64 = image
            .layers
            .iter()
            .map(|l| l.data.len() as u64)
            .sum::<u64>()
            + image.config.data.len() as u64
            + image.manifest.data.len() as u64;
        // A fresh repository per mode: nothing is cached anywhere.
        for mode in ["alone", "floor", "before", "directory"] {
            registry
                .fixtures()
                .push_image(&format!("fleet/{short}-{mode}:1"), &image)
                .await
                .expect("push");
        }
        let link = (&counted, counted.host.as_str());
        let unlimited = (&counted, registry.host.as_str());
        let repo = |mode: &str| format!("fleet/{short}-{mode}:1");
        let mut graveyard: Graveyard = Vec::new();
        let dead = &mut graveyard;
        let alone = rollout(Mode::Alone, 1, link, &nats.url, &repo("alone"), dead).await;
        let floor = rollout(
            Mode::Alone,
            NODES,
            unlimited,
            &nats.url,
            &repo("floor"),
            dead,
        )
        .await;
        let before = rollout(
            Mode::HostsToml,
            NODES,
            link,
            &nats.url,
            &repo("before"),
            dead,
        )
        .await;
        let directory = rollout(
            Mode::Directory,
            NODES,
            link,
            &nats.url,
            &repo("directory"),
            dead,
        )
        .await;
        // This image's roots go before the next image's rows.
        drop(graveyard);
        println!(
            "{name:<28} {:<10} {:>9} {:>10.2?} {:>10.2?} {:>10.2?}",
            "floor", "no link", floor.p50, floor.max, alone.max
        );
        for (mode, outcome) in [("before", &before), ("directory", &directory)] {
            println!(
                "{name:<28} {mode:<10} {:>8.2}x {:>10.2?} {:>10.2?} {:>10.2?}",
                outcome.upstream as f64 / size as f64,
                outcome.p50,
                outcome.max,
                alone.max
            );
        }
        let mib = |b: u64| b as f64 / 1048576.0;
        figures.info(
            format!(
                "{name}: p50 pull, {NODES} nodes at once with no link limit (this machine's floor)"
            ),
            Unit::Seconds,
            floor.p50.as_secs_f64(),
        );
        figures.info(
            format!("{name}: slowest pull, {NODES} nodes at once with no link limit (the floor)"),
            Unit::Seconds,
            floor.max.as_secs_f64(),
        );
        figures.info(
            format!("{name}: upstream MiB, {NODES} nodes at once, hosts.toml peers (before)"),
            Unit::MiB,
            mib(before.upstream),
        );
        figures.ratio(
            format!("{name}: upstream MiB, {NODES} nodes at once through the directory"),
            Unit::MiB,
            mib(directory.upstream),
            "one copy",
            mib(size),
            1.1,
        );
        figures.ratio(
            format!("{name}: p50 pull, {NODES} nodes at once through the directory"),
            Unit::Seconds,
            directory.p50.as_secs_f64(),
            "one node alone",
            alone.max.as_secs_f64(),
            1.3,
        );
        figures.ratio(
            format!("{name}: slowest pull, {NODES} nodes at once through the directory"),
            Unit::Seconds,
            directory.max.as_secs_f64(),
            "one node alone",
            alone.max.as_secs_f64(),
            1.6,
        );
    }
    figures.write();
    drop(bench_fs);
}
