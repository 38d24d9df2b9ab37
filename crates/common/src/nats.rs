//! Reaching NATS, as every process that uses it does (the events'
//! publisher, the transfer's peer directory): the node's name as a
//! subject token, the `--nats-creds` file, and URLs fit for a log line.

use std::path::{Path, PathBuf};

/// Where NATS is and who this node is there: the flags of every process
/// that uses it (events, and the transfer's peer directory).
#[derive(clap::Args, Clone, Debug, Default)]
#[group(id = "nats_connection")]
pub struct NatsArgs {
    /// The NATS server (`nats://host:port`, or several comma-separated);
    /// off when unset. Its user and password, if any, never appear in a
    /// log line; prefer `--nats-creds`.
    #[arg(long, env = "IMAGED_NATS_URL")]
    pub nats_url: Option<String>,
    /// Authenticate to NATS with this file: a `.creds` file (a user JWT
    /// and its nkey seed, as `nsc` writes them) or a file holding an nkey
    /// user seed (`SU…`).
    #[arg(long, env = "IMAGED_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// This node's name in NATS subjects and the peer directory; default
    /// the host name.
    #[arg(long, env = "IMAGED_NODE_NAME")]
    pub node_name: Option<String>,
}

impl NatsArgs {
    /// The node's name ([`node_name`]).
    pub fn node(&self) -> anyhow::Result<String> {
        node_name(self.node_name.as_deref())
    }

    /// The credentials file, read now, so that a missing or unreadable
    /// one stops the start.
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        self.nats_creds
            .as_deref()
            .map(Credentials::read)
            .transpose()
    }
}

/// This node's name: `given`, else the host name. It must be one NATS
/// subject token (no dots, spaces or wildcards).
pub fn node_name(given: Option<&str>) -> anyhow::Result<String> {
    let node = match given {
        Some(node) => node.to_string(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into()),
    };
    if node.is_empty()
        || node
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace())
    {
        anyhow::bail!("--node-name {node:?} cannot be a NATS subject token");
    }
    Ok(node)
}

/// Connects to `url` (in the background, reconnecting from then on), as
/// `creds` says.
pub async fn connect(url: &str, creds: Option<&Credentials>) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new().retry_on_initial_connect();
    if let Some(creds) = creds {
        options = creds.apply(options)?;
    }
    Ok(options.connect(url).await?)
}

/// How a process authenticates to NATS, read from `--nats-creds`.
pub enum Credentials {
    /// A `.creds` file's text: a user JWT and its seed.
    File(String),
    /// An nkey user seed.
    Nkey(String),
}

impl Credentials {
    /// Reads `path`; a file that is neither form is refused.
    pub fn read(path: &Path) -> anyhow::Result<Credentials> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            anyhow::anyhow!("--nats-creds {}: cannot read it: {err}", path.display())
        })?;
        let trimmed = text.trim();
        if trimmed.contains("-----BEGIN NATS USER JWT-----") {
            async_nats::ConnectOptions::with_credentials(&text).map_err(|err| {
                anyhow::anyhow!(
                    "--nats-creds {}: not a valid .creds file: {err}",
                    path.display()
                )
            })?;
            return Ok(Credentials::File(text));
        }
        if trimmed.starts_with("SU") && !trimmed.contains(char::is_whitespace) {
            return Ok(Credentials::Nkey(trimmed.to_string()));
        }
        anyhow::bail!(
            "--nats-creds {}: neither a .creds file (a user JWT and seed) nor an nkey user seed (SU…)",
            path.display()
        )
    }

    /// `options` authenticating this way.
    pub fn apply(
        &self,
        options: async_nats::ConnectOptions,
    ) -> anyhow::Result<async_nats::ConnectOptions> {
        Ok(match self {
            Credentials::File(text) => options.credentials(text)?,
            Credentials::Nkey(seed) => options.nkey(seed.clone()),
        })
    }
}

/// `url` (one or several, comma-separated) with any user and password
/// replaced by `***`: what a log line may show of it.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(|one| match one.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => one.to_string(),
            },
            None => match one.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => one.to_string(),
            },
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_in_a_log_line_shows_no_credentials() {
        assert_eq!(redacted("nats://u:p4ss@nats:4222"), "nats://***@nats:4222");
        assert_eq!(
            redacted("nats://tok@a:4222,nats://b:4222"),
            "nats://***@a:4222,nats://b:4222"
        );
        assert_eq!(redacted("u:p@host:4222"), "***@host:4222");
        assert_eq!(redacted("nats://n:4222"), "nats://n:4222");
    }

    #[test]
    fn a_creds_file_that_is_neither_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.creds");
        std::fs::write(&path, "not a credential").unwrap();
        let err = Credentials::read(&path).err().unwrap().to_string();
        assert!(err.contains("neither a .creds file"), "{err}");
        assert!(Credentials::read(&dir.path().join("missing")).is_err());
        std::fs::write(&path, "SUAEXAMPLESEED\n").unwrap();
        assert!(
            matches!(Credentials::read(&path), Ok(Credentials::Nkey(seed)) if seed == "SUAEXAMPLESEED")
        );
    }

    #[test]
    fn a_node_name_is_one_subject_token() {
        assert_eq!(node_name(Some("node-1")).unwrap(), "node-1");
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(node_name(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
