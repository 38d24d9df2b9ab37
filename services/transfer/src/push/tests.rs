//! The push engine against fakes: images pulled from one in-memory
//! registry (`pull::tests`' rig) and pushed into it or another, real
//! stores in a temporary directory.

use tokio::sync::mpsc;

use super::*;
use crate::config::LimitArgs;
use crate::neighbours::fakes::{FakeDestination, FakeRegistry, PUSH};
use crate::pull::tests::{Rig, image, pull, rig, rig_on};

/// A pusher on `rig`'s stores and recorder, pushing into `registry`.
fn pusher(rig: &Rig, registry: &Arc<FakeRegistry>) -> Arc<Pusher> {
    let limits = Arc::new(Limits::new(&LimitArgs {
        max_concurrent_downloads: 3,
        max_concurrent_uploads: 5,
        max_download_attempts: 3,
    }));
    Arc::new(Pusher::new(
        rig.puller.content.clone(),
        Arc::clone(&rig.puller.layers),
        Arc::clone(&rig.puller.leases),
        limits,
        Arc::new(FakeDestination(Arc::clone(registry))),
        rig.recorder.clone(),
    ))
}

fn order(reference: &str, all_tags: bool) -> PushOrder {
    PushOrder {
        reference: reference.into(),
        all_tags,
        platform: None,
        auth: RegistryAuth::Anonymous,
    }
}

/// Runs a push to its end; answers its result and every event it said.
async fn push(
    pusher: &Arc<Pusher>,
    reference: &str,
    all_tags: bool,
) -> (Result<(), Error>, Vec<PushEvent>) {
    let (tx, mut rx) = mpsc::channel(256);
    let collect = async {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    };
    tokio::join!(pusher.push(order(reference, all_tags), tx), collect)
}

/// The steps said for the layer `diff_id`, progress left out.
fn steps(events: &[PushEvent], diff_id: &str) -> Vec<Step> {
    events
        .iter()
        .filter_map(|e| match e {
            PushEvent::Layer { diff_id: d, step } if d.to_string() == diff_id => Some(step.clone()),
            _ => None,
        })
        .filter(|s| !matches!(s, Step::Pushing { .. }))
        .collect()
}

/// A rig with `app:1` (two layers) pulled from its registry.
async fn pulled() -> (Rig, imaged_fixtures::Image) {
    let rig = rig(FakeRegistry::default(), &[]);
    let app = image(&["base", "app"]);
    rig.registry.push("library/app", "1", &app);
    pull(&rig.puller, "app:1").await.0.unwrap();
    (rig, app)
}

#[tokio::test]
async fn a_push_to_another_repository_mounts_the_layers_and_pulls_back_the_same_image() {
    let (rig, app) = pulled().await;
    use crate::neighbours::Recorder;
    rig.recorder.tag(app.id(), "mine/app:2").await.unwrap();
    let pusher = pusher(&rig, &rig.registry);

    let (result, events) = push(&pusher, "mine/app:2", false).await;
    result.unwrap();
    assert_eq!(
        events.first(),
        Some(&PushEvent::Started {
            repository: "docker.io/mine/app".into()
        })
    );
    for layer in &app.layers {
        assert_eq!(
            steps(&events, &layer.diff_id),
            [
                Step::Preparing,
                Step::Mounted {
                    from: "library/app".into()
                }
            ]
        );
    }
    let Some(PushEvent::Pushed { tag, digest, .. }) = events.last() else {
        panic!("the last event is the manifest: {events:?}")
    };
    assert_eq!(tag, "2");
    let pushes = rig.registry.pushes.lock().unwrap().clone();
    assert!(
        !pushes.iter().any(|p| p.starts_with("upload")),
        "{pushes:?}"
    );
    assert_eq!(pushes.last().unwrap(), "manifest mine/app:2");
    // The push is recorded as Docker does: the image gains name@digest.
    let records = rig.recorder.records.lock().unwrap().clone();
    let record = records.last().unwrap();
    assert_eq!(record.action, "push");
    assert_eq!(record.digests, [format!("docker.io/mine/app@{digest}")]);

    // What was pushed is the same image for whoever pulls it.
    let other = rig_on(Arc::clone(&rig.registry), &[]);
    let (result, events) = pull(&other.puller, "mine/app:2").await;
    result.unwrap();
    let Some(crate::pull::events::PullEvent::Done(done)) = events.last() else {
        panic!("the pull ends: {events:?}")
    };
    assert_eq!(done.image_id, app.id());
    assert_eq!(done.digest, digest.to_string());
}

