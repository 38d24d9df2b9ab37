//! The four imaged processes, started from the built binaries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use imaged_api::v1::images_client::ImagesClient;
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::{Peer, PeerChannel};
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::die_with_parent;

/// The directory holding the imaged binaries: `IMAGED_BIN_DIR`, or the
/// cargo target directory this test was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMAGED_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary under target/<profile>/deps")
        .to_path_buf();
    assert!(
        dir.join("imaged-gateway").exists(),
        "imaged binaries not found in {}: run `cargo build --workspace --bins` first (make test does)",
        dir.display()
    );
    dir
}

/// Options for starting imaged: environment, extra flags, which processes.
#[derive(Default)]
pub struct ImagedBuilder {
    env: Vec<(String, String)>,
    args: HashMap<&'static str, Vec<String>>,
    only: Option<Vec<Service>>,
}

impl ImagedBuilder {
    /// An environment variable for all four processes.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// An extra flag for one process.
    pub fn arg(mut self, service: Service, arg: &str) -> Self {
        self.args
            .entry(service.short())
            .or_default()
            .push(arg.to_string());
        self
    }

    /// A node of a fleet: imaged-transfer serves its content on
    /// `serve_content` (`IP:PORT`) and finds its peers through the NATS
    /// directory at `nats`, as `node`.
    pub fn fleet_node(self, serve_content: &str, nats: &str, node: &str) -> Self {
        self.arg(
            Service::Transfer,
            &format!("--serve-content={serve_content}"),
        )
        .arg(Service::Transfer, "--peer-directory=nats")
        .arg(Service::Transfer, &format!("--nats-url={nats}"))
        .arg(Service::Transfer, &format!("--node-name={node}"))
    }

    /// imaged-transfer's serve-content over TLS with the test certificates
    /// in `certs` ([`crate::certs::write`]): its server certificate, and
    /// every blob to clients whose certificate the test CA signed.
    pub fn serve_content_tls(self, certs: &Path) -> Self {
        let file = |name: &str| certs.join(name).display().to_string();
        self.arg(
            Service::Transfer,
            &format!("--serve-content-tls-cert={}", file("server.pem")),
        )
        .arg(
            Service::Transfer,
            &format!("--serve-content-tls-key={}", file("server.key")),
        )
        .arg(
            Service::Transfer,
            &format!("--serve-content-tls-client-ca={}", file("ca.pem")),
        )
    }

    /// The fleet's TLS from the test certificates in `certs`: directory
    /// peers checked against the test CA, the client certificate shown
    /// to them.
    pub fn fleet_tls(self, certs: &Path) -> Self {
        let file = |name: &str| certs.join(name).display().to_string();
        self.arg(
            Service::Transfer,
            &format!("--fleet-tls-ca={}", file("ca.pem")),
        )
        .arg(
            Service::Transfer,
            &format!("--fleet-tls-cert={}", file("client.pem")),
        )
        .arg(
            Service::Transfer,
            &format!("--fleet-tls-key={}", file("client.key")),
        )
    }

    /// Start only these processes (the others can be started later with
    /// [`Imaged::start_service`]).
    pub fn only(mut self, services: &[Service]) -> Self {
        self.only = Some(services.to_vec());
        self
    }

    /// Starts the processes on a fresh temporary root and waits until each
    /// answers its health check.
    pub async fn start(self) -> anyhow::Result<Imaged> {
        let root = tempfile::Builder::new().prefix("imaged-e2e").tempdir()?;
        std::fs::create_dir_all(root.path().join("logs"))?;
        let services = self.only.clone().unwrap_or(Service::ALL.to_vec());
        let mut imaged = Imaged {
            root,
            options: self,
            children: HashMap::new(),
        };
        for service in services {
            imaged.start_service(service).await?;
        }
        Ok(imaged)
    }
}

/// Running imaged processes on a temporary root. Dropping it kills them.
pub struct Imaged {
    root: tempfile::TempDir,
    options: ImagedBuilder,
    children: HashMap<&'static str, Child>,
}

impl Imaged {
    /// All four with default options.
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    pub fn builder() -> ImagedBuilder {
        ImagedBuilder::default()
    }

