//! The transfer engine under pressure: the download limit holds across
//! pulls and changes at runtime, a kill -9 mid-pull resumes cleanly, a
//! stalled layer is named, registry credentials are checked.

use std::time::{Duration, Instant};

use imaged_api::internal::v1::transfer_client::TransferClient;
use imaged_api::internal::v1::*;
use imaged_api::v1::*;
use imaged_common::config::Service;
use imaged_e2e::throttle::Throttle;
use imaged_e2e::{Imaged, TestRegistry, client};
use imaged_fixtures::{Compression, Image, ImageBuilder, LayerBuilder, MediaTypes};
use tonic::Code;

/// An image of `layers` layers of `size` bytes each, half noise.
fn bulky(layers: usize, files: usize, size: usize, seed: u64) -> Image {
    let mut builder = ImageBuilder::new(MediaTypes::Oci);
    for i in 0..layers {
        builder = builder.layer(
            LayerBuilder::new()
                .dir("data")
                .generated_files("data", files, size, seed * 1000 + i as u64)
                .build(Compression::Gzip)
                .unwrap(),
        );
    }
    builder.build().unwrap()
}

async fn pull(imaged: &Imaged, reference: &str) -> Result<Vec<PullImageProgress>, tonic::Status> {
    client::pull(imaged.images(), client::pull_request(reference)).await
}

