//! `make bench`: what one small pull costs in daemon CPU, imaged's four
//! processes together against containerd's for the same pull, and whether
//! the first pull after start-up costs more than the next ones (nothing
//! should be set up lazily on the first pull). Each image is a one-layer
//! image of about 3 MiB; every pull is cold for its image.
//!
//! CPU is user + system time of all threads, to the nanosecond, from a
//! cgroup each process is moved into (`usage::CpuMeter`).
//!
//! Before each pull the bench asks for the image's status, as kubelet
//! does, and then idles `FIRST_PULL_DELAY_MS` (default 500), before the
//! first pull as before the later ones: long enough to attach a profiler
//! to either (`perf record -e cpu-clock -g -p <pid>` works on this
//! machine).

use std::time::{Duration, Instant};

use imaged_api::cri::image_service_client::ImageServiceClient;
use imaged_api::cri::{ImageSpec, ImageStatusRequest, PullImageRequest};
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::{Peer, PeerChannel};
use imaged_e2e::bench_fs::{BenchFs, Graveyard};
use imaged_e2e::containerd::Containerd;
use imaged_e2e::figures::{Figures, Unit};
use imaged_e2e::usage::CpuMeter;
use imaged_e2e::{Imaged, TestRegistry};

/// Images in the registry; each side starts once per image.
const IMAGES: usize = 9;

/// Pulls after the first in each start.
const LATER: usize = 2;

/// What kubelet asks before it pulls an image: its status (absent, here).
/// Called outside the measured window, so that the first pull's figure
/// does not include the client's connection set-up, which kubelet makes
/// once, at its start.
async fn cri_status(cri: &ImageServiceClient<PeerChannel>, reference: &str) {
    let status = cri
        .clone()
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("CRI ImageStatus")
        .into_inner();
    assert!(status.image.is_none(), "{reference} is present already");
}

async fn cri_pull(cri: &ImageServiceClient<PeerChannel>, reference: &str) -> Duration {
    let started = Instant::now();
    cri.clone()
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("CRI pull");
    started.elapsed()
}

struct Run {
    first_wall: Duration,
    /// The first pull's CPU by process, in the order of the pids.
    first_by_process: Vec<f64>,
    later_wall: Duration,
    /// A later pull's CPU by process, in the order of the pids.
    later_by_process: Vec<f64>,
}

/// What start `start` of a side pulls: image `start` first, then the
/// [`LATER`] images after it (wrapping around). Over all starts every
/// image is pulled once first and [`LATER`] times later, and first and
/// later pulls alternate throughout the bench, so that a change in the
/// machine's speed while it runs (this VM's neighbours) weighs on both
/// figures alike.
fn first_and_later(references: &[String], start: usize) -> Vec<String> {
    (0..=LATER)
        .map(|i| references[(start + i) % references.len()].clone())
        .collect()
}

/// The CPU seconds of each of `meters`.
fn cpu_each(meters: &[CpuMeter]) -> Vec<f64> {
    meters.iter().map(CpuMeter::seconds).collect()
}

/// The first pull, then pulls of the other `references`, on `cri`, with
/// the CPU of the processes `meters` count (one meter a process).
async fn run(
    cri: &ImageServiceClient<PeerChannel>,
    meters: &[CpuMeter],
    references: &[String],
    pause: Duration,
) -> Run {
    cri_status(cri, &references[0]).await;
    tokio::time::sleep(pause).await;
    let before = cpu_each(meters);
    let first_wall = cri_pull(cri, &references[0]).await;
    let first_by_process: Vec<f64> = cpu_each(meters)
        .iter()
        .zip(before)
        .map(|(after, before)| after - before)
        .collect();
    let mut later_by_process = vec![0.0; meters.len()];
    let mut later_wall = Duration::ZERO;
    for reference in &references[1..] {
        cri_status(cri, reference).await;
        tokio::time::sleep(pause).await;
        let before = cpu_each(meters);
        later_wall += cri_pull(cri, reference).await;
        for ((sum, after), before) in later_by_process
            .iter_mut()
            .zip(cpu_each(meters))
            .zip(before)
        {
            *sum += after - before;
        }
    }
    let n = (references.len() - 1).max(1) as f64;
    Run {
        first_wall,
        first_by_process,
        later_wall: later_wall.div_f64(n),
        later_by_process: later_by_process.iter().map(|c| c / n).collect(),
    }
}

