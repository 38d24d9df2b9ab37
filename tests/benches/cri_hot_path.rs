//! `make bench`: the CRI calls kubelet makes most (ImageStatus for every
//! container of every pod sync, ListImages for image GC), through imaged's
//! gateway and against containerd's own CRI plugin, measured in the same
//! run with the same client on the same three images.
//!
//! Needs containerd (`make bench` installs it) and root.

use imaged_api::cri::image_service_client::ImageServiceClient;
use imaged_api::cri::{ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest};
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::{Peer, PeerChannel};
use imaged_e2e::containerd::Containerd;
use imaged_e2e::figures::{Figures, Unit};
use imaged_e2e::latency::{Latency, paired};
use imaged_e2e::{Imaged, TestRegistry};

const WARMUP: usize = 200;
const CALLS: usize = 2000;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// ImageStatus of the three images in turn, imaged against containerd.
async fn status(
    ours: &ImageServiceClient<PeerChannel>,
    theirs: &ImageServiceClient<PeerChannel>,
    references: &[String],
) -> (Latency, Latency) {
    let call = |cri: &ImageServiceClient<PeerChannel>, i: usize| {
        let mut cri = cri.clone();
        let image = spec(&references[i % references.len()]);
        async move {
            let answer = cri
                .image_status(ImageStatusRequest {
                    image,
                    verbose: false,
                })
                .await
                .expect("ImageStatus");
            assert!(answer.into_inner().image.is_some());
        }
    };
    paired(WARMUP, CALLS, |i| call(ours, i), |i| call(theirs, i)).await
}

/// ListImages, imaged against containerd.
async fn list(
    ours: &ImageServiceClient<PeerChannel>,
    theirs: &ImageServiceClient<PeerChannel>,
) -> (Latency, Latency) {
    let call = |cri: &ImageServiceClient<PeerChannel>| {
        let mut cri = cri.clone();
        async move {
            let answer = cri
                .list_images(ListImagesRequest { filter: None })
                .await
                .expect("ListImages");
            assert_eq!(answer.into_inner().images.len(), 3);
        }
    };
    paired(WARMUP, CALLS, |_| call(ours), |_| call(theirs)).await
}

fn row(call: &str, ours: &Latency, theirs: &Latency) {
    println!(
        "{call:<14} {:>10.0?} {:>10.0?} {:>10.0?} {:>10.0?} {:>6.2}x {:>6.2}x",
        ours.p50,
        ours.p99,
        theirs.p50,
        theirs.p99,
        ours.p50.as_secs_f64() / theirs.p50.as_secs_f64(),
        ours.p99.as_secs_f64() / theirs.p99.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    let mut figures = Figures::new("cri_hot_path");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Containerd::available() {
        eprintln!("CRI hot-path bench skipped: needs root and containerd");
        return;
    }
    let registry = TestRegistry::start().await.expect("start docker-registry");
    let fixtures = registry.fixtures();
    let catalog = imaged_fixtures::catalog().expect("fixtures");
    catalog.push_all(&fixtures).await.expect("push");
    let references: Vec<String> = [
        "fixtures/base:latest",
        "fixtures/app:1.0",
        "fixtures/docker:latest",
    ]
    .iter()
    .map(|r| fixtures.reference(r))
    .collect();

    let containerd = Containerd::start(&registry.host).await.expect("containerd");
    let theirs = ImageServiceClient::new(
        Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))
            .expect("endpoint")
            .channel(),
    );
    let imaged = Imaged::start().await.expect("imaged");
    let ours = ImageServiceClient::new(imaged.channel(Service::Gateway));
    for reference in &references {
        for mut cri in [theirs.clone(), ours.clone()] {
            cri.pull_image(PullImageRequest {
                image: spec(reference),
                ..Default::default()
            })
            .await
            .expect("pull");
        }
    }

    println!(
        "\nCRI hot path ({CALLS} calls a side, alternated call by call, same client, same 3 images; ratio = imaged / containerd)"
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>10} {:>7} {:>7}",
        "call", "imaged p50", "p99", "ctrd p50", "p99", "p50", "p99"
    );
    // Call by call, imaged and containerd alternate (see
    // `imaged_e2e::latency`).
    let (a, b) = status(&ours, &theirs, &references).await;
    row("ImageStatus", &a, &b);
    let (c, d) = list(&ours, &theirs).await;
    row("ListImages", &c, &d);
    let measured = [("ImageStatus", a, b), ("ListImages", c, d)];
    println!("target: imaged p50 and p99 at or below containerd's");
    for (call, ours, theirs) in &measured {
        for (stat, o, t) in [("p50", ours.p50, theirs.p50), ("p99", ours.p99, theirs.p99)] {
            figures.ratio(
                format!("CRI {call} {stat}, through the gateway"),
                Unit::Seconds,
                o.as_secs_f64(),
                "containerd",
                t.as_secs_f64(),
                1.0,
            );
        }
    }
    figures.write();
}
