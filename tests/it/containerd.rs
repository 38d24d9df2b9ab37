//! imaged as containerd's snapshotter, with the real parts: a private
//! containerd 1.6 (its own root, state and socket) configured with imaged
//! as its proxy snapshotter `imaged`, runc, and the real registry.
//!
//! - containerd's CRI PullImage takes the remote-snapshot path: imaged
//!   fetches every layer, containerd only the manifest and config (counted
//!   in the registry's access log);
//! - `ctr run` starts a container on imaged's layers and it prints what
//!   the image's shell echoes;
//! - an imaged rmi and GC while containerd holds a container snapshot on
//!   the image leave that container able to start;
//! - kubelet's split endpoints: an image pulled through imaged's CRI is
//!   registered in containerd (`--containerd-address`), containerd's CRI
//!   finds it and runs it in a pod (RunPodSandbox on the host network with
//!   a sandbox image containerd pulls onto imaged's snapshotter,
//!   CreateContainer, StartContainer); imaged's rmi removes it there too.
//!
//! Needs root (containerd mounts overlays and runc makes namespaces).

use std::collections::BTreeSet;
use std::time::Duration;

use imaged_api::v1::{PullImageRequest as ImagedPull, RemoveImageRequest};
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::Peer;
use imaged_e2e::containerd::Containerd;
use imaged_e2e::{Imaged, TestRegistry};
use imaged_fixtures::RUNNABLE_OUTPUT;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, ImageStatusRequest, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemoveImageRequest as CriRemove, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};

/// imaged serving containerd's proxy snapshotter on `snapshots` and
/// registering what it pulls in `containerd`.
async fn imaged_for(containerd: &Containerd, snapshots: &std::path::Path) -> Imaged {
    Imaged::builder()
        .arg(
            Service::Transfer,
            &format!("--snapshots-socket={}", snapshots.display()),
        )
        .arg(
            Service::Transfer,
            &format!("--containerd-address={}", containerd.socket().display()),
        )
        .start()
        .await
        .unwrap()
}

/// The runnable fixture image, pushed to `registry` as `name`; answers it
/// and its full reference.
async fn push_runnable(registry: &TestRegistry, name: &str) -> (imaged_fixtures::Image, String) {
    let image = imaged_fixtures::runnable().unwrap();
    let fixtures = registry.fixtures();
    fixtures.push_image(name, &image).await.unwrap();
    (image, fixtures.reference(name))
}

/// containerd with imaged as its proxy snapshotter, then imaged, told
/// where containerd is; and the directory of the snapshotter's socket.
async fn containerd_then_imaged(
    registry: &TestRegistry,
) -> (tempfile::TempDir, Containerd, Imaged) {
    let sockets = tempfile::tempdir().unwrap();
    let snapshots = sockets.path().join("snapshots.sock");
    let containerd = Containerd::start_with_imaged(&registry.host, &snapshots)
        .await
        .unwrap();
    let imaged = imaged_for(&containerd, &snapshots).await;
    // containerd dialled the snapshotter before imaged served it, and
    // answers UNAVAILABLE until its backoff (at most 3 s) lets it dial
    // again: wait until it reaches imaged, as a node's start-up would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while containerd
        .ctr(&["snapshots", "--snapshotter", "imaged", "ls"])
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd never reached imaged's snapshotter\n{}",
            containerd.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    (sockets, containerd, imaged)
}

