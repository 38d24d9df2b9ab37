//! The pull engine against fakes: an in-memory registry (with faults and
//! mirrors) and an in-memory recorder, real stores in a temporary
//! directory.

use imaged_fixtures::{Compression, ImageBuilder, LayerBuilder, MediaTypes};
use tokio::sync::mpsc;

use super::*;
use crate::config::LimitArgs;
use crate::neighbours::fakes::{FakeRecorder, FakeRegistry};
use crate::registry::mirrors::MirrorConfig;

/// A puller on fresh stores, reading from `registry` (through `mirrors`
/// of Docker Hub first, if any).
pub(crate) struct Rig {
    _dir: tempfile::TempDir,
    pub(crate) puller: Arc<Puller>,
    pub(crate) registry: Arc<FakeRegistry>,
    pub(crate) recorder: Arc<FakeRecorder>,
}

pub(crate) fn rig(registry: FakeRegistry, mirrors: &[&str]) -> Rig {
    rig_on(Arc::new(registry), mirrors)
}

/// [`rig`] on a registry another rig (or a push) shares.
pub(crate) fn rig_on(registry: Arc<FakeRegistry>, mirrors: &[&str]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let layers = Arc::new(LayerStore::open(dir.path()).unwrap());
    let content = ContentStore::open(&dir.path().join("content")).unwrap();
    let limits = Arc::new(Limits::new(&LimitArgs {
        max_concurrent_downloads: 3,
        max_concurrent_uploads: 5,
        max_download_attempts: 3,
    }));
    let mirrors: Vec<String> = mirrors.iter().map(|m| m.to_string()).collect();
    let registries = Arc::new(Registries::new(
        Vec::new(),
        MirrorConfig::new(None, &mirrors).unwrap(),
    ));
    let recorder = Arc::new(FakeRecorder::default());
    let args = PullArgs {
        stall_timeout_secs: 10,
        min_download_rate: 0,
        insecure_registries: Vec::new(),
        registry_config_dir: None,
        registry_mirrors: Vec::new(),
    };
    let stores = Stores {
        content,
        layers,
        leases: Arc::new(Leases::new()),
    };
    let puller = Arc::new(Puller::new(
        stores,
        limits,
        registries,
        Arc::clone(&registry) as Arc<dyn Fetcher>,
        Arc::clone(&recorder) as Arc<dyn Recorder>,
        &args,
    ));
    Rig {
        _dir: dir,
        puller,
        registry,
        recorder,
    }
}

fn order(reference: &str) -> PullOrder {
    PullOrder {
        reference: reference.into(),
        platform: None,
        auth: RegistryAuth::Anonymous,
        all_tags: false,
        namespace: None,
    }
}

/// An image of `files` layers, one file each, the first named `base`.
pub(crate) fn image(files: &[&str]) -> imaged_fixtures::Image {
    let mut builder = ImageBuilder::new(MediaTypes::Oci);
    for name in files {
        let layer = LayerBuilder::new()
            .file(name, format!("{name}\n").as_bytes())
            .build(Compression::Gzip)
            .unwrap();
        builder = builder.layer(layer);
    }
    builder.build().unwrap()
}

/// Runs a pull to its end; answers its result and every event it said.
pub(crate) async fn pull(
    puller: &Arc<Puller>,
    reference: &str,
) -> (Result<(), Error>, Vec<PullEvent>) {
    let (tx, mut rx) = mpsc::channel(16);
    let collect = async {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    };
    let (result, events) = tokio::join!(puller.pull(order(reference), tx), collect);
    (result, events)
}

/// The states one layer went through, in order.
fn states(events: &[PullEvent], layer: &str) -> Vec<State> {
    events
        .iter()
        .filter_map(|e| match e {
            PullEvent::Layer { blob, state, .. } if blob.to_string() == layer => {
                Some(state.clone())
            }
            _ => None,
        })
        .collect()
}

fn chains_of(image: &imaged_fixtures::Image) -> Vec<Digest> {
    let diff_ids: Vec<Digest> = image
        .layers
        .iter()
        .map(|l| l.diff_id.parse().unwrap())
        .collect();
    chain_ids(&diff_ids)
}

