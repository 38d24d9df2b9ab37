//! The storage driver: overlay2 when overlayfs can be mounted on the
//! transfer root, the copying `vfs` driver otherwise.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// What the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverChoice {
    /// overlay2 when it works here, vfs otherwise.
    Auto,
    /// overlay2, or refuse to start.
    Overlay2,
    /// Copy each layer's parent content (works everywhere, costs disk).
    Vfs,
}

/// The driver in use and what was learnt about the backing filesystem.
#[derive(Clone, Debug)]
pub struct Driver {
    kind: DriverKind,
    backing_filesystem: &'static str,
    layers_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DriverKind {
    Overlay2,
    Vfs,
}

impl Driver {
    /// Chooses the driver for a transfer root at `data_dir`, probing an
    /// overlay mount when overlay2 is possible.
    pub fn select(choice: DriverChoice, data_dir: &Path) -> anyhow::Result<Self> {
        let layers_dir = data_dir.join("layers");
        std::fs::create_dir_all(&layers_dir)
            .with_context(|| format!("cannot create {}", layers_dir.display()))?;
        let backing_filesystem = backing_filesystem(data_dir);
        let kind = match choice {
            DriverChoice::Vfs => DriverKind::Vfs,
            DriverChoice::Overlay2 => {
                probe_overlay(data_dir).context("overlay2 was asked for but cannot be used")?;
                DriverKind::Overlay2
            }
            DriverChoice::Auto => match probe_overlay(data_dir) {
                Ok(()) => DriverKind::Overlay2,
                Err(err) => {
                    tracing::warn!("overlay2 unavailable, using vfs: {err:#}");
                    DriverKind::Vfs
                }
            },
        };
        Ok(Driver {
            kind,
            backing_filesystem,
            layers_dir,
        })
    }

    /// The implementation of the chosen driver.
    pub fn storage(&self) -> std::sync::Arc<dyn crate::storage::StorageDriver> {
        match self.kind {
            DriverKind::Overlay2 => std::sync::Arc::new(crate::storage::overlay::Overlay),
            DriverKind::Vfs => std::sync::Arc::new(crate::storage::vfs::Vfs),
        }
    }

    /// The name Docker shows as "Storage Driver".
    pub fn name(&self) -> &'static str {
        match self.kind {
            DriverKind::Overlay2 => "overlay2",
            DriverKind::Vfs => "vfs",
        }
    }

    /// Status pairs, as `docker info` lists them under the driver.
    pub fn status(&self) -> Vec<(String, String)> {
        let layers = std::fs::read_dir(&self.layers_dir)
            .map(|entries| entries.filter_map(Result::ok).count())
            .unwrap_or(0);
        let mut status = vec![(
            "Backing Filesystem".to_string(),
            self.backing_filesystem.to_string(),
        )];
        if self.kind == DriverKind::Overlay2 {
            status.push(("Supports d_type".to_string(), "true".to_string()));
            status.push(("Native Overlay Diff".to_string(), "true".to_string()));
        }
        status.push(("Layers".to_string(), layers.to_string()));
        status
    }
}

/// Mounts and unmounts a throwaway overlay under `data_dir` to learn
/// whether overlayfs works here (kernel support, privileges, backing fs).
fn probe_overlay(data_dir: &Path) -> anyhow::Result<()> {
    let probe = data_dir.join(format!("overlay-probe-{}", std::process::id()));
    let result = (|| {
        let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
        for dir in &dirs {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(dirs[0].join("probe"), b"lower")?;
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            dirs[0].display(),
            dirs[1].display(),
            dirs[2].display()
        );
        mount_overlay(&dirs[3], &options)?;
        let seen = std::fs::read(dirs[3].join("probe"));
        unmount(&dirs[3])?;
        if seen? != b"lower" {
            bail!("overlay mount did not show the lower layer");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&probe);
    result
}

fn cstring(path: &Path) -> anyhow::Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

fn mount_overlay(target: &Path, options: &str) -> anyhow::Result<()> {
    let target = cstring(target)?;
    let options = CString::new(options)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mount overlay");
    }
    Ok(())
}

fn unmount(target: &Path) -> anyhow::Result<()> {
    let target = cstring(target)?;
    // SAFETY: `target` is a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unmount overlay probe");
    }
    Ok(())
}

/// The name of the filesystem under `path`, from its statfs magic number.
fn backing_filesystem(path: &Path) -> &'static str {
    let Ok(path) = cstring(path) else {
        return "unknown";
    };
    // SAFETY: statfs writes into the zeroed struct we own; `path` is valid.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return "unknown";
    }
    #[allow(clippy::unnecessary_cast)]
    match stat.f_type as i64 {
        0xEF53 => "extfs",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfs_when_asked_reports_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::select(DriverChoice::Vfs, dir.path()).unwrap();
        assert_eq!(driver.name(), "vfs");
        let status = driver.status();
        assert_eq!(status[0].0, "Backing Filesystem");
        assert_eq!(
            status.last().unwrap(),
            &("Layers".to_string(), "0".to_string())
        );
    }

    #[test]
    fn auto_picks_a_driver_and_leaves_no_probe_behind() {
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::select(DriverChoice::Auto, dir.path()).unwrap();
        assert!(["overlay2", "vfs"].contains(&driver.name()));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("layers")]);
    }
}
