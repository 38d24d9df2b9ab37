//! Security, second round: what a hostile archive can cost a node. A GNU
//! sparse layer with a 1 TiB hole costs what it stores, on pull, load and
//! import, and its apparent size counts against the layer limit; an
//! import is bounded as it arrives.

use std::time::{Duration, Instant};

use imaged_common::config::Service;
use imaged_e2e::{Imaged, TestRegistry, client, one_layer_image as image_of};
use imaged_fixtures::{Compression, LayerBuilder};
use tonic::Code;

const TIB: u64 = 1 << 40;

/// A layer holding one GNU sparse file of 1 TiB: data at each end and a
/// hole between, a few KiB of tar.
fn hole() -> LayerBuilder {
    let mut head = b"head".to_vec();
    head.resize(512, 0); // every block but the last fills its 512 bytes
    LayerBuilder::new().sparse_file("hole", &[(0, &head), (TIB - 4, b"tail")], TIB)
}

/// The apparent size of `/hole` in every stored layer of `imaged`.
fn stored_holes(imaged: &Imaged) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    let layers = imaged.root().join("transfer/layers");
    for entry in std::fs::read_dir(&layers).unwrap().flatten() {
        let path = entry.path().join("diff/hole");
        if let Ok(meta) = std::fs::metadata(&path) {
            found.push((
                meta.len(),
                std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
            ));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_tib_hole_costs_what_it_stores_on_pull_load_and_import() {
    let registry = TestRegistry::start().await.unwrap();
    let image = image_of(hole());
    registry
        .fixtures()
        .push_image("sparse/app:latest", &image)
        .await
        .unwrap();
    // A layer may be 2 TiB here; the hole alone is 1 TiB.
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--max-layer-size=2199023255552")
        .start()
        .await
        .unwrap();

    // Each operation read the hole as zeros before: 7 minutes a TiB.
    let reference = registry.fixtures().reference("sparse/app:latest");
    let started = Instant::now();
    client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap();
    let pull = started.elapsed();

    // Each operation has a layer of its own, so each unpacks one.
    let loaded = image_of(hole().file("loaded", b"x"));
    let archive =
        imaged_fixtures::archive::with_linked_layers(&[(&loaded, "sparse/loaded:latest")]);
    let started = Instant::now();
    client::load(imaged.images(), archive).await.unwrap();
    let load = started.elapsed();

    // A file that ends in a hole: its map ends with an empty block there.
    let rootfs = hole().sparse_file("other", &[(0, &[7u8; 512]), (TIB / 2, b"")], TIB / 2);
    let tar = rootfs.build(Compression::None).unwrap().tar().unwrap();
    let started = Instant::now();
    client::import(imaged.images(), "sparse/imported:latest", &tar)
        .await
        .unwrap();
    let import = started.elapsed();

    for (what, took) in [("pull", pull), ("load", load), ("import", import)] {
        assert!(took < Duration::from_secs(20), "{what} took {took:?}");
    }
    let holes = stored_holes(&imaged);
    assert!(!holes.is_empty(), "no layer holds the hole");
    for (length, on_disk) in holes {
        assert_eq!(length, TIB);
        assert!(on_disk < 1 << 20, "{on_disk} bytes on disk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_past_the_layer_limit_is_refused_at_once() {
    let registry = TestRegistry::start().await.unwrap();
    let image = image_of(hole());
    registry
        .fixtures()
        .push_image("sparse/big:latest", &image)
        .await
        .unwrap();
    let imaged = Imaged::start().await.unwrap();
    let reference = registry.fixtures().reference("sparse/big:latest");
    let started = Instant::now();
    let err = client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(stored_holes(&imaged).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_larger_than_a_layer_may_be_is_refused_as_it_arrives() {
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--max-layer-size=1048576")
        .start()
        .await
        .unwrap();
    // 4 MiB of files: past the 1 MiB a layer may take here.
    let tar = LayerBuilder::new()
        .generated_files("d", 4, 1 << 20, 9)
        .build(Compression::None)
        .unwrap()
        .tar()
        .unwrap();
    let err = client::import(imaged.images(), "big/import:1", &tar)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(client::list(imaged.images()).await.is_empty());
    let staging = imaged.root().join("transfer/staging");
    if let Ok(entries) = std::fs::read_dir(&staging) {
        let left: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "left in staging: {left:?}");
    }
}
