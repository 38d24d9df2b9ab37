//! vfs: a container's layer is a full copy of the image's files, applied
//! bottom up, bind mounted; changes are found by comparing the copy with
//! the image's merged view.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imaged_common::Error;

use super::{ChangeKind, Changes, LayerDir, Mount, StorageDriver, lower_meta, lower_names};
use crate::archive::beneath::{Kind, Root};
use crate::archive::walk;

/// The copying vfs driver.
pub struct Vfs;

impl StorageDriver for Vfs {
    fn create(&self, layer: &LayerDir<'_>) -> Result<(), Error> {
        for lower in layer.lowers.iter().rev() {
            crate::archive::merge::apply_layer(lower, &layer.upper())?;
        }
        Ok(())
    }

    fn mount(&self, layer: &LayerDir<'_>, label: Option<String>) -> Mount {
        bind(&layer.upper(), label)
    }

    fn changes(&self, layer: &LayerDir<'_>) -> Result<Changes, Error> {
        let mut changes = Changes::new();
        copy_changes(&layer.upper(), layer.lowers, &mut changes)?;
        Ok(changes)
    }

    fn diff_into(&self, layer: &LayerDir<'_>, dir: &Path) -> Result<(), Error> {
        let upper = walk::Dir::open(&layer.upper())?;
        let root = Root::open(dir)?;
        for (path, kind) in self.changes(layer)? {
            let rel = Path::new(path.trim_start_matches('/'));
            let at = root.entry(rel)?;
            if kind == ChangeKind::Delete {
                at.remove()?;
                at.whiteout()?;
                continue;
            }
            // Found again from the top, never through a symlink: what is
            // there now, or nothing if it went away since it was listed.
            let Some(from) = upper.find(rel)? else {
                continue;
            };
            if from.is_dir() {
                if at.stat()? != Some(Kind::Dir) {
                    at.remove()?;
                    at.mkdir()?;
                }
                at.chmod(from.mode())?;
            } else {
                at.remove()?;
                crate::archive::merge::copy_entry(&from, &at)?;
            }
        }
        Ok(())
    }

    fn size(&self, layer: &LayerDir<'_>) -> Result<u64, Error> {
        // The bytes of added and modified files.
        let upper = walk::Dir::open(&layer.upper())?;
        let mut size = 0;
        for (path, kind) in self.changes(layer)? {
            if kind != ChangeKind::Delete
                && let Some(entry) = upper.find(Path::new(path.trim_start_matches('/')))?
                && entry.is_file()
            {
                size += entry.len();
            }
        }
        Ok(size)
    }

    fn stacked(&self) -> bool {
        false
    }
}

/// A read-write bind mount of `source`.
pub(crate) fn bind(source: &Path, label: Option<String>) -> Mount {
    let mut options = vec!["rbind".to_string(), "rw".to_string()];
    options.extend(label);
    Mount {
        kind: "bind".into(),
        source: source.display().to_string(),
        options,
    }
}

/// vfs: compare the full copy (the container's, read through [`walk`]
/// while it may change) with the image's merged view, by metadata,
/// without materializing the image.
fn copy_changes(copy: &Path, lowers: &[PathBuf], out: &mut Changes) -> Result<(), Error> {
    diff_against_image(&walk::Dir::open(copy)?, lowers, Path::new(""), out)
}

fn diff_against_image(
    copy: &walk::Dir,
    lowers: &[PathBuf],
    rel: &Path,
    out: &mut Changes,
) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for name in copy.names()? {
        let Some(now) = copy.entry(&name)? else {
            continue;
        };
        let child = rel.join(&name);
        let shown = format!("/{}", child.display());
        seen.insert(name);
        match lower_meta(lowers, &child) {
            None => {
                out.insert(shown, ChangeKind::Add);
                if now.is_dir() {
                    diff_against_image(&now.dir()?, lowers, &child, out)?;
                }
            }
            Some(before) => {
                let differs = before.mode() != now.mode()
                    || before.uid() != now.uid()
                    || before.gid() != now.gid()
                    || (!now.is_dir()
                        && (before.len() != now.len() || before.mtime() != now.mtime().0));
                if differs {
                    out.insert(shown, ChangeKind::Modify);
                }
                if now.is_dir() && before.is_dir() {
                    diff_against_image(&now.dir()?, lowers, &child, out)?;
                }
            }
        }
    }
    for name in lower_names(lowers, rel) {
        if !seen.contains(&name) {
            out.insert(format!("/{}", rel.join(name).display()), ChangeKind::Delete);
        }
    }
    Ok(())
}
