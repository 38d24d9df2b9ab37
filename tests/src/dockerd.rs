//! A private Docker daemon (Debian's dockerd 20.10), the oracle the
//! differential tests compare imaged with: its own data root, exec root,
//! pid file and socket under a temporary directory, no bridge and no
//! iptables, overlay2. The docker CLI installed on the machine (28.x)
//! drives it through `DOCKER_HOST`, with a private `DOCKER_CONFIG`.
//! Loopback registries are plain HTTP to Docker by default.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::die_with_parent;
pub use crate::docker_cli::DockerCli;

/// A running dockerd; stopped (and its mounts undone) when dropped.
pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Dockerd {
    /// Starts a private dockerd. Fails, saying why, where it cannot run:
    /// not root, or dockerd not installed (`make test` installs it).
    pub async fn start() -> anyhow::Result<Self> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("the Docker oracle needs root (dockerd mounts overlayfs); run the tests as root");
        }
        if !Path::new("/usr/sbin/dockerd").exists() {
            bail!("dockerd is not installed: `make test-deps` installs Debian's docker.io");
        }
        // Short paths: the socket path must fit in sun_path.
        let dir = tempfile::Builder::new().prefix("dk").tempdir_in("/tmp")?;
        let base = dir.path();
        std::fs::create_dir_all(base.join("config"))?;
        let log = std::fs::File::create(base.join("dockerd.log"))?;
        let mut command = Command::new("/usr/sbin/dockerd");
        command
            .arg("--data-root")
            .arg(base.join("data"))
            .arg("--exec-root")
            .arg(base.join("exec"))
            .arg("--pidfile")
            .arg(base.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", base.join("docker.sock").display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--storage-driver=overlay2",
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command.spawn().context("cannot start dockerd")?;
        // From here on, the handle stops it whatever happens.
        let mut dockerd = Dockerd { dir, child };
        for _ in 0..300 {
            if dockerd.socket().exists() {
                let ping = dockerd
                    .docker(&["version", "--format", "{{.Server.Version}}"])
                    .await?;
                if ping.status.success() {
                    return Ok(dockerd);
                }
            }
            if let Some(status) = dockerd.child.try_wait()? {
                bail!("dockerd exited with {status}: {}", dockerd.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("dockerd did not answer in 30 s: {}", dockerd.log())
    }

    /// Its API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// What dockerd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The docker CLI, pointed at this daemon.
    pub fn cli(&self) -> DockerCli {
        DockerCli::new(self.socket(), self.dir.path().join("config"))
    }

    /// Runs the docker CLI against this daemon.
    pub async fn docker(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli().docker(args).await
    }

    /// Runs the docker CLI with `input` on its standard input.
    pub async fn docker_with_input(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> anyhow::Result<Output> {
        self.cli().docker_with_input(args, input).await
    }

    /// Runs the docker CLI and answers its standard output; an exit other
    /// than 0 is an error carrying its standard error.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cli().ok(args).await
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containerd and unmount; SIGKILL
        // after 15 s.
        if let Some(pid) = self.child.id() {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            for _ in 0..150 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.start_kill();
        for root in ["exec", "data"] {
            let _ = std::process::Command::new("umount")
                .arg("-R")
                .arg(self.dir.path().join(root))
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