#[tokio::test]
async fn a_push_uploads_what_the_registry_lacks_retries_a_failure_and_skips_the_rest() {
    let (rig, app) = pulled().await;
    let empty = Arc::new(FakeRegistry::default());
    empty.fail_blob(PUSH, &app.layers[1].digest, 1);
    let pusher = pusher(&rig, &empty);

    let (result, events) = push(&pusher, "app:1", false).await;
    result.unwrap();
    assert_eq!(
        steps(&events, &app.layers[0].diff_id),
        [Step::Preparing, Step::Pushed]
    );
    assert_eq!(
        steps(&events, &app.layers[1].diff_id),
        [Step::Preparing, Step::Retrying { seconds: 1 }, Step::Pushed]
    );
    for blob in app
        .layers
        .iter()
        .map(|l| &l.digest)
        .chain([&app.config.digest])
    {
        assert!(empty.has_blob("library/app", blob), "{blob} pushed");
    }

    // Again: the registry has every blob, so nothing is uploaded.
    let uploads = empty.pushes.lock().unwrap().len();
    let (result, again) = push(&pusher, "app:1", false).await;
    result.unwrap();
    for layer in &app.layers {
        assert_eq!(
            steps(&again, &layer.diff_id),
            [Step::Preparing, Step::AlreadyExists]
        );
    }
    let pushes = empty.pushes.lock().unwrap().clone();
    assert_eq!(pushes[uploads..], ["manifest library/app:1".to_string()]);
}

#[tokio::test]
async fn all_tags_pushes_every_tag_of_the_repository() {
    let (rig, app) = pulled().await;
    let other = image(&["other"]);
    rig.registry.push("library/app", "2", &other);
    pull(&rig.puller, "app:2").await.0.unwrap();
    let empty = Arc::new(FakeRegistry::default());
    let pusher = pusher(&rig, &empty);

    let (result, events) = push(&pusher, "app", true).await;
    result.unwrap();
    let tags: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            PushEvent::Pushed { tag, .. } => Some(tag.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tags, ["1", "2"]);
    let manifests: Vec<String> = empty
        .pushes
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.starts_with("manifest"))
        .cloned()
        .collect();
    assert_eq!(
        manifests,
        ["manifest library/app:1", "manifest library/app:2"]
    );
    assert!(empty.has_blob("library/app", &app.config.digest));
    assert!(empty.has_blob("library/app", &other.config.digest));
}

#[tokio::test]
async fn a_push_refuses_what_docker_refuses_and_sends_nothing() {
    let (rig, app) = pulled().await;
    let empty = Arc::new(FakeRegistry::default());
    let pusher = pusher(&rig, &empty);
    let cases = [
        (
            format!("app@{}", app.manifest.digest),
            false,
            tonic::Code::InvalidArgument,
            "cannot push a digest reference",
        ),
        (
            "app:1".to_string(),
            true,
            tonic::Code::InvalidArgument,
            "tag can't be used with --all-tags/-a",
        ),
        (
            "missing:1".to_string(),
            false,
            tonic::Code::NotFound,
            "An image does not exist locally with the tag: missing",
        ),
        (
            "app:9".to_string(),
            false,
            tonic::Code::NotFound,
            "tag does not exist: app:9",
        ),
    ];
    for (reference, all_tags, code, words) in cases {
        let (result, _) = push(&pusher, &reference, all_tags).await;
        let err = result.unwrap_err();
        assert_eq!(err.code(), code, "{reference}: {err}");
        assert!(err.to_string().contains(words), "{reference}: {err}");
    }
    assert!(empty.pushes.lock().unwrap().is_empty());
}

#[test]
fn the_manifest_is_written_as_docker_writes_it() {
    let manifest = Schema2 {
        schema_version: 2,
        media_type: DOCKER_MANIFEST,
        config: Descriptor {
            media_type: DOCKER_CONFIG,
            size: 7,
            digest: "sha256:c".into(),
        },
        layers: vec![Descriptor {
            media_type: DOCKER_LAYER_GZIP,
            size: 3,
            digest: "sha256:l".into(),
        }],
    };
    // Go's json.MarshalIndent(m, "", "   ") of distribution's schema2.
    let expected = "{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"application/vnd.docker.distribution.manifest.v2+json\",\n   \"config\": {\n      \"mediaType\": \"application/vnd.docker.container.image.v1+json\",\n      \"size\": 7,\n      \"digest\": \"sha256:c\"\n   },\n   \"layers\": [\n      {\n         \"mediaType\": \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\n         \"size\": 3,\n         \"digest\": \"sha256:l\"\n      }\n   ]\n}";
    assert_eq!(
        String::from_utf8(manifest.to_bytes().unwrap()).unwrap(),
        expected
    );
}