#[test]
fn the_plan_fetches_only_what_is_not_stored_and_counts_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let layers = LayerStore::open(dir.path()).unwrap();
    let diff_ids: Vec<Digest> = ["base", "app", "top"]
        .iter()
        .map(|n| Digest::sha256_of(n.as_bytes()))
        .collect();
    let chains = chain_ids(&diff_ids);
    let base = Layer {
        chain_id: chains[0].clone(),
        diff_id: diff_ids[0].clone(),
        parent: None,
        size: 1,
        blob: None,
        inodes: 1,
        tar_size: 0,
        gzip: None,
    };
    layers.commit(layers.stage().unwrap(), base).unwrap();
    let descs: Vec<OciDescriptor> = [100, 20, 3]
        .iter()
        .map(|size| OciDescriptor {
            size: *size,
            ..Default::default()
        })
        .collect();
    let plan = LayerPlan::new(&layers, &descs, &chains);
    assert_eq!(plan.fetch, [false, true, true]);
    assert_eq!(plan.totals, [0, 20, 3]);
    assert_eq!(plan.total(), 23);
}

#[tokio::test]
async fn a_pull_stores_every_layer_records_the_image_and_says_each_step() {
    let rig = rig(FakeRegistry::default(), &[]);
    let app = image(&["base", "app"]);
    rig.registry.push("library/app", "1", &app);

    let (result, events) = pull(&rig.puller, "app:1").await;
    result.unwrap();
    for chain in chains_of(&app) {
        assert!(rig.puller.layers.get(&chain).is_some(), "{chain} stored");
    }
    let records = rig.recorder.records.lock().unwrap().clone();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].action, "pull");
    assert_eq!(records[0].tags, ["docker.io/library/app:1"]);
    assert_eq!(
        records[0].digests,
        [format!("docker.io/library/app@{}", app.manifest.digest)]
    );
    assert_eq!(
        events.first(),
        Some(&PullEvent::Started {
            tag_or_digest: "1".into(),
            path: "library/app".into()
        })
    );
    for layer in &app.layers {
        let said = states(&events, &layer.digest);
        assert_eq!(said.first(), Some(&State::Announced), "{said:?}");
        assert_eq!(said.last(), Some(&State::Complete), "{said:?}");
        let at = |s: &State| said.iter().position(|x| x == s).unwrap();
        assert!(at(&State::Verifying) < at(&State::DownloadComplete));
    }
    let Some(PullEvent::Done(done)) = events.last() else {
        panic!("the last event is the end: {events:?}")
    };
    assert!(done.updated);
    assert_eq!(done.image_id, app.id());

    // Again: the image is local, so no layer work and nothing new.
    let (result, again) = pull(&rig.puller, "app:1").await;
    result.unwrap();
    assert!(
        !again.iter().any(|e| matches!(e, PullEvent::Layer { .. })),
        "{again:?}"
    );
    assert!(matches!(again.last(), Some(PullEvent::Done(d)) if !d.updated));
    for layer in &app.layers {
        assert_eq!(rig.registry.served_anywhere(&layer.digest), 1);
    }
}

#[tokio::test]
async fn a_failed_layer_download_is_retried_and_said() {
    let rig = rig(FakeRegistry::default(), &[]);
    let app = image(&["base"]);
    rig.registry.push("library/app", "1", &app);
    let layer = &app.layers[0].digest;
    rig.registry.fail_blob("docker.io", layer, 1);

    let (result, events) = pull(&rig.puller, "app:1").await;
    result.unwrap();
    let said = states(&events, layer);
    assert!(said.contains(&State::Retrying { seconds: 1 }), "{said:?}");
    assert_eq!(said.last(), Some(&State::Complete));
    assert_eq!(rig.registry.served("docker.io", layer), 1);
}

