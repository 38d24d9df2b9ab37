//! A fresh, journaled ext4 filesystem (a loop-mounted sparse file) for a
//! bench's roots, so what it measures does not depend on what this
//! machine did in the minutes before.
//!
//! The machines here run on an ext4 without a journal. Its inode allocator
//! then skips inodes deleted in the last 60 s (360 s while their inode
//! table block is dirty), reading each candidate's on-disk record
//! (`recently_deleted` in fs/ext4/ialloc.c): creating files within minutes
//! of a mass delete (an earlier bench's roots, a `cargo clean`) costs
//! several times its usual kernel CPU, for containerd as for imaged, and
//! swamps the figures. A node's image store sits on a journaled
//! filesystem, which has no such check, and a fresh one has nothing
//! deleted at all.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// What a bench made (roots, daemons), removed only when it ends:
/// removing one run's files before the next would bill part of that work
/// (and hand the pages it frees) to the next run, whichever side it is.
pub type Graveyard = Vec<Box<dyn std::any::Any>>;

/// The mounted filesystem; unmounted, its loop device detached and its
/// file removed when dropped.
pub struct BenchFs {
    /// Where it is mounted (removed after the unmount, in `drop`).
    mount: tempfile::TempDir,
    /// `/dev/loopN`, once attached.
    device: Option<String>,
    image: PathBuf,
}

impl BenchFs {
    /// Makes a sparse `gib` GiB file in the temporary directory, an ext4
    /// with a journal on it (through a loop device), and mounts it; then
    /// makes it the directory `tempfile` creates in from now on (every
    /// root the e2e helpers make). Needs root and a loop device.
    pub fn mount(gib: u64) -> anyhow::Result<Self> {
        let mount = tempfile::Builder::new().prefix("ibf").tempdir()?;
        let image = mount.path().with_extension("img");
        std::fs::File::create(&image)?.set_len(gib << 30)?;
        // From here on, a failure undoes what was done (`drop`).
        let mut fs = BenchFs {
            mount,
            device: None,
            image,
        };
        // Direct I/O to the file: the filesystem's pages are cached once,
        // as on a disk, not again as the file's.
        let device = run(Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&fs.image))?;
        let device = fs.device.insert(device.trim().to_string()).clone();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&device))?;
        run(Command::new("mount").arg(&device).arg(fs.path()))?;
        tempfile::env::override_temp_dir(fs.path()).map_err(|set| {
            anyhow::anyhow!("tempfile's directory is set already: {}", set.display())
        })?;
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }
}

/// Runs `command`; answers its standard output.
fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Drop for BenchFs {
    /// Unmounts (retried for a second, then lazily when something still
    /// holds it; a failure only means it was never mounted), detaches and
    /// removes; the mount point itself goes with `mount` after this.
    fn drop(&mut self) {
        // Daemons killed just before may take a moment to let go.
        let unmounted = (0..20).any(|attempt| {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Command::new("umount")
                .arg(self.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
        if let Some(device) = self.device.take() {
            let _ = Command::new("losetup").arg("-d").arg(device).status();
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
