//! imaged-transfer's configuration: its flags, environment variables and
//! config-file keys, in one place. The engines take what these say, not
//! the clap structs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use imaged_common::config::{CommonArgs, PeerArgs};

use crate::limits::{
    DEFAULT_MAX_CONCURRENT_DOWNLOADS, DEFAULT_MAX_CONCURRENT_UPLOADS, DEFAULT_MAX_DOWNLOAD_ATTEMPTS,
};
use crate::storage;

/// imaged-transfer: content store, layer store, registry pull and push,
/// tar load, save and import.
#[derive(Parser, Debug)]
#[command(name = "imaged-transfer", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub peers: PeerArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub pull: PullArgs,
    #[command(flatten)]
    pub containerd: ContainerdArgs,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub fleet: crate::fleet::FleetArgs,
    /// Storage driver: `auto` (overlay2 when overlayfs mounts here, else
    /// vfs), `overlay2` (fail if overlayfs cannot be mounted) or `vfs`.
    #[arg(long, env = "IMAGED_STORAGE_DRIVER", default_value = "auto")]
    pub storage_driver: storage::driver::DriverChoice,
    /// The most bytes one layer may inflate to, uncompressed; past it (or
    /// past the free space of the store) a pull, load or import is refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "IMAGED_MAX_LAYER_SIZE", default_value_t = 64 << 30)]
    pub max_layer_size: u64,
    /// Where containerd reaches imaged as a proxy snapshotter
    /// (`[proxy_plugins.imaged] type = "snapshot"`, `address` = this);
    /// default `<root>/run/snapshots.sock`.
    #[arg(long, env = "IMAGED_SNAPSHOTS_SOCKET")]
    pub snapshots_socket: Option<std::path::PathBuf>,
    /// Serve the content store read-only over the OCI distribution API on
    /// this address (`IP:PORT`, plain HTTP), for other nodes to list as a
    /// mirror: blobs by digest, of images this node holds.
    #[arg(long, env = "IMAGED_SERVE_CONTENT")]
    pub serve_content: Option<std::net::SocketAddr>,
    /// Serve --serve-content over TLS with this certificate (PEM); peers
    /// whose client certificate --serve-content-tls-client-ca signed get
    /// every blob this node holds, others only what it fetched without
    /// credentials.
    #[arg(long, env = "IMAGED_SERVE_CONTENT_TLS_CERT", requires_all = ["serve_content_tls_key", "serve_content_tls_client_ca", "serve_content"])]
    pub serve_content_tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --serve-content-tls-cert.
    #[arg(
        long,
        env = "IMAGED_SERVE_CONTENT_TLS_KEY",
        requires = "serve_content_tls_cert"
    )]
    pub serve_content_tls_key: Option<std::path::PathBuf>,
    /// The fleet's CA (PEM): peers with a client certificate it signed may
    /// have private blobs from --serve-content.
    #[arg(
        long,
        env = "IMAGED_SERVE_CONTENT_TLS_CLIENT_CA",
        requires = "serve_content_tls_cert"
    )]
    pub serve_content_tls_client_ca: Option<std::path::PathBuf>,
}

impl Args {
    /// The TLS of --serve-content, read and checked now (a bad file stops
    /// the start).
    pub(crate) fn serve_content_tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        let (Some(cert), Some(key), Some(ca)) = (
            &self.serve_content_tls_cert,
            &self.serve_content_tls_key,
            &self.serve_content_tls_client_ca,
        ) else {
            return Ok(None);
        };
        let read = |path: &std::path::PathBuf, what: &str| {
            std::fs::read(path).with_context(|| {
                format!("cannot read --serve-content-tls-{what} {}", path.display())
            })
        };
        let acceptor = imaged_common::http::tls_acceptor(
            &read(cert, "cert")?,
            &read(key, "key")?,
            &read(ca, "client-ca")?,
        )
        .context("--serve-content-tls-*")?;
        Ok(Some(acceptor))
    }
}

