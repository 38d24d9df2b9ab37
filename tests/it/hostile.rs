//! Hostile input against the four real processes and a real registry: a
//! layer that tries to reach the host through a symlink, pulled and
//! imported; a chain deeper than Docker allows. Each case checks the
//! refusal and its code, that a canary tree outside imaged's root is
//! untouched, that nothing is left in staging, ingest, layers or blobs,
//! and that a normal pull still works afterwards.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imaged_api::v1::*;
use imaged_e2e::front::{Answer, Front};
use imaged_e2e::{Imaged, TestRegistry, client};
use imaged_fixtures::{Compression, ImageBuilder, Layer, LayerBuilder, MediaTypes};
use tonic::Code;

/// A directory outside imaged's root with a file and a tree in it, and
/// what it held when made.
struct Canary {
    dir: tempfile::TempDir,
    before: BTreeMap<PathBuf, (u32, Vec<u8>)>,
}

impl Canary {
    fn new() -> Canary {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("victim"), b"do not touch").unwrap();
        std::fs::create_dir_all(dir.path().join("tree/deeper")).unwrap();
        std::fs::write(dir.path().join("tree/deeper/leaf"), b"leaf").unwrap();
        let before = snapshot(dir.path());
        Canary { dir, before }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    fn assert_untouched(&self, case: &str) {
        assert_eq!(
            snapshot(self.dir.path()),
            self.before,
            "{case}: the host changed"
        );
        assert_eq!(
            xattr::get(self.dir.path(), "trusted.overlay.opaque").unwrap(),
            None,
            "{case}"
        );
    }
}

/// Every path under `dir` with its mode and contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let data = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            if meta.is_dir() {
                pending.push(path.clone());
            }
            out.insert(path, (meta.mode(), data));
        }
    }
    out
}

/// A raw tar of (name, type, link target) entries, written as given.
fn raw_layer(entries: &[(&str, tar::EntryType, &str)]) -> Layer {
    let mut out = Vec::new();
    for (name, kind, link) in entries {
        let mut header = tar::Header::new_ustar();
        header.as_ustar_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_ustar_mut().unwrap().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o666);
        header.set_size(0);
        header.set_mtime(1_700_000_000);
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
    }
    out.resize(out.len() + 1024, 0);
    Layer::from_tar(out, Compression::Gzip).unwrap()
}

/// Pushes `image` to `registry` as `repo` and pulls it through imaged.
async fn push_and_pull(
    registry: &TestRegistry,
    imaged: &Imaged,
    repo: &str,
    image: &imaged_fixtures::Image,
) {
    registry.fixtures().push_image(repo, image).await.unwrap();
    let reference = registry.fixtures().reference(repo);
    client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap();
}

