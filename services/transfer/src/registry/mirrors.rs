//! Registry mirrors, read from containerd's own `hosts.toml` files
//! (`<dir>/<registry host>/hosts.toml`, `<dir>/_default/hosts.toml` for
//! every other registry), so that a node's containerd mirror
//! configuration serves imaged unchanged. A pull tries the mirrors in the
//! file's order and then the registry itself; a push always goes to the
//! registry.
//!
//! What imaged reads of a `[host."URL"]` table: the URL (`http://` or
//! `https://`, a host and port, no path), `capabilities` (`pull` to fetch
//! by digest, `resolve` to answer tags; both by default), `skip_verify`
//! `ca` (one PEM file or a list) and `client` (the certificate this node
//! presents: one PEM file holding the certificate and its key, or
//! `[["cert.pem", "key.pem"]]`, the first pair). `override_path` and
//! `header` are not supported: such a host is skipped, saying so. The
//! file is read at every pull, as containerd reads it at every request,
//! so an edit applies to the next pull.

use std::path::{Path, PathBuf};

use imaged_common::Error;

/// One mirror of a registry.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// `host[:port]`, as registry references name it.
    pub host: String,
    /// `http://` in the file.
    pub plain_http: bool,
    /// Whether it may answer tags (containerd's `resolve` capability);
    /// without it, only digests are fetched from it.
    pub resolve: bool,
    /// Accept any certificate (`skip_verify`).
    pub skip_verify: bool,
    /// Extra CA certificates, PEM (`ca`).
    pub ca: Vec<Vec<u8>>,
    /// The client certificate and key presented to it, PEM (`client`):
    /// a fleet peer serving what it holds to authenticated nodes.
    pub client: Option<Vec<u8>>,
}

/// Where the `hosts.toml` files are (`--registry-config-dir`), and
/// Docker's `registry-mirrors` for Docker Hub (`--registry-mirror`).
#[derive(Clone, Debug, Default)]
pub struct MirrorConfig {
    dir: Option<PathBuf>,
    docker_hub: Vec<Mirror>,
}

/// Docker Hub's name in references.
const DOCKER_HUB: &str = "docker.io";