    /// Kills the four processes and answers their root, left in place for
    /// the caller to remove when it chooses (a bench removes roots only
    /// after its last measurement: on an ext4 without a journal, creating
    /// files is slow for a minute or more after many were deleted).
    pub fn stop(self) -> tempfile::TempDir {
        let Imaged { root, children, .. } = self;
        drop(children);
        root
    }

    /// The `--root` all processes share.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The docker CLI, pointed at imaged's Docker Engine API socket.
    pub fn docker_cli(&self) -> crate::docker_cli::DockerCli {
        crate::docker_cli::DockerCli::new(
            self.root().join("run").join("docker.sock"),
            self.root().join("docker-config"),
        )
    }

    /// The Unix socket `service` listens on.
    pub fn socket(&self, service: Service) -> PathBuf {
        service.default_socket(self.root())
    }

    /// The file `service`'s stdout and stderr go to (appended across restarts).
    pub fn log_path(&self, service: Service) -> PathBuf {
        self.root()
            .join("logs")
            .join(format!("{}.log", service.process()))
    }

    /// Everything the four processes logged so far.
    pub fn logs(&self) -> String {
        Service::ALL
            .iter()
            .map(|s| std::fs::read_to_string(self.log_path(*s)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The command that runs `service` on this root with the builder's
    /// options, for tests that run a process by hand.
    pub fn command(&self, service: Service) -> Command {
        let mut command = Command::new(bin_dir().join(service.process()));
        command.arg("--root").arg(self.root());
        if let Some(args) = self.options.args.get(service.short()) {
            command.args(args);
        }
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        command.env_remove("IMAGED_CONFIG");
        command
    }

    /// Starts `service` and waits for it to answer SERVING.
    pub async fn start_service(&mut self, service: Service) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(service))?;
        let mut command = self.command(service);
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", service.process()))?;
        self.children.insert(service.short(), child);
        self.wait_serving(service).await
    }

    async fn wait_serving(&mut self, service: Service) -> anyhow::Result<()> {
        let mut health = HealthClient::new(self.channel(service));
        for _ in 0..300 {
            let answer = health.check(HealthCheckRequest::default()).await;
            if answer.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                return Ok(());
            }
            if let Some(child) = self.children.get_mut(service.short())
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited with {status} while starting:\n{}",
                    service.process(),
                    std::fs::read_to_string(self.log_path(service)).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{} did not become ready", service.process())
    }

    /// The process ID of `service`, if it runs.
    pub fn pid(&self, service: Service) -> Option<u32> {
        self.children.get(service.short())?.id()
    }

    /// SIGKILLs `service` and reaps it; its socket file stays behind, as
    /// after a crash.
    pub async fn kill(&mut self, service: Service) {
        if let Some(mut child) = self.children.remove(service.short()) {
            let _ = child.kill().await;
        }
    }

    /// SIGTERMs `service` and waits for it to exit.
    pub async fn terminate(&mut self, service: Service) -> anyhow::Result<ExitStatus> {
        let mut child = self
            .children
            .remove(service.short())
            .with_context(|| format!("{} is not running", service.process()))?;
        if let Some(pid) = child.id() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        Ok(tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .with_context(|| format!("{} ignored SIGTERM", service.process()))??)
    }

    /// SIGTERMs every running process and waits for each.
    pub async fn terminate_all(&mut self) -> anyhow::Result<()> {
        for service in Service::ALL {
            if self.children.contains_key(service.short()) {
                let status = self.terminate(service).await?;
                anyhow::ensure!(
                    status.success(),
                    "{} stopped with {status}",
                    service.process()
                );
            }
        }
        Ok(())
    }

    /// A channel to `service`'s socket.
    pub fn channel(&self, service: Service) -> PeerChannel {
        Peer::new(service, Endpoint::Unix(self.socket(service)))
            .expect("unix endpoint")
            .channel()
    }

    /// A client of the gateway's public `imaged.v1.Images`.
    pub fn images(&self) -> ImagesClient<PeerChannel> {
        ImagesClient::new(self.channel(Service::Gateway))
    }
}