/// Names left in one of transfer's working directories.
fn left_in(imaged: &Imaged, dir: &str) -> Vec<String> {
    let path = imaged.root().join("transfer").join(dir);
    match std::fs::read_dir(&path) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Asserts that staging and ingest are empty and that `layers` layers and
/// `blobs` blobs are stored.
fn assert_nothing_left(imaged: &Imaged, case: &str, layers: usize, blobs: usize) {
    assert_eq!(
        left_in(imaged, "staging"),
        Vec::<String>::new(),
        "{case}: staging"
    );
    assert_eq!(
        left_in(imaged, "content/ingest"),
        Vec::<String>::new(),
        "{case}: ingest"
    );
    assert_eq!(left_in(imaged, "layers").len(), layers, "{case}: layers");
    assert_eq!(
        left_in(imaged, "content/blobs/sha256").len(),
        blobs,
        "{case}: blobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_reaching_through_a_symlink_change_nothing_outside_the_root() {
    let registry = TestRegistry::start().await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let canary = Canary::new();
    let under = [
        ("x/.wh.victim", tar::EntryType::Regular),
        ("x/.wh.tree", tar::EntryType::Regular),
        ("x/.wh..wh..opq", tar::EntryType::Regular),
        ("x/null", tar::EntryType::Char),
        ("x/disk", tar::EntryType::Block),
        ("x/pipe", tar::EntryType::Fifo),
        ("x/made/", tar::EntryType::Directory),
        ("x/file", tar::EntryType::Regular),
    ];
    for (i, (name, kind)) in under.iter().enumerate() {
        let layer = raw_layer(&[
            ("x", tar::EntryType::Symlink, canary.path()),
            (name, *kind, ""),
        ]);
        // Pulled from a registry.
        let image = ImageBuilder::new(MediaTypes::Oci)
            .layer(layer.clone())
            .build()
            .unwrap();
        let repo = format!("hostile/escape{i}:latest");
        registry.fixtures().push_image(&repo, &image).await.unwrap();
        let reference = registry.fixtures().reference(&repo);
        let err = client::pull(imaged.images(), client::pull_request(&reference))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "pull {name}: {err}");
        assert!(
            err.message().contains("outside the layer"),
            "pull {name}: {err}"
        );
        canary.assert_untouched(&format!("pull {name}"));
        assert_nothing_left(&imaged, &format!("pull {name}"), 0, 0);

        // Imported as a root filesystem.
        let err = import(&imaged, &format!("hostile/import{i}:latest"), &layer.data)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "import {name}: {err}");
        canary.assert_untouched(&format!("import {name}"));
        assert_nothing_left(&imaged, &format!("import {name}"), 0, 0);
    }
    let listed = client::list(imaged.images()).await;
    assert!(listed.is_empty(), "{listed:?}");

    // A normal image still pulls.
    let image = ImageBuilder::new(MediaTypes::Oci)
        .layer(
            LayerBuilder::new()
                .file("etc/ok", b"ok")
                .build(Compression::Gzip)
                .unwrap(),
        )
        .build()
        .unwrap();
    push_and_pull(&registry, &imaged, "hostile/fine:latest", &image).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_deeper_than_dockers_is_refused_before_any_download() {
    let registry = TestRegistry::start().await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let layer = LayerBuilder::new()
        .file("f", b"same")
        .build(Compression::Gzip)
        .unwrap();
    let mut builder = ImageBuilder::new(MediaTypes::Oci);
    for _ in 0..400 {
        builder = builder.layer(layer.clone());
    }
    let image = builder.build().unwrap();
    registry
        .fixtures()
        .push_image("hostile/deep:latest", &image)
        .await
        .unwrap();
    let reference = registry.fixtures().reference("hostile/deep:latest");
    let gets_before = registry.blob_gets().len();
    let err = client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("max depth exceeded"), "{err}");
    assert_eq!(
        registry.blob_gets().len(),
        gets_before,
        "a blob was fetched"
    );
    assert_nothing_left(&imaged, "deep", 0, 0);
    // The transfer process is alive and answers.
    imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap();
}

