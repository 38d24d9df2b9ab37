//! Pull and push through the gateway against a real registry: every
//! fixture shape unpacked exactly, platform selection, warm pulls, push and
//! pull back by digest, shared layers fetched once, layer release on rmi.

use std::collections::HashSet;

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use imaged_common::peer::PeerChannel;
use imaged_e2e::client::inspect;
use imaged_e2e::unpacked::assert_layer_matches;
use imaged_e2e::{Imaged, TestRegistry, client};
use imaged_fixtures::{Catalog, Image, catalog};
use tokio_stream::StreamExt;
use tonic::Code;

type Client = ImagesClient<PeerChannel>;

/// Pulls `reference` and answers every progress message, or the status
/// the stream ended with.
pub async fn pull(
    images: &mut Client,
    reference: &str,
    platform: Option<Platform>,
) -> Result<Vec<PullImageProgress>, tonic::Status> {
    let request = PullImageRequest {
        platform,
        ..client::pull_request(reference)
    };
    client::pull(images.clone(), request).await
}

async fn setup() -> (Imaged, TestRegistry, Catalog) {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    (imaged, registry, catalog)
}

/// Whether imaged-transfer's content store holds the blob `digest`.
fn stored_blob(imaged: &Imaged, digest: &str) -> bool {
    imaged
        .root()
        .join("transfer/content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
        .exists()
}

fn chain_hexes(image: &Image) -> Vec<String> {
    let mut chain: Option<String> = None;
    image
        .layers
        .iter()
        .map(|layer| {
            let next = match &chain {
                None => layer.diff_id.clone(),
                Some(parent) => {
                    imaged_fixtures::sha256_digest(format!("{parent} {}", layer.diff_id).as_bytes())
                }
            };
            chain = Some(next.clone());
            next.trim_start_matches("sha256:").to_string()
        })
        .collect()
}

fn assert_unpacked(imaged: &Imaged, image: &Image) {
    for (layer, chain) in image.layers.iter().zip(chain_hexes(image)) {
        let dir = imaged
            .root()
            .join("transfer/layers")
            .join(&chain)
            .join("diff");
        assert_layer_matches(&layer.tar().unwrap(), &dir)
            .unwrap_or_else(|e| panic!("layer {chain}: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_every_fixture_shape_exactly() {
    let (imaged, registry, catalog) = setup().await;
    let mut client = imaged.images();
    // The registry is open: a pull asks only for what it needs, never for
    // /v2/ (oci-client's auth probe) before each blob.
    let probes = || {
        registry
            .requests()
            .iter()
            .filter(|(method, path, _)| method == "GET" && path == "/v2/")
            .count()
    };
    let probes_before = probes();
    for (repo_tag, image) in catalog.images() {
        let reference = registry.fixtures().reference(repo_tag);
        let messages = pull(&mut client, &reference, None)
            .await
            .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
        assert_eq!(probes(), probes_before, "{reference}: /v2/ was asked");
        let last = messages.last().unwrap();
        assert_eq!(last.image_id, image.id(), "{reference}");
        assert_eq!(last.digest, image.manifest.digest, "{reference}");
        assert_eq!(last.reference, reference);
        assert!(
            last.status
                .starts_with("Status: Downloaded newer image for"),
            "{}",
            last.status
        );
        let statuses: HashSet<&str> = messages.iter().map(|m| m.status.as_str()).collect();
        assert!(
            statuses.contains("Pull complete") || statuses.contains("Already exists"),
            "{statuses:?}"
        );
        assert_unpacked(&imaged, image);

        let inspected = inspect(&mut client, &reference).await.unwrap();
        assert_eq!(inspected.id, image.id());
        assert!(
            inspected.repo_tags.contains(&reference),
            "{:?}",
            inspected.repo_tags
        );
        let name = reference.rsplit_once(':').unwrap().0;
        assert_eq!(
            inspected.repo_digests,
            vec![format!("{name}@{}", image.manifest.digest)]
        );
    }

    // The history of a multi-layer image shows every layer's size.
    let app = registry.fixtures().reference("fixtures/app:1.0");
    let history = client
        .image_history(ImageHistoryRequest {
            image: app,
            platform: None,
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(history.len(), 4, "{history:?}");
    assert!(
        history.iter().filter(|h| h.size > 0).count() >= 3,
        "{history:?}"
    );

    // A warm pull fetches nothing, and does no layer work at all: no
    // layer line, as in Docker when the image is already here.
    let before = registry.blob_gets().len();
    let reference = registry.fixtures().reference("fixtures/app:1.0");
    let messages = pull(&mut client, &reference, None).await.unwrap();
    let lines: Vec<&str> = messages.iter().map(|m| m.status.as_str()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("Pulling from "), "{lines:?}");
    assert!(
        messages
            .last()
            .unwrap()
            .status
            .starts_with("Status: Image is up to date for")
    );
    assert_eq!(
        registry.blob_gets().len(),
        before,
        "a warm pull downloaded blobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_the_platform_from_an_index() {
    let (imaged, registry, catalog) = setup().await;
    let mut client = imaged.images();
    let reference = registry.fixtures().reference("fixtures/multi:latest");

    let arm = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: "v8".into(),
    };
    let messages = pull(&mut client, &reference, Some(arm)).await.unwrap();
    let last = messages.last().unwrap();
    assert_eq!(last.image_id, catalog.multi.images[1].id());
    assert_eq!(
        last.digest, catalog.multi.index.digest,
        "the index digest is recorded"
    );
    assert_unpacked(&imaged, &catalog.multi.images[1]);

    let messages = pull(&mut client, &reference, None).await.unwrap();
    assert_eq!(
        messages.last().unwrap().image_id,
        catalog.multi.images[0].id(),
        "host default amd64"
    );

    let s390x = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: String::new(),
    };
    let err = pull(&mut client, &reference, Some(s390x))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(
        err.message()
            .contains("no matching manifest for linux/s390x"),
        "{err}"
    );
    assert!(err.message().contains("linux/arm64"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_errors_have_their_codes() {
    let (imaged, registry, _catalog) = setup().await;
    let mut client = imaged.images();

    let missing_tag = registry.fixtures().reference("fixtures/base:nope");
    let err = pull(&mut client, &missing_tag, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    let missing_repo = registry.fixtures().reference("fixtures/none:latest");
    let err = pull(&mut client, &missing_repo, None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");

    let err = pull(&mut client, "Bad//Reference", None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // A registry nobody listens on: UNAVAILABLE after the retries.
    let port = imaged_e2e::free_port();
    let err = pull(&mut client, &format!("127.0.0.1:{port}/x/y:latest"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");

    // Nothing was recorded by the failed pulls.
    let images = client
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty(), "{images:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_fetch_each_shared_blob_once() {
    let (imaged, registry, catalog) = setup().await;
    let references = [
        "fixtures/base:latest",
        "fixtures/app:1.0",
        "fixtures/docker:latest",
    ];
    let mut pulls = Vec::new();
    for i in 0..10 {
        let mut client = imaged.images();
        let reference = registry
            .fixtures()
            .reference(references[i % references.len()]);
        pulls.push(tokio::spawn(async move {
            pull(&mut client, &reference, None).await
        }));
    }
    for p in pulls {
        p.await.unwrap().unwrap();
    }
    let gets = registry.blob_gets();
    let layer_gets: Vec<&String> = gets
        .iter()
        .filter(|path| {
            [&catalog.base, &catalog.app, &catalog.docker]
                .iter()
                .flat_map(|image| image.layers.iter())
                .any(|l| path.ends_with(&l.digest))
        })
        .collect();
    let distinct: HashSet<&str> = layer_gets
        .iter()
        .map(|p| p.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        layer_gets.len(),
        distinct.len(),
        "some layer blob was downloaded twice: {layer_gets:?}"
    );
    // base's layer is shared by all three images.
    assert_eq!(distinct.len(), 4, "{distinct:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_back_by_digest() {
    let (imaged, registry, catalog) = setup().await;
    let mut client = imaged.images();
    let mut events = imaged_api::v1::events_client::EventsClient::new(
        imaged.channel(imaged_common::config::Service::Gateway),
    )
    .subscribe(SubscribeRequest {
        filters: vec!["type=image".into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    let source = registry.fixtures().reference("fixtures/app:1.0");
    pull(&mut client, &source, None).await.unwrap();
    let target = registry.fixtures().reference("pushed/app:v2");
    client
        .tag_image(TagImageRequest {
            source: source.clone(),
            target: target.clone(),
        })
        .await
        .unwrap();
    let messages = client::push(client.clone(), &target, false).await.unwrap();
    let last = messages.last().unwrap();
    assert!(last.digest.starts_with("sha256:"), "{messages:?}");
    assert!(
        messages
            .iter()
            .any(|m| m.status.starts_with("Mounted from") || m.status == "Pushed"),
        "{messages:?}"
    );

    // The image now carries the pushed manifest's digest.
    let by_digest = format!("{}@{}", target.rsplit_once(':').unwrap().0, last.digest);
    let inspected = inspect(&mut client, &target).await.unwrap();
    assert!(
        inspected.repo_digests.contains(&by_digest),
        "{:?}",
        inspected.repo_digests
    );

    // Drop the image with every reference, then pull back by digest.
    client
        .remove_image(RemoveImageRequest {
            image: inspected.id.clone(),
            force: true,
            prune_children: None,
        })
        .await
        .unwrap();
    let by_digest = format!("{}@{}", target.rsplit_once(':').unwrap().0, last.digest);
    let messages = pull(&mut client, &by_digest, None).await.unwrap();
    assert_eq!(messages.last().unwrap().image_id, catalog.app.id());
    assert_eq!(
        messages.last().unwrap().status,
        format!("Status: Downloaded newer image for {by_digest}")
    );
    assert_unpacked(&imaged, &catalog.app);

    // The events, in order, with Docker's actors and attributes.
    let mut seen = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(std::time::Duration::from_secs(3), events.next()).await
    {
        let event = event.unwrap();
        let actor = event.actor.unwrap();
        seen.push((event.action, actor.id, actor.attributes));
    }
    // As Docker: push's actor is the reference pushed, its name the
    // repository.
    let actions: Vec<&str> = seen.iter().map(|(a, _, _)| a.as_str()).collect();
    let push = actions
        .iter()
        .position(|a| *a == "push")
        .expect("a push event");
    let (_, id, attributes) = &seen[push];
    assert_eq!(id, &target);
    assert_eq!(attributes["name"], target.rsplit_once(':').unwrap().0);
    assert_eq!(attributes["com.example.tier"], "web");
    let metadata: Vec<&(String, String, _)> = seen.iter().collect();
    // Forced removal by ID untags every reference (two tags, two digests),
    // then deletes.
    assert_eq!(
        actions,
        [
            "pull", "tag", "push", "untag", "untag", "untag", "untag", "delete", "pull"
        ],
        "{seen:?}"
    );
    let (_, id, attributes) = metadata[0];
    assert_eq!(id, &source);
    assert_eq!(attributes["name"], source.rsplit_once(':').unwrap().0);
    assert_eq!(attributes["com.example.tier"], "web", "labels are copied");
    assert_eq!(metadata[8].1, by_digest);
}

/// imaged-metadata's start-up reconciliation tells imaged-transfer which
/// images exist and holds PutImage back until it is answered. A pull that
/// wrote its manifest and config meanwhile waits to record its image; the
/// reconciliation, decided without that image, must not forget its blobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_during_the_start_up_reconciliation_keeps_its_blobs() {
    use imaged_common::config::Service;
    let registry = TestRegistry::start().await.unwrap();
    let catalog = catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    // imaged-metadata first: its reconciliation finds imaged-transfer down
    // and tries again every 2 s, holding PutImage back meanwhile.
    let mut imaged = Imaged::builder()
        .only(&[Service::Events, Service::Metadata])
        .start()
        .await
        .unwrap();
    imaged.start_service(Service::Transfer).await.unwrap();
    imaged.start_service(Service::Gateway).await.unwrap();
    let mut client = imaged.images();
    let base = registry.fixtures().reference("fixtures/base:latest");
    pull(&mut client, &base, None).await.unwrap();
    let has = |digest: &str| stored_blob(&imaged, digest);
    assert!(
        has(&catalog.base.manifest.digest) && has(catalog.base.id()),
        "the pulled image's manifest and config were forgotten"
    );
    // imaged-metadata recorded it.
    let inspected = inspect(&mut client, &base).await.unwrap();
    assert_eq!(inspected.id, catalog.base.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_image_releases_its_layers() {
    let (imaged, registry, catalog) = setup().await;
    let mut client = imaged.images();
    let base = registry.fixtures().reference("fixtures/base:latest");
    let app = registry.fixtures().reference("fixtures/app:1.0");
    pull(&mut client, &base, None).await.unwrap();
    pull(&mut client, &app, None).await.unwrap();
    let layers = imaged.root().join("transfer/layers");
    let chains = chain_hexes(&catalog.app);
    client
        .remove_image(RemoveImageRequest {
            image: app.clone(),
            force: false,
            prune_children: None,
        })
        .await
        .unwrap();
    let gone = |chain: &str| !layers.join(chain).exists();
    for _ in 0..100 {
        if gone(&chains[2]) && gone(&chains[1]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        gone(&chains[1]) && gone(&chains[2]),
        "app's own layers stay"
    );
    assert!(
        layers.join(&chains[0]).exists(),
        "base's layer is still held by base"
    );
    // app's manifest and config went with it; base's stay.
    let blobs = imaged.root().join("transfer/content/blobs/sha256");
    let has = |digest: &str| stored_blob(&imaged, digest);
    for _ in 0..100 {
        if !has(&catalog.app.manifest.digest) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!has(&catalog.app.manifest.digest), "app's manifest stays");
    assert!(!has(catalog.app.id()), "app's config stays");
    assert!(has(&catalog.base.manifest.digest) && has(catalog.base.id()));

    // The last image gone, the content store is empty.
    client
        .remove_image(RemoveImageRequest {
            image: base.clone(),
            force: false,
            prune_children: None,
        })
        .await
        .unwrap();
    let left = || std::fs::read_dir(&blobs).unwrap().count();
    for _ in 0..100 {
        if left() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left(), 0, "blobs outlive every image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reconciles_layers_and_images() {
    let (mut imaged, registry, catalog) = setup().await;
    let mut client = imaged.images();
    let base = registry.fixtures().reference("fixtures/base:latest");
    let app = registry.fixtures().reference("fixtures/app:1.0");
    pull(&mut client, &base, None).await.unwrap();
    pull(&mut client, &app, None).await.unwrap();
    imaged.terminate_all().await.unwrap();

    // Damage while stopped: one of app's layers lost, one orphan layer
    // (a copy of base's under another chain ID) that no image holds.
    let layers = imaged.root().join("transfer/layers");
    let chains = chain_hexes(&catalog.app);
    std::fs::remove_dir_all(layers.join(&chains[2])).unwrap();
    let orphan_hex = "ab".repeat(32);
    let orphan = layers.join(&orphan_hex);
    std::fs::create_dir_all(orphan.join("diff")).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layers.join(&chains[0]).join("layer.json")).unwrap())
            .unwrap();
    meta["chain_id"] = format!("sha256:{orphan_hex}").into();
    meta["parent"] = serde_json::Value::Null;
    std::fs::write(
        orphan.join("layer.json"),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();

    for service in imaged_common::config::Service::ALL {
        imaged.start_service(service).await.unwrap();
    }
    let mut client = imaged.images();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ids: Vec<String> = client
            .list_images(ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images
            .into_iter()
            .map(|i| i.id)
            .collect();
        let settled = ids == vec![catalog.base.id().to_string()]
            && !orphan.exists()
            && !layers.join(&chains[1]).exists();
        if settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reconciled: images {ids:?}, orphan {}, app layer {}",
            orphan.exists(),
            layers.join(&chains[1]).exists()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(layers.join(&chains[0]).exists(), "base keeps its layer");
    assert!(
        imaged
            .logs()
            .contains("forgetting an image whose layers are missing")
    );
    // And app can simply be pulled again.
    pull(&mut client, &app, None).await.unwrap();
    assert_unpacked(&imaged, &catalog.app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_image_is_pushed_as_docker_pushes_it() {
    let (imaged, registry, _catalog) = setup().await;
    // An imported rootfs: its layer is stored as the uncompressed tar.
    let rootfs = imaged_fixtures::LayerBuilder::new()
        .dir("etc")
        .file("etc/motd", &b"welcome to imaged\n".repeat(20_000))
        .build(imaged_fixtures::Compression::None)
        .unwrap()
        .tar()
        .unwrap();
    let target = registry.fixtures().reference("local/app:v1");
    let id = client::import(imaged.images(), &target, &rootfs)
        .await
        .unwrap();

    let messages = client::push(imaged.images(), &target, false).await.unwrap();
    let last = messages.last().unwrap();
    assert_eq!(last.tag, "v1");
    let (body, media_type) = registry.manifest(&target).await;
    assert_eq!(
        media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(imaged_fixtures::sha256_digest(&body), last.digest);
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(manifest["config"]["digest"], id);
    let layer = &manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
    let pushed = layer["size"].as_u64().unwrap();
    assert!(
        pushed * 20 < rootfs.len() as u64,
        "the layer goes up compressed: {pushed} bytes for a {} byte tar",
        rootfs.len()
    );
    // What went up is the gzip of the very tar that was imported.
    let oref: oci_client::Reference = target.parse().unwrap();
    let mut blob = Vec::new();
    registry
        .fixtures()
        .client()
        .pull_blob(&oref, layer["digest"].as_str().unwrap(), &mut blob)
        .await
        .unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(blob.as_slice()), &mut tar)
        .unwrap();
    assert_eq!(tar, rootfs);

    // A second push sends nothing again and names the same manifest.
    let again = client::push(imaged.images(), &target, false).await.unwrap();
    assert!(
        again.iter().any(|m| m.status == "Layer already exists"),
        "{again:?}"
    );
    assert!(!again.iter().any(|m| m.status == "Pushed"), "{again:?}");
    assert_eq!(again.last().unwrap().digest, last.digest);

    // The image carries repo@digest, as `docker inspect` shows after a push.
    let inspected = inspect(&mut imaged.images(), &id).await.unwrap();
    let name = target.rsplit_once(':').unwrap().0;
    assert_eq!(inspected.repo_digests, [format!("{name}@{}", last.digest)]);

    // Docker's refusals.
    let missing_tag = format!("{name}:nope");
    let status = client::push(imaged.images(), &missing_tag, false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        format!("tag does not exist: {missing_tag}")
    );
    let unknown = registry.fixtures().reference("nobody/here:v1");
    let status = client::push(imaged.images(), &unknown, false)
        .await
        .unwrap_err();
    assert_eq!(
        status.message(),
        format!(
            "An image does not exist locally with the tag: {}",
            unknown.rsplit_once(':').unwrap().0
        )
    );
    let status = client::push(imaged.images(), &target, true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // All tags: each gets its own final line.
    imaged
        .images()
        .tag_image(TagImageRequest {
            source: id.clone(),
            target: format!("{name}:v2"),
        })
        .await
        .unwrap();
    let all = client::push(imaged.images(), name, true).await.unwrap();
    let tags: Vec<&str> = all
        .iter()
        .filter(|m| !m.digest.is_empty())
        .map(|m| m.tag.as_str())
        .collect();
    assert_eq!(tags, ["v1", "v2"]);
    let (_, media_type) = registry.manifest(&format!("{name}:v2")).await;
    assert_eq!(
        media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_tried_again() {
    let registry = TestRegistry::start().await.unwrap();
    let front = imaged_e2e::front::Front::start(&registry.host)
        .await
        .unwrap();
    let imaged = Imaged::start().await.unwrap();
    let rootfs = imaged_fixtures::LayerBuilder::new()
        .file("hello", b"retried\n")
        .build(imaged_fixtures::Compression::None)
        .unwrap()
        .tar()
        .unwrap();
    let target = format!("{}/retry/app:v1", front.host);
    client::import(imaged.images(), &target, &rootfs)
        .await
        .unwrap();
    // The registry fails the first two uploads it is asked to start: the
    // config's and the layer's (they go up at once); only the layer's
    // shows, as in Docker.
    front.rule(
        "POST",
        "/blobs/uploads/",
        imaged_e2e::front::Answer::Body {
            status: 503,
            headers: Vec::new(),
            body: b"busy".to_vec(),
        },
        2,
    );
    let messages = client::push(imaged.images(), &target, false).await.unwrap();
    assert!(
        messages.iter().any(|m| m.status == "Retrying in 1 seconds"),
        "{messages:?}"
    );
    let last = messages.last().unwrap();
    let (body, _) = registry
        .manifest(&format!("{}/retry/app:v1", registry.host))
        .await;
    assert_eq!(imaged_fixtures::sha256_digest(&body), last.digest);
}

/// Layers are asked for by range, from byte 0 on a fresh download, so the
/// blob is hashed once (by the ingest; oci-client leaves a 206 unhashed).
/// A registry that ignores ranges answers 200 with the whole blob, and
/// the pull is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_fetched_by_range_and_a_registry_without_ranges_serves_them_whole() {
    let (imaged, registry, catalog) = setup().await;
    let image = &catalog.app;
    registry
        .fixtures()
        .push_image("ranges/app:1", image)
        .await
        .unwrap();
    let direct = registry.fixtures().reference("ranges/app:1");
    client::pull(imaged.images(), client::pull_request(&direct))
        .await
        .unwrap();
    for layer in &image.layers {
        let path = format!("/blobs/{}", layer.digest);
        let statuses: Vec<String> = registry
            .requests()
            .into_iter()
            .filter(|(method, p, _)| method == "GET" && p.ends_with(&path))
            .map(|(_, _, status)| status)
            .collect();
        assert_eq!(statuses, ["206"], "{}", layer.digest);
    }
    assert_unpacked(&imaged, image);

    // A front that answers every layer 200, whole, as a registry without
    // range support does; on a fresh node.
    let other = Imaged::start().await.unwrap();
    let front = imaged_e2e::front::Front::start(&registry.host)
        .await
        .unwrap();
    for layer in &image.layers {
        front.rule(
            "GET",
            &format!("/blobs/{}", layer.digest),
            imaged_e2e::front::Answer::Body {
                status: 200,
                headers: Vec::new(),
                body: layer.data.clone(),
            },
            usize::MAX,
        );
    }
    let through = format!("{}/ranges/app:1", front.host);
    client::pull(other.images(), client::pull_request(&through))
        .await
        .unwrap();
    // Every layer was the front's whole-blob answer.
    let answered = front.requests();
    for layer in &image.layers {
        let path = format!("/blobs/{}", layer.digest);
        assert!(
            answered
                .iter()
                .any(|r| r.starts_with("GET") && r.contains(&path)),
            "{path} not asked of the front: {answered:?}"
        );
    }
    assert_unpacked(&other, image);
    let inspected = inspect(&mut other.images(), &through).await.unwrap();
    assert_eq!(inspected.id, image.id());
}
