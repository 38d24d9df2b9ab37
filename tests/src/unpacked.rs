//! Checks an unpacked layer directory against the layer tar it came from:
//! paths, types, modes, owners, times, contents, link targets, hardlinks,
//! devices, xattrs, and whiteouts in overlayfs form.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use tar::EntryType;

/// Compares `dir` (a layer's `diff`) with `tar` (the uncompressed layer).
pub fn assert_layer_matches(tar: &[u8], dir: &Path) -> anyhow::Result<()> {
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut archive = tar::Archive::new(tar);
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut seen: HashMap<PathBuf, ()> = HashMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == ".wh..wh..opq" {
            let opaque = xattr::get(dir.join(&parent), "trusted.overlay.opaque")?;
            ensure!(
                opaque.as_deref() == Some(b"y".as_slice()),
                "{parent:?} is not opaque"
            );
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = dir.join(&parent).join(hidden);
            let meta = std::fs::symlink_metadata(&target)
                .with_context(|| format!("whiteout {target:?}"))?;
            ensure!(
                meta.file_type().is_char_device() && meta.rdev() == 0,
                "{target:?} is not a 0/0 whiteout device"
            );
            continue;
        }
        let header = entry.header().clone();
        let on_disk = dir.join(&path);
        let meta =
            std::fs::symlink_metadata(&on_disk).with_context(|| format!("missing {path:?}"))?;
        seen.insert(path.clone(), ());
        if as_root {
            ensure!(
                u64::from(meta.uid()) == header.uid()? && u64::from(meta.gid()) == header.gid()?,
                "{path:?}: owner {}:{}, want {}:{}",
                meta.uid(),
                meta.gid(),
                header.uid()?,
                header.gid()?
            );
        }
        match header.entry_type() {
            EntryType::Directory => {
                ensure!(meta.is_dir(), "{path:?} is not a directory");
                ensure!(
                    meta.mode() & 0o7777 == header.mode()? & 0o7777,
                    "{path:?}: mode {:o}",
                    meta.mode()
                );
                ensure!(
                    meta.mtime() as u64 == header.mtime()?,
                    "{path:?}: mtime {}",
                    meta.mtime()
                );
            }
            EntryType::Regular => {
                ensure!(meta.is_file(), "{path:?} is not a file");
                ensure!(
                    meta.mode() & 0o7777 == header.mode()? & 0o7777,
                    "{path:?}: mode {:o}",
                    meta.mode()
                );
                ensure!(
                    meta.mtime() as u64 == header.mtime()?,
                    "{path:?}: mtime {}",
                    meta.mtime()
                );
                let mut want = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut want)?;
                ensure!(
                    std::fs::read(&on_disk)? == want,
                    "{path:?}: content differs"
                );
            }
            EntryType::Symlink => {
                let target = header.link_name()?.unwrap().into_owned();
                ensure!(
                    std::fs::read_link(&on_disk)? == target,
                    "{path:?}: symlink target"
                );
            }
            EntryType::Link => {
                let target = header.link_name()?.unwrap().into_owned();
                links.push((path.clone(), target));
            }
            EntryType::Char => {
                ensure!(
                    meta.file_type().is_char_device(),
                    "{path:?} is not a char device"
                );
                let want = libc::makedev(
                    header.device_major()?.unwrap_or(0),
                    header.device_minor()?.unwrap_or(0),
                );
                ensure!(meta.rdev() == want, "{path:?}: device {:x}", meta.rdev());
            }
            other => bail!("{path:?}: unexpected entry type {other:?} in a fixture"),
        }
        if let Some(extensions) = entry.pax_extensions()? {
            for extension in extensions {
                let extension = extension?;
                let Some(key) = extension.key()?.strip_prefix("SCHILY.xattr.") else {
                    continue;
                };
                if key.starts_with("trusted.") && !as_root {
                    continue;
                }
                let got = xattr::get(&on_disk, key)?;
                ensure!(
                    got.as_deref() == Some(extension.value_bytes()),
                    "{path:?}: xattr {key}"
                );
            }
        }
    }
    for (path, target) in links {
        let a = std::fs::symlink_metadata(dir.join(&path))?;
        let b = std::fs::symlink_metadata(dir.join(&target))?;
        ensure!(
            a.ino() == b.ino(),
            "{path:?} is not a hardlink of {target:?}"
        );
    }
    Ok(())
}
