//! A real OCI registry: Debian's `docker-registry` (CNCF Distribution).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::{die_with_parent, free_port};

/// A registry on 127.0.0.1 with its storage in a temporary directory.
pub struct TestRegistry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    access_log: PathBuf,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts the registry and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None, None).await
    }

    /// A registry that asks for HTTP basic credentials (htpasswd).
    pub async fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_with(Some((user, password)), None).await
    }

    /// A pull-through cache of the registry at `upstream` (`host:port`,
    /// plain HTTP): Distribution's proxy mode (`proxy.remoteurl`), a real
    /// registry mirror.
    pub async fn start_mirror_of(upstream: &str) -> anyhow::Result<Self> {
        Self::start_with(None, Some(upstream)).await
    }

    async fn start_with(
        credentials: Option<(&str, &str)>,
        upstream: Option<&str>,
    ) -> anyhow::Result<Self> {
        let binary = registry_binary()?;
        let dir = tempfile::tempdir()?;
        let auth = match credentials {
            None => String::new(),
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 4)?;
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n"))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: imaged-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{auth}{proxy}",
                dir.path().join("storage").display(),
                proxy = upstream
                    .map(|u| format!("proxy:\n  remoteurl: http://{u}\n"))
                    .unwrap_or_default(),
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let access_log = dir.path().join("access.log");
        let access = std::fs::File::create(&access_log)?;
        let mut command = Command::new(&binary);
        command
            .arg("serve")
            .arg(&config)
            .stdout(access)
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(&host).await.is_ok() {
                return Ok(TestRegistry {
                    host,
                    access_log,
                    _child: child,
                    _dir: dir,
                });
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.path().join("registry.log"))?;
                bail!("docker-registry exited with {status}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("docker-registry did not listen on {host}")
    }

    /// Successful blob downloads the registry served so far: one path
    /// (`/v2/<repo>/blobs/sha256:…`) per GET answered 200.
    pub fn blob_gets(&self) -> Vec<String> {
        self.gets("/blobs/")
    }

    /// Paths of the GETs answered with content (200, or 206 for a range)
    /// whose path contains `part` (`/manifests/`, `/blobs/`), in order.
    pub fn gets(&self, part: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|(method, path, status)| {
                method == "GET" && path.contains(part) && (status == "200" || status == "206")
            })
            .map(|(_, path, _)| path)
            .collect()
    }

    /// Every request the registry answered so far: (method, path,
    /// status), in order.
    pub fn requests(&self) -> Vec<(String, String, String)> {
        let log = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                let request = line.split('"').nth(1)?;
                let status = line.split('"').nth(2)?.split_whitespace().next()?;
                let mut parts = request.split_whitespace();
                let (method, path) = (parts.next()?, parts.next()?);
                Some((method.to_string(), path.to_string(), status.to_string()))
            })
            .collect()
    }

    /// The manifest (or index) `reference` names in this registry, as
    /// stored, and its `mediaType`.
    pub async fn manifest(&self, reference: &str) -> (Vec<u8>, String) {
        let oref: oci_client::Reference = reference.parse().expect("a valid reference");
        let body = self
            .fixtures()
            .client()
            .pull_manifest_raw(
                &oref,
                &oci_client::secrets::RegistryAuth::Anonymous,
                &[
                    "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.index.v1+json",
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("manifest {reference}: {e}"))
            .0
            .to_vec();
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("a JSON manifest");
        let media_type = parsed["mediaType"].as_str().unwrap_or_default().to_string();
        (body, media_type)
    }

    /// A fixture client for pushing to this registry.
    pub fn fixtures(&self) -> imaged_fixtures::Registry {
        imaged_fixtures::Registry::new(&self.host)
    }

    /// A fixture client that logs in with basic credentials.
    pub fn fixtures_as(&self, user: &str, password: &str) -> imaged_fixtures::Registry {
        imaged_fixtures::Registry::with_auth(
            &self.host,
            oci_client::secrets::RegistryAuth::Basic(user.into(), password.into()),
        )
    }
}

fn registry_binary() -> anyhow::Result<PathBuf> {
    for candidate in ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("docker-registry is not installed: run `make test`, which installs it")
}
