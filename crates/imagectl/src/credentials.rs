//! Registry credentials where the docker CLI keeps them, so that one
//! `docker login` or `imagectl login` serves both: `$DOCKER_CONFIG/
//! config.json` (else `~/.docker/config.json`), as `auths` entries
//! (`{"auth": base64("user:password")}` or `{"identitytoken": …}`), or in
//! a credential helper (`credHelpers` per registry, else `credsStore`):
//! the program `docker-credential-<name>` with `get`, `store` and `erase`,
//! JSON on its standard input and output.
//!
//! The file is rewritten whole (temp file, fsync, rename) with mode 0600,
//! every key it had kept as it was.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Map, Value, json};

use imaged_model::reference;
pub use imaged_model::reference::DOCKER_HUB_SERVER as DOCKER_HUB;

/// What a helper answers when it has nothing for a server.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// Credentials for one registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A user name and password.
    Password { username: String, password: String },
    /// A refresh token a login got instead of keeping the password.
    IdentityToken(String),
}

/// The docker CLI's configuration file, read whole.
pub struct Store {
    path: PathBuf,
    config: Map<String, Value>,
}

impl Store {
    /// Reads `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`; a
    /// missing file is an empty configuration.
    pub fn open() -> anyhow::Result<Store> {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home =
                    std::env::var_os("HOME").context("neither DOCKER_CONFIG nor HOME is set")?;
                Path::new(&home).join(".docker")
            }
        };
        Store::at(dir.join("config.json"))
    }

    /// Reads the configuration file at `path`.
    pub fn at(path: PathBuf) -> anyhow::Result<Store> {
        let config = match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("loading config file {}", path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Store { path, config })
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The helper that keeps `server`'s credentials, if any.
    fn helper(&self, server: &str) -> Option<String> {
        let host = hostname(server);
        self.config
            .get("credHelpers")
            .and_then(|h| h.get(host))
            .or_else(|| self.config.get("credsStore"))
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .map(str::to_string)
    }

    /// Whether credentials are kept in the file itself (no helper).
    pub fn in_file(&self, server: &str) -> bool {
        self.helper(server).is_none()
    }

    /// The credentials kept for `server` (a registry host, or Docker
    /// Hub's key). A helper that fails is an error with its message.
    pub fn get(&self, server: &str) -> anyhow::Result<Option<Credentials>> {
        if let Some(helper) = self.helper(server) {
            return helper_get(&helper, server);
        }
        let auths = self.config.get("auths").and_then(Value::as_object);
        let entry = auths.and_then(|auths| {
            auths.get(server).or_else(|| {
                // Docker matches `https://host/v1/` and `host` alike.
                auths
                    .iter()
                    .find(|(key, _)| hostname(key) == hostname(server))
                    .map(|(_, v)| v)
            })
        });
        let Some(entry) = entry else { return Ok(None) };
        if let Some(token) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::IdentityToken(token.to_string())));
        }
        let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth)
            .with_context(|| {
                format!(
                    "the auth of {server} in {} is not base64",
                    self.path.display()
                )
            })?;
        let text = String::from_utf8_lossy(&decoded);
        let (username, password) = text.split_once(':').with_context(|| {
            format!(
                "the auth of {server} in {} is not user:password",
                self.path.display()
            )
        })?;
        Ok(Some(Credentials::Password {
            username: username.to_string(),
            password: password.to_string(),
        }))
    }

    /// Keeps `credentials` for `server`: in its helper (the file then
    /// lists the server with an empty entry, as the docker CLI writes
    /// it), else in the file.
    pub fn store(&mut self, server: &str, credentials: &Credentials) -> anyhow::Result<()> {
        let entry = match self.helper(server) {
            Some(helper) => {
                helper_store(&helper, server, credentials)?;
                json!({})
            }
            None => match credentials {
                Credentials::Password { username, password } => json!({
                    "auth": base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}")),
                }),
                Credentials::IdentityToken(token) => json!({ "identitytoken": token }),
            },
        };
        self.auths().insert(server.to_string(), entry);
        self.save()
    }

    /// Forgets `server`'s credentials; answers whether any were kept.
    pub fn erase(&mut self, server: &str) -> anyhow::Result<bool> {
        let mut had = self.auths().remove(server).is_some();
        if let Some(helper) = self.helper(server) {
            had |= helper_erase(&helper, server)?;
        }
        if had {
            self.save()?;
        }
        Ok(had)
    }

    fn auths(&mut self) -> &mut Map<String, Value> {
        let auths = self
            .config
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        auths.as_object_mut().expect("made an object above")
    }

    /// Writes the file durably (temp file, fsync, rename), mode 0600 as
    /// temp files are made, its directory made 0700 if new.
    fn save(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self
            .path
            .parent()
            .context("the config file has no directory")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut bytes = serde_json::to_vec_pretty(&self.config)?;
        bytes.push(b'\n');
        imaged_client::durable::replace(&self.path, &bytes)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The key a registry's credentials are kept under: Docker Hub's for
/// `docker.io`, else the host as named.
pub fn server_key(host: &str) -> String {
    match reference::registry_domain(host) {
        reference::DEFAULT_DOMAIN => DOCKER_HUB.to_string(),
        _ => host.to_string(),
    }
}

/// A server key's host, as Docker's `ConvertToHostname`.
fn hostname(server: &str) -> &str {
    reference::server_hostname(server)
}

/// Runs `docker-credential-<helper> <action>` with `input`; answers its
/// standard output, or its failure as the helper words it.
fn run_helper(helper: &str, action: &str, input: &[u8]) -> anyhow::Result<Result<String, String>> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("error getting credentials - err: exec: \"{program}\": cannot run it")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that fails may exit before it reads: its answer says
        // why, not the broken pipe.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        return Ok(Ok(stdout));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Ok(Err(if stdout.is_empty() { stderr } else { stdout }))
}

