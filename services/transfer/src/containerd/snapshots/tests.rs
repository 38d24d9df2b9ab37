use std::collections::HashSet;

use super::*;
use crate::storage::overlay::Overlay;
use crate::storage::vfs::Vfs;
use crate::store::layers::Layer;

struct Fixture {
    dir: tempfile::TempDir,
    layers: Arc<LayerStore>,
    leases: Arc<Leases>,
    store: Snapshots,
    base: Digest,
    app: Digest,
}

fn fixture(storage: Arc<dyn StorageDriver>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layers = Arc::new(LayerStore::open(dir.path()).unwrap());
    let leases = Arc::new(Leases::new());
    let add = |name: &str, parent: Option<&Digest>| {
        let diff_id = Digest::sha256_of(name.as_bytes());
        let chain_id = imaged_model::digest::child_chain(parent, &diff_id);
        let staging = layers.stage().unwrap();
        fs::write(staging.diff().join(name), name).unwrap();
        let layer = Layer {
            chain_id: chain_id.clone(),
            diff_id,
            parent: parent.cloned(),
            size: name.len() as u64,
            blob: None,
            inodes: 1,
            tar_size: 0,
            gzip: None,
        };
        layers.commit(staging, layer).unwrap();
        chain_id
    };
    let base = add("base", None);
    let app = add("app", Some(&base));
    let store = Snapshots::open(
        dir.path(),
        storage,
        Arc::clone(&layers),
        Arc::clone(&leases),
    )
    .unwrap();
    Fixture {
        dir,
        layers,
        leases,
        store,
        base,
        app,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn option<'a>(mount: &'a Mount, prefix: &str) -> Option<&'a str> {
    mount.options.iter().find_map(|o| o.strip_prefix(prefix))
}

#[test]
fn containerd_unpacks_into_active_snapshots_and_commits_them() {
    let f = fixture(Arc::new(Overlay));
    // The first layer: a bind mount of an empty directory, as containerd's
    // overlayfs snapshotter answers.
    let mounts = f
        .store
        .prepare("ns/1/extract a", "", BTreeMap::new(), false)
        .unwrap();
    assert_eq!(mounts[0].kind, "bind");
    assert!(mounts[0].options.contains(&"rw".to_string()));
    fs::write(Path::new(&mounts[0].source).join("one"), "1").unwrap();
    f.store
        .commit("ns/2/layer1", "ns/1/extract a", labels(&[("l", "1")]))
        .unwrap();
    assert!(
        f.store
            .stat("ns/1/extract a")
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::NotFound))
    );
    let info = f.store.stat("ns/2/layer1").unwrap();
    assert_eq!(
        (info.kind, info.parent.as_str(), info.labels["l"].as_str()),
        (Kind::Committed, "", "1")
    );
    // The next one stacks on it.
    let mounts = f
        .store
        .prepare("ns/3/extract b", "ns/2/layer1", BTreeMap::new(), false)
        .unwrap();
    assert_eq!(mounts[0].kind, "overlay");
    let lower = option(&mounts[0], "lowerdir=").unwrap();
    assert!(Path::new(lower).join("one").exists(), "{lower}");
    assert!(option(&mounts[0], "upperdir=").is_some());
    assert_eq!(f.store.mounts("ns/3/extract b").unwrap(), mounts);
    assert_eq!(f.store.usage("ns/2/layer1").unwrap().size, 1);

    // containerd's errors.
    assert!(
        f.store
            .prepare("ns/3/extract b", "", BTreeMap::new(), false)
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::AlreadyExists))
    );
    assert!(
        f.store
            .prepare("x", "nope", BTreeMap::new(), false)
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::NotFound))
    );
    assert!(
        f.store
            .prepare("x", "ns/3/extract b", BTreeMap::new(), false)
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::InvalidArgument))
    );
    assert!(
        f.store
            .commit("ns/4", "ns/2/layer1", BTreeMap::new())
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::FailedPrecondition))
    );
    assert!(
        f.store
            .commit("ns/2/layer1", "ns/3/extract b", BTreeMap::new())
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::AlreadyExists))
    );
    assert!(
        f.store
            .mounts("ns/2/layer1")
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::FailedPrecondition))
    );
    assert!(
        f.store
            .remove("ns/2/layer1")
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::FailedPrecondition))
    );
    f.store.remove("ns/3/extract b").unwrap();
    f.store.remove("ns/2/layer1").unwrap();
    assert!(f.store.list(&[]).is_empty());
    let left: Vec<_> = fs::read_dir(f.dir.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["index.json"], "no directory is left behind");
}

