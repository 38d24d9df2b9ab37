//! Applying a layer stored the overlay2 way (whiteouts as 0/0 character
//! devices, opaque directories marked by an xattr) onto a plain directory:
//! what the copying `vfs` driver does to build a container's files.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use imaged_common::Error;

use crate::beneath::{At, Kind, Root};
use crate::whiteout;

/// Applies the layer in `layer` onto `target`: whiteouts delete, opaque
/// directories replace, everything else is copied with its mode, owner,
/// times and xattrs.
pub fn apply_layer(layer: &Path, target: &Path) -> Result<(), Error> {
    apply(layer, target, false)
}

/// [`apply_layer`], optionally keeping the whiteouts and opaque markers in
/// `target` (merging layers into one that still hides what lies below).
/// Every write into `target` is resolved beneath it; the walk keeps its
/// own list of directories, so its depth costs heap, not stack.
pub fn apply(layer: &Path, target: &Path, keep_whiteouts: bool) -> Result<(), Error> {
    let root = Root::open(target)?;
    let mut pending = vec![PathBuf::new()];
    let mut dirs = Vec::new();
    while let Some(rel) = pending.pop() {
        for entry in fs::read_dir(layer.join(&rel))? {
            let child = rel.join(entry?.file_name());
            let source = layer.join(&child);
            let meta = fs::symlink_metadata(&source)?;
            let at = root.entry(&child)?;
            let kind = meta.file_type();
            if whiteout::is_whiteout(&meta) {
                at.remove()?;
                if keep_whiteouts {
                    at.whiteout()?;
                }
                continue;
            }
            if kind.is_dir() {
                let opaque = whiteout::is_opaque(&source);
                if opaque || at.stat()? != Some(Kind::Dir) {
                    at.remove()?;
                    at.mkdir()?;
                }
                if opaque && keep_whiteouts {
                    at.set_xattr(whiteout::OPAQUE_XATTR.as_ref(), b"y")?;
                }
                pending.push(child.clone());
                dirs.push((child, source, meta));
                continue;
            }
            at.remove()?;
            if kind.is_symlink() {
                at.symlink(&fs::read_link(&source)?)?;
            } else if kind.is_file() {
                let mut from = fs::File::open(&source)?;
                crate::unpack::write_sparse(&mut from, &mut at.create_file()?)?;
            } else {
                let file_type = if kind.is_char_device() {
                    libc::S_IFCHR
                } else if kind.is_block_device() {
                    libc::S_IFBLK
                } else {
                    libc::S_IFIFO
                };
                let dev = meta.rdev();
                at.mknod(file_type, libc::major(dev), libc::minor(dev))?;
            }
            copy_metadata(&source, &at, &meta)?;
        }
    }
    // Directories last, deepest first: their children changed their times.
    for (rel, source, meta) in dirs.iter().rev() {
        copy_metadata(source, &root.existing(rel)?, meta)?;
    }
    Ok(())
}

/// Gives `at` the owner (when root), mode, xattrs (not overlayfs's own) and
/// times of `source`.
pub fn copy_metadata(source: &Path, at: &At, meta: &fs::Metadata) -> Result<(), Error> {
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        at.chown(meta.uid(), meta.gid())?;
    }
    if !meta.file_type().is_symlink() {
        at.chmod(meta.mode())?;
        if let Ok(names) = xattr::list(source) {
            for name in names {
                if whiteout::is_overlay_xattr(&name) {
                    continue;
                }
                if let Ok(Some(value)) = xattr::get(source, &name) {
                    let _ = at.set_xattr(&name, &value);
                }
            }
        }
    }
    at.set_times(meta.mtime(), meta.mtime_nsec() as u32)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_whiteout(path: &Path) {
        Root::open(path.parent().unwrap())
            .unwrap()
            .entry(Path::new(path.file_name().unwrap()))
            .unwrap()
            .whiteout()
            .unwrap();
    }

    #[test]
    fn whiteouts_delete_and_opaque_directories_replace() {
        let base = tempfile::tempdir().unwrap();
        let top = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("etc")).unwrap();
        fs::write(base.path().join("etc/motd"), b"hello").unwrap();
        fs::write(base.path().join("etc/keep"), b"kept").unwrap();
        fs::create_dir_all(base.path().join("cache")).unwrap();
        fs::write(base.path().join("cache/old"), b"old").unwrap();
        apply_layer(base.path(), target.path()).unwrap();

        fs::create_dir_all(top.path().join("etc")).unwrap();
        make_whiteout(&top.path().join("etc/motd"));
        fs::create_dir_all(top.path().join("cache")).unwrap();
        xattr::set(top.path().join("cache"), whiteout::OPAQUE_XATTR, b"y").unwrap();
        fs::write(top.path().join("cache/new"), b"new").unwrap();
        apply_layer(top.path(), target.path()).unwrap();

        assert!(!target.path().join("etc/motd").exists());
        assert_eq!(fs::read(target.path().join("etc/keep")).unwrap(), b"kept");
        assert!(!target.path().join("cache/old").exists());
        assert_eq!(fs::read(target.path().join("cache/new")).unwrap(), b"new");
    }
}
