//! A private NATS server with JetStream (Debian's `nats-server -js`) on a
//! free 127.0.0.1 port, its store in a temporary directory; it can be
//! stopped and started again on the same port and store.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::{die_with_parent, free_port};

/// The server; killed when dropped.
pub struct NatsServer {
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts it and waits until it accepts connections. Fails, saying
    /// why, where nats-server is missing (`make test` installs it).
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port();
        let mut server = NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir: tempfile::tempdir()?,
            child: None,
        };
        server.restart().await?;
        Ok(server)
    }

    /// Stops the server (SIGKILL: nothing is flushed on the way out).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it (again) on the same port and JetStream store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .context(
                "nats-server is not installed: `make test-deps` installs Debian's nats-server",
            )?;
        let log = std::fs::File::create(self.dir.path().join("nats.log"))?;
        let mut command = Command::new(binary);
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path().join("store"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let mut child = command.spawn().context("cannot start nats-server")?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!("nats-server exited with {status}: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nats-server did not listen on port {}", self.port)
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}