#[test]
fn an_imaged_layer_is_a_committed_snapshot_named_by_chain_and_held_while_used() {
    let f = fixture(Arc::new(Overlay));
    f.store
        .adopt_layer(
            &f.app,
            labels(&[("containerd.io/snapshot/cri.layer-digest", "x")]),
        )
        .unwrap();
    let app = f.store.stat(&f.app.to_string()).unwrap();
    assert_eq!(
        app.parent,
        f.base.to_string(),
        "the layer below is its parent"
    );
    assert_eq!(app.labels[REF_LABEL], f.app.to_string());
    let base = f.store.stat(&f.base.to_string()).unwrap();
    assert_eq!((base.kind, base.parent.as_str()), (Kind::Committed, ""));
    let found = f.store.list(&[Filter::parse(&format!(
        r#"labels."{REF_LABEL}"=={},parent=="{}""#,
        f.app, f.base
    ))
    .unwrap()]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, f.app.to_string());

    // A container on it sees the layer dirs themselves: no copy.
    let mounts = f
        .store
        .prepare("ns/9/c1", &f.app.to_string(), BTreeMap::new(), false)
        .unwrap();
    let lower = option(&mounts[0], "lowerdir=").unwrap();
    let dirs: Vec<String> = f
        .layers
        .diff_dirs(&f.app)
        .unwrap()
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    assert_eq!(lower, dirs.join(":"));
    // Nothing of it may be collected while containerd uses it, even
    // after a restart.
    let held = |leases: &Leases| leases.held_chains();
    assert!(held(&f.leases).contains(&f.app));
    let leases = Arc::new(Leases::new());
    let store = Snapshots::open(
        f.dir.path(),
        Arc::new(Overlay),
        Arc::clone(&f.layers),
        Arc::clone(&leases),
    )
    .unwrap();
    assert_eq!(store.list(&[]).len(), 3);
    assert_eq!(
        held(&leases),
        HashSet::from([f.app.clone(), f.base.clone()])
    );
    store.remove("ns/9/c1").unwrap();
    assert!(
        store
            .remove(&f.base.to_string())
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::FailedPrecondition))
    );
    store.remove(&f.app.to_string()).unwrap();
    store.remove(&f.base.to_string()).unwrap();
    assert!(held(&leases).is_empty());
    assert!(
        f.layers.get(&f.app).is_some(),
        "the layer itself is imaged's GC's to remove"
    );
    assert!(
        store
            .usage("gone")
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::NotFound))
    );
}

#[test]
fn views_labels_and_a_crash_left_directory() {
    let f = fixture(Arc::new(Overlay));
    f.store.adopt_layer(&f.base, BTreeMap::new()).unwrap();
    let view = f
        .store
        .prepare("v", &f.base.to_string(), BTreeMap::new(), true)
        .unwrap();
    assert_eq!(view[0].kind, "bind");
    assert!(view[0].options.contains(&"ro".to_string()));
    assert_eq!(f.store.stat("v").unwrap().kind, Kind::View);
    let empty = f.store.prepare("e", "", BTreeMap::new(), true).unwrap();
    assert!(empty[0].options.contains(&"ro".to_string()));

    let mut info = f.store.stat("v").unwrap();
    info.labels = labels(&[("a", "1"), ("b", "2")]);
    f.store.update(&info, &[]).unwrap();
    info.labels = labels(&[("a", "3")]);
    let updated = f
        .store
        .update(&info, &["labels.a".into(), "labels.b".into()])
        .unwrap();
    assert_eq!(updated.labels, labels(&[("a", "3")]));
    assert!(
        f.store
            .update(&info, &["parent".into()])
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::InvalidArgument))
    );

    fs::create_dir_all(f.dir.path().join("snapshots/deadbeef/diff")).unwrap();
    assert_eq!(f.store.cleanup().unwrap(), 1);
    assert_eq!(f.store.list(&[]).len(), 3, "cleanup keeps what is recorded");
}

#[test]
fn with_vfs_a_committed_snapshot_is_a_whole_copy() {
    let f = fixture(Arc::new(Vfs));
    f.store.adopt_layer(&f.app, BTreeMap::new()).unwrap();
    let mounts = f
        .store
        .prepare("c", &f.app.to_string(), BTreeMap::new(), false)
        .unwrap();
    assert_eq!(mounts[0].kind, "bind");
    let root = Path::new(&mounts[0].source);
    assert!(root.join("base").exists() && root.join("app").exists());
    fs::remove_file(root.join("base")).unwrap();
    f.store.commit("committed", "c", BTreeMap::new()).unwrap();
    let child = f
        .store
        .prepare("child", "committed", BTreeMap::new(), false)
        .unwrap();
    let root = Path::new(&child[0].source);
    assert!(root.join("app").exists());
    assert!(
        !root.join("base").exists(),
        "a deletion in the committed copy stays deleted"
    );
}