fn require_root_and_containerd() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "containerd and runc need root: run the tests as root"
    );
    assert!(
        Containerd::available(),
        "containerd is not installed (make test installs it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_runs_containers_on_layers_only_imaged_downloaded() {
    require_root_and_containerd();
    let registry = TestRegistry::start().await.unwrap();
    let (image, reference) = push_runnable(&registry, "fixtures/runnable:1").await;
    let imaged = Imaged::start().await.unwrap();
    let containerd =
        Containerd::start_with_imaged(&registry.host, &imaged.root().join("run/snapshots.sock"))
            .await
            .unwrap();

    // containerd's own CRI pull, as kubelet would ask it.
    let channel = Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))
        .unwrap()
        .channel();
    let mut cri = ImageServiceClient::new(channel);
    let pulled = cri
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", containerd.log(), imaged.logs()))
        .into_inner();
    assert_eq!(pulled.image_ref, image.id());

    // Every layer was downloaded once, and not by containerd: its content
    // store holds only the manifest and the config.
    let gets = registry.blob_gets();
    for layer in &image.layers {
        let n = gets.iter().filter(|p| p.ends_with(&layer.digest)).count();
        assert_eq!(n, 1, "layer {} fetched {n} times: {gets:?}", layer.digest);
    }
    let content = containerd.ctr(&["content", "ls", "-q"]).await.unwrap();
    let stored: BTreeSet<&str> = content.lines().collect();
    for layer in &image.layers {
        assert!(
            !stored.contains(layer.digest.as_str()),
            "containerd downloaded layer {} itself: {stored:?}",
            layer.digest
        );
    }
    assert!(
        stored.contains(image.manifest.digest.as_str()),
        "{stored:?}"
    );

    // The snapshots containerd knows are imaged's layers, named by chain.
    let snapshots = containerd
        .ctr(&["snapshots", "--snapshotter", "imaged", "ls"])
        .await
        .unwrap();
    assert_eq!(
        snapshots
            .lines()
            .filter(|l| l.contains("Committed"))
            .count(),
        image.layers.len(),
        "{snapshots}"
    );

    // A container runs from them.
    run_hello(&containerd, &imaged, &reference, "imaged-e2e-hello").await;

    // imaged pulls the same image: nothing more is downloaded.
    let before = registry.blob_gets().len();
    let mut images = imaged.images();
    let mut progress = images
        .pull_image(ImagedPull {
            reference: reference.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while progress.message().await.unwrap().is_some() {}
    let fetched: Vec<String> = registry.blob_gets()[before..].to_vec();
    assert!(
        fetched
            .iter()
            .all(|p| !image.layers.iter().any(|l| p.ends_with(&l.digest))),
        "imaged fetched layers it had: {fetched:?}"
    );

    // A container snapshot made, then the image removed from imaged and
    // its layers released: the container still starts.
    containerd
        .ctr(&[
            "container",
            "create",
            "--snapshotter",
            "imaged",
            &reference,
            "imaged-e2e-kept",
        ])
        .await
        .unwrap();
    images
        .remove_image(RemoveImageRequest {
            image: reference.clone(),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap();
    containerd
        .ctr(&["images", "rm", "--sync", &reference])
        .await
        .unwrap();
    let out = containerd
        .ctr(&["task", "start", "imaged-e2e-kept"])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", containerd.log(), imaged.logs()));
    assert_eq!(out.trim(), RUNNABLE_OUTPUT);
    containerd
        .ctr(&["container", "rm", "imaged-e2e-kept"])
        .await
        .unwrap();

    // containerd's GC removes the snapshots it no longer needs; imaged's
    // layers, which no imaged image needs either, go with them.
    let names = containerd.ctr(&["images", "ls", "-q"]).await.unwrap();
    for name in names.lines() {
        containerd
            .ctr(&["images", "rm", "--sync", name])
            .await
            .unwrap();
    }
    let layers = imaged.root().join("transfer/layers");
    // Up to 30 s: containerd's GC runs after its deletes settle, and this
    // file's other tests (the image build gzips ~300 MB) share the CPU.
    for _ in 0..300 {
        if std::fs::read_dir(&layers).map(|d| d.count()).unwrap_or(0) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "imaged's layers were not collected: {:?}\ncontainerd's snapshots: {}\n{}",
        std::fs::read_dir(&layers)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        containerd
            .ctr(&["snapshots", "--snapshotter", "imaged", "ls"])
            .await
            .unwrap_or_default(),
        std::fs::read_to_string(imaged.root().join("transfer/snapshots/index.json"))
            .unwrap_or_default(),
    );
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// Polls `check` every 50 ms for up to 10 s; containerd's CRI plugin
/// learns of image records from containerd's events, a moment later.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_pulls_through_imaged_and_containerd_runs_the_image() {
    require_root_and_containerd();
    let registry = TestRegistry::start().await.unwrap();
    let (image, reference) = push_runnable(&registry, "fixtures/runnable:2").await;
    let fixtures = registry.fixtures();
    fixtures
        .push_image("fixtures/pause:1", &imaged_fixtures::pause().unwrap())
        .await
        .unwrap();
    let pause = fixtures.reference("fixtures/pause:1");

    // containerd first, told where imaged's snapshotter will listen; then
    // imaged, told where containerd is.
    let sockets = tempfile::tempdir().unwrap();
    let snapshots = sockets.path().join("snapshots.sock");
    let containerd = Containerd::start_with_imaged_sandbox(&registry.host, &snapshots, &pause)
        .await
        .unwrap();
    let imaged = imaged_for(&containerd, &snapshots).await;

    // kubelet's image service endpoint is imaged.
    let mut imaged_cri = ImageServiceClient::new(imaged.channel(Service::Gateway));
    let pulled = imaged_cri
        .pull_image(PullImageRequest {
            image: spec(&reference),
            auth: None,
            sandbox_config: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", containerd.log(), imaged.logs()))
        .into_inner();
    assert_eq!(pulled.image_ref, image.id());

    // Its runtime endpoint is containerd: it knows the image.
    let channel = Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))
        .unwrap()
        .channel();
    let containerd_cri = ImageServiceClient::new(channel);
    let status = |mut cri: ImageServiceClient<_>, reference: String| async move {
        cri.image_status(ImageStatusRequest {
            image: spec(&reference),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
    };
    eventually("containerd's CRI finds the image", || {
        let cri = containerd_cri.clone();
        let reference = reference.clone();
        async move { status(cri, reference).await.is_some() }
    })
    .await;
    let seen = status(containerd_cri.clone(), reference.clone())
        .await
        .unwrap();
    assert_eq!(seen.id, image.id());
    assert!(seen.repo_tags.contains(&reference), "{seen:?}");

    // And runs it in a pod, on imaged's layers, as kubelet would ask.
    let logs = tempfile::tempdir().unwrap();
    let out = run_in_pod(&containerd, &reference, logs.path())
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", containerd.log(), imaged.logs()));
    assert!(out.contains(RUNNABLE_OUTPUT), "{out}");
    let stored = containerd.ctr(&["content", "ls", "-q"]).await.unwrap();
    for layer in &image.layers {
        assert!(
            !stored.contains(&layer.digest),
            "containerd has a layer blob"
        );
    }

    // kubelet's image GC removes it through imaged: containerd forgets it.
    imaged_cri
        .remove_image(CriRemove {
            image: spec(&reference),
        })
        .await
        .unwrap();
    eventually("containerd forgets the removed image", || {
        let cri = containerd_cri.clone();
        let reference = reference.clone();
        async move { status(cri, reference).await.is_none() }
    })
    .await;
    // Every name it had there (tag, digest reference, ID) goes; the
    // sandbox image containerd pulled itself stays.
    let id = image.id().to_string();
    eventually("containerd has none of the image's names left", || async {
        let names = containerd.ctr(&["images", "ls", "-q"]).await.unwrap();
        !names
            .lines()
            .any(|n| n.contains("fixtures/runnable") || n == id)
    })
    .await;

    // An image loaded into imaged, with no registry manifest, is
    // registered too (under a manifest made from its config and layers)
    // and runs.
    let archive = imaged_fixtures::archive::with_linked_layers(&[(&image, "loaded/runnable:1")]);
    let chunks: Vec<imaged_api::v1::LoadImagesRequest> = archive
        .chunks(256 * 1024)
        .map(|chunk| imaged_api::v1::LoadImagesRequest {
            chunk: chunk.to_vec(),
            quiet: true,
            platform: None,
        })
        .collect();
    let mut loaded = imaged
        .images()
        .load_images(tokio_stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();
    while loaded.message().await.unwrap().is_some() {}
    let loaded_name = "docker.io/loaded/runnable:1".to_string();
    eventually("containerd's CRI finds the loaded image", || {
        let cri = containerd_cri.clone();
        let name = loaded_name.clone();
        async move { status(cri, name).await.is_some() }
    })
    .await;
    run_hello(&containerd, &imaged, &loaded_name, "imaged-e2e-loaded").await;
}

/// containerd (1.6) answers the Prepare of a layer snapshot it already has
/// without leasing it. An image imaged registers again after containerd
/// lost its records, but before containerd collected the snapshots they
/// left, must keep them through a collection that lands while the
/// registration writes the rest. Each round runs one collection a
/// millisecond later than the last, so that some land in that moment
/// (on this machine, 22-45 ms after the tag: without the registration's
/// lease on its snapshots, 5 runs of 6 failed, losing them or failing to
/// register).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_registered_again_keeps_its_snapshots_through_containerds_collection() {
    require_root_and_containerd();
    let registry = TestRegistry::start().await.unwrap();
    let (image, reference) = push_runnable(&registry, "fixtures/runnable:1").await;
    let (_sockets, containerd, imaged) = containerd_then_imaged(&registry).await;
    // Under a loaded full run, containerd has twice answered the
    // registration's first Prepare UNAVAILABLE ("dial …/snapshots.sock:
    // timeout") although `ctr` had just reached the snapshotter; this test
    // is about the collection racing a registration, so the first pull is
    // tried again (bounded) rather than failed on that.
    let mut tries = 0;
    loop {
        tries += 1;
        let pulled = ImageServiceClient::new(imaged.channel(Service::Gateway))
            .pull_image(PullImageRequest {
                image: spec(&reference),
                auth: None,
                sandbox_config: None,
            })
            .await;
        match pulled {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::Unavailable && tries < 5 => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{e}\n{}\n{}", containerd.log(), imaged.logs()),
        }
    }
    let layers = || async {
        let listed = containerd
            .ctr(&["snapshots", "--snapshotter", "imaged", "ls"])
            .await
            .unwrap();
        let committed = listed
            .lines()
            .filter(|l| l.starts_with("sha256:") && l.trim_end().ends_with("Committed"))
            .count();
        (committed, listed)
    };
    let (committed, listed) = layers().await;
    assert_eq!(committed, image.layers.len(), "{listed}");

    let channel = Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))
        .unwrap()
        .channel();
    for round in 0..50u64 {
        // containerd loses the image's records (not imaged): its snapshots
        // wait for a collection.
        let names = containerd.ctr(&["images", "ls", "-q"]).await.unwrap();
        let mut rm = vec!["images", "rm"];
        rm.extend(names.lines());
        containerd.ctr(&rm).await.unwrap();
        // imaged registers it again, as for a tag; containerd collects
        // meanwhile.
        let collection = tokio::spawn(collect(channel.clone(), Duration::from_millis(round)));
        let tag = format!("{}/fixtures/again:{round}", registry.host);
        imaged
            .images()
            .tag_image(imaged_api::v1::TagImageRequest {
                source: reference.clone(),
                target: tag.clone(),
            })
            .await
            .unwrap();
        eventually("containerd has the image again", || async {
            let names = containerd.ctr(&["images", "ls", "-q"]).await.unwrap();
            names.lines().any(|n| n == tag)
        })
        .await;
        collection.await.unwrap();
        collect(channel.clone(), Duration::ZERO).await;
        let (committed, listed) = layers().await;
        assert_eq!(
            committed,
            image.layers.len(),
            "round {round}: containerd lost a layer snapshot\n{listed}\n{}\n{}",
            imaged.logs(),
            containerd.log()
        );
    }
}

/// Runs containerd's garbage collection once, `after` from now (a lease
/// deleted with `sync` collects at once).
async fn collect(channel: imaged_common::peer::PeerChannel, after: Duration) {
    use imaged_api::containerd::services::leases::v1 as leases;
    fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", "k8s.io".parse().unwrap());
        request
    }
    tokio::time::sleep(after).await;
    let mut client = leases::leases_client::LeasesClient::new(channel);
    let created = client
        .create(request(leases::CreateRequest::default()))
        .await
        .unwrap();
    let id = created.into_inner().lease.map(|l| l.id).unwrap_or_default();
    client
        .delete(request(leases::DeleteRequest { id, sync: true }))
        .await
        .unwrap();
}

/// `ctr run` of the runnable image `reference` on imaged's snapshotter:
/// it must print its line.
async fn run_hello(containerd: &Containerd, imaged: &Imaged, reference: &str, id: &str) {
    let out = containerd
        .ctr(&["run", "--rm", "--snapshotter", "imaged", reference, id])
        .await;
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            // What containerd had then, before the logs, which are long.
            let mut had = String::new();
            for args in [
                &["snapshots", "--snapshotter", "imaged", "ls"][..],
                &["images", "ls"],
            ] {
                let listed = containerd.ctr(args).await.unwrap_or_else(|e| e.to_string());
                had.push_str(&format!("ctr {}:\n{listed}\n", args.join(" ")));
            }
            panic!("{e}\n{had}\n{}\n{}", imaged.logs(), containerd.log())
        }
    };
    assert_eq!(out.trim(), RUNNABLE_OUTPUT);
}

