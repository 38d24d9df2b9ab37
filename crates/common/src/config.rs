//! Configuration: flags, then environment, then an optional TOML file, then
//! defaults, in that order of precedence; and the root directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use clap::parser::ValueSource;

use crate::endpoint::Endpoint;
use crate::peer::Peer;

/// The four imaged processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Metadata,
    Transfer,
    Events,
    Gateway,
}

impl Service {
    /// All four, in the order the launcher starts them.
    pub const ALL: [Service; 4] = [
        Service::Events,
        Service::Metadata,
        Service::Transfer,
        Service::Gateway,
    ];

    /// The short name: the data subdirectory and socket name.
    pub fn short(self) -> &'static str {
        match self {
            Service::Metadata => "metadata",
            Service::Transfer => "transfer",
            Service::Events => "events",
            Service::Gateway => "gateway",
        }
    }

    /// The process (binary) name, used in logs, traces and error messages.
    pub fn process(self) -> &'static str {
        match self {
            Service::Metadata => "imaged-metadata",
            Service::Transfer => "imaged-transfer",
            Service::Events => "imaged-events",
            Service::Gateway => "imaged-gateway",
        }
    }

    /// Where this service listens unless told otherwise.
    pub fn default_socket(self, root: &Path) -> PathBuf {
        root.join("run").join(format!("{}.sock", self.short()))
    }
}

/// Options every process takes.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Data directory shared by the four processes; each keeps its files in
    /// its own subdirectory and its socket in `<root>/run/`.
    #[arg(long, env = "IMAGED_ROOT", default_value = "./data")]
    pub root: PathBuf,

    /// Where to listen: a socket path, unix:///path or tcp://IP:PORT.
    /// Default: `<root>/run/<service>.sock`.
    #[arg(long)]
    pub listen: Option<Endpoint>,

    /// A TOML file of options, keyed by flag name (`root = "/var/lib/imaged"`).
    /// Flags and environment variables take precedence over it.
    #[arg(long, env = "IMAGED_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log filter, in `tracing`'s env-filter syntax (`info`, `imaged=debug`).
    #[arg(long, env = "IMAGED_LOG", default_value = "info")]
    pub log: String,

    /// Server certificate (PEM) for a TCP listener. A TCP listener needs
    /// TLS unless --insecure-tcp is given.
    #[arg(long, env = "IMAGED_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "IMAGED_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA (PEM) whose client certificates are required on the TLS listener.
    #[arg(long, env = "IMAGED_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve a TCP listener without TLS (anyone who can reach the port can
    /// use the service). Not recommended.
    #[arg(long, env = "IMAGED_INSECURE_TCP")]
    pub insecure_tcp: bool,

    /// Serve a TLS listener to clients without a certificate (anyone who
    /// can reach the port can use the service). Without it, a TLS listener
    /// needs --tls-client-ca.
    #[arg(
        long,
        env = "IMAGED_TLS_NO_CLIENT_AUTH",
        conflicts_with = "tls_client_ca"
    )]
    pub tls_no_client_auth: bool,

    /// Group (name or GID) to give the Unix socket, so its members can
    /// connect (mode 0660).
    #[arg(long, env = "IMAGED_SOCKET_GROUP")]
    pub socket_group: Option<String>,

    /// Requests one connection (one client) may have in flight; more wait,
    /// so one client cannot starve the others. 0 = no limit. Default: 64 on
    /// the gateway, no limit on the internal services (their one client is
    /// the gateway).
    #[arg(long, env = "IMAGED_MAX_REQUESTS_PER_CLIENT")]
    pub max_requests_per_client: Option<usize>,

    /// Serve metrics in the Prometheus text format at `/metrics` on this
    /// address (`tcp://IP:PORT`, or a socket path). Off by default.
    #[arg(long, env = "IMAGED_METRICS_LISTEN")]
    pub metrics_listen: Option<Endpoint>,
}

/// TLS for a TCP listener, read and checked at start-up.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<Vec<u8>>,
}

/// Addresses of the other imaged services, for the processes that call them.
#[derive(clap::Args, Clone, Debug)]
pub struct PeerArgs {
    /// Address of imaged-metadata. Default: `<root>/run/metadata.sock`.
    #[arg(long, env = "IMAGED_METADATA_ADDR")]
    pub metadata_addr: Option<Endpoint>,

    /// Address of imaged-transfer. Default: `<root>/run/transfer.sock`.
    #[arg(long, env = "IMAGED_TRANSFER_ADDR")]
    pub transfer_addr: Option<Endpoint>,

