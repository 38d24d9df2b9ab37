//! Applying a layer stored the overlay2 way (whiteouts as 0/0 character
//! devices, opaque directories marked by an xattr) onto a plain directory:
//! what the copying `vfs` driver does to build a container's files.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use filetime::FileTime;
use imaged_common::Error;

/// Applies the layer in `layer` onto `target`: whiteouts delete, opaque
/// directories replace, everything else is copied with its mode, owner,
/// times and xattrs.
pub fn apply_layer(layer: &Path, target: &Path) -> Result<(), Error> {
    apply(layer, target, false)
}

/// [`apply_layer`], optionally keeping the whiteouts and opaque markers in
/// `target` (merging layers into one that still hides what lies below).
pub fn apply(layer: &Path, target: &Path, keep_whiteouts: bool) -> Result<(), Error> {
    apply_dir(layer, target, keep_whiteouts)
}

fn apply_dir(from: &Path, to: &Path, keep: bool) -> Result<(), Error> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let dest = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&source)?;
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            remove(&dest)?;
            if keep {
                crate::unpack::make_node(&dest, libc::S_IFCHR, 0, 0)?;
            }
            continue;
        }
        if kind.is_dir() {
            let opaque = xattr::get(&source, "trusted.overlay.opaque")
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y");
            let exists_as_dir = fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir());
            if opaque || !exists_as_dir {
                remove(&dest)?;
                fs::create_dir(&dest)?;
            }
            if opaque && keep {
                xattr::set(&dest, "trusted.overlay.opaque", b"y")?;
            }
            apply_dir(&source, &dest, keep)?;
            copy_metadata(&source, &dest, &meta)?;
            continue;
        }
        remove(&dest)?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source)?, &dest)?;
        } else if kind.is_file() {
            fs::copy(&source, &dest)?;
        } else {
            let file_type = if kind.is_char_device() {
                libc::S_IFCHR
            } else if kind.is_block_device() {
                libc::S_IFBLK
            } else {
                libc::S_IFIFO
            };
            crate::unpack::make_node(&dest, file_type, meta.rdev(), meta.mode())?;
        }
        copy_metadata(&source, &dest, &meta)?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path)?,
        Ok(_) => fs::remove_file(path)?,
        Err(_) => {}
    }
    Ok(())
}

fn copy_metadata(source: &Path, dest: &Path, meta: &fs::Metadata) -> Result<(), Error> {
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        std::os::unix::fs::lchown(dest, Some(meta.uid()), Some(meta.gid()))?;
    }
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        if let Ok(names) = xattr::list(source) {
            for name in names {
                if name.to_string_lossy().starts_with("trusted.overlay.") {
                    continue;
                }
                if let Ok(Some(value)) = xattr::get(source, &name) {
                    let _ = xattr::set(dest, &name, &value);
                }
            }
        }
    }
    let mtime = FileTime::from_last_modification_time(meta);
    filetime::set_symlink_file_times(dest, mtime, mtime)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        crate::unpack::make_node(&top.path().join("etc/motd"), libc::S_IFCHR, 0, 0).unwrap();
        fs::create_dir_all(top.path().join("cache")).unwrap();
        xattr::set(top.path().join("cache"), "trusted.overlay.opaque", b"y").unwrap();
        fs::write(top.path().join("cache/new"), b"new").unwrap();
        apply_layer(top.path(), target.path()).unwrap();

        assert!(!target.path().join("etc/motd").exists());
        assert_eq!(fs::read(target.path().join("etc/keep")).unwrap(), b"kept");
        assert!(!target.path().join("cache/old").exists());
        assert_eq!(fs::read(target.path().join("cache/new")).unwrap(), b"new");
    }
}