/// The fields of a CRI image that must agree with containerd's.
fn fields(image: &k8s_cri::v1::Image) -> String {
    let mut tags = image.repo_tags.clone();
    tags.sort();
    let mut digests = image.repo_digests.clone();
    digests.sort();
    format!(
        "id={} tags={tags:?} digests={digests:?} size={} uid={:?} username={:?} spec={:?}",
        image.id,
        image.size,
        image.uid.as_ref().map(|u| u.value),
        image.username,
        image.spec.as_ref().map(|s| &s.image),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_answers_as_containerd_does_for_the_same_images() {
    require_root_and_containerd();
    let registry = TestRegistry::start().await.unwrap();
    let fixtures = registry.fixtures();
    let catalog = imaged_fixtures::catalog().unwrap();
    let base = catalog.base.layers[0].clone();
    let images = [
        ("fixtures/runnable:3", imaged_fixtures::runnable().unwrap()),
        (
            "fixtures/uid:1",
            imaged_fixtures::ImageBuilder::new(imaged_fixtures::MediaTypes::Oci)
                .layer(base.clone())
                .user("1000:1000")
                .build()
                .unwrap(),
        ),
        (
            "fixtures/named:1",
            imaged_fixtures::ImageBuilder::new(imaged_fixtures::MediaTypes::Docker)
                .layer(base)
                .user("nobody")
                .build()
                .unwrap(),
        ),
    ];
    let mut references = Vec::new();
    for (name, image) in &images {
        fixtures.push_image(name, image).await.unwrap();
        references.push(fixtures.reference(name));
    }
    references.push(fixtures.reference("fixtures/multi:1"));
    fixtures
        .push_index("fixtures/multi:1", &catalog.multi)
        .await
        .unwrap();
    let pinned = references[2].clone();

    let containerd = Containerd::start(&registry.host).await.unwrap();
    let imaged = Imaged::builder()
        .arg(Service::Gateway, &format!("--pinned-images={pinned}"))
        .start()
        .await
        .unwrap();
    let theirs = ImageServiceClient::new(
        Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))
            .unwrap()
            .channel(),
    );
    let ours = ImageServiceClient::new(imaged.channel(Service::Gateway));

    for reference in &references {
        for mut cri in [theirs.clone(), ours.clone()] {
            cri.pull_image(PullImageRequest {
                image: spec(reference),
                auth: None,
                sandbox_config: None,
            })
            .await
            .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
        }
    }

    // ImageStatus, field by field, for each image and for names that are
    // empty, unparsable or missing.
    let status = |mut cri: ImageServiceClient<_>, name: String| async move {
        cri.image_status(ImageStatusRequest {
            image: spec(&name),
            verbose: false,
        })
        .await
        .map(|r| r.into_inner().image)
        .map_err(|s| s.code())
    };
    let mut names = references.clone();
    names.extend([
        "".into(),
        "::not a reference::".into(),
        fixtures.reference("fixtures/absent:1"),
    ]);
    for name in &names {
        let want = status(theirs.clone(), name.clone()).await;
        let got = status(ours.clone(), name.clone()).await;
        let show = |r: &Result<Option<k8s_cri::v1::Image>, tonic::Code>| match r {
            Ok(Some(image)) => fields(image),
            Ok(None) => "no image".into(),
            Err(code) => format!("error {code:?}"),
        };
        // containerd refuses an empty name with UNKNOWN, its untyped
        // error; imaged with INVALID_ARGUMENT, as its contract says.
        let show = |r| match r {
            Err(_) => "an error".to_string(),
            ok => show(&ok),
        };
        assert_eq!(show(got.clone()), show(want), "ImageStatus of {name:?}");
        if let Ok(Some(image)) = got {
            assert_eq!(image.pinned, *name == pinned, "pinned of {name}");
        }
    }

    // ListImages, the same rows.
    let list = |mut cri: ImageServiceClient<_>| async move {
        let mut rows: Vec<String> = cri
            .list_images(k8s_cri::v1::ListImagesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .images
            .iter()
            .map(fields)
            .collect();
        rows.sort();
        rows
    };
    assert_eq!(list(ours.clone()).await, list(theirs.clone()).await);

    // RemoveImage removes every name; a second removal succeeds.
    for mut cri in [theirs.clone(), ours.clone()] {
        for _ in 0..2 {
            cri.remove_image(CriRemove {
                image: spec(&references[0]),
            })
            .await
            .unwrap();
        }
    }
    assert_eq!(
        status(ours.clone(), references[0].clone()).await,
        status(theirs.clone(), references[0].clone()).await
    );
    assert_eq!(list(ours).await, list(theirs).await);
}

/// kubelet's calls for a one-container pod on the host network: the
/// sandbox (containerd pulls its image itself, onto imaged's snapshotter),
/// then the container from `image`, started and waited for; answers what
/// the container wrote to its log. The pod is removed before answering.
async fn run_in_pod(
    containerd: &Containerd,
    image: &str,
    logs: &std::path::Path,
) -> anyhow::Result<String> {
    let channel = Peer::new(Service::Gateway, Endpoint::Unix(containerd.socket()))?.channel();
    let mut runtime = RuntimeServiceClient::new(channel);
    let pod = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "imaged-e2e".into(),
            uid: "imaged-e2e-uid".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sandbox = runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let result = async {
        let container = runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: "hello".into(),
                        attempt: 0,
                    }),
                    image: spec(image),
                    log_path: "hello.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(pod.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        runtime
            .start_container(StartContainerRequest {
                container_id: container.clone(),
            })
            .await?;
        for _ in 0..200 {
            let status = runtime
                .container_status(ContainerStatusRequest {
                    container_id: container.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status;
            if status.is_some_and(|s| s.state == ContainerState::ContainerExited as i32) {
                return Ok(std::fs::read_to_string(logs.join("hello.log"))?);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the container did not exit within 10 s")
    }
    .await;
    runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await?;
    runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox,
        })
        .await?;
    result
}

/// What one `ctr snapshots` step printed, with the parts that differ by
/// nature (directories, times) masked: mount sources and options keep
/// their kind and keys, not their paths.
fn normalize(out: &str) -> String {
    let mut lines = Vec::new();
    for line in out.lines() {
        let mut words: Vec<String> = Vec::new();
        for word in line.split_whitespace() {
            if word.starts_with('/') {
                words.push("PATH".into());
            } else if word.contains('=') && word.contains('/') || word.contains(',') {
                // mount options: keep their names, sorted
                let mut keys: Vec<&str> = word
                    .split(',')
                    .map(|o| o.split('=').next().unwrap_or(o))
                    .collect();
                keys.sort();
                words.push(keys.join(","));
            } else {
                words.push(word.to_string());
            }
        }
        lines.push(words.join(" "));
    }
    lines.join("\n")
}

/// The same `ctr snapshots` steps on containerd's own overlayfs
/// snapshotter and on imaged's give the same answers: kinds, parents,
/// labels, mounts, the errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaged_snapshots_answer_as_containerds_overlayfs() {
    require_root_and_containerd();
    let registry = TestRegistry::start().await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let containerd =
        Containerd::start_with_imaged(&registry.host, &imaged.root().join("run/snapshots.sock"))
            .await
            .unwrap();
    // containerd collects garbage once shortly after it starts: let that
    // pass, so that it does not take a view (which has no gc.root label)
    // in the middle of one run and not the other.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let steps: &[&[&str]] = &[
        &["prepare", "a"],
        &["mounts", "/mnt", "a"],
        &["commit", "c1", "a"],
        &["prepare", "b", "c1"],
        &["mounts", "/mnt", "b"],
        &["view", "v", "c1"],
        &["mounts", "/mnt", "v"],
        &["commit", "c2", "v"],
        // A view carries no gc.root label: the collection a removal sets
        // off may take v0 at any time after `rm v`, so nothing looks at
        // it afterwards.
        &["view", "v0"],
        &["mounts", "/mnt", "v0"],
        &["rm", "v"],
        &["prepare", "b", "c1"],
        &["prepare", "x", "b"],
        &["prepare", "y", "missing"],
        &["commit", "c2", "missing"],
        &["commit", "c1", "b"],
        &["label", "c1", "team=imaged"],
        &["rm", "c1"],
        &["tree"],
        &["rm", "b"],
        &["rm", "c1"],
        &["rm", "c1"],
        &["ls"],
    ];
    let mut answers = Vec::new();
    for snapshotter in ["overlayfs", "imaged"] {
        if !answers.is_empty() {
            // The removals at the end of a run set off a collection, and
            // one that ran late took the next run's view `v` between its
            // `mounts` and its `commit` (CI, once): let it pass first.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut answer = Vec::new();
        for step in steps {
            let mut args = vec!["snapshots", "--snapshotter", snapshotter];
            args.extend_from_slice(step);
            let shown = match containerd.ctr(&args).await {
                Ok(out) => normalize(&out)
                    .lines()
                    .filter(|l| l.trim() != "v0" && !l.starts_with("v0 "))
                    .collect::<Vec<_>>()
                    .join("\n"),
                // The error's kind, without the snapshotter's own words.
                Err(err) => {
                    let text = err.to_string();
                    let kind = [
                        "not found",
                        "already exists",
                        "invalid argument",
                        "failed precondition",
                    ]
                    .into_iter()
                    .find(|k| text.to_lowercase().contains(k))
                    .unwrap_or("other");
                    format!("error: {kind}")
                }
            };
            answer.push(format!("{}: {shown}", step.join(" ")));
        }
        answers.push(answer);
    }
    assert_eq!(answers[1], answers[0], "imaged (left) vs overlayfs (right)");
}

