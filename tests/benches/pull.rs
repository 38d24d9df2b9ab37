//! `make bench`: pull speed and memory on fixture images pushed to a
//! local docker-registry, against two baselines timed in the same run on
//! the same images:
//!
//! - containerd's CRI pull (the path kubelet uses), when containerd is
//!   installed (`make bench` installs Debian's);
//! - the extraction bound: `tar -xzf` of the same layer blobs from local
//!   disk into an empty directory, one after the other.
//!
//! Each cold pull runs [`RUNS`] times on a fresh imaged root and a fresh
//! containerd, alternating, and the medians are compared. For imaged: cold
//! pull wall time, the daemons' CPU (all four processes against
//! containerd's), the warm pull (everything present), the peak RSS of each
//! process, and where the cold pull's time went (download, inflate, hash,
//! create, sync). Every root is on a fresh journaled ext4 made for the
//! run ([`BenchFs`]), so the figures do not depend on what the machine
//! deleted in the minutes before.
//!
//! `PULL_CASES=big,rootfs` runs only the cases whose repository names
//! contain one of those words, to profile one.

use std::path::Path;
use std::time::{Duration, Instant};

use imaged_api::cri::image_service_client::ImageServiceClient;
use imaged_api::cri::{ImageSpec, PullImageRequest as CriPullRequest};
use imaged_api::v1::PullImageRequest;
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::Peer;
use imaged_e2e::bench_fs::{BenchFs, Graveyard};
use imaged_e2e::containerd::Containerd;
use imaged_e2e::figures::{Figures, Unit};
use imaged_e2e::usage::{self, CpuMeter};
use imaged_e2e::{Imaged, TestRegistry};
use imaged_fixtures::Image;
use tokio_stream::StreamExt;

/// Cold pulls of each image, by each side; the medians are compared.
const RUNS: usize = 3;

struct Case {
    name: &'static str,
    /// The figure's name in `make bench`'s table.
    short: &'static str,
    repo: &'static str,
    image: Image,
    /// The cold pull's goal against containerd's.
    max_ratio: f64,
}

fn image(layers: usize, files: usize, size: usize, seed: u64) -> Image {
    imaged_fixtures::generated_image(layers, files, size, seed).expect("building an image")
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "rootfs: 74 MB, 5,400 files, 326 dirs",
            short: "rootfs (1 layer, 5,400 files in 326 dirs)",
            repo: "bench/rootfs:latest",
            image: imaged_fixtures::rootfs_image(4).expect("building the rootfs image"),
            max_ratio: 0.6,
        },
        Case {
            name: "70 MB, 5,300 files in one dir",
            short: "5,300 files in one directory",
            repo: "bench/onedir:latest",
            image: image(1, 5300, 13 * 1024, 4),
            max_ratio: 1.0,
        },
        Case {
            name: "150 MB, 5,000 files, 5 layers",
            short: "150 MB, 5,000 files, 5 layers",
            repo: "bench/files:latest",
            image: image(5, 1000, 30 * 1024, 1),
            max_ratio: 0.6,
        },
        Case {
            name: "20 layers of 5 MB",
            short: "20 layers of 5 MB",
            repo: "bench/layers:latest",
            image: image(20, 5, 1024 * 1024, 2),
            max_ratio: 0.6,
        },
        Case {
            name: "500 MB in 4 layers",
            short: "500 MB in 4 layers",
            repo: "bench/big:latest",
            image: image(4, 125, 1024 * 1024, 3),
            max_ratio: 0.6,
        },
    ]
}

async fn imaged_pull(imaged: &Imaged, reference: &str) -> Duration {
    let started = Instant::now();
    let mut stream = imaged
        .images()
        .pull_image(PullImageRequest {
            reference: reference.into(),
            platform: None,
            auth: None,
            all_tags: false,
            policy_namespace: String::new(),
        })
        .await
        .expect("imaged pull")
        .into_inner();
    while let Some(message) = stream.next().await {
        message.expect("imaged pull progress");
    }
    started.elapsed()
}

/// The parts of the cold pull's time, summed over its layers, from
/// imaged-transfer's `layer … unpacked` lines (download_ms, inflate_ms,
/// hash_ms, create_ms, sync_ms). The first four interleave on one thread
/// per layer, and layers run side by side, so they add up to more than
/// the wall time.
fn breakdown(imaged: &Imaged) -> String {
    let log = std::fs::read_to_string(imaged.log_path(Service::Transfer)).unwrap_or_default();
    let parts = [
        "download_ms",
        "inflate_ms",
        "hash_ms",
        "create_ms",
        "sync_ms",
    ];
    let mut sums = [0.0f64; 5];
    let mut layers = 0;
    for line in log
        .lines()
        .filter(|l| l.contains(" unpacked") && l.contains("download_ms="))
    {
        layers += 1;
        for (i, part) in parts.iter().enumerate() {
            let value = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix(&format!("{part}=")))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            sums[i] += value;
        }
    }
    format!(
        "{layers} layers: download {:.0} ms, inflate {:.0} ms, hash {:.0} ms, create {:.0} ms, sync {:.0} ms",
        sums[0], sums[1], sums[2], sums[3], sums[4]
    )
}