    /// Address of imaged-events. Default: `<root>/run/events.sock`.
    #[arg(long, env = "IMAGED_EVENTS_ADDR")]
    pub events_addr: Option<Endpoint>,

    /// CA (PEM) of the peers' server certificates: with it, peers at a
    /// `tcp://` address are dialled over TLS.
    #[arg(long, env = "IMAGED_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) this process presents to its TLS peers
    /// (their --tls-client-ca signs it).
    #[arg(long, env = "IMAGED_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --peer-tls-cert.
    #[arg(long, env = "IMAGED_PEER_TLS_KEY", requires = "peer_tls_cert")]
    pub peer_tls_key: Option<PathBuf>,
}

impl PeerArgs {
    /// The address of `peer`, defaulting to its socket under `root`.
    pub fn endpoint(&self, peer: Service, root: &Path) -> Endpoint {
        let given = match peer {
            Service::Metadata => &self.metadata_addr,
            Service::Transfer => &self.transfer_addr,
            Service::Events => &self.events_addr,
            Service::Gateway => &None,
        };
        given
            .clone()
            .unwrap_or_else(|| Endpoint::Unix(peer.default_socket(root)))
    }

    /// The client to `peer` that a process keeps: dialled now, in the
    /// background ([`Peer::dial_ahead`]), so its first call is not slower.
    pub fn peer(&self, peer: Service, root: &Path) -> anyhow::Result<Peer> {
        let peer = Peer::with_tls(peer, self.endpoint(peer, root), self.tls()?.as_ref())?;
        peer.dial_ahead();
        Ok(peer)
    }

    /// How TCP peers are dialled over TLS, if they are.
    fn tls(&self) -> anyhow::Result<Option<PeerTls>> {
        let Some(ca) = &self.peer_tls_ca else {
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
        };
        let identity = match (&self.peer_tls_cert, &self.peer_tls_key) {
            (Some(cert), Some(key)) => {
                Some((read(cert, "--peer-tls-cert")?, read(key, "--peer-tls-key")?))
            }
            _ => None,
        };
        Ok(Some(PeerTls {
            ca: read(ca, "--peer-tls-ca")?,
            identity,
        }))
    }
}

/// TLS to the peers at `tcp://` addresses.
#[derive(Clone, Debug)]
pub struct PeerTls {
    /// PEM of the CA that signs their server certificates.
    pub ca: Vec<u8>,
    /// PEM certificate and key presented to them.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// The settings a process runs with once its root has been checked.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Which process this is.
    pub service: Service,
    /// The shared root, absolute.
    pub root: PathBuf,
    /// This process's own data directory, `<root>/<service>`.
    pub data_dir: PathBuf,
    /// Where this process listens.
    pub listen: Endpoint,
    /// Log filter.
    pub log: String,
    /// TLS for a TCP listener; `None` on a Unix socket or with
    /// --insecure-tcp.
    pub tls: Option<TlsFiles>,
    /// GID to give the Unix socket.
    pub socket_gid: Option<u32>,
    /// Requests in flight per connection; `None` = no limit.
    pub max_requests_per_client: Option<usize>,
    /// Where the Prometheus page is served, if anywhere.
    pub metrics_listen: Option<Endpoint>,
}