#[tokio::test]
async fn a_layer_that_keeps_failing_fails_the_pull_and_records_nothing() {
    let rig = rig(FakeRegistry::default(), &[]);
    let app = image(&["base"]);
    rig.registry.push("library/app", "1", &app);
    rig.registry
        .fail_blob("docker.io", &app.layers[0].digest, 10);

    let (result, _) = pull(&rig.puller, "app:1").await;
    let err = result.unwrap_err();
    assert!(err.is(tonic::Code::Unavailable), "{err}");
    assert!(rig.recorder.actions().is_empty());
    assert!(rig.puller.layers.get(&chains_of(&app)[0]).is_none());
}

#[tokio::test]
async fn a_mirror_serves_first_and_a_failing_one_falls_back_to_the_registry() {
    let rig = rig(FakeRegistry::default(), &["https://mirror.test"]);
    let app = image(&["base"]);
    let other = image(&["other"]);
    rig.registry.push("library/app", "1", &app);
    rig.registry.push("library/other", "1", &other);

    pull(&rig.puller, "app:1").await.0.unwrap();
    assert_eq!(rig.registry.served("mirror.test", &app.layers[0].digest), 1);
    assert_eq!(rig.registry.served("docker.io", &app.layers[0].digest), 0);

    rig.registry.take_down("mirror.test");
    pull(&rig.puller, "other:1").await.0.unwrap();
    assert_eq!(rig.registry.served("docker.io", &other.layers[0].digest), 1);
}

#[tokio::test]
async fn concurrent_pulls_share_one_download_of_a_common_layer() {
    // Two images on the same base layer, whose bytes wait for the gate.
    let base = LayerBuilder::new()
        .file("base", b"base\n")
        .build(Compression::Gzip)
        .unwrap();
    let (open, gate) = watch::channel(false);
    let rig = rig(FakeRegistry::gated(&base.digest, gate), &[]);
    let on_base = |name: &str| {
        let top = LayerBuilder::new()
            .file(name, name.as_bytes())
            .build(Compression::Gzip)
            .unwrap();
        ImageBuilder::new(MediaTypes::Oci)
            .layer(base.clone())
            .layer(top)
            .build()
            .unwrap()
    };
    let (one, two) = (on_base("one"), on_base("two"));
    rig.registry.push("library/one", "1", &one);
    rig.registry.push("library/two", "1", &two);

    // Each pull runs on its own task; the test waits until both have
    // asked for the base layer (this runtime has one thread, so each has
    // joined or started its job when its event arrives) before any byte
    // flows.
    let start = |reference: &'static str| {
        let puller = Arc::clone(&rig.puller);
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(async move { puller.pull(order(reference), tx).await });
        let base = base.digest.clone();
        let announced = async move {
            while let Some(event) = rx.recv().await {
                if matches!(&event, PullEvent::Layer { blob, state: State::Announced, .. } if blob.to_string() == base)
                {
                    break;
                }
            }
            rx
        };
        (task, announced)
    };
    let (first, first_said) = start("one:1");
    let (second, second_said) = start("two:1");
    let (mut first_rx, mut second_rx) = tokio::join!(first_said, second_said);
    open.send_replace(true);
    let drain = |rx: &mut mpsc::Receiver<PullEvent>| {
        let mut rx = std::mem::replace(rx, mpsc::channel(1).1);
        async move { while rx.recv().await.is_some() {} }
    };
    let (a, b, (), ()) = tokio::join!(first, second, drain(&mut first_rx), drain(&mut second_rx));
    a.unwrap().unwrap();
    b.unwrap().unwrap();
    assert_eq!(rig.registry.served_anywhere(&base.digest), 1);
    assert_eq!(rig.recorder.actions(), ["pull", "pull"]);
}

#[tokio::test]
async fn a_remote_layer_is_brought_in_alone_with_the_layers_above_fetched_ahead() {
    let rig = rig(FakeRegistry::default(), &[]);
    let app = image(&["base", "app"]);
    rig.registry.push("library/app", "1", &app);
    let chains = chains_of(&app);
    let manifest: Digest = app.manifest.digest.parse().unwrap();
    let blob: Digest = app.layers[0].digest.parse().unwrap();

    let layer = rig
        .puller
        .remote_layer("app:1", &manifest, &blob, &chains[0])
        .await
        .unwrap();
    assert_eq!(layer.chain_id, chains[0]);
    // Nothing is recorded: containerd holds the layers, not an image.
    assert!(rig.recorder.actions().is_empty());
    // The layer above arrives in the background.
    for _ in 0..100 {
        if rig.puller.layers.get(&chains[1]).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rig.puller.layers.get(&chains[1]).is_some());

    // A layer the manifest does not have is refused.
    let err = rig
        .puller
        .remote_layer(
            "app:1",
            &manifest,
            &manifest,
            &Digest::sha256_of(b"a chain not stored"),
        )
        .await
        .unwrap_err();
    assert!(err.is(tonic::Code::InvalidArgument), "{err}");
}

