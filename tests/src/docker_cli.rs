//! The machine's docker CLI (28.x), pointed at a Docker Engine API socket
//! (a private dockerd's, or imaged's `run/docker.sock`) with a private
//! `DOCKER_CONFIG`.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

/// The docker CLI against one daemon.
#[derive(Clone, Debug)]
pub struct DockerCli {
    socket: PathBuf,
    config: PathBuf,
}

impl DockerCli {
    /// The CLI against the API on `socket`, with its configuration (and
    /// credentials) in `config`.
    pub fn new(socket: PathBuf, config: PathBuf) -> Self {
        DockerCli { socket, config }
    }

    /// The `DOCKER_HOST` it uses.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `docker args…`.
    pub async fn docker(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.docker_with_input(args, None).await
    }

    /// Runs the docker CLI with `input` on its standard input.
    pub async fn docker_with_input(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> anyhow::Result<Output> {
        std::fs::create_dir_all(&self.config)?;
        let mut command = Command::new("docker");
        command
            .args(args)
            .env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", &self.config)
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_CONTEXT");
        run_with_input(command, input)
            .await
            .with_context(|| format!("docker {args:?}"))
    }

    /// Runs the docker CLI and answers its standard output; an exit other
    /// than 0 is an error carrying its standard error.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.docker(args).await?;
        if !output.status.success() {
            bail!(
                "docker {args:?} exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }
}

/// Runs `command` with `input` on its standard input (none: /dev/null),
/// catching what it prints; killed if it runs past 120 s or is dropped.
pub async fn run_with_input(mut command: Command, input: Option<&[u8]>) -> anyhow::Result<Output> {
    use tokio::io::AsyncWriteExt;
    command
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().context("cannot start it")?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).await?;
        drop(stdin);
    }
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("it took over 120 s")?
        .map_err(Into::into)
}