impl CommonArgs {
    /// Checks the root and this service's directories (created when
    /// missing, and written to once to prove they are usable).
    pub fn resolve(&self, service: Service) -> anyhow::Result<ServiceConfig> {
        let root = absolute(&self.root)?;
        let data_dir = root.join(service.short());
        // The service's store is its own: other users may not reach a
        // pulled image's setuid binaries or device nodes through it (Docker
        // keeps its graph directories 0700/0710).
        std::fs::create_dir_all(&data_dir)
            .and_then(|()| {
                std::fs::set_permissions(
                    &data_dir,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
            })
            .with_context(|| format!("root {} is not usable", root.display()))?;
        for dir in [&data_dir, &root.join("run")] {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "root {} is not usable: cannot create {}",
                    root.display(),
                    dir.display()
                )
            })?;
            check_writable(dir).with_context(|| {
                format!(
                    "root {} is not usable: {} is not writable",
                    root.display(),
                    dir.display()
                )
            })?;
        }
        let listen = self
            .listen
            .clone()
            .unwrap_or_else(|| Endpoint::Unix(service.default_socket(&root)));
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
        };
        let tls = match (&listen, &self.tls_cert, &self.tls_key) {
            (Endpoint::Tcp(addr), Some(_), Some(_))
                if self.tls_client_ca.is_none() && !self.tls_no_client_auth =>
            {
                bail!(
                    "refusing to serve tcp://{addr} to clients without a certificate: give \
                     --tls-client-ca (the CA of the clients' certificates), or \
                     --tls-no-client-auth to let anyone who reaches the port in"
                )
            }
            (Endpoint::Tcp(_), Some(cert), Some(key)) => Some(TlsFiles {
                cert: read(cert, "--tls-cert")?,
                key: read(key, "--tls-key")?,
                client_ca: self
                    .tls_client_ca
                    .as_ref()
                    .map(|ca| read(ca, "--tls-client-ca"))
                    .transpose()?,
            }),
            (Endpoint::Tcp(addr), _, _) if !self.insecure_tcp => bail!(
                "refusing to serve tcp://{addr} without TLS: give --tls-cert and --tls-key \
                 (and --tls-client-ca to require client certificates), or --insecure-tcp"
            ),
            (Endpoint::Unix(_), Some(_), _) => {
                bail!("--tls-cert applies to a TCP listener (--listen tcp://IP:PORT)")
            }
            _ => None,
        };
        let socket_gid = self.socket_group.as_deref().map(group_id).transpose()?;
        let max_requests_per_client = match self.max_requests_per_client {
            Some(0) => None,
            Some(n) => Some(n),
            None if service == Service::Gateway => Some(64),
            None => None,
        };
        Ok(ServiceConfig {
            service,
            root,
            data_dir,
            listen,
            log: self.log.clone(),
            tls,
            socket_gid,
            max_requests_per_client,
            metrics_listen: self.metrics_listen.clone(),
        })
    }
}

/// A group name or numeric GID, as the system knows it.
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).context("invalid group name")?;
    // SAFETY: getgrnam reads a valid NUL-terminated name; the record it
    // answers is read at once, before any other call could replace it.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    if entry.is_null() {
        bail!("unknown group {group:?} for --socket-group");
    }
    Ok(unsafe { (*entry).gr_gid })
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.as_os_str().is_empty() {
        bail!("root must not be empty");
    }
    std::path::absolute(path).with_context(|| format!("cannot resolve root {}", path.display()))
}

fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

/// Parses a process's options from its command line, environment and the
/// TOML file named by `--config`; prints the error and exits with status 2
/// on a bad value, as clap does for flags.
pub fn parse<T: Parser>() -> T {
    match parse_from::<T>(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(err) => match err.downcast::<clap::Error>() {
            Ok(clap_err) => clap_err.exit(),
            Err(err) => {
                let name = T::command().get_name().to_string();
                eprintln!("{name}: error: {err:#}");
                std::process::exit(2);
            }
        },
    }
}

/// The sections of a configuration file shared by the processes: each
/// process reads the keys at the top and those of its own section.
const SECTIONS: &[&str] = &["metadata", "transfer", "events", "gateway"];

/// [`parse`] over explicit arguments, returning the error instead of
/// exiting. Keys of the TOML file are flag names (`-` or `_`). One file can
/// serve all four processes: keys at the top apply to each, keys under
/// `[gateway]`, `[transfer]`, `[metadata]` or `[events]` only to that
/// process (so the gateway's `listen` is not every process's). A key the
/// process does not know, at the top or in its own section, is an error,
/// so a typo is not silently ignored.
pub fn parse_from<T: Parser>(
    args: impl IntoIterator<Item = impl Into<OsString>>,
) -> anyhow::Result<T> {
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cmd = T::command().args_override_self(true);
    let matches = cmd.clone().try_get_matches_from(&args)?;
    let Some(path) = find_config(&matches) else {
        return Ok(T::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;

    // `imaged-gateway` reads `[gateway]`.
    let name = cmd.get_name().to_string();
    let own = name.strip_prefix("imaged-").unwrap_or(&name).to_string();
    let mut entries: Vec<(&String, &toml::Value)> = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(section) if *key == own => entries.extend(section.iter()),
            toml::Value::Table(_) if SECTIONS.contains(&key.as_str()) => {}
            toml::Value::Table(_) => bail!(
                "config file {}: unknown section [{key}]: use [{}]",
                path.display(),
                SECTIONS.join("], [")
            ),
            _ => entries.push((key, value)),
        }
    }
    let mut from_file: Vec<OsString> = Vec::new();
    for (key, value) in entries {
        let id = key.replace('-', "_");
        let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == id.as_str()) else {
            bail!("config file {}: unknown option {key:?}", path.display());
        };
        let Some(long) = arg.get_long() else {
            bail!(
                "config file {}: option {key:?} cannot be set from a file",
                path.display()
            );
        };
        if matches!(
            matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        match value {
            toml::Value::Boolean(true) => from_file.push(format!("--{long}").into()),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => from_file.push(format!("--{long}={s}").into()),
            toml::Value::Integer(i) => from_file.push(format!("--{long}={i}").into()),
            toml::Value::Float(f) => from_file.push(format!("--{long}={f}").into()),
            other => bail!(
                "config file {}: option {key:?} has an unsupported value {other}",
                path.display()
            ),
        }
    }
    // File values go first so that the command line, which follows, wins.
    let mut merged = Vec::with_capacity(args.len() + from_file.len());
    merged.extend(args.first().cloned());
    merged.extend(from_file);
    merged.extend(args.into_iter().skip(1));
    let matches = cmd.try_get_matches_from(merged)?;
    Ok(T::from_arg_matches(&matches)?)
}