impl MirrorConfig {
    /// `docker_hub`: mirror URLs for Docker Hub, as Docker's
    /// `registry-mirrors` (used when no `docker.io/hosts.toml` says
    /// otherwise).
    pub fn new(dir: Option<PathBuf>, docker_hub: &[String]) -> Result<Self, Error> {
        let docker_hub = docker_hub
            .iter()
            .map(|url| {
                mirror(url, &toml::Table::new(), Path::new("--registry-mirror"))
                    .and_then(|m| m.ok_or_else(|| Error::invalid_argument("cannot pull")))
                    .map_err(|err| {
                        Error::invalid_argument(format!("--registry-mirror {url}: {err}"))
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(MirrorConfig { dir, docker_hub })
    }

    /// The mirrors for `registry` (`host[:port]`) that can serve pulls, in
    /// order. A file that cannot be read or parsed is logged and means no
    /// mirrors: the registry itself still answers.
    pub fn for_registry(&self, registry: &str) -> Vec<Mirror> {
        let from_files = self.in_files(registry);
        match from_files {
            None if registry == DOCKER_HUB => self.docker_hub.clone(),
            from_files => from_files.unwrap_or_default(),
        }
    }

    /// What the `hosts.toml` for `registry` (or `_default`) says; `None`
    /// when there is no such file.
    fn in_files(&self, registry: &str) -> Option<Vec<Mirror>> {
        let dir = self.dir.as_ref()?;
        let file = [registry, "_default"]
            .iter()
            .map(|name| dir.join(name).join("hosts.toml"))
            .find(|file| file.is_file());
        let file = file?;
        Some(
            match std::fs::read_to_string(&file)
                .map_err(|err| Error::invalid_argument(err.to_string()))
                .and_then(|text| parse(&text, &file))
            {
                Ok(mirrors) => mirrors,
                Err(err) => {
                    tracing::warn!(file = %file.display(), "registry mirrors not used: {err}");
                    Vec::new()
                }
            },
        )
    }
}

/// Parses one `hosts.toml`: its `[host."URL"]` tables in order, those
/// with the `pull` capability. `file` names it in messages and anchors
/// relative `ca` paths.
pub fn parse(text: &str, file: &Path) -> Result<Vec<Mirror>, Error> {
    let table: toml::Table = text
        .parse()
        .map_err(|err| Error::invalid_argument(format!("{}: {err}", file.display())))?;
    let Some(hosts) = table.get("host") else {
        return Ok(Vec::new());
    };
    let hosts = hosts.as_table().ok_or_else(|| {
        Error::invalid_argument(format!("{}: `host` must be a table", file.display()))
    })?;
    let mut mirrors = Vec::new();
    for (url, settings) in hosts {
        let settings = settings.as_table().cloned().unwrap_or_default();
        match mirror(url, &settings, file) {
            Ok(Some(mirror)) => mirrors.push(mirror),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(file = %file.display(), mirror = %url, "mirror skipped: {err}")
            }
        }
    }
    Ok(mirrors)
}

/// One `[host."URL"]` table; `None` when it cannot serve pulls.
fn mirror(url: &str, settings: &toml::Table, file: &Path) -> Result<Option<Mirror>, Error> {
    let bad = |what: String| Error::invalid_argument(what);
    let (plain_http, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else {
        (false, url)
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(bad(format!("{url}: no host")));
    }
    if !matches!(path.trim_end_matches('/'), "" | "v2") {
        return Err(bad(format!(
            "{url}: a path other than /v2 is not supported"
        )));
    }
    for unsupported in ["override_path", "header"] {
        if settings
            .get(unsupported)
            .is_some_and(|v| v.as_bool() != Some(false))
        {
            return Err(bad(format!("`{unsupported}` is not supported")));
        }
    }
    let capabilities: Vec<String> = match settings.get("capabilities") {
        None => vec!["pull".into(), "resolve".into()],
        Some(list) => list
            .as_array()
            .ok_or_else(|| bad("`capabilities` must be a list".into()))?
            .iter()
            .map(|c| c.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`capabilities` must be strings".into()))?,
    };
    if !capabilities.iter().any(|c| c == "pull") {
        return Ok(None);
    }
    let skip_verify = settings
        .get("skip_verify")
        .map(|v| {
            v.as_bool()
                .ok_or_else(|| bad("`skip_verify` must be a boolean".into()))
        })
        .transpose()?
        .unwrap_or(false);
    let ca_paths: Vec<String> = match settings.get("ca") {
        None => Vec::new(),
        Some(toml::Value::String(path)) => vec![path.clone()],
        Some(toml::Value::Array(paths)) => paths
            .iter()
            .map(|p| p.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`ca` must be paths".into()))?,
        Some(_) => return Err(bad("`ca` must be a path or a list of paths".into())),
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let ca = ca_paths
        .iter()
        .map(|path| {
            let path = base.join(path);
            std::fs::read(&path).map_err(|err| bad(format!("ca {}: {err}", path.display())))
        })
        .collect::<Result<_, _>>()?;
    let client = client_identity(settings.get("client"), base)?;
    Ok(Some(Mirror {
        host: host.to_string(),
        plain_http,
        resolve: capabilities.iter().any(|c| c == "resolve"),
        skip_verify,
        ca,
        client,
    }))
}

/// containerd's `client`: a PEM file with the certificate and its key, or
/// a list of `[cert, key]` pairs (the first is used; an empty key means
/// the certificate's file holds it). Relative paths are from `base`.
fn client_identity(value: Option<&toml::Value>, base: &Path) -> Result<Option<Vec<u8>>, Error> {
    let bad = |what: String| Error::invalid_argument(what);
    let (cert, key) = match value {
        None | Some(toml::Value::Boolean(false)) => return Ok(None),
        Some(toml::Value::String(path)) => (path.clone(), String::new()),
        Some(toml::Value::Array(pairs)) => {
            let first = pairs
                .first()
                .and_then(toml::Value::as_array)
                .ok_or_else(|| bad("`client` must be a path or [[cert, key]]".into()))?;
            let part = |i: usize| first.get(i).and_then(toml::Value::as_str).unwrap_or("");
            (part(0).to_string(), part(1).to_string())
        }
        Some(_) => return Err(bad("`client` must be a path or [[cert, key]]".into())),
    };
    let read = |path: &str| {
        let path = base.join(path);
        std::fs::read(&path).map_err(|err| bad(format!("client {}: {err}", path.display())))
    };
    let mut pem = read(&cert)?;
    if !key.is_empty() {
        pem.push(b'\n');
        pem.extend(read(&key)?);
    }
    Ok(Some(pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<Mirror> {
        parse(text, Path::new("/nonexistent/docker.io/hosts.toml")).unwrap()
    }

    #[test]
    fn hosts_in_file_order_with_their_capabilities() {
        let mirrors = parsed(
            r#"
server = "https://registry-1.docker.io"

[host."http://10.0.0.9:5000"]
  capabilities = ["pull"]

[host."https://mirror.example.com"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

[host."https://push-only.example.com"]
  capabilities = ["push"]

[host."https://all.example.com/v2"]
"#,
        );
        let summary: Vec<(&str, bool, bool, bool)> = mirrors
            .iter()
            .map(|m| (m.host.as_str(), m.plain_http, m.resolve, m.skip_verify))
            .collect();
        assert_eq!(
            summary,
            [
                ("10.0.0.9:5000", true, false, false),
                ("mirror.example.com", false, true, true),
                ("all.example.com", false, true, false),
            ]
        );
    }

    #[test]
    fn unsupported_hosts_are_skipped_not_fatal() {
        let mirrors = parsed(
            r#"
[host."https://a.example.com/some/path"]
[host."https://b.example.com"]
  override_path = true
[host."https://c.example.com"]
  [host."https://c.example.com".header]
    x-token = "t"
[host."https://d.example.com"]
  ca = "/nonexistent/ca.pem"
[host."https://ok.example.com"]
"#,
        );
        assert_eq!(
            mirrors.iter().map(|m| m.host.as_str()).collect::<Vec<_>>(),
            ["ok.example.com"]
        );
        assert!(parse("[host", Path::new("x")).is_err());
        assert!(parsed("server = \"https://x\"").is_empty());
    }

    #[test]
    fn the_registrys_own_file_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, host: &str| {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(
                dir.path().join(name).join("hosts.toml"),
                format!("[host.\"http://{host}\"]\n"),
            )
            .unwrap();
        };
        write("127.0.0.1:5000", "own:1");
        write("_default", "fallback:2");
        let config = MirrorConfig::new(Some(dir.path().to_path_buf()), &[]).unwrap();
        assert_eq!(config.for_registry("127.0.0.1:5000")[0].host, "own:1");
        assert_eq!(config.for_registry("docker.io")[0].host, "fallback:2");
        std::fs::write(dir.path().join("_default").join("hosts.toml"), "[[broken").unwrap();
        assert!(config.for_registry("docker.io").is_empty());
        assert!(MirrorConfig::default().for_registry("docker.io").is_empty());
    }

    #[test]
    fn dockers_registry_mirrors_serve_docker_hub_only() {
        let config = MirrorConfig::new(None, &["https://mirror.gcr.io".into()]).unwrap();
        let hub = config.for_registry("docker.io");
        assert_eq!(hub.len(), 1);
        assert_eq!(
            (hub[0].host.as_str(), hub[0].resolve),
            ("mirror.gcr.io", true)
        );
        assert!(config.for_registry("quay.io").is_empty());
        assert!(MirrorConfig::new(None, &["https://x/some/path".into()]).is_err());
    }
}