async fn transfer_info(imaged: &Imaged) -> TransferInfoResponse {
    TransferClient::new(imaged.channel(Service::Transfer))
        .info(TransferInfoRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_limit_holds_and_changes_at_runtime() {
    let registry = TestRegistry::start().await.unwrap();
    let image = bulky(8, 4, 64 * 1024, 1);
    registry
        .fixtures()
        .push_image("bulky/eight:latest", &image)
        .await
        .unwrap();
    let throttle = Throttle::start(&registry.host, 64 * 1024).await.unwrap();
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--max-concurrent-downloads=2")
        .start()
        .await
        .unwrap();
    assert_eq!(transfer_info(&imaged).await.max_concurrent_downloads, 2);

    let reference = format!("{}/bulky/eight:latest", throttle.host);
    let pulling = tokio::spawn(client::pull(
        imaged.images(),
        client::pull_request(&reference),
    ));

    let mut max_before = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while max_before < 2 && Instant::now() < deadline {
        max_before = max_before.max(transfer_info(&imaged).await.downloads_in_flight);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..25 {
        max_before = max_before.max(transfer_info(&imaged).await.downloads_in_flight);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(max_before, 2, "the limit of 2 was not used or not held");

    let updated = imaged
        .images()
        .update_config(UpdateConfigRequest {
            max_concurrent_downloads: Some(4),
            max_concurrent_uploads: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.max_concurrent_downloads, 4);
    assert_eq!(updated.max_concurrent_uploads, 5);

    let mut max_after = 0;
    while !pulling.is_finished() {
        max_after = max_after.max(transfer_info(&imaged).await.downloads_in_flight);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let messages = pulling.await.unwrap().unwrap();
    let last = messages.last().unwrap();
    assert_eq!(
        last.image_id,
        image.id(),
        "in-flight work survived the change"
    );
    assert!(
        max_after > 2 && max_after <= 4,
        "after raising the limit: {max_after} in flight"
    );

    // Docker ignores zero values.
    let answer = imaged
        .images()
        .update_config(UpdateConfigRequest {
            max_concurrent_downloads: Some(0),
            max_concurrent_uploads: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            answer.max_concurrent_downloads,
            answer.max_concurrent_uploads
        ),
        (4, 5)
    );
    assert_eq!(transfer_info(&imaged).await.max_concurrent_downloads, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_pull_then_the_same_pull_completes() {
    let registry = TestRegistry::start().await.unwrap();
    let image = bulky(1, 16, 128 * 1024, 2);
    registry
        .fixtures()
        .push_image("bulky/one:latest", &image)
        .await
        .unwrap();
    let throttle = Throttle::start(&registry.host, 128 * 1024).await.unwrap();
    let mut imaged = Imaged::start().await.unwrap();

    let slow = format!("{}/bulky/one:latest", throttle.host);
    let pulling = tokio::spawn(client::pull(imaged.images(), client::pull_request(&slow)));
    let ingest = imaged.root().join("transfer/content/ingest");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let partial: u64 = std::fs::read_dir(&ingest)
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if partial > 256 * 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "no bytes arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    imaged.kill(Service::Transfer).await;
    let err = pulling
        .await
        .unwrap()
        .expect_err("the pull must fail when transfer dies");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("imaged-transfer"), "{err}");
    imaged.start_service(Service::Transfer).await.unwrap();

    let fast = registry.fixtures().reference("bulky/one:latest");
    let messages = pull(&imaged, &fast).await.unwrap();
    assert_eq!(messages.last().unwrap().image_id, image.id());
    assert!(
        imaged.logs().contains("resuming layer download"),
        "the partial ingest was not resumed"
    );
    client::assert_blobs_match_digests(&imaged.root().join("transfer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_layer_is_cancelled_and_named() {
    let registry = TestRegistry::start().await.unwrap();
    let image = bulky(1, 8, 128 * 1024, 3);
    registry
        .fixtures()
        .push_image("bulky/stall:latest", &image)
        .await
        .unwrap();
    let throttle = Throttle::start(&registry.host, 64 * 1024).await.unwrap();
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--stall-timeout-secs=2")
        .start()
        .await
        .unwrap();
    let reference = format!("{}/bulky/stall:latest", throttle.host);
    let freezer = tokio::spawn(async move {
        while throttle.bytes() < 64 * 1024 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        throttle.freeze(true);
        throttle
    });
    let started = Instant::now();
    let err = pull(&imaged, &reference).await.unwrap_err();
    let _throttle = freezer.await.unwrap();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    let layer = &image.layers[0].digest["sha256:".len().."sha256:".len() + 12];
    assert!(
        err.message().contains(&format!("layer {layer} stalled")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_are_checked_and_never_logged() {
    const PASSWORD: &str = "s3cr3t-Pa55word-imaged";
    let registry = TestRegistry::start_with_auth("tester", PASSWORD)
        .await
        .unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    registry
        .fixtures_as("tester", PASSWORD)
        .push_image("private/base:latest", &catalog.base)
        .await
        .unwrap();
    let imaged = Imaged::builder()
        .env("IMAGED_LOG", "debug")
        .start()
        .await
        .unwrap();
    let reference = registry.fixtures().reference("private/base:latest");
    let with = |password: &str| RegistryAuth {
        username: "tester".into(),
        password: password.into(),
        ..Default::default()
    };
    let attempt = |auth: Option<RegistryAuth>| {
        let request = PullImageRequest {
            auth,
            ..client::pull_request(&reference)
        };
        let pulling = client::pull(imaged.images(), request);
        async move { Ok::<_, tonic::Status>(pulling.await?.pop().unwrap()) }
    };

    let err = attempt(None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = attempt(Some(with("wrong-password"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let last = attempt(Some(with(PASSWORD))).await.unwrap();
    assert_eq!(last.image_id, catalog.base.id());

    let logs = imaged.logs();
    assert!(logs.contains("DEBUG"), "debug logging was on");
    assert!(!logs.contains(PASSWORD), "the password reached a log");
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("tester:{PASSWORD}"),
    );
    assert!(
        !logs.contains(&basic),
        "the basic-auth header reached a log"
    );
}

/// Unmounts a test filesystem when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_leaves_nothing_half_written() {
    let registry = TestRegistry::start().await.unwrap();
    let image = bulky(3, 8, 256 * 1024, 4);
    registry
        .fixtures()
        .push_image("bulky/full:latest", &image)
        .await
        .unwrap();
    let mut imaged = Imaged::builder()
        .only(&[Service::Metadata, Service::Events, Service::Gateway])
        .start()
        .await
        .unwrap();
    let transfer_dir = imaged.root().join("transfer");
    std::fs::create_dir_all(&transfer_dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&transfer_dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "cannot mount a small tmpfs on {} (this test needs root; CI runs as root)",
        transfer_dir.display()
    );
    let _unmount = Mounted(transfer_dir.clone());
    imaged.start_service(Service::Transfer).await.unwrap();

    let reference = registry.fixtures().reference("bulky/full:latest");
    let err = pull(&imaged, &reference).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");

    // Nothing half-written is visible: no layer, no staging, only blobs
    // that match their digests, and no image recorded.
    let layers: Vec<_> = std::fs::read_dir(transfer_dir.join("layers"))
        .unwrap()
        .collect();
    assert!(layers.is_empty(), "{layers:?}");
    // Unpacking threads of the cancelled layers clear their staging as
    // they notice.
    let staging = transfer_dir.join("staging");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(&staging).unwrap().count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<_> = std::fs::read_dir(&staging).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    client::assert_blobs_match_digests(&transfer_dir);
    let images = imaged
        .images()
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty());
    imaged.kill(Service::Transfer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_cancels_the_pull_downstream() {
    let registry = TestRegistry::start().await.unwrap();
    let image = bulky(2, 8, 128 * 1024, 5);
    registry
        .fixtures()
        .push_image("bulky/cancel:latest", &image)
        .await
        .unwrap();
    let throttle = Throttle::start(&registry.host, 32 * 1024).await.unwrap();
    let imaged = Imaged::start().await.unwrap();

    // kubelet's unary PullImage, with a deadline this slow pull can't meet.
    let mut cri = k8s_cri::v1::image_service_client::ImageServiceClient::new(
        imaged.channel(Service::Gateway),
    );
    let mut request = tonic::Request::new(k8s_cri::v1::PullImageRequest {
        image: Some(k8s_cri::v1::ImageSpec {
            image: format!("{}/bulky/cancel:latest", throttle.host),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(1500));
    let err = cri.pull_image(request).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err}"
    );

    // The pull stops in imaged-transfer too: no download left running.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let idle = transfer_info(&imaged).await.downloads_in_flight == 0;
        if idle && imaged.logs().contains("operation cancelled") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pull kept running downstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What socket buffers held drains; then nothing more is fetched.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bytes = throttle.bytes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(throttle.bytes(), bytes, "bytes still flow after the cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_pulls_share_one_operation() {
    let registry = TestRegistry::start().await.unwrap();
    let image = bulky(2, 4, 64 * 1024, 6);
    registry
        .fixtures()
        .push_image("bulky/shared:latest", &image)
        .await
        .unwrap();
    let throttle = Throttle::start(&registry.host, 128 * 1024).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let reference = format!("{}/bulky/shared:latest", throttle.host);

    let mut pulls = Vec::new();
    for _ in 0..5 {
        pulls.push(tokio::spawn(client::pull(
            imaged.images(),
            client::pull_request(&reference),
        )));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for pull in pulls {
        let messages = pull.await.unwrap().unwrap();
        assert_eq!(messages.last().unwrap().image_id, image.id());
        let completed = messages
            .iter()
            .filter(|m| m.status == "Pull complete")
            .count();
        assert_eq!(completed, 2, "every caller sees every layer complete");
    }
    let manifests = registry.gets("/manifests/");
    assert_eq!(
        manifests.len(),
        1,
        "one operation fetched the manifest: {manifests:?}"
    );
    assert_eq!(
        registry.blob_gets().len(),
        3,
        "config and two layers, once each"
    );
}

/// A registry front that refuses every request with 403 DENIED, as a
/// registry does for a repository the credentials may not read (Debian's
/// docker-registry with htpasswd only ever answers 401).
async fn denying_registry() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let body = r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
                let response = format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nDocker-Distribution-Api-Version: registry/2.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (host, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_denies_access_is_permission_denied() {
    let (host, server) = denying_registry().await;
    let imaged = Imaged::start().await.unwrap();
    let err = pull(&imaged, &format!("{host}/private/app:1.0"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("denied"), "{err}");
    server.abort();
}

/// A small deterministic generator: the campaign's kill points differ per
/// round but a failure can be replayed from the printed seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// kill -9 of transfer or metadata at random points of pulls and
/// removals, each round followed by a restart; then the invariants: every
/// stored blob matches its digest, nothing is left in staging, no image
/// is listed that was not pulled, every listed image's layers are there
/// (it pulls again without fetching a layer), and every image pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_campaign_keeps_the_invariants() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("campaign seed {seed}");
    let mut rng = Lcg(seed);
    let registry = TestRegistry::start().await.unwrap();
    let images: Vec<Image> = (0..3).map(|i| bulky(3, 6, 64 * 1024, 40 + i)).collect();
    let mut ids = std::collections::BTreeSet::new();
    for (i, image) in images.iter().enumerate() {
        registry
            .fixtures()
            .push_image(&format!("campaign/app{i}:latest"), image)
            .await
            .unwrap();
        ids.insert(image.id().to_string());
    }
    let throttle = Throttle::start(&registry.host, 1024 * 1024).await.unwrap();
    let mut imaged = Imaged::start().await.unwrap();
    let slow = |i: usize| format!("{}/campaign/app{i}:latest", throttle.host);

    for round in 0..6 {
        let mut tasks = Vec::new();
        for i in 0..3 {
            if rng.below(3) == 0 {
                let mut images = imaged.images();
                let name = slow(i);
                tasks.push(tokio::spawn(async move {
                    images
                        .remove_image(RemoveImageRequest {
                            image: name,
                            force: true,
                            ..Default::default()
                        })
                        .await
                        .map(|_| ())
                }));
            } else {
                let images = imaged.images();
                let name = slow(i);
                tasks.push(tokio::spawn(async move {
                    client::pull(images, client::pull_request(&name))
                        .await
                        .map(|_| ())
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(600))).await;
        let victim = if rng.below(2) == 0 {
            Service::Transfer
        } else {
            Service::Metadata
        };
        eprintln!("round {round}: killing {}", victim.process());
        imaged.kill(victim).await;
        for task in tasks {
            let _ = task.await.unwrap(); // each may fail: its peer died
        }
        imaged.start_service(victim).await.unwrap();
    }
    // Restart transfer once more, as after a crash: start-up cleans up.
    imaged.kill(Service::Transfer).await;
    imaged.start_service(Service::Transfer).await.unwrap();

    let transfer_dir = imaged.root().join("transfer");
    let left: Vec<_> = std::fs::read_dir(transfer_dir.join("staging"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "staging: {left:?}");
    client::assert_blobs_match_digests(&transfer_dir);
    let listed = client::list(imaged.images()).await;
    for image in &listed {
        assert!(
            ids.contains(&image.id),
            "a phantom image {} (seed {seed})",
            image.id
        );
    }
    // Every listed image is whole: pulling it again fetches no layer.
    let gets_before = registry.blob_gets().len();
    for (i, image) in images.iter().enumerate() {
        if listed.iter().any(|l| l.id == image.id()) {
            let fast = registry
                .fixtures()
                .reference(&format!("campaign/app{i}:latest"));
            let messages = pull(&imaged, &fast).await.unwrap();
            assert!(
                messages.iter().all(|m| m.status != "Pull complete"),
                "image {i} was listed but not whole (seed {seed})"
            );
        }
    }
    assert_eq!(registry.blob_gets().len(), gets_before, "seed {seed}");
    // And every image pulls.
    for (i, image) in images.iter().enumerate() {
        let fast = registry
            .fixtures()
            .reference(&format!("campaign/app{i}:latest"));
        let messages = pull(&imaged, &fast).await.unwrap();
        assert_eq!(messages.last().unwrap().image_id, image.id());
    }
}