#[tokio::test]
async fn a_pulled_image_is_registered_in_containerd_manifest_first() {
    let registrar = Arc::new(crate::neighbours::fakes::FakeRegistrar::default());
    let mut rig = rig(FakeRegistry::default(), &[]);
    let puller = Arc::into_inner(rig.puller).expect("the rig's only handle");
    rig.puller =
        Arc::new(puller.with_containerd(Some(Arc::clone(&registrar) as Arc<dyn Registrar>)));
    let app = image(&["base", "app"]);
    rig.registry.push("library/app", "1", &app);
    let (result, _) = pull(&rig.puller, "app:1").await;
    result.unwrap();

    let registered = registrar.registered.lock().unwrap().clone();
    assert_eq!(registered.len(), 1);
    let image = &registered[0];
    assert_eq!(image.id.to_string(), app.id());
    let blobs: Vec<String> = image.blobs.iter().map(|b| b.digest.to_string()).collect();
    assert_eq!(
        blobs,
        [app.manifest.digest.clone(), app.config.digest.clone()]
    );
    assert_eq!(image.blobs[1].bytes.as_ref(), app.config.data.as_slice());
    assert_eq!(image.chains, chains_of(&app));
    assert_eq!(
        image.names,
        [
            "docker.io/library/app:1".to_string(),
            format!("docker.io/library/app@{}", app.manifest.digest)
        ]
    );
}

/// `rig`'s puller checking every pull against the policy `json`.
fn with_policy(mut rig: Rig, json: &str) -> (Rig, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, json).unwrap();
    let trust = crate::trust::Trust::read(Some(&path), None, None).unwrap();
    let puller = Arc::into_inner(rig.puller).expect("the rig's only handle");
    rig.puller = Arc::new(puller.with_trust(Arc::new(trust)));
    (rig, dir)
}

#[tokio::test]
async fn the_policy_refuses_pulls_and_remote_layers_before_anything_is_stored() {
    let (rig, _policy) = with_policy(
        rig(FakeRegistry::default(), &[]),
        r#"{"default":[{"type":"reject"}],"transports":{"docker":{
            "docker.io/library/open":[{"type":"insecureAcceptAnything"}]}}}"#,
    );
    let app = image(&["base", "app"]);
    rig.registry.push("library/app", "1", &app);
    rig.registry.push("library/open", "1", &app);
    let chains = chains_of(&app);
    let manifest: Digest = app.manifest.digest.parse().unwrap();
    let blob: Digest = app.layers[0].digest.parse().unwrap();

    let (result, events) = pull(&rig.puller, "app:1").await;
    let err = result.unwrap_err();
    assert!(err.is(tonic::Code::PermissionDenied), "{err}");
    assert!(err.cause::<crate::trust::Refusal>().is_some());
    assert!(events.is_empty(), "nothing is said: {events:?}");
    let err = rig
        .puller
        .remote_layer("app:1", &manifest, &blob, &chains[0])
        .await
        .unwrap_err();
    assert!(err.is(tonic::Code::PermissionDenied), "{err}");
    assert!(rig.puller.layers.get(&chains[0]).is_none());
    assert_eq!(rig.registry.served_anywhere(&app.layers[0].digest), 0);
    assert!(rig.recorder.actions().is_empty());

    // The same bytes under a name the policy accepts.
    rig.puller
        .remote_layer("open:1", &manifest, &blob, &chains[0])
        .await
        .unwrap();
    pull(&rig.puller, "open:1").await.0.unwrap();
}
