//! Garbage collection, model-based: random sequences of pull, tag, rmi,
//! prune, load, container create and remove, commit and restarts of
//! imaged-transfer and imaged-metadata, against the four real processes
//! and a real registry. After every step:
//! - every image imaged lists has each of its layers stored;
//! - once what a step released has been collected, every stored layer is
//!   one an image or a container stands on, and every blob is a layer's,
//!   or the config or a manifest of an image that exists.
//!
//! `make test` runs 8 sequences (about 10 s); `make fuzz` runs 200
//! (`GC_MODEL_CASES`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::layers_client::LayersClient;
use imaged_api::v1::*;
use imaged_common::config::Service;
use imaged_common::peer::PeerChannel;
use imaged_e2e::{Imaged, TestRegistry, client};
use imaged_fixtures::{Compression, Image, ImageBuilder, LayerBuilder, MediaTypes};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Op {
    Pull(usize),
    Tag(usize, usize),
    Rmi { target: Target, force: bool },
    Prune { all: bool },
    Load(usize),
    Create { container: usize, image: usize },
    Remove(usize),
    Commit(usize),
    Restart(Service),
}

/// What an rmi names.
#[derive(Clone, Debug)]
enum Target {
    Fixture(usize),
    Tag(usize),
    Loaded(usize),
    Committed(usize),
}

const IMAGES: usize = 3;
const TAGS: usize = 2;
const CONTAINERS: usize = 2;

fn op() -> impl Strategy<Value = Op> {
    let target = prop_oneof![
        (0..IMAGES).prop_map(Target::Fixture),
        (0..TAGS).prop_map(Target::Tag),
        (0..IMAGES).prop_map(Target::Loaded),
        (0..CONTAINERS).prop_map(Target::Committed),
    ];
    prop_oneof![
        4 => (0..IMAGES).prop_map(Op::Pull),
        2 => (0..IMAGES, 0..TAGS).prop_map(|(i, t)| Op::Tag(i, t)),
        3 => (target, any::<bool>()).prop_map(|(target, force)| Op::Rmi { target, force }),
        1 => any::<bool>().prop_map(|all| Op::Prune { all }),
        2 => (0..IMAGES).prop_map(Op::Load),
        2 => (0..CONTAINERS, 0..IMAGES).prop_map(|(container, image)| Op::Create { container, image }),
        2 => (0..CONTAINERS).prop_map(Op::Remove),
        1 => (0..CONTAINERS).prop_map(Op::Commit),
        1 => prop_oneof![Just(Service::Transfer), Just(Service::Metadata)].prop_map(Op::Restart),
    ]
}

/// Three images on one base layer, two with a layer of their own.
fn images() -> Vec<Image> {
    let layer = |name: &str| {
        LayerBuilder::new()
            .file(name, format!("{name}\n").as_bytes())
            .build(Compression::Gzip)
            .unwrap()
    };
    let base = layer("base");
    vec![
        ImageBuilder::new(MediaTypes::Docker)
            .layer(base.clone())
            .build()
            .unwrap(),
        ImageBuilder::new(MediaTypes::Docker)
            .layer(base.clone())
            .layer(layer("app"))
            .build()
            .unwrap(),
        ImageBuilder::new(MediaTypes::Docker)
            .layer(base)
            .layer(layer("other"))
            .build()
            .unwrap(),
    ]
}

/// One sequence's world: the processes, and which container was made
/// from which image (the invariants need what containers stand on).
struct World<'a> {
    imaged: Imaged,
    registry: &'a TestRegistry,
    fixtures: &'a [Image],
    containers: BTreeMap<usize, String>,
}

