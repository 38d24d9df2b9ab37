//! Generated input for the parts that read what a registry or an archive
//! sends: the tar and whiteout applier and the manifest readers. They must
//! never panic, and no layer, however its entries are laid, may change
//! anything outside its directory. `make test` runs the default 256 cases
//! each; `make fuzz` many more (`PROPTEST_CASES`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imaged_model::Platform;
use proptest::prelude::*;
use tar::EntryType;

use crate::archive::unpack::unpack;
use crate::registry::manifest::{IndexEntry, Manifest, Probe, check_manifest, choose_platform};

/// One raw tar entry: name, type, link target, data.
type RawEntry = (String, EntryType, String, Vec<u8>);

fn name() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        Just("a"),
        Just("b"),
        Just("x"),
        Just(".."),
        Just("."),
        Just(".wh.a"),
        Just(".wh.x"),
        Just(".wh.."),
        Just(".wh..wh..opq"),
        Just(".wh..wh.plnk"),
    ];
    proptest::collection::vec(part, 1..5).prop_map(|parts| parts.join("/"))
}

fn kind() -> impl Strategy<Value = EntryType> {
    prop_oneof![
        Just(EntryType::Regular),
        Just(EntryType::Directory),
        Just(EntryType::Symlink),
        Just(EntryType::Link),
        Just(EntryType::Char),
        Just(EntryType::Fifo),
    ]
}

/// Link targets; `@` stands for the canary directory outside the layer.
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("@".to_string()),
        Just("@/victim".to_string()),
        Just("..".to_string()),
        Just("../..".to_string()),
        Just("a".to_string()),
        Just("x/a".to_string()),
        Just("/".to_string()),
    ]
}

fn entries() -> impl Strategy<Value = Vec<RawEntry>> {
    proptest::collection::vec(
        (
            name(),
            kind(),
            target(),
            proptest::collection::vec(any::<u8>(), 0..8),
        ),
        1..12,
    )
}

/// A tar of raw entries, names and targets written as given.
fn raw_tar(entries: &[RawEntry], canary: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let link = link.replace('@', canary.to_str().unwrap());
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        let n = link.len().min(100);
        gnu.linkname[..n].copy_from_slice(&link.as_bytes()[..n]);
        header.set_entry_type(*kind);
        header.set_mode(0o755);
        let size = if *kind == EntryType::Regular {
            data.len()
        } else {
            0
        };
        header.set_size(size as u64);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&data[..size]);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Every path under `dir` with its type, mode and contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                pending.push(path.clone());
            }
            let data = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                Vec::new()
            };
            out.insert(path, (meta.mode(), data));
        }
    }
    out
}

proptest! {
    #[test]
    fn no_layer_changes_anything_outside_its_directory(entries in entries()) {
        let top = tempfile::tempdir().unwrap();
        let canary = top.path().join("canary");
        std::fs::create_dir_all(canary.join("tree")).unwrap();
        std::fs::write(canary.join("victim"), b"keep").unwrap();
        std::fs::write(canary.join("tree/leaf"), b"leaf").unwrap();
        let layer = top.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        let before = snapshot(&canary);
        let tar = raw_tar(&entries, &canary);
        let _ = unpack(tar.as_slice(), &layer, crate::store::layers::Budget::UNLIMITED);
        prop_assert_eq!(snapshot(&canary), before);
        let names: Vec<_> = std::fs::read_dir(top.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(names.len(), 2, "{:?}", names);
    }

    #[test]
    fn unpack_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        let _ = unpack(bytes.as_slice(), dir.path(), crate::store::layers::Budget { stream: 1 << 20, apparent: 1 << 20, free: 1 << 20 });
    }

    #[test]
    fn manifest_readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(probe) = serde_json::from_slice::<Probe>(&bytes) {
            let _ = check_manifest("fuzz", &bytes, &probe);
        }
        let _ = serde_json::from_slice::<Manifest>(&bytes);
    }

    #[test]
    fn platform_choice_never_panics(
        platforms in proptest::collection::vec(("[a-z0-9]{0,8}", "[a-z0-9]{0,8}", proptest::option::of("[a-z0-9]{0,4}")), 0..6),
        wanted in ("[a-z0-9]{0,8}", "[a-z0-9]{0,8}", "[a-z0-9]{0,4}"),
    ) {
        let entries: Vec<IndexEntry> = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, variant))| {
                serde_json::from_value(serde_json::json!({
                    "digest": format!("sha256:{i:064x}"),
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "platform": {"os": os, "architecture": arch, "variant": variant},
                }))
                .unwrap()
            })
            .collect();
        let platform = Platform::new(&wanted.0, &wanted.1, &wanted.2).normalize();
        let _ = choose_platform(&entries, &platform, "fuzz");
    }
}
