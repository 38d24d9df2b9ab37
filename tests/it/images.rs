//! imaged-metadata's Docker semantics, through the gateway: creation and
//! validation, every resolution form, list filters, tagging, every delete
//! conflict with and without force, prune, history, children, events, and
//! persistence across a restart.

use std::collections::BTreeSet;
use std::time::Duration;

use imaged_api::internal::v1::metadata_client::MetadataClient;
use imaged_api::internal::v1::*;
use imaged_api::v1::delete_item::Item;
use imaged_api::v1::events_client::EventsClient;
use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use imaged_common::config::Service;
use imaged_common::peer::PeerChannel;
use imaged_e2e::Imaged;
use imaged_e2e::client::inspect;
use serde_json::json;
use tonic::Code;

type Client = ImagesClient<PeerChannel>;

/// A layerless image config: distinct by `name`, created at `created`.
fn config(name: &str, created: &str, labels: &[(&str, &str)]) -> Vec<u8> {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Env": [format!("NAME={name}")], "Cmd": ["/bin/sh"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created": created, "created_by": format!("/bin/sh -c #(nop) ENV NAME={name}"), "empty_layer": true}],
    }))
    .unwrap()
}

async fn create(client: &mut Client, config: Vec<u8>, parent: &str) -> String {
    client
        .create_image(CreateImageRequest {
            config,
            parent: parent.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn tag(client: &mut Client, source: &str, target: &str) {
    client
        .tag_image(TagImageRequest {
            source: source.into(),
            target: target.into(),
        })
        .await
        .unwrap();
}

async fn list(
    client: &mut Client,
    filters: &[&str],
    all: bool,
) -> Result<Vec<ImageSummary>, tonic::Status> {
    client
        .list_images(ListImagesRequest {
            filters: filters.iter().map(|s| s.to_string()).collect(),
            all,
            shared_size: false,
        })
        .await
        .map(|r| r.into_inner().images)
}

async fn ids(client: &mut Client, filters: &[&str]) -> Vec<String> {
    list(client, filters, false)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

async fn rmi(
    client: &mut Client,
    image: &str,
    force: bool,
    prune: Option<bool>,
) -> Result<Vec<String>, tonic::Status> {
    let items = client
        .remove_image(RemoveImageRequest {
            image: image.into(),
            force,
            prune_children: prune,
        })
        .await?
        .into_inner()
        .items;
    Ok(items.into_iter().map(describe).collect())
}

fn describe(item: DeleteItem) -> String {
    match item.item {
        Some(Item::Untagged(r)) => format!("Untagged: {r}"),
        Some(Item::Deleted(id)) => format!("Deleted: {id}"),
        None => "?".into(),
    }
}

async fn set_container(imaged: &Imaged, container: &str, image: &str, running: bool) {
    MetadataClient::new(imaged.channel(Service::Metadata))
        .set_container(SetContainerRequest {
            container_id: container.into(),
            image: image.into(),
            running,
        })
        .await
        .unwrap();
}

fn hex(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap()
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, message: &str) {
    let err = result.expect_err("expected an error");
    assert_eq!(err.code(), code, "{}", err.message());
    assert_eq!(err.message(), message);
}

#[tokio::test]
async fn create_validates_configs_like_docker() {
    let imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let create_err = |config: Vec<u8>, parent: &'static str| {
        let mut c = c.clone();
        async move {
            c.create_image(CreateImageRequest {
                config,
                parent: parent.into(),
            })
            .await
        }
    };
    assert_status(
        create_err(Vec::new(), "").await,
        Code::InvalidArgument,
        "invalid empty data",
    );
    assert_status(
        create_err(br#"{"os":"linux"}"#.to_vec(), "").await,
        Code::InvalidArgument,
        "invalid image JSON, no RootFS key",
    );
    assert_status(
        create_err(
            br#"{"rootfs":{"type":"layers","diff_ids":[]},"history":[{"created_by":"RUN x"}]}"#
                .to_vec(),
            "",
        )
        .await,
        Code::InvalidArgument,
        "too many non-empty layers in History section",
    );
    let diff = format!("sha256:{}", "ab".repeat(32));
    let layered = format!(r#"{{"os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#);
    assert_status(
        create_err(layered.into_bytes(), "").await,
        Code::InvalidArgument,
        &format!("failed to get layer {diff}: layer does not exist"),
    );
    assert_status(
        create_err(config("x", "2024-01-01T00:00:00Z", &[]), "nope").await,
        Code::NotFound,
        "unknown parent image ID nope",
    );

    // The ID is the sha256 of the exact bytes; creating it again is a no-op.
    let bytes = config("a", "2024-01-01T00:00:00Z", &[]);
    let id = create(&mut c, bytes.clone(), "").await;
    assert_eq!(id, imaged_fixtures::sha256_digest(&bytes));
    assert_eq!(create(&mut c, bytes.clone(), "").await, id);
    let inspected = inspect(&mut c, &id).await.unwrap();
    assert_eq!(inspected.config_json, bytes);
    let info = c
        .system_info(SystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.images, 1);
}

#[tokio::test]
async fn images_resolve_by_every_form_docker_accepts() {
    let imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let id = create(
        &mut c,
        config("a", "2024-01-01T00:00:00.25Z", &[("tier", "web")]),
        "",
    )
    .await;
    tag(&mut c, &id, "app:1").await;
    tag(&mut c, "app:1", "myreg:5000/team/app:v2").await;

    for form in [
        id.clone(),
        hex(&id).to_string(),
        hex(&id)[..12].to_string(),
        format!("sha256:{}", &hex(&id)[..7]),
        "app:1".into(),
        "docker.io/library/app:1".into(),
        "index.docker.io/library/app:1".into(),
        "myreg:5000/team/app:v2".into(),
    ] {
        let found = inspect(&mut c, &form)
            .await
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(found.id, id, "{form}");
    }
    let found = inspect(&mut c, "app:1").await.unwrap();
    assert_eq!(found.repo_tags, ["app:1", "myreg:5000/team/app:v2"]);
    assert_eq!(found.created, "2024-01-01T00:00:00.25Z");
    let created_at = found.created_at.unwrap();
    assert_eq!(
        (created_at.seconds, created_at.nanos),
        (1_704_067_200, 250_000_000),
        "created_at is the instant of created"
    );
    assert_eq!(found.os, "linux");
    assert_eq!(found.config.unwrap().labels["tier"], "web");
    assert_ne!(found.last_tag_time, "0001-01-01T00:00:00Z");
    let tagged = found.last_tagged_at.unwrap();
    let tag_time = chrono::DateTime::parse_from_rfc3339(&found.last_tag_time).unwrap();
    assert_eq!(
        (tagged.seconds, tagged.nanos as u32),
        (tag_time.timestamp(), tag_time.timestamp_subsec_nanos()),
        "last_tagged_at is the instant of last_tag_time"
    );

    assert_status(
        inspect(&mut c, "app").await,
        Code::NotFound,
        "No such image: app:latest",
    );
    assert_status(
        inspect(&mut c, &format!("sha256:{}", "0".repeat(64))).await,
        Code::NotFound,
        &format!("No such image: sha256:{}", "0".repeat(64)),
    );
    assert_status(
        inspect(&mut c, "App").await,
        Code::InvalidArgument,
        "invalid reference format: repository name (library/App) must be lowercase",
    );
    // A platform the image does not run on.
    let err = c
        .inspect_image(InspectImageRequest {
            image: "app:1".into(),
            platform: Some(Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: String::new(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("was found but its platform (linux/amd64) does not match the specified platform (linux/arm64)"), "{}", err.message());

    // An ID prefix two images share is ambiguous, and not found.
    let mut seen: Vec<String> = vec![id.clone()];
    let shared = loop {
        let next = create(
            &mut c,
            config(&format!("n{}", seen.len()), "2024-01-01T00:00:00Z", &[]),
            "",
        )
        .await;
        if let Some(other) = seen.iter().find(|s| hex(s)[..1] == hex(&next)[..1]) {
            assert_ne!(other, &next);
            break hex(&next)[..1].to_string();
        }
        seen.push(next);
    };
    assert_status(
        inspect(&mut c, &shared).await,
        Code::NotFound,
        &format!("No such image: {shared}:latest"),
    );
}

/// The gateway answers InspectImage from its read model while the store
/// does not change; right after a change returns, the answer is current,
/// whichever form names the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_is_current_right_after_each_change() {
    let imaged = Imaged::start().await.unwrap();
    let mut client = imaged.images();
    // Lets the read model load at the store's current version (it loads
    // in the background after an InspectImage finds it stale, at most
    // once a second).
    async fn settle(client: &mut Client, image: &str) {
        let _ = inspect(client, image).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let _ = inspect(client, image).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let a = create(&mut client, config("a", "2024-01-01T00:00:00Z", &[]), "").await;
    tag(&mut client, &a, "first:1").await;
    settle(&mut client, "first:1").await;
    for _ in 0..3 {
        let answer = inspect(&mut client, "first:1").await.unwrap();
        assert_eq!(answer.id, a);
        assert_eq!(answer.repo_tags, ["first:1"]);
    }

    tag(&mut client, "first:1", "second:2").await;
    let answer = inspect(&mut client, "second:2").await.unwrap();
    assert_eq!(answer.repo_tags, ["first:1", "second:2"]);
    settle(&mut client, "second:2").await;
    assert_eq!(
        inspect(&mut client, &a[7..19]).await.unwrap().repo_tags,
        ["first:1", "second:2"]
    );

    rmi(&mut client, "second:2", false, None).await.unwrap();
    let err = inspect(&mut client, "second:2").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "No such image: second:2");
    assert_eq!(
        inspect(&mut client, &a).await.unwrap().repo_tags,
        ["first:1"]
    );
    settle(&mut client, "first:1").await;

    // The tag moves to a new image: its new ID right away.
    let b = create(&mut client, config("b", "2024-01-02T00:00:00Z", &[]), "").await;
    tag(&mut client, &b, "first:1").await;
    assert_eq!(inspect(&mut client, "first:1").await.unwrap().id, b);
    assert!(inspect(&mut client, &a).await.unwrap().repo_tags.is_empty());
    settle(&mut client, "first:1").await;
    assert_eq!(inspect(&mut client, "first:1").await.unwrap().id, b);
    assert_eq!(inspect(&mut client, &b[7..15]).await.unwrap().id, b);

    rmi(&mut client, &b, true, None).await.unwrap();
    let err = inspect(&mut client, "first:1").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = inspect(&mut client, &b).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn list_applies_every_filter() {
    let imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let old = create(
        &mut c,
        config("old", "2020-01-01T00:00:00Z", &[("tier", "db")]),
        "",
    )
    .await;
    let mid = create(
        &mut c,
        config(
            "mid",
            "2022-01-01T00:00:00Z",
            &[("tier", "web"), ("team", "a")],
        ),
        "",
    )
    .await;
    let new = create(
        &mut c,
        config("new", "2024-01-01T00:00:00Z", &[("tier", "web")]),
        "",
    )
    .await;
    let parent = create(&mut c, config("parent", "2019-01-01T00:00:00Z", &[]), "").await;
    let child = create(
        &mut c,
        config("child", "2019-06-01T00:00:00Z", &[]),
        &parent,
    )
    .await;
    tag(&mut c, &old, "busybox:1").await;
    tag(&mut c, &mid, "busybox:2").await;
    tag(&mut c, &mid, "user/app:v1").await;
    tag(&mut c, &child, "myreg:5000/tools/child:latest").await;
    set_container(&imaged, "c1", &mid, false).await;

    // Newest first; the dangling `new` shows, the intermediate parent does not.
    assert_eq!(
        ids(&mut c, &[]).await,
        [new.clone(), mid.clone(), old.clone(), child.clone()]
    );
    let everything = list(&mut c, &[], true).await.unwrap();
    assert_eq!(everything.len(), 5);
    let mid_row = everything.iter().find(|i| i.id == mid).unwrap();
    assert_eq!(mid_row.repo_tags, ["busybox:2", "user/app:v1"]);
    assert_eq!(
        (mid_row.containers, mid_row.shared_size, mid_row.created),
        (1, -1, 1_640_995_200)
    );
    assert_eq!(mid_row.created_at.unwrap().seconds, mid_row.created);
    assert_eq!(
        everything.iter().find(|i| i.id == child).unwrap().parent_id,
        parent
    );

    assert_eq!(ids(&mut c, &["dangling=true"]).await, vec![new.clone()]);
    assert_eq!(
        ids(&mut c, &["dangling=false"]).await,
        [mid.clone(), old.clone(), child.clone()]
    );
    assert_eq!(
        ids(&mut c, &["label=tier"]).await,
        [new.clone(), mid.clone(), old.clone()]
    );
    assert_eq!(
        ids(&mut c, &["label=tier=web"]).await,
        [new.clone(), mid.clone()]
    );
    assert_eq!(
        ids(&mut c, &["label=tier=web", "label=team"]).await,
        vec![mid.clone()]
    );
    assert_eq!(
        ids(&mut c, &["before=busybox:2"]).await,
        [old.clone(), child.clone()]
    );
    assert_eq!(
        ids(&mut c, &["since=busybox:1"]).await,
        [new.clone(), mid.clone()]
    );
    assert_eq!(
        ids(&mut c, &["since=busybox:1", "before=busybox:2"]).await,
        Vec::<String>::new()
    );
    for until in [
        "2021-01-01T00:00:00Z",
        "1609459200",
        "1609459200.5",
        "2021-01-01",
    ] {
        assert_eq!(
            ids(&mut c, &[&format!("until={until}")]).await,
            [old.clone(), child.clone()],
            "{until}"
        );
    }
    assert_eq!(ids(&mut c, &["until=1h"]).await.len(), 4);
    assert_eq!(
        ids(&mut c, &["reference=busybox"]).await,
        [mid.clone(), old.clone()]
    );
    assert_eq!(
        ids(&mut c, &["reference=busybox:1"]).await,
        vec![old.clone()]
    );
    assert_eq!(
        ids(&mut c, &["reference=*"]).await,
        [mid.clone(), old.clone()]
    );
    assert_eq!(ids(&mut c, &["reference=*/*"]).await, vec![mid.clone()]);
    assert_eq!(
        ids(&mut c, &["reference=myreg:5000/*/*"]).await,
        vec![child.clone()]
    );
    let filtered = list(&mut c, &["reference=user/*"], false).await.unwrap();
    assert_eq!(
        filtered[0].repo_tags,
        ["user/app:v1"],
        "only matching tags are shown"
    );

    assert_status(
        list(&mut c, &["colour=red"], false).await,
        Code::InvalidArgument,
        "invalid filter 'colour'",
    );
    assert_status(
        list(&mut c, &["dangling=maybe"], false).await,
        Code::InvalidArgument,
        "invalid filter 'dangling=[maybe]'",
    );
    assert_status(
        list(&mut c, &["before=nope"], false).await,
        Code::NotFound,
        "No such image: nope:latest",
    );
    assert_status(
        list(&mut c, &["until=soon"], false).await,
        Code::InvalidArgument,
        "failed to parse value as time or duration: \"soon\"",
    );
    assert!(list(&mut c, &["reference=["], false).await.is_err());
}

#[tokio::test]
async fn tags_move_and_bad_targets_are_refused() {
    let imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let a = create(&mut c, config("a", "2024-01-01T00:00:00Z", &[]), "").await;
    let b = create(&mut c, config("b", "2024-01-02T00:00:00Z", &[]), "").await;
    tag(&mut c, &a, "app").await;
    assert_eq!(inspect(&mut c, "app:latest").await.unwrap().id, a);
    tag(&mut c, &b, "app").await;
    assert_eq!(inspect(&mut c, "app").await.unwrap().id, b);
    assert!(
        inspect(&mut c, &a).await.unwrap().repo_tags.is_empty(),
        "the tag moved"
    );

    let try_tag = |source: &str, target: &str| {
        let (mut c, source, target) = (c.clone(), source.to_string(), target.to_string());
        async move { c.tag_image(TagImageRequest { source, target }).await }
    };
    assert_status(
        try_tag("nope", "x:1").await,
        Code::NotFound,
        "No such image: nope:latest",
    );
    assert_status(
        try_tag(&a, &format!("x@sha256:{}", "a".repeat(64))).await,
        Code::InvalidArgument,
        "refusing to create a tag with a digest reference",
    );
    assert_status(
        try_tag(&a, "sha256:1").await,
        Code::InvalidArgument,
        "refusing to create an ambiguous tag using digest algorithm as name",
    );
    assert_status(
        try_tag(&a, "").await,
        Code::InvalidArgument,
        "invalid reference format",
    );
}

#[tokio::test]
async fn concurrent_tags_are_all_kept() {
    let imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let id = create(&mut c, config("a", "2024-01-01T00:00:00Z", &[]), "").await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = imaged.images();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            tag(&mut c, &id, &format!("app:{i}")).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(inspect(&mut c, &id).await.unwrap().repo_tags.len(), 32);
}

#[tokio::test]
async fn remove_follows_dockers_conflict_rules() {
    let imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();

    // Dependent child: hard, even with force.
    let parent = create(&mut c, config("parent", "2024-01-01T00:00:00Z", &[]), "").await;
    let child = create(
        &mut c,
        config("child", "2024-01-02T00:00:00Z", &[]),
        &parent,
    )
    .await;
    let hard_child = format!(
        "conflict: unable to delete {} (cannot be forced) - image has dependent child images",
        &hex(&parent)[..12]
    );
    assert_status(
        rmi(&mut c, &parent, false, None).await,
        Code::FailedPrecondition,
        &hard_child,
    );
    assert_status(
        rmi(&mut c, &parent, true, None).await,
        Code::FailedPrecondition,
        &hard_child,
    );
    assert_eq!(
        c.image_children(ImageChildrenRequest {
            image: parent.clone()
        })
        .await
        .unwrap()
        .into_inner()
        .ids,
        vec![child.clone()]
    );
    // Removing the child prunes the untagged parent too, unless asked not to.
    assert_eq!(
        rmi(&mut c, &child, false, Some(false)).await.unwrap(),
        [format!("Deleted: {child}")]
    );
    assert!(inspect(&mut c, &parent).await.is_ok());
    let child = create(
        &mut c,
        config("child", "2024-01-02T00:00:00Z", &[]),
        &parent,
    )
    .await;
    assert_eq!(
        rmi(&mut c, &child, false, None).await.unwrap(),
        [format!("Deleted: {child}"), format!("Deleted: {parent}")]
    );

    // Running container: hard.
    let running = create(&mut c, config("running", "2024-01-03T00:00:00Z", &[]), "").await;
    set_container(&imaged, "0123456789abcdef0123", &running, true).await;
    let hard_running = format!(
        "conflict: unable to delete {} (cannot be forced) - image is being used by running container 0123456789ab",
        &hex(&running)[..12]
    );
    assert_status(
        rmi(&mut c, &running, false, None).await,
        Code::FailedPrecondition,
        &hard_running,
    );
    assert_status(
        rmi(&mut c, &running, true, None).await,
        Code::FailedPrecondition,
        &hard_running,
    );

    // By reference, the only one, while a container uses the image: must force;
    // forced, the tag goes and the image stays (quietly).
    tag(&mut c, &running, "busy:1").await;
    assert_status(
        rmi(&mut c, "busy:1", false, None).await,
        Code::FailedPrecondition,
        &format!(
            "conflict: unable to remove repository reference \"busy:1\" (must force) - container 0123456789ab is using its referenced image {}",
            &hex(&running)[..12]
        ),
    );
    assert_eq!(
        rmi(&mut c, "busy:1", true, None).await.unwrap(),
        ["Untagged: busy:1"]
    );
    assert!(inspect(&mut c, &running).await.is_ok());

    // Referenced in several repositories: soft.
    let multi = create(&mut c, config("multi", "2024-01-04T00:00:00Z", &[]), "").await;
    tag(&mut c, &multi, "a:1").await;
    tag(&mut c, &multi, "b:1").await;
    assert_status(
        rmi(&mut c, &multi, false, None).await,
        Code::FailedPrecondition,
        &format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            &hex(&multi)[..12]
        ),
    );
    // By name with another reference left: only that reference goes.
    assert_eq!(
        rmi(&mut c, "b:1", false, None).await.unwrap(),
        ["Untagged: b:1"]
    );
    tag(&mut c, &multi, "b:1").await;
    assert_eq!(
        rmi(&mut c, &hex(&multi)[..8], true, None).await.unwrap(),
        [
            "Untagged: a:1".to_string(),
            "Untagged: b:1".into(),
            format!("Deleted: {multi}")
        ]
    );

    // Stopped container: soft; forced, the image goes.
    let stopped = create(&mut c, config("stopped", "2024-01-05T00:00:00Z", &[]), "").await;
    set_container(&imaged, "feedfacefeedface", &stopped, false).await;
    assert_status(
        rmi(&mut c, &stopped, false, None).await,
        Code::FailedPrecondition,
        &format!(
            "conflict: unable to delete {} (must be forced) - image is being used by stopped container feedfacefeed",
            &hex(&stopped)[..12]
        ),
    );
    assert_eq!(
        rmi(&mut c, &stopped, true, None).await.unwrap(),
        [format!("Deleted: {stopped}")]
    );

    // A tagged, unused image by name: untagged, then deleted.
    let plain = create(&mut c, config("plain", "2024-01-06T00:00:00Z", &[]), "").await;
    tag(&mut c, &plain, "plain").await;
    assert_eq!(
        rmi(&mut c, "plain", false, None).await.unwrap(),
        [
            "Untagged: plain:latest".to_string(),
            format!("Deleted: {plain}")
        ]
    );
    assert_status(
        rmi(&mut c, "plain", false, None).await,
        Code::NotFound,
        "No such image: plain:latest",
    );
    assert_status(
        rmi(&mut c, "", false, None).await,
        Code::InvalidArgument,
        "image name cannot be blank",
    );
    // A failed removal changed nothing.
    assert!(inspect(&mut c, &running).await.is_ok());
}

#[tokio::test]
async fn prune_removes_unused_images_by_filter() {
    let imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let dangling_old = create(
        &mut c,
        config("d1", "2020-01-01T00:00:00Z", &[("keep", "no")]),
        "",
    )
    .await;
    let dangling_new = create(
        &mut c,
        config("d2", "2024-01-01T00:00:00Z", &[("keep", "yes")]),
        "",
    )
    .await;
    let tagged = create(&mut c, config("t", "2020-01-01T00:00:00Z", &[]), "").await;
    let used = create(&mut c, config("u", "2020-01-01T00:00:00Z", &[]), "").await;
    tag(&mut c, &tagged, "tagged:1").await;
    tag(&mut c, &used, "used:1").await;
    set_container(&imaged, "c1", &used, false).await;

    let pruner = c.clone();
    let prune = |filters: &[&str]| {
        let mut c = pruner.clone();
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        async move {
            c.prune_images(PruneImagesRequest { filters })
                .await
                .map(|r| r.into_inner())
        }
    };
    let deleted = |r: PruneImagesResponse| r.deleted.into_iter().map(describe).collect::<Vec<_>>();

    assert_eq!(
        deleted(prune(&["until=2021-01-01T00:00:00Z"]).await.unwrap()),
        [format!("Deleted: {dangling_old}")]
    );
    assert_eq!(
        deleted(prune(&["label!=keep=yes"]).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        deleted(prune(&["label=keep=yes"]).await.unwrap()),
        [format!("Deleted: {dangling_new}")]
    );
    // dangling=false: every unused image; the one a container uses stays.
    let all = deleted(prune(&["dangling=false"]).await.unwrap());
    assert_eq!(
        all,
        [
            "Untagged: tagged:1".to_string(),
            format!("Deleted: {tagged}")
        ]
    );
    assert!(inspect(&mut c, "used:1").await.is_ok());

    assert_status(
        prune(&["colour=red"]).await,
        Code::InvalidArgument,
        "invalid filter 'colour'",
    );
    assert_status(
        prune(&["until=1h", "until=2h"]).await,
        Code::InvalidArgument,
        "more than one until filter specified",
    );
    assert_status(
        prune(&["reference=x"]).await,
        Code::InvalidArgument,
        "invalid filter 'reference'",
    );
}

#[tokio::test]
async fn history_walks_the_parent_chain() {
    let imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let base = create(&mut c, config("base", "2024-01-01T00:00:00Z", &[]), "").await;
    tag(&mut c, &base, "base:1").await;
    let base_config: serde_json::Value =
        serde_json::from_slice(&config("base", "2024-01-01T00:00:00Z", &[])).unwrap();
    let mut top = base_config.clone();
    top["history"].as_array_mut().unwrap().push(json!({
        "created": "2024-02-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) CMD [\"top\"]", "comment": "top step", "empty_layer": true
    }));
    let top = create(&mut c, serde_json::to_vec(&top).unwrap(), &base).await;
    tag(&mut c, &top, "top:1").await;

    let items = c
        .image_history(ImageHistoryRequest {
            image: "top:1".into(),
            platform: None,
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 2);
    assert_eq!(
        (items[0].id.as_str(), items[0].tags.as_slice()),
        (top.as_str(), &["top:1".to_string()][..])
    );
    assert_eq!(
        (items[0].created, items[0].comment.as_str(), items[0].size),
        (1_706_745_600, "top step", 0)
    );
    assert_eq!(items[0].created_at.unwrap().seconds, 1_706_745_600);
    assert_eq!(
        (items[1].id.as_str(), items[1].tags.as_slice()),
        (base.as_str(), &["base:1".to_string()][..])
    );
    assert_eq!(items[1].created_by, "/bin/sh -c #(nop) ENV NAME=base");

    // Without a local parent, lower rows are <missing>.
    let mut lone = base_config;
    lone["history"]
        .as_array_mut()
        .unwrap()
        .push(json!({"created_by": "lone", "empty_layer": true}));
    let lone = create(&mut c, serde_json::to_vec(&lone).unwrap(), "").await;
    let items = c
        .image_history(ImageHistoryRequest {
            image: lone.clone(),
            platform: None,
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [lone.as_str(), "<missing>"]
    );
}

#[tokio::test]
async fn images_and_references_survive_a_restart() {
    let mut imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let parent = create(&mut c, config("p", "2024-01-01T00:00:00Z", &[]), "").await;
    let child = create(
        &mut c,
        config("c", "2024-01-02T00:00:00Z", &[("a", "b")]),
        &parent,
    )
    .await;
    tag(&mut c, &child, "kept:1").await;
    set_container(&imaged, "c1", &child, true).await;
    let before = list(&mut c, &[], true).await.unwrap();

    imaged.kill(Service::Metadata).await;
    imaged.start_service(Service::Metadata).await.unwrap();
    let after = list(&mut c, &[], true).await.unwrap();
    assert_eq!(before, after);
    assert_eq!(inspect(&mut c, "kept:1").await.unwrap().parent, parent);
    assert_eq!(
        rmi(&mut c, &child, true, None).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn image_actions_are_published_as_events() {
    let mut imaged = Imaged::start().await.unwrap();
    let mut c = imaged.images();
    let mut events = EventsClient::new(imaged.channel(Service::Gateway))
        .subscribe(SubscribeRequest {
            filters: vec!["type=image".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let id = create(
        &mut c,
        config("e", "2024-01-01T00:00:00Z", &[("tier", "web")]),
        "",
    )
    .await;
    tag(&mut c, &id, "ev:1").await;
    rmi(&mut c, "ev:1", false, None).await.unwrap();
    c.prune_images(PruneImagesRequest::default()).await.unwrap();

    let mut seen = Vec::new();
    for _ in 0..5 {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let time = e.time.expect("every event has its time");
        assert_eq!(
            i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos),
            i128::from(e.time_nano),
            "time and time_nano say one instant"
        );
        let actor = e.actor.unwrap();
        seen.push((
            e.action,
            actor.id,
            actor.attributes.get("name").cloned(),
            actor.attributes.get("tier").cloned(),
        ));
    }
    let web = Some("web".to_string());
    assert_eq!(
        seen,
        [
            (
                "create".to_string(),
                id.clone(),
                Some(id.clone()),
                web.clone()
            ),
            ("tag".into(), id.clone(), Some("ev:1".into()), web.clone()),
            ("untag".into(), id.clone(), Some(id.clone()), web.clone()),
            ("delete".into(), id.clone(), Some(id.clone()), None),
            ("prune".into(), String::new(), None, None),
        ]
    );

    // While imaged-events is down, changes still happen; their events
    // arrive once it is back.
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    imaged.terminate(Service::Events).await.unwrap();
    let id2 = create(&mut c, config("later", "2024-01-01T00:00:00Z", &[]), "").await;
    tag(&mut c, &id2, "later:1").await;
    imaged.start_service(Service::Events).await.unwrap();
    let mut replay = EventsClient::new(imaged.channel(Service::Gateway))
        .subscribe(SubscribeRequest {
            filters: vec![format!("image={id2}")],
            since: start.to_string(),
            until: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut actions = BTreeSet::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(20), replay.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        actions.insert(e.action);
    }
    assert_eq!(
        actions,
        BTreeSet::from(["create".to_string(), "tag".to_string()])
    );
}

/// A layerless config with a container_config (what the classic builder
/// records) and the given history steps.
fn built(created: &str, step: &[&str], history: &[&str]) -> Vec<u8> {
    let history: Vec<serde_json::Value> = history
        .iter()
        .map(|h| json!({"created": "2024-01-01T00:00:00Z", "created_by": h, "empty_layer": true}))
        .collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Cmd": step},
        "container_config": {"Cmd": step, "Hostname": created},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": history,
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_cache_lookup_finds_local_and_history_hits() {
    let imaged = Imaged::start().await.unwrap();
    let mut client = imaged.images();
    let lookup = |parent: String, step: &[&str], sources: Vec<String>| {
        let mut client = imaged.images();
        let config = serde_json::to_vec(&json!({"Cmd": step, "Hostname": "ignored"})).unwrap();
        async move {
            client
                .image_cache_lookup(ImageCacheLookupRequest {
                    parent,
                    config,
                    source_refs: sources,
                })
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    let make = ["/bin/sh", "-c", "make"];
    let base = create(
        &mut client,
        built("2024-01-01T00:00:00Z", &["/bin/sh"], &["FROM"]),
        "",
    )
    .await;
    let older = create(
        &mut client,
        built("2024-01-02T00:00:00Z", &make, &["FROM", "/bin/sh -c make"]),
        &base,
    )
    .await;
    let newer = create(
        &mut client,
        built("2024-01-03T00:00:00Z", &make, &["FROM", "/bin/sh -c make"]),
        &base,
    )
    .await;
    assert_ne!(older, newer);
    // The newest matching child; no hit for another step or another parent.
    assert_eq!(lookup(base.clone(), &make, vec![]).await, newer);
    assert_eq!(
        lookup(base.clone(), &["/bin/sh", "-c", "other"], vec![]).await,
        ""
    );
    assert_eq!(lookup(newer.clone(), &make, vec![]).await, "");
    let err = client
        .image_cache_lookup(ImageCacheLookupRequest {
            parent: "no/such:parent".into(),
            config: b"{}".to_vec(),
            source_refs: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // History cache: a source image (no parent links, as after a pull)
    // whose history continues the parent's.
    let source = create(
        &mut client,
        built(
            "2024-02-01T00:00:00Z",
            &["/bin/sh", "-c", "install"],
            &["FROM", "/bin/sh -c make", "/bin/sh -c install"],
        ),
        "",
    )
    .await;
    tag(&mut client, &source, "cache/source:1").await;
    let intermediate = lookup(base.clone(), &make, vec!["cache/source:1".into()]).await;
    assert!(
        !intermediate.is_empty() && intermediate != source && intermediate != newer,
        "an intermediate image is made for a step that is not the source's last"
    );
    let children = client
        .image_children(ImageChildrenRequest {
            image: base.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .ids;
    assert!(children.contains(&intermediate), "{children:?}");
    let last = lookup(
        intermediate.clone(),
        &["/bin/sh", "-c", "install"],
        vec!["cache/source:1".into()],
    )
    .await;
    assert_eq!(last, source, "the source's last step is the source itself");
    let inspected = inspect(&mut client, &source).await.unwrap();
    assert_eq!(
        inspected.parent, intermediate,
        "and it gets the parent link"
    );
}

/// InspectAll (the gateway's read model) answers every image and reference
/// at one version, or refuses a store bigger than the caller will hold.
#[tokio::test]
async fn inspect_all_answers_everything_at_one_version() {
    let imaged = Imaged::start().await.unwrap();
    let mut client = imaged.images();
    let a = create(&mut client, config("a", "2024-01-01T00:00:00Z", &[]), "").await;
    let b = create(&mut client, config("b", "2024-01-02T00:00:00Z", &[]), "").await;
    tag(&mut client, &a, "app:1").await;
    let mut metadata = MetadataClient::new(imaged.channel(Service::Metadata));
    let all = metadata
        .inspect_all(InspectAllRequest { max_images: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<&str> = all.images.iter().map(|i| i.id.as_str()).collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want);
    let inspect_a: ImageInspect = prost::Message::decode(
        all.images
            .iter()
            .find(|i| i.id == a)
            .unwrap()
            .inspect
            .clone(),
    )
    .unwrap();
    assert_eq!(inspect_a.repo_tags, ["app:1"]);
    assert_eq!(all.references.len(), 1);
    assert_eq!(all.references[0].key, "docker.io/library/app:1");
    assert_eq!(all.references[0].id, a);
    assert!(all.version.is_some());

    let err = metadata
        .inspect_all(InspectAllRequest { max_images: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}
