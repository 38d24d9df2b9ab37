//! Applying a layer stored the overlay2 way (whiteouts as 0/0 character
//! devices, opaque directories marked by an xattr) onto a plain directory:
//! what the copying `vfs` driver does to build a container's files.

use std::path::{Path, PathBuf};

use imaged_common::Error;

use crate::archive::beneath::{At, Kind, Root};
use crate::archive::walk::{self, Entry};
use crate::archive::whiteout;

/// Applies the layer in `layer` onto `target`: whiteouts delete, opaque
/// directories replace, everything else is copied with its mode, owner,
/// times and xattrs.
pub fn apply_layer(layer: &Path, target: &Path) -> Result<(), Error> {
    apply(layer, target, false)
}

/// [`apply_layer`], optionally keeping the whiteouts and opaque markers in
/// `target` (merging layers into one that still hides what lies below).
/// `layer` may be a container's upper directory, changing while it is
/// read: it is read through [`walk`], never by path, so a symlink planted
/// there is copied as a symlink and nothing outside it is read. Every
/// write into `target` is resolved beneath it; the walk keeps its own list
/// of directories, so its depth costs heap, not stack.
pub fn apply(layer: &Path, target: &Path, keep_whiteouts: bool) -> Result<(), Error> {
    let root = Root::open(target)?;
    let mut pending = vec![(PathBuf::new(), walk::Dir::open(layer)?)];
    let mut dirs = Vec::new();
    while let Some((rel, source_dir)) = pending.pop() {
        for name in source_dir.names()? {
            let Some(source) = source_dir.entry(&name)? else {
                continue; // removed since it was listed
            };
            let child = rel.join(&name);
            let at = root.entry(&child)?;
            if source.is_whiteout() {
                at.remove()?;
                if keep_whiteouts {
                    at.whiteout()?;
                }
                continue;
            }
            if source.is_dir() {
                let opaque = source.is_opaque();
                if opaque || at.stat()? != Some(Kind::Dir) {
                    at.remove()?;
                    at.mkdir()?;
                }
                if opaque && keep_whiteouts {
                    at.set_xattr(whiteout::OPAQUE_XATTR.as_ref(), b"y")?;
                }
                pending.push((child.clone(), source.dir()?));
                dirs.push((child, source));
                continue;
            }
            at.remove()?;
            copy_entry(&source, &at)?;
        }
    }
    // Directories last, deepest first: their children changed their times.
    for (rel, source) in dirs.iter().rev() {
        copy_metadata(source, &root.existing(rel)?)?;
    }
    Ok(())
}

/// Makes at `at` (free) a copy of `source`, which is not a directory: a
/// symlink as a symlink, a file with its bytes (holes kept), a device or
/// FIFO as a node; then its metadata.
pub fn copy_entry(source: &Entry, at: &At) -> Result<(), Error> {
    if source.is_symlink() {
        at.symlink(&source.link_target()?)?;
    } else if source.is_file() {
        let mut from = source.open_file()?;
        crate::archive::sparse::write_sparse(&mut from, &mut at.create_file()?)?;
    } else {
        let file_type = match source.kind() {
            rustix::fs::FileType::CharacterDevice => libc::S_IFCHR,
            rustix::fs::FileType::BlockDevice => libc::S_IFBLK,
            rustix::fs::FileType::Fifo => libc::S_IFIFO,
            // A socket has no place in a layer (Docker skips them too).
            _ => return Ok(()),
        };
        let dev = source.rdev();
        at.mknod(file_type, libc::major(dev), libc::minor(dev))?;
    }
    copy_metadata(source, at)
}

/// Gives `at` the owner (when root), mode, xattrs (not overlayfs's own) and
/// times of `source`.
pub fn copy_metadata(source: &Entry, at: &At) -> Result<(), Error> {
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        at.chown(source.uid(), source.gid())?;
    }
    if !source.is_symlink() {
        at.chmod(source.mode())?;
        for (name, value) in source.xattrs() {
            if !whiteout::is_overlay_xattr(&name) {
                let _ = at.set_xattr(&name, &value);
            }
        }
    }
    let (secs, nanos) = source.mtime();
    at.set_times(secs, nanos)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