fn find_config(matches: &clap::ArgMatches) -> Option<PathBuf> {
    matches
        .try_get_one::<PathBuf>("config")
        .ok()
        .flatten()
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "imaged-test")]
    struct Args {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long, env = "IMAGED_TEST_LIMIT", default_value_t = 3)]
        limit: u32,
        #[arg(long)]
        verbose: bool,
    }

    fn write_config(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn defaults_without_a_file() {
        let args: Args = parse_from(["imaged-test"]).unwrap();
        assert_eq!(args.limit, 3);
        assert_eq!(args.common.root, PathBuf::from("./data"));
    }

    #[test]
    fn file_sets_what_flags_leave_unset() {
        let file = write_config("root = \"/srv/imaged\"\nlimit = 7\nverbose = true\n");
        let config = file.path().to_str().unwrap();
        let args: Args = parse_from(["imaged-test", "--config", config]).unwrap();
        assert_eq!(args.common.root, PathBuf::from("/srv/imaged"));
        assert_eq!(args.limit, 7);
        assert!(args.verbose);

        let args: Args = parse_from(["imaged-test", "--config", config, "--limit", "9"]).unwrap();
        assert_eq!(args.limit, 9, "the command line wins over the file");
    }

    #[test]
    fn a_shared_file_gives_each_process_its_own_section() {
        let file = write_config(
            "root = \"/srv/imaged\"\n[test]\nlimit = 7\n[gateway]\nlisten = \"tcp://127.0.0.1:7443\"\n[transfer]\nmax-concurrent-downloads = 2\n",
        );
        let config = file.path().to_str().unwrap();
        let args: Args = parse_from(["imaged-test", "--config", config]).unwrap();
        assert_eq!(args.common.root, PathBuf::from("/srv/imaged"));
        assert_eq!(args.limit, 7, "its own section");
        assert_eq!(args.common.listen, None, "not the gateway's listen");

        let file = write_config("[test]\nlimt = 7\n");
        let config = file.path().to_str().unwrap();
        let err = parse_from::<Args>(["imaged-test", "--config", config]).unwrap_err();
        assert!(err.to_string().contains("unknown option \"limt\""), "{err}");
        let file = write_config("[gatway]\nlisten = \"x\"\n");
        let config = file.path().to_str().unwrap();
        let err = parse_from::<Args>(["imaged-test", "--config", config]).unwrap_err();
        assert!(
            err.to_string().contains("unknown section [gatway]"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let file = write_config("limt = 7\n");
        let config = file.path().to_str().unwrap();
        let err = parse_from::<Args>(["imaged-test", "--config", config]).unwrap_err();
        assert!(err.to_string().contains("unknown option \"limt\""), "{err}");

        let file = write_config("limit = -1\n");
        let config = file.path().to_str().unwrap();
        assert!(parse_from::<Args>(["imaged-test", "--config", config]).is_err());
        assert!(parse_from::<Args>(["imaged-test", "--limit", "many"]).is_err());
    }

    #[test]
    fn resolve_creates_and_checks_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let args: Args = parse_from(["imaged-test", "--root", root.to_str().unwrap()]).unwrap();
        let config = args.common.resolve(Service::Events).unwrap();
        assert!(config.data_dir.is_dir());
        assert_eq!(
            config.listen,
            Endpoint::Unix(root.join("run").join("events.sock"))
        );

        // A root below a regular file cannot be created.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let bad = file.join("root");
        let args: Args = parse_from(["imaged-test", "--root", bad.to_str().unwrap()]).unwrap();
        let err = args.common.resolve(Service::Events).unwrap_err();
        assert!(format!("{err:#}").contains("is not usable"), "{err:#}");
    }
}