/// Runs `args` as the user `nobody`; true when it succeeded.
fn as_nobody(args: &[&str]) -> bool {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .status()
        .expect("setpriv (util-linux) runs")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_are_closed_to_other_users() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test checks what another user can reach: run it as root"
    );
    let registry = TestRegistry::start().await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    for service in ["transfer", "metadata", "events"] {
        let mode = std::fs::metadata(imaged.root().join(service))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o077, 0, "{service}: mode {mode:o}");
    }
    // A pulled device node that anyone could open, and a setuid file.
    let image = ImageBuilder::new(MediaTypes::Oci)
        .layer(
            LayerBuilder::new()
                .char_device("dev/null", 1, 3)
                .file_with(
                    "bin/su",
                    b"#!/bin/sh\n",
                    imaged_fixtures::Meta::mode(0o4755),
                )
                .build(Compression::Gzip)
                .unwrap(),
        )
        .build()
        .unwrap();
    push_and_pull(&registry, &imaged, "closed/app:latest", &image).await;
    let layers = imaged.root().join("transfer/layers");
    let layer = std::fs::read_dir(&layers)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let device = layer.join("diff/dev/null");
    let setuid = layer.join("diff/bin/su");
    assert!(std::fs::symlink_metadata(&device).is_ok());
    assert!(std::fs::symlink_metadata(&setuid).unwrap().mode() & 0o4000 != 0);
    // The same checks pass for root and fail for nobody: the store, not
    // the files, keeps other users out.
    for path in [&device, &setuid] {
        let path = path.to_str().unwrap();
        assert!(!as_nobody(&["test", "-e", path]), "nobody reaches {path}");
        assert!(
            !as_nobody(&["sh", "-c", &format!("exec 3<>{path}")]),
            "nobody opens {path}"
        );
    }
    assert!(as_nobody(&["test", "-e", "/tmp"]), "setpriv itself failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_five_mib_config_is_pulled_and_inspected() {
    let registry = TestRegistry::start().await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let mut builder = ImageBuilder::new(MediaTypes::Oci).layer(
        LayerBuilder::new()
            .file("f", b"x")
            .build(Compression::Gzip)
            .unwrap(),
    );
    let value = "v".repeat(1000);
    for i in 0..5200 {
        builder = builder.label(&format!("label.{i}"), &value);
    }
    let image = builder.build().unwrap();
    assert!(
        image.config.data.len() > 5 << 20,
        "{}",
        image.config.data.len()
    );
    registry
        .fixtures()
        .push_image("limits/labels:latest", &image)
        .await
        .unwrap();
    let reference = registry.fixtures().reference("limits/labels:latest");
    client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap();
    let inspected = imaged
        .images()
        .max_decoding_message_size(64 << 20)
        .inspect_image(InspectImageRequest {
            image: reference.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inspected.id, image.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_before_it_fills_the_disk() {
    let imaged = Imaged::builder()
        .arg(
            imaged_common::config::Service::Transfer,
            "--max-layer-size=8388608",
        )
        .start()
        .await
        .unwrap();
    // 64 MiB of zeros in one file: a gzip of about 64 KiB.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(64 << 20);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, "zeros", std::io::repeat(0).take(64 << 20))
        .unwrap();
    let layer = Layer::from_tar(builder.into_inner().unwrap(), Compression::Gzip).unwrap();
    assert!(layer.data.len() < 1 << 20);
    let err = import(&imaged, "bomb/zeros:1", &layer.data)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("8388608"), "{err}");
    assert_nothing_left(&imaged, "bomb", 0, 0);
}

/// An image of one layer of `size` bytes of noise (incompressible).
fn noisy(size: usize, seed: u64) -> imaged_fixtures::Image {
    ImageBuilder::new(MediaTypes::Oci)
        .layer(
            LayerBuilder::new()
                .generated_files("data", 1, size, seed)
                .build(Compression::Gzip)
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// GETs of `digest`'s blob the front saw.
fn blob_gets(front: &Front, digest: &str) -> usize {
    front
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains(&format!("/blobs/{digest}")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_registry_is_refused_at_once_and_leaves_nothing() {
    let registry = TestRegistry::start().await.unwrap();
    let image = noisy(256 * 1024, 7);
    registry
        .fixtures()
        .push_image("front/app:latest", &image)
        .await
        .unwrap();
    let front = Front::start(&registry.host).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let reference = format!("{}/front/app:latest", front.host);
    let layer = &image.layers[0];
    let pull = || client::pull(imaged.images(), client::pull_request(&reference));
    let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.data).unwrap();
    let serve_manifest = |manifest: &serde_json::Value| Answer::Body {
        status: 200,
        headers: vec![(
            "Content-Type".into(),
            "application/vnd.oci.image.manifest.v1+json".into(),
        )],
        body: serde_json::to_vec(manifest).unwrap(),
    };

    // A layer body that never ends: refused at the declared size, once.
    front.rule(
        "GET",
        &format!("/blobs/{}", layer.digest),
        Answer::Endless(vec![0x5a; 64 * 1024]),
        1,
    );
    let err = pull().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("more than the"), "{err}");
    assert_eq!(blob_gets(&front, &layer.digest), 1, "retried");
    assert_nothing_left(&imaged, "endless body", 0, 0);

    // Wrong bytes of the right length: a digest mismatch, not a tar error,
    // and not retried.
    let mut wrong = layer.data.clone();
    for byte in wrong.iter_mut().skip(64) {
        *byte = byte.wrapping_add(1);
    }
    front.rule(
        "GET",
        &format!("/blobs/{}", layer.digest),
        Answer::Body {
            status: 200,
            headers: vec![],
            body: wrong,
        },
        1,
    );
    let err = pull().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("digest mismatch"), "{err}");
    assert_eq!(blob_gets(&front, &layer.digest), 2, "retried");
    assert_nothing_left(&imaged, "wrong bytes", 0, 0);

    // A 16 MiB manifest that is not JSON.
    front.rule(
        "GET",
        "/manifests/latest",
        Answer::Body {
            status: 200,
            headers: vec![(
                "Content-Type".into(),
                "application/vnd.oci.image.manifest.v1+json".into(),
            )],
            body: vec![b'{'; 16 << 20],
        },
        1,
    );
    let err = pull().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("limit"), "{err}");

    // A manifest body that never ends, with no length announced: read up
    // to the cap and refused.
    front.rule(
        "GET",
        "/manifests/latest",
        Answer::Endless(vec![b' '; 64 * 1024]),
        1,
    );
    let err = pull().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("4194304-byte limit"), "{err}");

    // A manifest of a media type no pull reads.
    let mut odd = manifest.clone();
    odd["mediaType"] = "application/vnd.example.thing.v1+json".into();
    front.rule("GET", "/manifests/latest", serve_manifest(&odd), 1);
    let err = pull().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().contains("unsupported manifest media type"),
        "{err}"
    );

    // Foreign URLs on an ordinary layer the registry does not have: the
    // URL is never fetched.
    let elsewhere = Front::start(&registry.host).await.unwrap();
    let mut foreign = manifest.clone();
    foreign["layers"][0]["urls"] = serde_json::json!([format!("http://{}/x", elsewhere.host)]);
    front.rule("GET", "/manifests/latest", serve_manifest(&foreign), 1);
    front.rule(
        "GET",
        &format!("/blobs/{}", layer.digest),
        Answer::Body {
            status: 404,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#
                .to_vec(),
        },
        1,
    );
    let err = pull().await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert_eq!(elsewhere.connections(), 0, "a foreign URL was fetched");
    assert_nothing_left(&imaged, "foreign urls", 0, 0);

    // Headers, then nothing: the pull ends by itself.
    front.rule("GET", "/manifests/latest", Answer::Silent, 1);
    let started = std::time::Instant::now();
    let err = pull().await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(40));

    // The same registry, behaving: the pull works.
    pull().await.unwrap();
    assert_nothing_left(&imaged, "good pull", 1, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_partial_ingest_is_fetched_again_within_the_same_pull() {
    let registry = TestRegistry::start().await.unwrap();
    let image = noisy(512 * 1024, 9);
    registry
        .fixtures()
        .push_image("front/poison:latest", &image)
        .await
        .unwrap();
    let front = Front::start(&registry.host).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let layer = &image.layers[0];
    // The first answer is cut short after bytes that are not the blob's.
    front.rule(
        "GET",
        &format!("/blobs/{}", layer.digest),
        Answer::Cut {
            length: layer.data.len(),
            body: vec![0x42; layer.data.len() / 2],
        },
        1,
    );
    let reference = format!("{}/front/poison:latest", front.host);
    client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap();
    assert!(
        imaged.logs().contains("digest mismatch after resuming"),
        "the poisoned ingest was not resumed and then dropped"
    );
    assert!(blob_gets(&front, &layer.digest) >= 3);
    assert_nothing_left(&imaged, "poisoned", 1, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_client_goes_away_leaves_nothing() {
    let imaged = Imaged::start().await.unwrap();
    let layer = LayerBuilder::new()
        .generated_files("data", 8, 256 * 1024, 11)
        .build(Compression::None)
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportImageRequest>(4);
    let mut images = imaged.images();
    let importing = tokio::spawn(async move {
        images
            .import_image(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // Half the tar, cut at an entry boundary a tar reader would accept as
    // an end, then the client goes away.
    let half = &layer.data[..layer.data.len() / 2];
    for (i, chunk) in half.chunks(64 * 1024).enumerate() {
        tx.send(ImportImageRequest {
            reference: if i == 0 {
                "cancelled/import:1".into()
            } else {
                String::new()
            },
            chunk: chunk.to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    importing.abort();
    drop(tx);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let staging = left_in(&imaged, "staging");
        if staging.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "staging kept {staging:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_nothing_left(&imaged, "cancelled import", 0, 0);
    let listed = client::list(imaged.images()).await;
    assert!(listed.is_empty(), "{listed:?}");
}

/// Imports `tar` (a layer, compressed or not) as a stream of chunks.
async fn import(imaged: &Imaged, reference: &str, tar: &[u8]) -> Result<String, tonic::Status> {
    client::import(imaged.images(), reference, tar).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bombs_and_deep_trees_are_refused_at_once() {
    let imaged = Imaged::start().await.unwrap();
    // A GNU long name, a long link name and a PAX record each declaring
    // 1 GiB: refused at their header, before the bytes would be read.
    for (kind, what) in [
        (tar::EntryType::GNULongName, "GNU long name"),
        (tar::EntryType::GNULongLink, "GNU long link name"),
        (tar::EntryType::XHeader, "PAX header"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_path("././@LongLink").unwrap();
        header.set_entry_type(kind);
        header.set_size(1 << 30);
        header.set_mode(0o644);
        if kind == tar::EntryType::XHeader {
            // PAX headers are read in ustar archives.
            header = tar::Header::new_ustar();
            header.set_path("pax").unwrap();
            header.set_entry_type(kind);
            header.set_size(1 << 30);
            header.set_mode(0o644);
        }
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend(std::iter::repeat_n(b'a', 4 << 20));
        let err = import(&imaged, "bomb/header:1", &tar).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().contains(what), "{what}: {err}");
        assert_nothing_left(&imaged, what, 0, 0);
    }
    // A directory tree 10,000 levels deep: "path too long".
    let mut builder = tar::Builder::new(Vec::new());
    let mut path = String::new();
    for _ in 0..10_000 {
        path.push_str("d/");
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        builder
            .append_data(&mut header, &path, std::io::empty())
            .unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let err = import(&imaged, "bomb/deep:1", &tar).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("path too long"), "{err}");
    assert_nothing_left(&imaged, "deep tree", 0, 0);
}
