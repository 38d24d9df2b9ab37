//! `make bench`: containerd pulling onto imaged's proxy snapshotter
//! against containerd's own overlayfs snapshotter, same images, same
//! registry, same run, each pull cold (a fresh containerd and a fresh
//! imaged):
//!
//! - `ctr images pull`: containerd downloads and applies every layer, into
//!   overlayfs or into imaged's active snapshots;
//! - containerd's CRI PullImage (kubelet's path): with imaged as the
//!   snapshotter it takes the remote-snapshot path, where imaged fetches
//!   and unpacks each layer itself.
//!
//! Needs root and containerd (`make bench` installs it).

use std::time::{Duration, Instant};

use imaged_api::cri::image_service_client::ImageServiceClient;
use imaged_api::cri::{ImageSpec, PullImageRequest};
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::Peer;
use imaged_e2e::containerd::Containerd;
use imaged_e2e::{Imaged, TestRegistry};
use imaged_fixtures::Image;

fn image(layers: usize, files: usize, size: usize, seed: u64) -> Image {
    imaged_fixtures::generated_image(layers, files, size, seed).expect("building an image")
}

/// Which snapshotter containerd pulls onto, and how.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Ctr,
    Cri,
}

/// One cold pull; answers its wall time.
async fn cold_pull(registry: &TestRegistry, reference: &str, imaged: bool, way: Way) -> Duration {
    settle();
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("snapshots.sock");
    let (containerd, _imaged, snapshotter) = if imaged {
        let containerd = Containerd::start_with_imaged(&registry.host, &socket)
            .await
            .expect("start containerd");
        let imaged = Imaged::builder()
            .arg(
                Service::Transfer,
                &format!("--snapshots-socket={}", socket.display()),
            )
            .start()
            .await
            .expect("start imaged");
        (containerd, Some(imaged), "imaged")
    } else {
        let containerd = Containerd::start(&registry.host)
            .await
            .expect("start containerd");
        (containerd, None, "overlayfs")
    };
    let started = Instant::now();
    match way {
        Way::Ctr => {
            containerd
                .ctr(&[
                    "images",
                    "pull",
                    "--plain-http",
                    "--snapshotter",
                    snapshotter,
                    reference,
                ])
                .await
                .expect("ctr pull");
        }
        Way::Cri => {
            let channel = Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))
                .unwrap()
                .channel();
            ImageServiceClient::new(channel)
                .pull_image(PullImageRequest {
                    image: Some(ImageSpec {
                        image: reference.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .expect("CRI pull");
        }
    }
    started.elapsed()
}

fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

#[tokio::main]
async fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Containerd::available() {
        eprintln!("snapshotter bench skipped: needs root and containerd");
        return;
    }
    let registry = TestRegistry::start().await.expect("start docker-registry");
    let fixtures = registry.fixtures();
    let cases = [
        (
            "60 MB, 2,000 files, 4 layers",
            "bench/snap-files:1",
            image(4, 500, 30 * 1024, 7),
        ),
        (
            "10 layers of 4 MB",
            "bench/snap-layers:1",
            image(10, 4, 1024 * 1024, 8),
        ),
    ];
    for (_, repo, image) in &cases {
        fixtures.push_image(repo, image).await.expect("push");
    }
    println!(
        "\ncontainerd pulls, cold, median of 3: onto imaged's snapshotter / onto its own overlayfs"
    );
    println!(
        "{:<30} {:>6} {:>10} {:>10} {:>7}",
        "image", "path", "imaged", "overlayfs", "ratio"
    );
    for (name, repo, _) in &cases {
        let reference = fixtures.reference(repo);
        for (way, label) in [(Way::Ctr, "ctr"), (Way::Cri, "CRI")] {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..3 {
                ours.push(cold_pull(&registry, &reference, true, way).await);
                theirs.push(cold_pull(&registry, &reference, false, way).await);
            }
            let (ours, theirs) = (median(ours), median(theirs));
            println!(
                "{:<30} {:>6} {:>10.2?} {:>10.2?} {:>6.2}x",
                name,
                label,
                ours,
                theirs,
                ours.as_secs_f64() / theirs.as_secs_f64()
            );
        }
    }
    println!("CRI onto imaged: imaged fetches and unpacks the layers (remote snapshots)");
}
