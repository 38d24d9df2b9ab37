//! Storage drivers: how a container's read-write layer over an image's
//! layers is made, mounted and read back. One implementation each for
//! overlay2 ([`overlay`]: an overlay mount of the layer dirs and the
//! container's own upper dir) and vfs ([`vfs`]: a full copy, bind mounted),
//! as containerd keeps `core/snapshots` with its overlay and native
//! snapshotters. Which one runs is chosen once, at start-up
//! ([`crate::storage::driver`]); the rest of imaged-transfer only calls the trait.

pub(crate) mod driver;

pub mod overlay;
pub mod vfs;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use imaged_common::Error;

use crate::archive::walk;
use crate::archive::whiteout::{is_opaque, is_whiteout};

/// What a container changed: path (from `/`) → kind, sorted by path.
pub type Changes = BTreeMap<String, ChangeKind>;

/// What happened to one path, in Docker's three kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Modify,
    Add,
    Delete,
}

/// A mount that shows a layer's files, for the caller (kubelet's runtime,
/// containerd) to perform: the fields of a mount(8) line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// "overlay" or "bind".
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The read-only view of an image's layer dirs (top first): a bind mount
/// of a single layer, an overlay of several.
pub fn read_only_view(lowers: &[PathBuf]) -> Mount {
    if let [only] = lowers {
        return Mount {
            kind: "bind".into(),
            source: only.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
        };
    }
    let lowerdir = lowers
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut options = index_off();
    options.extend([format!("lowerdir={lowerdir}"), "ro".into()]);
    Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options,
    }
}

/// `index=off` when this kernel's overlayfs has the inodes index: with it
/// off, the same lower directory can be stacked in several overlays at
/// once (imaged's layers are shared by every container on them), as
/// Docker's overlay2 and containerd's overlayfs mount them.
pub(crate) fn index_off() -> Vec<String> {
    if Path::new("/sys/module/overlay/parameters/index").exists() {
        vec!["index=off".to_string()]
    } else {
        Vec::new()
    }
}

/// A container layer's directory: `diff/` holds what it wrote (the
/// overlay upper dir, or the vfs copy), and a driver may keep more.
pub struct LayerDir<'a> {
    /// `<containers>/<id>`.
    pub own: &'a Path,
    /// The image's layer dirs, top first (overlayfs' lowerdir order).
    pub lowers: &'a [PathBuf],
}

impl LayerDir<'_> {
    /// Where the container's own files are.
    pub fn upper(&self) -> PathBuf {
        self.own.join("diff")
    }
}

/// One storage driver.
pub trait StorageDriver: Send + Sync {
    /// Makes a new layer in `layer.own` (already holding an empty
    /// `diff/`): blocking, a vfs copy can take long.
    fn create(&self, layer: &LayerDir<'_>) -> Result<(), Error>;

    /// The mount that shows the container its files; `label` is an SELinux
    /// mount option.
    fn mount(&self, layer: &LayerDir<'_>, label: Option<String>) -> Mount;

    /// What the container changed, Docker's way.
    fn changes(&self, layer: &LayerDir<'_>) -> Result<Changes, Error>;

    /// Writes the container's changes into the empty directory `dir` in
    /// overlay form (whiteouts for deletions): the layer a commit makes.
    fn diff_into(&self, layer: &LayerDir<'_>, dir: &Path) -> Result<(), Error>;

    /// Bytes the container wrote.
    fn size(&self, layer: &LayerDir<'_>) -> Result<u64, Error>;

    /// Whether a layer made by this driver holds only its own changes
    /// (overlay2: it is stacked on its lowers), rather than the whole tree
    /// (vfs: a copy that stands alone once made).
    fn stacked(&self) -> bool;
}

// The image's merged view, read from its layer dirs without mounting.

/// Whether `rel` exists in the image's merged view of `lowers` (top
/// first), whiteouts and opaque directories applied.
pub(crate) fn lower_has(lowers: &[PathBuf], rel: &Path) -> bool {
    lower_meta(lowers, rel).is_some()
}

/// The metadata of `rel` in the image's merged view of `lowers` (top
/// first): the topmost layer that has it, unless a whiteout or an opaque
/// ancestor in a higher layer hides it.
pub(crate) fn lower_meta(lowers: &[PathBuf], rel: &Path) -> Option<fs::Metadata> {
    for lower in lowers {
        if let Ok(meta) = fs::symlink_metadata(lower.join(rel)) {
            return (!is_whiteout(&meta)).then_some(meta);
        }
        // An opaque ancestor in this layer hides everything below.
        let mut ancestor = rel.parent();
        while let Some(dir) = ancestor {
            if dir.as_os_str().is_empty() {
                break;
            }
            if is_opaque(&lower.join(dir)) {
                return None;
            }
            ancestor = dir.parent();
        }
    }
    None
}

/// The names in directory `rel` of the image's merged view.
pub(crate) fn lower_names(lowers: &[PathBuf], rel: &Path) -> HashSet<std::ffi::OsString> {
    let mut names = HashSet::new();
    let mut hidden = HashSet::new();
    for lower in lowers {
        let dir = lower.join(rel);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if hidden.contains(&name) {
                continue;
            }
            match entry.metadata() {
                Ok(meta) if is_whiteout(&meta) => {
                    hidden.insert(name);
                }
                Ok(_) => {
                    hidden.insert(name.clone());
                    names.insert(name);
                }
                Err(_) => {}
            }
        }
        if is_opaque(&dir) {
            break; // nothing below shows through
        }
    }
    names
}

/// Bytes of the regular files under `dir`.
pub(crate) fn tree_size(dir: &Path) -> std::io::Result<u64> {
    Ok(tree_usage(dir)?.size)
}

/// What a directory tree takes: bytes of its regular files and inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// The [`Usage`] of everything under `dir` (not `dir` itself), which a
/// container may be changing: read through [`crate::archive::walk`], so a symlink
/// is counted as itself and never followed.
pub(crate) fn tree_usage(dir: &Path) -> std::io::Result<Usage> {
    let mut usage = Usage::default();
    let mut pending = vec![walk::Dir::open(dir)?];
    while let Some(dir) = pending.pop() {
        for name in dir.names()? {
            let Some(entry) = dir.entry(&name)? else {
                continue;
            };
            usage.inodes += 1;
            if entry.is_dir() {
                pending.push(entry.dir()?);
            } else if entry.is_file() {
                usage.size += entry.len();
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod race_tests;
