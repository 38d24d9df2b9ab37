//! docker save / docker load through the gateway: the archive's layout
//! (OCI layout plus manifest.json and repositories, every blob named by
//! its digest, layers as uncompressed tars), a load into a fresh imaged
//! that gives back the same images, tags and files, events, and unsafe or
//! malformed archives refused with nothing left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use imaged_api::v1::*;
use imaged_common::config::Service;
use imaged_e2e::unpacked::assert_layer_matches;
use imaged_e2e::{Imaged, TestRegistry, bin_dir, client};
use sha2::Digest as _;
use tokio_stream::StreamExt;
use tonic::Code;

async fn imagectl(imaged: &Imaged, args: &[&str]) -> String {
    let out = tokio::process::Command::new(bin_dir().join("imagectl"))
        .arg("--host")
        .arg(format!(
            "unix://{}",
            imaged.socket(Service::Gateway).display()
        ))
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "imagectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every file of the archive by path.
fn files(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(path, data);
    }
    out
}

async fn load(imaged: &Imaged, archive: Vec<u8>) -> Result<Vec<String>, tonic::Status> {
    client::load(imaged.images(), archive).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_then_load_into_a_fresh_imaged() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let source = Imaged::start().await.unwrap();
    let app = registry.fixtures().reference("fixtures/app:1.0");
    let base = registry.fixtures().reference("fixtures/base:latest");
    let special = registry.fixtures().reference("fixtures/special:latest");
    for reference in [&app, &base, &special] {
        client::pull(source.images(), client::pull_request(reference))
            .await
            .unwrap();
    }

    let mut saves =
        imaged_api::v1::events_client::EventsClient::new(source.channel(Service::Gateway))
            .subscribe(SubscribeRequest {
                filters: vec!["event=save".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();

    // The archive: app:1.0, every tag of base's repository, special by a
    // short `sha256:` ID (which parses as name:tag, yet names no tag).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.tar");
    let base_repo = base.rsplit_once(':').unwrap().0;
    let special_by_id = format!("sha256:{}", &catalog.special.id()[7..19]);
    imagectl(
        &source,
        &[
            "save",
            "-o",
            path.to_str().unwrap(),
            &app,
            base_repo,
            &special_by_id,
        ],
    )
    .await;
    let archive = std::fs::read(&path).unwrap();
    let mut saved = BTreeSet::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), saves.next())
            .await
            .expect("save events arrive")
            .unwrap()
            .unwrap();
        let actor = event.actor.unwrap();
        assert_eq!(
            actor.attributes["name"], actor.id,
            "Docker: ID and name are the image ID"
        );
        saved.insert(actor.id);
    }
    let exported: BTreeSet<String> = [&catalog.app, &catalog.base, &catalog.special]
        .iter()
        .map(|i| i.id().to_string())
        .collect();
    assert_eq!(saved, exported);
    let files = files(&archive);
    assert_eq!(files["oci-layout"], br#"{"imageLayoutVersion": "1.0.0"}"#);
    for (path, data) in &files {
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            assert_eq!(hex::encode(sha2::Sha256::digest(data)), hex, "{path}");
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["RepoTags"], serde_json::json!([app]));
    assert_eq!(entries[1]["RepoTags"], serde_json::json!([base]));
    assert!(entries[2]["RepoTags"].is_null(), "an ID exports no tag");
    for (entry, image) in entries
        .iter()
        .zip([&catalog.app, &catalog.base, &catalog.special])
    {
        assert_eq!(
            entry["Config"],
            format!("blobs/sha256/{}", &image.id()[7..])
        );
        let layers: Vec<String> = image
            .layers
            .iter()
            .map(|l| format!("blobs/sha256/{}", &l.diff_id[7..]))
            .collect();
        assert_eq!(entry["Layers"], serde_json::json!(layers));
    }
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let names: BTreeSet<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["io.containerd.image.name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{index}");
    let repositories: serde_json::Value = serde_json::from_slice(&files["repositories"]).unwrap();
    assert_eq!(
        repositories[base_repo]["latest"],
        catalog.base.layers[0].diff_id[7..]
    );

    // Into a fresh imaged, through imagectl.
    let target = Imaged::start().await.unwrap();
    let mut events =
        imaged_api::v1::events_client::EventsClient::new(target.channel(Service::Gateway))
            .subscribe(SubscribeRequest {
                filters: vec!["event=load".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let lines = imagectl(&target, &["load", "-i", path.to_str().unwrap()]).await;
    assert!(lines.contains(&format!("Loaded image: {app}")), "{lines}");
    assert!(lines.contains(&format!("Loaded image: {base}")), "{lines}");
    assert!(
        lines.contains(&format!("Loaded image ID: {}", catalog.special.id())),
        "the last image had no tag, so every ID is listed: {lines}"
    );
    let listed = target
        .images()
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    let ids: BTreeSet<String> = listed.iter().map(|i| i.id.clone()).collect();
    let want: BTreeSet<String> = [&catalog.app, &catalog.base, &catalog.special]
        .iter()
        .map(|i| i.id().to_string())
        .collect();
    assert_eq!(ids, want);
    for image in [&catalog.app, &catalog.special] {
        let mut chain: Option<String> = None;
        for layer in &image.layers {
            let next = match &chain {
                None => layer.diff_id.clone(),
                Some(parent) => {
                    imaged_fixtures::sha256_digest(format!("{parent} {}", layer.diff_id).as_bytes())
                }
            };
            let dir = target
                .root()
                .join("transfer/layers")
                .join(&next[7..])
                .join("diff");
            assert_layer_matches(&layer.tar().unwrap(), &dir).unwrap();
            chain = Some(next);
        }
    }
    for _ in 0..3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(want.contains(&event.actor.unwrap().id));
    }

    // Loading again changes nothing; a tag held by another image moves.
    target
        .images()
        .tag_image(TagImageRequest {
            source: catalog.special.id().into(),
            target: app.clone(),
        })
        .await
        .unwrap();
    let lines = load(&target, archive.clone()).await.unwrap();
    assert!(
        lines.iter().any(|l| l
            == &format!(
                "The image {app} already exists, renaming the old one with ID {} to empty string",
                catalog.special.id()
            )),
        "{lines:?}"
    );

    // A loaded image can be pushed: its layers were kept as blobs.
    let pushed = registry.fixtures().reference("loaded/app:1.0");
    imagectl(&target, &["tag", &app, &pushed]).await;
    let out = imagectl(&target, &["push", &pushed]).await;
    assert!(out.contains("1.0: digest: sha256:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_that_link_shared_layers_load() {
    let imaged = Imaged::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    // docker shares base's layer: its first layer.tar is a link.
    let archive = imaged_fixtures::archive::with_linked_layers(&[
        (&catalog.base, "linked/base:1"),
        (&catalog.docker, "linked/docker:1"),
    ]);
    let lines = load(&imaged, archive).await.unwrap();
    assert!(
        lines.iter().any(|l| l == "Loaded image: linked/docker:1"),
        "{lines:?}"
    );
    for (tag, image) in [
        ("linked/base:1", &catalog.base),
        ("linked/docker:1", &catalog.docker),
    ] {
        let found = imaged
            .images()
            .inspect_image(InspectImageRequest {
                image: tag.into(),
                platform: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.id, image.id(), "{tag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_or_malformed_archives_are_refused() {
    let imaged = Imaged::start().await.unwrap();
    let tar_of = |entries: &[(&str, tar::EntryType, &[u8])]| {
        let mut out = Vec::new();
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_old();
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            // A link's data is its target.
            let data: &[u8] = if *kind == tar::EntryType::Symlink {
                header.as_old_mut().linkname[..data.len()].copy_from_slice(data);
                b""
            } else {
                data
            };
            header.set_size(data.len() as u64);
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "escape",
            tar_of(&[("../escape", tar::EntryType::Regular, b"x")]),
            "path contains",
        ),
        (
            "link to nothing",
            tar_of(&[("manifest.json", tar::EntryType::Symlink, b"")]),
            "links to nothing",
        ),
        (
            "link out",
            tar_of(&[(
                "manifest.json",
                tar::EntryType::Symlink,
                b"../../../etc/passwd",
            )]),
            "links out of the archive",
        ),
        (
            "absolute link",
            tar_of(&[("a/manifest.json", tar::EntryType::Symlink, b"/etc/passwd")]),
            "links out of the archive",
        ),
        (
            "loop",
            tar_of(&[
                ("manifest.json", tar::EntryType::Symlink, b"other.json"),
                ("other.json", tar::EntryType::Symlink, b"manifest.json"),
            ]),
            "loop of links",
        ),
        (
            "device",
            tar_of(&[("manifest.json", tar::EntryType::Char, b"")]),
            "holds only files, directories and links",
        ),
        (
            // Legacy (pre-1.10) archives need their repositories file.
            "no manifest",
            tar_of(&[("oci-layout", tar::EntryType::Regular, b"{}")]),
            "/repositories: no such file or directory",
        ),
        (
            "null manifest",
            tar_of(&[("manifest.json", tar::EntryType::Regular, b"null")]),
            "manifest cannot be null",
        ),
        (
            "not a tar",
            b"this is not a tar archive at all, just text".repeat(20),
            "",
        ),
    ];
    for (what, archive, message) in cases {
        let err = load(&imaged, archive).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().contains(message), "{what}: {err}");
    }
    assert!(!imaged.root().join("escape").exists());
    assert!(!imaged.root().join("transfer/escape").exists());
    let staging = imaged.root().join("transfer/staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
    let images = imaged
        .images()
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.is_empty());

    // Saving what is not there.
    let mut stream = imaged
        .images()
        .export_images(ExportImagesRequest {
            names: vec!["no/such:image".into()],
            platform: None,
        })
        .await
        .unwrap()
        .into_inner();
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_makes_a_one_layer_image_with_the_changes() {
    let imaged = Imaged::start().await.unwrap();
    let layer = imaged_fixtures::LayerBuilder::new()
        .dir("bin")
        .file_with(
            "bin/tool",
            b"#!/bin/sh\necho tool\n",
            imaged_fixtures::Meta::mode(0o755),
        )
        .symlink("bin/sh", "tool")
        .build(imaged_fixtures::Compression::Gzip)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rootfs.tar.gz");
    std::fs::write(&path, &layer.data).unwrap();
    let mut events =
        imaged_api::v1::events_client::EventsClient::new(imaged.channel(Service::Gateway))
            .subscribe(SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();

    let id = imagectl(
        &imaged,
        &[
            "import",
            "--change",
            "CMD [\"/bin/tool\"]",
            "--change",
            "ENV MODE=imported",
            "--change",
            "LABEL origin=import",
            "-m",
            "from a tarball",
            path.to_str().unwrap(),
            "imported/tool:v1",
        ],
    )
    .await;
    let id = id.trim();
    assert!(id.starts_with("sha256:"), "{id}");
    let inspect = imaged
        .images()
        .inspect_image(InspectImageRequest {
            image: "imported/tool:v1".into(),
            platform: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inspect.id, id);
    assert_eq!(inspect.comment, "from a tarball");
    let config = inspect.config.unwrap();
    assert_eq!(config.cmd, vec!["/bin/tool".to_string()]);
    assert_eq!(config.env, vec!["MODE=imported".to_string()]);
    assert_eq!(config.labels["origin"], "import");
    assert_eq!(inspect.root_fs.unwrap().layers, vec![layer.diff_id.clone()]);
    let diff = imaged
        .root()
        .join("transfer/layers")
        .join(&layer.diff_id[7..])
        .join("diff");
    assert_layer_matches(&layer.tar().unwrap(), &diff).unwrap();
    let history = imaged
        .images()
        .image_history(ImageHistoryRequest {
            image: id.into(),
            platform: None,
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].comment, "from a tarball");

    let mut actions = Vec::new();
    while actions.len() < 2 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if event.action == "import" {
            // Docker: the import event is about the image ID, and names it
            // whole.
            let actor = event.actor.clone().unwrap();
            assert_eq!(actor.id, id);
            assert_eq!(actor.attributes["name"], id);
        }
        actions.push(event.action);
    }
    assert_eq!(actions, ["tag", "import"]);

    // Bad changes and digest references are refused before any byte lands.
    let out = tokio::process::Command::new(bin_dir().join("imagectl"))
        .arg("--host")
        .arg(format!(
            "unix://{}",
            imaged.socket(Service::Gateway).display()
        ))
        .args(["import", "--change", "RUN make", path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run is not a valid change command"));
    let err = imaged
        .images()
        .import_image(tokio_stream::iter([ImportImageRequest {
            reference: format!("x/y@sha256:{}", "a".repeat(64)),
            chunk: layer.data.clone(),
            ..Default::default()
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let listed = imaged
        .images()
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_links_travel_with_the_archive() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let source = Imaged::start().await.unwrap();
    let base = registry.fixtures().reference("fixtures/base:latest");
    client::pull(source.images(), client::pull_request(&base))
        .await
        .unwrap();
    let mut layers =
        imaged_api::v1::layers_client::LayersClient::new(source.channel(Service::Gateway));
    let created = layers
        .create_layer(CreateLayerRequest {
            container_id: "builder".into(),
            image: base.clone(),
            mount_label: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    std::fs::write(
        std::path::Path::new(created.folders.last().unwrap()).join("built"),
        b"step output",
    )
    .unwrap();
    let child = source
        .images()
        .commit_image(CommitImageRequest {
            container_id: "builder".into(),
            reference: "built/child:1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("family.tar");
    imagectl(
        &source,
        &["save", "-o", path.to_str().unwrap(), &base, "built/child:1"],
    )
    .await;
    let manifest: serde_json::Value =
        serde_json::from_slice(&files(&std::fs::read(&path).unwrap())["manifest.json"]).unwrap();
    assert_eq!(manifest[1]["Parent"], catalog.base.id());

    let target = Imaged::start().await.unwrap();
    imagectl(&target, &["load", "-i", path.to_str().unwrap()]).await;
    let inspect = target
        .images()
        .inspect_image(InspectImageRequest {
            image: "built/child:1".into(),
            platform: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inspect.id, child);
    assert_eq!(
        inspect.parent,
        catalog.base.id(),
        "the parent link was restored"
    );
}
