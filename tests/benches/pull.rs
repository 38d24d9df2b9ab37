//! `make bench`: pull speed and memory on three fixture images pushed to a
//! local docker-registry, against two baselines timed in the same run on
//! the same images:
//!
//! - containerd's CRI pull (the path kubelet uses), when containerd is
//!   installed (`make bench` installs Debian's);
//! - the extraction bound: `tar -xzf` of the same layer blobs from local
//!   disk into an empty directory, one after the other.
//!
//! For imaged: cold pull wall time (fresh root), warm pull (everything
//! present), and the peak RSS of imaged-transfer during the cold pull (and
//! of the other three processes, on a line of their own).

use std::path::Path;
use std::time::{Duration, Instant};

use imaged_api::cri::image_service_client::ImageServiceClient;
use imaged_api::cri::{ImageSpec, PullImageRequest as CriPullRequest};
use imaged_api::v1::PullImageRequest;
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::Peer;
use imaged_e2e::containerd::Containerd;
use imaged_e2e::{Imaged, TestRegistry};
use imaged_fixtures::Image;
use tokio_stream::StreamExt;

struct Case {
    name: &'static str,
    repo: &'static str,
    image: Image,
}

fn image(layers: usize, files: usize, size: usize, seed: u64) -> Image {
    imaged_fixtures::generated_image(layers, files, size, seed).expect("building an image")
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "150 MB, 5,000 files, 5 layers",
            repo: "bench/files:latest",
            image: image(5, 1000, 30 * 1024, 1),
        },
        Case {
            name: "70 MB, 5,300 files, 1 layer",
            repo: "bench/rootfs:latest",
            image: image(1, 5300, 13 * 1024, 4),
        },
        Case {
            name: "20 layers of 5 MB",
            repo: "bench/layers:latest",
            image: image(20, 5, 1024 * 1024, 2),
        },
        Case {
            name: "500 MB in 4 layers",
            repo: "bench/big:latest",
            image: image(4, 125, 1024 * 1024, 3),
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

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
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

#[tokio::main]
async fn main() {
    let registry = TestRegistry::start().await.expect("start docker-registry");
    let fixtures = registry.fixtures();
    let cases = cases();
    for case in &cases {
        fixtures
            .push_image(case.repo, &case.image)
            .await
            .expect("push a bench image");
    }
    let containerd = if Containerd::available() {
        match Containerd::start(&registry.host).await {
            Ok(c) => Some(c),
            Err(err) => {
                eprintln!("containerd baseline skipped: {err:#}");
                None
            }
        }
    } else {
        eprintln!("containerd baseline skipped: not installed (make bench installs it)");
        None
    };

    println!(
        "\npull (cold: fresh root; warm: everything present; ratio = imaged / baseline, lower is better)"
    );
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>10} {:>7} {:>10} {:>7} {:>10} {:>7}",
        "image",
        "cold",
        "warm",
        "peak RSS",
        "containerd",
        "ratio",
        "tar -xzf",
        "ratio",
        "tar+sync",
        "ratio"
    );
    for case in &cases {
        let reference = fixtures.reference(case.repo);
        let imaged = Imaged::start().await.expect("start imaged");
        settle();
        let cold = imaged_pull(&imaged, &reference).await;
        let rss = peak_rss_mib(imaged.pid(Service::Transfer).expect("transfer pid"));
        let others: Vec<String> = [Service::Metadata, Service::Events, Service::Gateway]
            .iter()
            .map(|s| {
                format!(
                    "{} {:.1} MiB",
                    s.short(),
                    imaged.pid(*s).map_or(0.0, peak_rss_mib)
                )
            })
            .collect();
        let parts = breakdown(&imaged);
        let warm = imaged_pull(&imaged, &reference).await;
        drop(imaged);

        settle();
        let theirs = match &containerd {
            Some(c) => match containerd_pull(c, &reference).await {
                Ok(t) => Some(t),
                Err(err) => {
                    eprintln!("containerd pull of {reference} failed: {err:#}");
                    None
                }
            },
            None => None,
        };
        let scratch = tempfile::tempdir().unwrap();
        let (tar, tar_synced) = tar_extract(&case.image, scratch.path());
        println!(
            "{:<32} {:>9.2?} {:>9.2?} {:>7.1}Mi {:>10} {:>7} {:>10.2?} {:>7} {:>10.2?} {:>7}",
            case.name,
            cold,
            warm,
            rss,
            theirs.map_or("-".into(), |t| format!("{t:.2?}")),
            ratio(cold, theirs),
            tar,
            ratio(cold, Some(tar)),
            tar_synced,
            ratio(cold, Some(tar_synced)),
        );
        println!("{:<32} peak RSS of the others: {}", "", others.join(", "));
        println!("{:<32} cold pull, summed per part: {parts}", "");
    }
    println!(
        "targets: cold <= 0.6x containerd and <= 1.0x tar; warm < 20 ms; peak RSS <= 64 MiB on the 500 MB image"
    );
}