/// The limits as given on the command line, environment or config file.
#[derive(clap::Args, Clone, Debug)]
pub struct LimitArgs {
    /// Layer downloads that run at once across all pulls (0: the default).
    #[arg(long, env = "IMAGED_MAX_CONCURRENT_DOWNLOADS", default_value_t = DEFAULT_MAX_CONCURRENT_DOWNLOADS)]
    pub max_concurrent_downloads: u32,
    /// Layer uploads that run at once across all pushes (0: the default).
    #[arg(long, env = "IMAGED_MAX_CONCURRENT_UPLOADS", default_value_t = DEFAULT_MAX_CONCURRENT_UPLOADS)]
    pub max_concurrent_uploads: u32,
    /// Attempts per layer blob before a pull fails (1 = no retry).
    #[arg(long, env = "IMAGED_MAX_DOWNLOAD_ATTEMPTS", default_value_t = DEFAULT_MAX_DOWNLOAD_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_download_attempts: u32,
}

/// How long a pull waits for bytes, and the throughput it must keep.
#[derive(clap::Args, Clone, Debug)]
pub struct PullArgs {
    /// Seconds without a byte from the registry before a layer download is
    /// cancelled as stalled.
    #[arg(long, env = "IMAGED_STALL_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout_secs: u64,
    /// Bytes per second a layer download must average over each stall
    /// window (0: only a complete stall cancels).
    #[arg(long, env = "IMAGED_MIN_DOWNLOAD_RATE", default_value_t = 1024)]
    pub min_download_rate: u64,
    /// Registries (`host[:port]`) reached over plain HTTP besides
    /// loopback ones. Repeatable.
    #[arg(
        long = "insecure-registry",
        env = "IMAGED_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// containerd's registry host configuration: `DIR/<registry
    /// host>/hosts.toml` (or `DIR/_default/hosts.toml`) lists the mirrors
    /// a pull tries, in order, before the registry itself.
    #[arg(long, env = "IMAGED_REGISTRY_CONFIG_DIR")]
    pub registry_config_dir: Option<std::path::PathBuf>,
    /// Mirrors of Docker Hub, as Docker's `registry-mirrors`
    /// (`https://mirror.example`); a `docker.io/hosts.toml` under
    /// `--registry-config-dir` takes precedence. Repeatable.
    #[arg(
        long = "registry-mirror",
        env = "IMAGED_REGISTRY_MIRRORS",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<String>,
}

/// Where containerd is, for registering images there.
#[derive(clap::Args, Clone, Debug)]
pub struct ContainerdArgs {
    /// containerd's socket: every image imaged records is registered
    /// there too (content, image record, snapshots on imaged's layers).
    #[arg(long, env = "IMAGED_CONTAINERD_ADDRESS")]
    pub containerd_address: Option<PathBuf>,
    /// The containerd namespace images are registered in (kubelet's CRI
    /// uses `k8s.io`).
    #[arg(long, env = "IMAGED_CONTAINERD_NAMESPACE", default_value = "k8s.io")]
    pub containerd_namespace: String,
    /// The name containerd knows imaged's proxy snapshotter by.
    #[arg(long, env = "IMAGED_CONTAINERD_SNAPSHOTTER", default_value = "imaged")]
    pub containerd_snapshotter: String,
}

/// Which images may be pulled: containers-policy.json(5) and
/// containers-registries.d(5), as skopeo, podman and CRI-O read them. A
/// file that cannot be used stops the process from starting.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// The signature policy every pull is checked against (default:
    /// none, every image is accepted).
    #[arg(long, env = "IMAGED_SIGNATURE_POLICY")]
    pub signature_policy: Option<std::path::PathBuf>,
    /// A directory of `<namespace>.json` policies: a CRI pull from a pod
    /// of that Kubernetes namespace is checked against it instead (as
    /// CRI-O's `signature_policy_dir`).
    #[arg(long, env = "IMAGED_SIGNATURE_POLICY_DIR")]
    pub signature_policy_dir: Option<std::path::PathBuf>,
    /// The registries.d directory saying where signatures are kept
    /// (`lookaside`); default: none, which reads them from
    /// /var/lib/containers/sigstore as containers/image does.
    #[arg(long, env = "IMAGED_REGISTRIES_D")]
    pub registries_d: Option<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the flags (unique names and groups), which
    /// otherwise run only when the binary starts.
    #[test]
    fn the_flags_are_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
