//! overlay2: a container's layer is an overlay mount of the image's layer
//! dirs (lower) and its own `diff/` (upper) with `work/`; every entry of the
//! upper dir is a change.

use std::fs;
use std::path::{Path, PathBuf};

use imaged_common::Error;

use super::{ChangeKind, Changes, LayerDir, Mount, StorageDriver, lower_has, tree_size};
use crate::archive::walk;

/// The overlay2 driver.
pub struct Overlay;

impl StorageDriver for Overlay {
    fn create(&self, layer: &LayerDir<'_>) -> Result<(), Error> {
        fs::create_dir_all(layer.own.join("work"))?;
        Ok(())
    }

    fn mount(&self, layer: &LayerDir<'_>, label: Option<String>) -> Mount {
        if layer.lowers.is_empty() {
            // From scratch: nothing to lay over.
            return super::vfs::bind(&layer.upper(), label);
        }
        let lowerdir = layer
            .lowers
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut options = super::index_off();
        options.extend([
            format!("lowerdir={lowerdir}"),
            format!("upperdir={}", layer.upper().display()),
            format!("workdir={}", layer.own.join("work").display()),
        ]);
        options.extend(label);
        Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }
    }

    fn changes(&self, layer: &LayerDir<'_>) -> Result<Changes, Error> {
        let mut changes = Changes::new();
        changes_in(
            &walk::Dir::open(&layer.upper())?,
            Path::new(""),
            layer.lowers,
            &mut changes,
        )?;
        Ok(changes)
    }

    fn diff_into(&self, layer: &LayerDir<'_>, dir: &Path) -> Result<(), Error> {
        crate::archive::merge::apply(&layer.upper(), dir, true)
    }

    fn size(&self, layer: &LayerDir<'_>) -> Result<u64, Error> {
        Ok(tree_size(&layer.upper())?)
    }

    fn stacked(&self) -> bool {
        true
    }
}

/// overlay2: every entry of the upper dir is a change. The upper dir is
/// the container's, read through [`walk`] while it may change.
fn changes_in(
    dir: &walk::Dir,
    rel: &Path,
    lowers: &[PathBuf],
    out: &mut Changes,
) -> Result<(), Error> {
    for name in dir.names()? {
        let Some(entry) = dir.entry(&name)? else {
            continue;
        };
        let child = rel.join(&name);
        let shown = format!("/{}", child.display());
        if entry.is_whiteout() {
            out.insert(shown, ChangeKind::Delete);
            continue;
        }
        let kind = if lower_has(lowers, &child) {
            ChangeKind::Modify
        } else {
            ChangeKind::Add
        };
        if entry.is_dir() {
            // A directory copied up only to hold changed children is not
            // itself a change unless it is new.
            if kind == ChangeKind::Add || entry.is_opaque() {
                out.insert(shown, kind);
            }
            changes_in(&entry.dir()?, &child, lowers, out)?;
        } else {
            out.insert(shown, kind);
        }
    }
    // Parents of changed entries are modified, as Docker reports them.
    let parent = format!("/{}", rel.display());
    if !rel.as_os_str().is_empty()
        && out.keys().any(|k| k.starts_with(&format!("{parent}/")))
        && !out.contains_key(&parent)
    {
        out.insert(parent, ChangeKind::Modify);
    }
    Ok(())
}