impl Run {
    /// The first pull's CPU, all processes together.
    fn first_cpu(&self) -> f64 {
        self.first_by_process.iter().sum()
    }

    /// A later pull's CPU, all processes together.
    fn later_cpu(&self) -> f64 {
        self.later_by_process.iter().sum()
    }

    /// The first pulls of `runs` averaged, and their later pulls.
    fn averaged(runs: &[Run]) -> Run {
        let n = runs.len() as f64;
        let processes = runs[0].first_by_process.len();
        let mean = |f: fn(&Run) -> Duration| runs.iter().map(f).sum::<Duration>().div_f64(n);
        let mean_each = |f: fn(&Run) -> &Vec<f64>| {
            (0..processes)
                .map(|i| runs.iter().map(|r| f(r)[i]).sum::<f64>() / n)
                .collect()
        };
        Run {
            first_wall: mean(|r| r.first_wall),
            first_by_process: mean_each(|r| &r.first_by_process),
            later_wall: mean(|r| r.later_wall),
            later_by_process: mean_each(|r| &r.later_by_process),
        }
    }
}

#[tokio::main]
async fn main() {
    let mut figures = Figures::new("first_pull");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Containerd::available() {
        eprintln!("first-pull bench skipped: needs root and containerd");
        return;
    }
    let registry = TestRegistry::start().await.expect("start docker-registry");
    let fixtures = registry.fixtures();
    let mut references = Vec::new();
    for i in 0..IMAGES {
        let image =
            imaged_fixtures::generated_image(1, 3, 1024 * 1024, 40 + i as u64).expect("an image");
        let repo = format!("bench/small{i}:1");
        fixtures.push_image(&repo, &image).await.expect("push");
        references.push(fixtures.reference(&repo));
    }

    // Every root from here on is on a fresh journaled ext4, and none is
    // removed before the end (`graveyard`): on this machine's ext4
    // without a journal, files made within a minute of others' removal
    // cost more (see `BenchFs`), so each start's first pull would pay
    // for the removal of the start before, and the later pulls would not.
    let bench_fs =
        BenchFs::mount(8).expect("a fresh filesystem for the roots (root, loop devices)");
    let mut graveyard: Graveyard = Vec::new();

    // The registry answers an image's first reads more slowly than later
    // ones; a throwaway imaged reads every image once, so that neither
    // side measured pays that (whoever came first would).
    {
        let warm = Imaged::start().await.expect("imaged");
        let cri = ImageServiceClient::new(warm.channel(Service::Gateway));
        for reference in &references {
            cri_pull(&cri, reference).await;
        }
        graveyard.push(Box::new(warm.stop()));
    }

    // Each side starts once per image; its first pulls are averaged, and
    // so are its later pulls.
    let delay = Duration::from_millis(
        std::env::var("FIRST_PULL_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500),
    );
    let mut ours: Vec<Run> = Vec::new();
    for start in 0..IMAGES {
        let imaged = Imaged::start().await.expect("imaged");
        // Let start-up finish (its reconciliation) before measuring.
        tokio::time::sleep(delay).await;
        let meters: Vec<CpuMeter> = [
            Service::Events,
            Service::Metadata,
            Service::Transfer,
            Service::Gateway,
        ]
        .iter()
        .map(|s| CpuMeter::new(&[imaged.pid(*s).expect("a pid")]).expect("a CPU meter"))
        .collect();
        let cri = ImageServiceClient::new(imaged.channel(Service::Gateway));
        let pulls = first_and_later(&references, start);
        ours.push(run(&cri, &meters, &pulls, delay).await);
        drop(meters);
        graveyard.push(Box::new(imaged.stop()));
    }
    let mut theirs: Vec<Run> = Vec::new();
    for start in 0..IMAGES {
        let containerd = Containerd::start(&registry.host).await.expect("containerd");
        tokio::time::sleep(delay).await;
        let cri = ImageServiceClient::new(
            Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))
                .expect("endpoint")
                .channel(),
        );
        let pulls = first_and_later(&references, start);
        let meter = CpuMeter::new(&[containerd.pid()]).expect("a CPU meter");
        theirs.push(run(&cri, &[meter], &pulls, delay).await);
        graveyard.push(Box::new(containerd));
    }
    for (name, runs) in [("imaged", &ours), ("containerd", &theirs)] {
        let each: Vec<String> = runs
            .iter()
            .map(|r| {
                format!(
                    "{:.1}/{:.1}",
                    r.first_cpu() * 1000.0,
                    r.later_cpu() * 1000.0
                )
            })
            .collect();
        println!(
            "{name}, each start, first/later CPU in ms: {}",
            each.join(" ")
        );
    }
    let (ours, theirs) = (Run::averaged(&ours), Run::averaged(&theirs));

    println!("\nsmall pulls (1 layer, 3 MiB; CRI PullImage; CPU of the daemons, all threads)");
    println!(
        "{:<12} {:>11} {:>10} {:>11} {:>10}",
        "", "first wall", "first CPU", "later wall", "later CPU"
    );
    for (name, r) in [("imaged", &ours), ("containerd", &theirs)] {
        println!(
            "{name:<12} {:>11.1?} {:>8.0}ms {:>11.1?} {:>8.0}ms",
            r.first_wall,
            r.first_cpu() * 1000.0,
            r.later_wall,
            r.later_cpu() * 1000.0
        );
    }
    println!(
        "ratios (imaged / containerd): first wall {:.2}x, later wall {:.2}x, later CPU {:.2}x; imaged first/later CPU {:.2}x",
        ours.first_wall.as_secs_f64() / theirs.first_wall.as_secs_f64(),
        ours.later_wall.as_secs_f64() / theirs.later_wall.as_secs_f64(),
        ours.later_cpu() / theirs.later_cpu().max(0.001),
        ours.first_cpu() / ours.later_cpu().max(0.001),
    );
    for (pull, cpu) in [
        ("first pull", &ours.first_by_process),
        ("later pull", &ours.later_by_process),
    ] {
        println!(
            "imaged's {pull} by process: events {:.1}ms, metadata {:.1}ms, transfer {:.1}ms, gateway {:.1}ms",
            cpu[0] * 1000.0,
            cpu[1] * 1000.0,
            cpu[2] * 1000.0,
            cpu[3] * 1000.0,
        );
    }
    println!(
        "targets: wall <= 0.6x containerd; CPU <= 0.5x; the first pull costs no more than later ones"
    );
    let small = "small pull (1 layer, 3 MiB)";
    figures.ratio(
        format!("first cold {small}"),
        Unit::Seconds,
        ours.first_wall.as_secs_f64(),
        "containerd",
        theirs.first_wall.as_secs_f64(),
        0.6,
    );
    figures.ratio(
        format!("later cold {small}, mean of {}", IMAGES * LATER),
        Unit::Seconds,
        ours.later_wall.as_secs_f64(),
        "containerd",
        theirs.later_wall.as_secs_f64(),
        0.6,
    );
    figures.ratio(
        format!("daemon CPU per later {small}"),
        Unit::Seconds,
        ours.later_cpu(),
        "containerd",
        theirs.later_cpu(),
        0.5,
    );
    figures.ratio(
        format!("daemon CPU of the first {small}"),
        Unit::Seconds,
        ours.first_cpu(),
        "imaged later",
        ours.later_cpu(),
        1.0,
    );
    figures.write();
    drop(graveyard);
    drop(bench_fs);
}