/// `make image`'s builder (deploy/make-image.sh, here on the built test
/// binaries): the image it pushes is pulled by imaged itself, and
/// containerd runs `imaged-run --help` from its rootfs on imaged's
/// snapshotter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_of_imaged_is_pulled_by_imaged_and_run_by_containerd() {
    require_root_and_containerd();
    let registry = TestRegistry::start().await.unwrap();
    let reference = format!("{}/imaged:test", registry.host);
    let layout = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/make-image.sh");
    let built = tokio::process::Command::new(script)
        .arg("--bin-dir")
        .arg(imaged_e2e::bin_dir())
        .arg("--out")
        .arg(layout.path().join("image"))
        .args(["--tag", "test", "--push", &reference])
        .output()
        .await
        .unwrap();
    assert!(built.status.success(), "make-image: {built:?}");
    assert!(layout.path().join("image/oci-layout").exists());

    let (_sockets, containerd, imaged) = containerd_then_imaged(&registry).await;
    imaged_e2e::client::pull(
        imaged.images(),
        imaged_e2e::client::pull_request(&reference),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", imaged.logs()));
    let help = containerd
        .ctr(&[
            "run",
            "--rm",
            "--snapshotter",
            "imaged",
            &reference,
            "imaged-e2e-image",
            "/usr/local/bin/imaged-run",
            "--help",
        ])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", containerd.log(), imaged.logs()));
    assert!(help.contains("Usage: imaged-run"), "{help}");
}