fn helper_get(helper: &str, server: &str) -> anyhow::Result<Option<Credentials>> {
    let answer = match run_helper(helper, "get", server.as_bytes())? {
        Ok(answer) => answer,
        Err(message) if message.contains(NOT_FOUND) => return Ok(None),
        Err(message) => bail!("error getting credentials - err: exit status 1, out: `{message}`"),
    };
    let answer: Value = serde_json::from_str(&answer)
        .with_context(|| format!("docker-credential-{helper} get answered no JSON"))?;
    let username = answer["Username"].as_str().unwrap_or_default();
    let secret = answer["Secret"].as_str().unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if username == "<token>" {
        Credentials::IdentityToken(secret.to_string())
    } else {
        Credentials::Password {
            username: username.to_string(),
            password: secret.to_string(),
        }
    }))
}

fn helper_store(helper: &str, server: &str, credentials: &Credentials) -> anyhow::Result<()> {
    let (username, secret) = match credentials {
        Credentials::Password { username, password } => (username.as_str(), password.as_str()),
        Credentials::IdentityToken(token) => ("<token>", token.as_str()),
    };
    let input = json!({ "ServerURL": server, "Username": username, "Secret": secret });
    match run_helper(helper, "store", input.to_string().as_bytes())? {
        Ok(_) => Ok(()),
        Err(message) => bail!("error storing credentials - err: exit status 1, out: `{message}`"),
    }
}

fn helper_erase(helper: &str, server: &str) -> anyhow::Result<bool> {
    match run_helper(helper, "erase", server.as_bytes())? {
        Ok(_) => Ok(true),
        Err(message) if message.contains(NOT_FOUND) => Ok(false),
        Err(message) => bail!("error erasing credentials - err: exit status 1, out: `{message}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_through_the_file_in_dockers_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"psFormat": "table {{.ID}}"}"#).unwrap();
        let mut store = Store::at(path.clone()).unwrap();
        let creds = Credentials::Password {
            username: "alice".into(),
            password: "s3cret:x".into(),
        };
        store.store("127.0.0.1:5000", &creds).unwrap();
        let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            written["auths"]["127.0.0.1:5000"]["auth"],
            "YWxpY2U6czNjcmV0Ong="
        );
        assert_eq!(written["psFormat"], "table {{.ID}}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let again = Store::at(path.clone()).unwrap();
        assert_eq!(again.get("127.0.0.1:5000").unwrap(), Some(creds.clone()));
        assert_eq!(again.get("http://127.0.0.1:5000/v2/").unwrap(), Some(creds));
        assert_eq!(again.get("127.0.0.1:5001").unwrap(), None);

        let mut again = again;
        assert!(again.erase("127.0.0.1:5000").unwrap());
        assert!(!again.erase("127.0.0.1:5000").unwrap());
        assert_eq!(
            Store::at(path).unwrap().get("127.0.0.1:5000").unwrap(),
            None
        );
        assert_eq!(server_key("docker.io"), DOCKER_HUB);
    }
}
