//! containerd (Debian's 1.6) as a peer to measure against: its own root,
//! state and socket under a temporary directory, overlayfs snapshotter, and
//! a `certs.d` entry that lets its CRI plugin pull from a plain-HTTP
//! 127.0.0.1 registry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::die_with_parent;

/// A running containerd; killed when dropped.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    /// Whether containerd is installed here.
    pub fn available() -> bool {
        Path::new("/usr/bin/containerd").exists()
    }

    /// Starts containerd trusting `registry` (`127.0.0.1:<port>`) over HTTP.
    pub async fn start(registry: &str) -> anyhow::Result<Self> {
        Self::start_with(registry, None, None).await
    }

    /// Starts containerd with imaged as its proxy snapshotter `imaged` at
    /// `snapshots` (imaged-transfer's snapshot socket), the snapshotter
    /// its CRI plugin uses, with the remote-snapshot labels on.
    pub async fn start_with_imaged(registry: &str, snapshots: &Path) -> anyhow::Result<Self> {
        Self::start_with(registry, Some(snapshots), None).await
    }

    /// As [`Containerd::start_with_imaged`], with `sandbox_image` as the
    /// pods' sandbox ("pause") image, which its CRI pulls itself.
    pub async fn start_with_imaged_sandbox(
        registry: &str,
        snapshots: &Path,
        sandbox_image: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(registry, Some(snapshots), Some(sandbox_image)).await
    }

    async fn start_with(
        registry: &str,
        snapshots: Option<&Path>,
        sandbox_image: Option<&str>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("imaged-containerd")
            .tempdir()?;
        let base = dir.path();
        let certs = base.join("certs.d").join(registry);
        std::fs::create_dir_all(&certs)?;
        std::fs::write(
            certs.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
            ),
        )?;
        let (proxy, snapshotter) = match snapshots {
            Some(socket) => (
                format!(
                    "[proxy_plugins]\n  [proxy_plugins.imaged]\n    type = \"snapshot\"\n    address = \"{}\"\n",
                    socket.display()
                ),
                "snapshotter = \"imaged\"\n    disable_snapshot_annotations = false",
            ),
            None => (String::new(), "snapshotter = \"overlayfs\""),
        };
        let config = base.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

{proxy}
# Garbage is collected when a test asks (`--sync` removals) and at
# start-up, not after every hundred changes: a test's steps see the same
# state whichever snapshotter runs them.
[plugins."io.containerd.gc.v1.scheduler"]
  mutation_threshold = 1000000

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  {sandbox}
  # This machine's processes may not lower their OOM score (no
  # CAP_SYS_RESOURCE in the bounding set): pods get at most containerd's.
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    {snapshotter}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
                root = base.join("root").display(),
                state = base.join("state").display(),
                sock = base.join("containerd.sock").display(),
                certs = base.join("certs.d").display(),
                sandbox = sandbox_image
                    .map(|i| format!("sandbox_image = \"{i}\""))
                    .unwrap_or_default(),
            ),
        )?;
        let log = std::fs::File::create(base.join("containerd.log"))?;
        let mut command = Command::new("/usr/bin/containerd");
        command
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let mut child = command.spawn().context("cannot start containerd")?;
        let socket = base.join("containerd.sock");
        for _ in 0..200 {
            if socket.exists() {
                return Ok(Containerd { dir, child });
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(base.join("containerd.log"))?;
                bail!("containerd exited with {status}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("containerd did not create its socket")
    }

    /// Its gRPC socket, where the CRI plugin serves `runtime.v1`.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Runs `ctr` against it in the CRI namespace (`k8s.io`), where
    /// kubelet's images and containers live; fails with ctr's stderr when
    /// ctr fails, answers its stdout otherwise.
    pub async fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("cannot run ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// What containerd logged so far, but for the plugins it loaded at
    /// start-up (sixty lines that are the same every time).
    pub fn log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        log.lines()
            .filter(|line| !line.contains("loading plugin \\\""))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // Unmount whatever its snapshotter left mounted under its root.
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .stderr(std::process::Stdio::null())
            .status();
    }
}