async fn containerd_pull(containerd: &Containerd, reference: &str) -> anyhow::Result<Duration> {
    let channel = Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))?.channel();
    let mut client = ImageServiceClient::new(channel);
    let started = Instant::now();
    client
        .pull_image(CriPullRequest {
            image: Some(ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    Ok(started.elapsed())
}

/// `tar -xzf` of every layer blob, one after the other; answers the time
/// and the time including a final sync (the durability imaged gives).
fn tar_extract(image: &Image, scratch: &Path) -> (Duration, Duration) {
    let blobs = scratch.join("blobs");
    let out = scratch.join("out");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let mut paths = Vec::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let path = blobs.join(format!("{i}.tar.gz"));
        std::fs::write(&path, &layer.data).unwrap();
        paths.push(path);
    }
    settle();
    let started = Instant::now();
    for path in &paths {
        let status = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(path)
            .arg("-C")
            .arg(&out)
            .status()
            .expect("tar");
        assert!(status.success());
    }
    let extracted = started.elapsed();
    settle();
    (extracted, started.elapsed())
}

/// Writes back every dirty page first, so no run pays for another's
/// writes (the registry's pushes, the previous run's files).
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn ratio(ours: Duration, theirs: Option<Duration>) -> String {
    theirs.map_or("-".into(), |t| {
        format!("{:.2}x", ours.as_secs_f64() / t.as_secs_f64())
    })
}

/// One cold pull by imaged on a fresh root: wall time, the four
/// processes' CPU, their peak RSS, the breakdown, and the warm pull after.
struct Ours {
    cold: Duration,
    cpu: f64,
    /// Of which in the kernel.
    kernel: f64,
    /// Peak RSS of transfer, metadata, events and gateway, in MiB.
    rss: [f64; 4],
    parts: String,
    warm: Duration,
    /// Removed only after the last measurement (see [`Graveyard`]).
    root: tempfile::TempDir,
}

async fn ours(reference: &str) -> Ours {
    let imaged = Imaged::start().await.expect("start imaged");
    let services = [
        Service::Transfer,
        Service::Metadata,
        Service::Events,
        Service::Gateway,
    ];
    let pids: Vec<u32> = services.iter().filter_map(|s| imaged.pid(*s)).collect();
    let meter = CpuMeter::new(&pids).expect("a CPU meter");
    settle();
    let before = meter.split();
    let cold = imaged_pull(&imaged, reference).await;
    let after = meter.split();
    let cpu = (after.0 - before.0) + (after.1 - before.1);
    let kernel = after.1 - before.1;
    let rss = services.map(|s| imaged.pid(s).map_or(0.0, usage::peak_rss_mib));
    let parts = breakdown(&imaged);
    let warm = imaged_pull(&imaged, reference).await;
    Ours {
        cold,
        cpu,
        kernel,
        rss,
        parts,
        warm,
        root: imaged.stop(),
    }
}

/// One cold CRI pull by a fresh containerd: wall time, its CPU and the
/// part of it in the kernel. The containerd (its root) goes to
/// `graveyard`.
async fn theirs(
    registry: &str,
    reference: &str,
    graveyard: &mut Graveyard,
) -> Option<(Duration, f64, f64)> {
    let containerd = match Containerd::start(registry).await {
        Ok(c) => c,
        Err(err) => {
            eprintln!("containerd baseline skipped: {err:#}");
            return None;
        }
    };
    let meter = CpuMeter::new(&[containerd.pid()]).expect("a CPU meter");
    settle();
    let before = meter.split();
    let pulled = containerd_pull(&containerd, reference).await;
    let after = meter.split();
    drop(meter);
    graveyard.push(Box::new(containerd));
    let (user, kernel) = (after.0 - before.0, after.1 - before.1);
    match pulled {
        Ok(wall) => Some((wall, user + kernel, kernel)),
        Err(err) => {
            eprintln!("containerd pull of {reference} failed: {err:#}");
            None
        }
    }
}

#[tokio::main]
async fn main() {
    let mut figures = Figures::new("pull");
    let registry = TestRegistry::start().await.expect("start docker-registry");
    let fixtures = registry.fixtures();
    // `PULL_CASES=big,rootfs` runs only the cases whose repository names
    // contain one of the words (to profile one).
    let only = std::env::var("PULL_CASES").unwrap_or_default();
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| only.is_empty() || only.split(',').any(|w| c.repo.contains(w)))
        .collect();
    for case in &cases {
        fixtures
            .push_image(case.repo, &case.image)
            .await
            .expect("push a bench image");
    }
    let with_containerd = Containerd::available();
    if !with_containerd {
        eprintln!("containerd baseline skipped: not installed (make bench installs it)");
    }
    // Every root from here on (imaged's, containerd's, tar's) is on a
    // fresh filesystem, dropped after `graveyard`.
    let bench_fs =
        BenchFs::mount(48).expect("a fresh filesystem for the roots (root, loop devices)");
    println!("roots on a fresh ext4 at {}", bench_fs.path().display());
    let mut graveyard: Graveyard = Vec::new();

    println!(
        "\npull (cold: median of {RUNS} on fresh roots; CPU: the daemons' user+system; ratio = imaged / baseline, lower is better)"
    );
    println!(
        "{:<38} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8} {:>6} {:>9} {:>6} {:>9} {:>6}",
        "image",
        "cold",
        "CPU",
        "warm",
        "peak RSS",
        "containerd",
        "CPU",
        "ratio",
        "tar -xzf",
        "ratio",
        "tar+sync",
        "ratio"
    );
    for case in &cases {
        let reference = fixtures.reference(case.repo);
        let mut runs = Vec::new();
        let mut baseline = Vec::new();
        for _ in 0..RUNS {
            runs.push(ours(&reference).await);
            if with_containerd
                && let Some(run) = theirs(&registry.host, &reference, &mut graveyard).await
            {
                baseline.push(run);
            }
        }
        let cold = usage::median(&runs.iter().map(|r| r.cold).collect::<Vec<_>>());
        let cpu = usage::median(&runs.iter().map(|r| r.cpu).collect::<Vec<_>>());
        let warm = usage::median(&runs.iter().map(|r| r.warm).collect::<Vec<_>>());
        let rss: Vec<f64> = (0..4)
            .map(|i| runs.iter().map(|r| r.rss[i]).fold(0.0, f64::max))
            .collect();
        let median_run = runs.iter().find(|r| r.cold == cold).expect("a run");
        let theirs_wall = (!baseline.is_empty())
            .then(|| usage::median(&baseline.iter().map(|b| b.0).collect::<Vec<_>>()));
        let theirs_cpu = (!baseline.is_empty())
            .then(|| usage::median(&baseline.iter().map(|b| b.1).collect::<Vec<_>>()));
        let scratch = tempfile::tempdir().unwrap();
        let (tar, tar_synced) = tar_extract(&case.image, scratch.path());
        graveyard.push(Box::new(scratch));
        println!(
            "{:<38} {:>8.2?} {:>7.2}s {:>8.1?} {:>7.1}Mi {:>10} {:>8} {:>6} {:>9.2?} {:>6} {:>9.2?} {:>6}",
            case.name,
            cold,
            cpu,
            warm,
            rss[0],
            theirs_wall.map_or("-".into(), |t| format!("{t:.2?}")),
            theirs_cpu.map_or("-".into(), |c| format!("{c:.2}s")),
            ratio(cold, theirs_wall),
            tar,
            ratio(cold, Some(tar)),
            tar_synced,
            ratio(cold, Some(tar_synced)),
        );
        println!(
            "{:<38} each cold run: {}; peak RSS of metadata {:.1} MiB, events {:.1} MiB, gateway {:.1} MiB",
            "",
            runs.iter()
                .map(|r| format!("{:.2?}", r.cold))
                .collect::<Vec<_>>()
                .join(", "),
            rss[1],
            rss[2],
            rss[3]
        );
        println!(
            "{:<38} CPU in the kernel, each run: imaged {}; containerd {}",
            "",
            runs.iter()
                .map(|r| format!("{:.2}s of {:.2}s", r.kernel, r.cpu))
                .collect::<Vec<_>>()
                .join(", "),
            baseline
                .iter()
                .map(|b| format!("{:.2}s of {:.2}s", b.2, b.1))
                .collect::<Vec<_>>()
                .join(", "),
        );
        println!(
            "{:<38} median cold pull, summed per part: {}",
            "", median_run.parts
        );
        if let (Some(wall), Some(their_cpu)) = (theirs_wall, theirs_cpu) {
            figures.ratio(
                format!("cold pull, {}", case.short),
                Unit::Seconds,
                cold.as_secs_f64(),
                "containerd",
                wall.as_secs_f64(),
                case.max_ratio,
            );
            figures.ratio(
                format!("daemon CPU per pull, {}", case.short),
                Unit::Seconds,
                cpu,
                "containerd",
                their_cpu,
                0.5,
            );
        }
        figures.at_most(
            format!("warm pull, {}", case.short),
            Unit::Seconds,
            warm.as_secs_f64(),
            0.020,
        );
        for run in runs {
            graveyard.push(Box::new(run.root));
        }
        if case.repo == "bench/big:latest" {
            let names = ["transfer", "metadata", "events", "gateway"];
            for (name, mib) in names.iter().zip(&rss) {
                if *name == "transfer" {
                    figures.at_most(
                        format!("peak RSS of {name}, {}", case.short),
                        Unit::MiB,
                        *mib,
                        64.0,
                    );
                } else {
                    figures.info(
                        format!("peak RSS of {name}, {}", case.short),
                        Unit::MiB,
                        *mib,
                    );
                }
            }
        }
    }
    println!(
        "targets: cold <= 0.6x containerd (one-directory case: <= 1.0x); CPU <= 0.5x containerd's; warm < 20 ms; peak RSS of transfer <= 64 MiB on the 500 MB image"
    );
    figures.write();
}