impl World<'_> {
    fn images(&self) -> ImagesClient<PeerChannel> {
        self.imaged.images()
    }

    fn reference(&self, i: usize) -> String {
        self.registry
            .fixtures()
            .reference(&format!("gc/image{i}:1"))
    }

    fn target(&self, target: &Target) -> String {
        match target {
            Target::Fixture(i) => self.reference(*i),
            Target::Tag(t) => format!("model/tag{t}:1"),
            Target::Loaded(i) => format!("loaded/image{i}:1"),
            Target::Committed(c) => format!("committed/c{c}:1"),
        }
    }

    /// Runs `op`; what it answers does not matter (an rmi may conflict,
    /// a container may exist already), only what it leaves.
    async fn run(&mut self, op: &Op) {
        let mut images = self.images();
        let mut layers = LayersClient::new(self.imaged.channel(Service::Gateway));
        match op {
            Op::Pull(i) => {
                client::pull(images, client::pull_request(&self.reference(*i)))
                    .await
                    .expect("a pull from the test registry succeeds");
            }
            Op::Tag(i, t) => {
                let _ = images
                    .tag_image(TagImageRequest {
                        source: self.reference(*i),
                        target: format!("model/tag{t}:1"),
                    })
                    .await;
            }
            Op::Rmi { target, force } => {
                let _ = images
                    .remove_image(RemoveImageRequest {
                        image: self.target(target),
                        force: *force,
                        prune_children: None,
                    })
                    .await;
            }
            Op::Prune { all } => {
                let filters = if *all {
                    vec!["dangling=false".to_string()]
                } else {
                    Vec::new()
                };
                let _ = images.prune_images(PruneImagesRequest { filters }).await;
            }
            Op::Load(i) => {
                let tag = format!("loaded/image{i}:1");
                let archive =
                    imaged_fixtures::archive::with_linked_layers(&[(&self.fixtures[*i], &tag)]);
                client::load(images, archive)
                    .await
                    .expect("a docker-save archive loads");
            }
            Op::Create { container, image } => {
                let created = layers
                    .create_layer(CreateLayerRequest {
                        container_id: format!("c{container}"),
                        image: self.reference(*image),
                        mount_label: String::new(),
                    })
                    .await;
                if created.is_ok() {
                    let id = self.fixtures[*image].id().to_string();
                    self.containers.insert(*container, id);
                }
            }
            Op::Remove(container) => {
                let released = layers
                    .release_layer(ReleaseLayerRequest {
                        container_id: format!("c{container}"),
                    })
                    .await;
                if released.is_ok() {
                    self.containers.remove(container);
                }
            }
            Op::Commit(container) => {
                let _ = images
                    .commit_image(CommitImageRequest {
                        container_id: format!("c{container}"),
                        reference: format!("committed/c{container}:1"),
                        ..Default::default()
                    })
                    .await;
            }
            Op::Restart(service) => {
                self.imaged.terminate(*service).await.unwrap();
                self.imaged.start_service(*service).await.unwrap();
            }
        }
    }

    /// The invariants, or what breaks them.
    async fn check(&self) -> Result<(), String> {
        let root = self.imaged.root().join("transfer");
        let mut images = self.images();
        let listed = images
            .list_images(ListImagesRequest {
                all: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("ListImages: {e}"))?
            .into_inner()
            .images;
        let mut needed = HashSet::new();
        let mut small = HashSet::new();
        for image in &listed {
            let inspected = client::inspect(&mut images, &image.id)
                .await
                .map_err(|e| format!("inspect {}: {e}", image.id))?;
            let diff_ids = inspected.root_fs.map(|r| r.layers).unwrap_or_default();
            for chain in chains(&diff_ids) {
                if !root.join("layers").join(&chain).exists() {
                    return Err(format!("image {} lacks its layer {chain}", image.id));
                }
                needed.insert(chain);
            }
            small.insert(hex(&image.id));
            // A pulled image keeps its manifest while it lives, named by a
            // repo digest or not (an rmi of its registry tag drops that).
            for fixture in self.fixtures.iter().filter(|f| f.id() == image.id) {
                small.insert(hex(&fixture.manifest.digest));
            }
            for digest in &image.repo_digests {
                if let Some((_, d)) = digest.split_once('@') {
                    small.insert(hex(d));
                }
            }
        }
        for image in self.containers.values() {
            let fixture = self.fixtures.iter().find(|f| f.id() == image).unwrap();
            let diff_ids: Vec<String> = fixture.layers.iter().map(|l| l.diff_id.clone()).collect();
            needed.extend(chains(&diff_ids));
        }
        let stored = stored_layers(&root);
        let mut layer_blobs = HashSet::new();
        for (chain, record) in &stored {
            if !needed.contains(chain) {
                let ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
                return Err(format!(
                    "layer {chain} ({record}) is stored but no image or container stands on it; images {ids:?} and containers {:?} need {needed:?}",
                    self.containers
                ));
            }
            for key in ["blob", "gzip"] {
                if let Some(blob) = record[key].as_str() {
                    layer_blobs.insert(hex(blob));
                }
            }
        }
        for blob in std::fs::read_dir(root.join("content/blobs/sha256")).unwrap() {
            let name = blob.unwrap().file_name().to_string_lossy().to_string();
            if !layer_blobs.contains(&name) && !small.contains(&name) {
                return Err(format!(
                    "blob {name} is kept but no layer or image needs it"
                ));
            }
        }
        Ok(())
    }

    /// Checks until the invariants hold (a release runs in the background
    /// after its call returns), at most a few seconds.
    async fn settled(&self) -> Result<(), String> {
        let mut last = Ok(());
        for _ in 0..60 {
            last = self.check().await;
            if last.is_ok() {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }
}

fn hex(digest: &str) -> String {
    digest.trim_start_matches("sha256:").to_string()
}

/// The chain IDs (hex) of `diff_ids`, bottom first (imaged's own rule).
fn chains(diff_ids: &[String]) -> Vec<String> {
    let diff_ids: Vec<imaged_model::Digest> = diff_ids.iter().map(|d| d.parse().unwrap()).collect();
    imaged_model::digest::chain_ids(&diff_ids)
        .iter()
        .map(|c| c.hex().to_string())
        .collect()
}

/// The layer store's layers: chain hex → its `layer.json`.
fn stored_layers(root: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut layers = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root.join("layers")) else {
        return layers;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read(path.join("layer.json")) else {
            continue; // not a layer (staging, a temporary name)
        };
        let record: serde_json::Value = serde_json::from_slice(&text).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        layers.insert(name, record);
    }
    layers
}

/// Runs `ops` on a fresh imaged; the first broken invariant, with the
/// steps that led to it.
async fn sequence(registry: &TestRegistry, fixtures: &[Image], ops: &[Op]) -> Result<(), String> {
    let mut world = World {
        imaged: Imaged::start().await.map_err(|e| e.to_string())?,
        registry,
        fixtures,
        containers: BTreeMap::new(),
    };
    for (n, op) in ops.iter().enumerate() {
        world.run(op).await;
        if let Err(broken) = world.settled().await {
            return Err(format!(
                "after step {n} of {ops:?}: {broken}\n{}",
                world.imaged.logs()
            ));
        }
    }
    // The end: every container gone, every image removed and pruned,
    // leaves nothing.
    for container in 0..CONTAINERS {
        world.run(&Op::Remove(container)).await;
    }
    let mut images = world.images();
    let listed = client::list(images.clone()).await;
    for image in listed {
        let _ = images
            .remove_image(RemoveImageRequest {
                image: image.id.clone(),
                force: true,
                prune_children: None,
            })
            .await;
    }
    world.run(&Op::Prune { all: true }).await;
    world
        .settled()
        .await
        .map_err(|b| format!("at the end of {ops:?}: {b}"))?;
    let root = world.imaged.root().join("transfer");
    let left = stored_layers(&root);
    if !left.is_empty() {
        return Err(format!(
            "at the end of {ops:?}: layers left: {:?}",
            left.keys()
        ));
    }
    Ok(())
}

#[test]
fn random_sequences_keep_every_image_whole_and_collect_everything_else() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fixtures = images();
    let registry = runtime.block_on(async {
        let registry = TestRegistry::start().await.unwrap();
        for (i, image) in fixtures.iter().enumerate() {
            registry
                .fixtures()
                .push_image(&format!("gc/image{i}:1"), image)
                .await
                .unwrap();
        }
        registry
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 4..12), |ops| {
        runtime
            .block_on(sequence(&registry, &fixtures, &ops))
            .map_err(TestCaseError::fail)
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
