//! vfs: a container's layer is a full copy of the image's files, applied
//! bottom up, bind mounted; changes are found by comparing the copy with
//! the image's merged view.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imaged_common::Error;

use super::{ChangeKind, Changes, LayerDir, Mount, StorageDriver, lower_meta, lower_names};
use crate::beneath::{Kind, Root};

/// The copying vfs driver.
pub struct Vfs;

impl StorageDriver for Vfs {
    fn create(&self, layer: &LayerDir<'_>) -> Result<(), Error> {
        for lower in layer.lowers.iter().rev() {
            crate::merge::apply_layer(lower, &layer.upper())?;
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
        let upper = layer.upper();
        let root = Root::open(dir)?;
        for (path, kind) in self.changes(layer)? {
            let rel = Path::new(path.trim_start_matches('/'));
            let at = root.entry(rel)?;
            if kind == ChangeKind::Delete {
                at.remove()?;
                at.whiteout()?;
                continue;
            }
            let from = upper.join(rel);
            let meta = fs::symlink_metadata(&from)?;
            if meta.is_dir() {
                if at.stat()? != Some(Kind::Dir) {
                    at.remove()?;
                    at.mkdir()?;
                }
                at.chmod(meta.mode())?;
            } else if meta.file_type().is_symlink() {
                at.remove()?;
                at.symlink(&fs::read_link(&from)?)?;
            } else {
                at.remove()?;
                let mut source = fs::File::open(&from)?;
                crate::unpack::write_sparse(&mut source, &mut at.create_file()?)?;
                crate::merge::copy_metadata(&from, &at, &meta)?;
            }
        }
        Ok(())
    }

    fn size(&self, layer: &LayerDir<'_>) -> Result<u64, Error> {
        // The bytes of added and modified files.
        let upper = layer.upper();
        let mut size = 0;
        for (path, kind) in self.changes(layer)? {
            if kind != ChangeKind::Delete
                && let Ok(meta) = fs::symlink_metadata(upper.join(path.trim_start_matches('/')))
                && meta.is_file()
            {
                size += meta.len();
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

/// vfs: compare the full copy with the image's merged view, by metadata,
/// without materializing the image.
fn copy_changes(copy: &Path, lowers: &[PathBuf], out: &mut Changes) -> Result<(), Error> {
    diff_against_image(copy, lowers, Path::new(""), out)
}

fn diff_against_image(
    copy: &Path,
    lowers: &[PathBuf],
    rel: &Path,
    out: &mut Changes,
) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for entry in fs::read_dir(copy.join(rel))? {
        let entry = entry?;
        let child = rel.join(entry.file_name());
        seen.insert(entry.file_name());
        let shown = format!("/{}", child.display());
        let now = entry.metadata()?;
        match lower_meta(lowers, &child) {
            None => {
                out.insert(shown, ChangeKind::Add);
                if now.is_dir() {
                    diff_against_image(copy, lowers, &child, out)?;
                }
            }
            Some(before) => {
                let differs = before.mode() != now.mode()
                    || before.uid() != now.uid()
                    || before.gid() != now.gid()
                    || (!now.is_dir()
                        && (before.len() != now.len() || before.mtime() != now.mtime()));
                if differs {
                    out.insert(shown, ChangeKind::Modify);
                }
                if now.is_dir() && before.is_dir() {
                    diff_against_image(copy, lowers, &child, out)?;
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
