//! Talking to registries through `oci-client`: one client per registry and
//! credential set, plain HTTP only where allowed, and the one mapping from
//! registry failures to imaged's errors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use imaged_api::v1::RegistryAuth as WireAuth;
use imaged_common::Error;
use imaged_model::Reference;
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest as _, Sha256};

/// Registry clients, shared by pulls and pushes so connections and tokens
/// are reused; a client is never shared between different credentials.
pub struct Registries {
    insecure: Vec<String>,
    clients: Mutex<HashMap<(String, [u8; 32]), Client>>,
}

impl Registries {
    /// `insecure` lists registries (`host[:port]`) reached over plain HTTP
    /// besides loopback ones.
    pub fn new(insecure: Vec<String>) -> Self {
        Registries {
            insecure,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `reference`'s registry and these credentials.
    pub fn client(&self, reference: &Reference, auth: &RegistryAuth) -> Client {
        let host = reference.domain().to_string();
        let key = (host.clone(), credential_key(auth));
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(key)
            .or_insert_with(|| {
                let protocol = if self.is_insecure(&host) {
                    ClientProtocol::Http
                } else {
                    ClientProtocol::Https
                };
                Client::new(ClientConfig {
                    protocol,
                    connect_timeout: Some(std::time::Duration::from_secs(30)),
                    ..Default::default()
                })
            })
            .clone()
    }

    /// Plain HTTP is allowed for listed registries and loopback hosts.
    fn is_insecure(&self, host: &str) -> bool {
        if self.insecure.iter().any(|h| h == host) {
            return true;
        }
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// A digest of the credentials: pulls and clients are shared only
/// between callers that gave the same ones.
pub fn credential_key(auth: &RegistryAuth) -> [u8; 32] {
    let mut hasher = Sha256::new();
    match auth {
        RegistryAuth::Anonymous => hasher.update(b"anonymous"),
        RegistryAuth::Basic(user, password) => {
            hasher.update(b"basic\0");
            hasher.update(user.as_bytes());
            hasher.update(b"\0");
            hasher.update(password.as_bytes());
        }
        RegistryAuth::Bearer(token) => {
            hasher.update(b"bearer\0");
            hasher.update(token.as_bytes());
        }
    }
    hasher.finalize().into()
}

/// The credentials of a request as oci-client takes them. An identity
/// token is sent as Docker's credential helpers do (user `<token>`).
pub fn auth(wire: Option<&WireAuth>) -> RegistryAuth {
    let Some(wire) = wire else {
        return RegistryAuth::Anonymous;
    };
    if !wire.registry_token.is_empty() {
        RegistryAuth::Bearer(wire.registry_token.clone())
    } else if !wire.identity_token.is_empty() {
        RegistryAuth::Basic("<token>".into(), wire.identity_token.clone())
    } else if !wire.username.is_empty() || !wire.password.is_empty() {
        RegistryAuth::Basic(wire.username.clone(), wire.password.clone())
    } else {
        RegistryAuth::Anonymous
    }
}

/// The oci-client reference for one of ours.
pub fn oci_reference(reference: &Reference) -> oci_client::Reference {
    match (reference.digest(), reference.tag()) {
        (Some(digest), _) => oci_client::Reference::with_digest(
            reference.domain().to_string(),
            reference.path().to_string(),
            digest.to_string(),
        ),
        (None, tag) => oci_client::Reference::with_tag(
            reference.domain().to_string(),
            reference.path().to_string(),
            tag.unwrap_or("latest").to_string(),
        ),
    }
}

/// Sorts a registry failure into the code the caller acts on; `what`
/// names the thing asked for (`manifest for app:v1`, `blob sha256:…`).
pub fn error(what: &str, err: OciDistributionError) -> Error {
    use OciDistributionError as E;
    match err {
        E::AuthenticationFailure(msg) => {
            Error::Unauthenticated(format!("{what}: authentication failed: {msg}"))
        }
        E::UnauthorizedError { .. } => {
            Error::Unauthenticated(format!("{what}: unauthorized: authentication required"))
        }
        E::ImageManifestNotFoundError(_) => Error::NotFound(format!("{what}: not found")),
        E::RegistryError { envelope, .. } => {
            let message = envelope.to_string();
            match envelope.errors.first().map(|e| &e.code) {
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => Error::NotFound(format!("{what}: not found: {message}")),
                Some(OciErrorCode::Unauthorized) => {
                    Error::Unauthenticated(format!("{what}: unauthorized: {message}"))
                }
                Some(OciErrorCode::Denied) => {
                    Error::PermissionDenied(format!("{what}: denied: {message}"))
                }
                Some(OciErrorCode::Toomanyrequests) => {
                    Error::ResourceExhausted(format!("{what}: too many requests: {message}"))
                }
                Some(OciErrorCode::NameInvalid | OciErrorCode::DigestInvalid) => {
                    Error::InvalidArgument(format!("{what}: {message}"))
                }
                _ => Error::Unavailable(format!("{what}: registry error: {message}")),
            }
        }
        E::ServerError { code, message, .. } => match code {
            404 => Error::NotFound(format!("{what}: not found")),
            401 => Error::Unauthenticated(format!("{what}: unauthorized: {message}")),
            403 => Error::PermissionDenied(format!("{what}: denied: {message}")),
            429 => Error::ResourceExhausted(format!("{what}: too many requests")),
            _ => Error::Unavailable(format!("{what}: registry answered {code}: {message}")),
        },
        E::RequestError(err) => Error::Unavailable(format!("{what}: {}", error_chain(&err))),
        E::IoError(err) => Error::Unavailable(format!("{what}: {err}")),
        E::DigestError(err) => Error::InvalidArgument(format!("{what}: {err}")),
        E::UnsupportedMediaTypeError(media) => {
            Error::InvalidArgument(format!("{what}: unsupported media type {media}"))
        }
        E::UnsupportedSchemaVersionError(1) => Error::InvalidArgument(format!(
            "{what}: Docker Image manifest schema 1 is not supported; push the image again with a current client"
        )),
        other => Error::Unavailable(format!("{what}: {other}")),
    }
}

/// Whether trying again may help: transport failures and server errors,
/// not refusals, rate limits or a full disk (Docker's do-not-retry list).
pub fn retryable(err: &Error) -> bool {
    matches!(err, Error::Unavailable(_))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let registries = Registries::new(vec!["registry.lan:5000".into()]);
        for host in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "registry.lan:5000",
        ] {
            assert!(registries.is_insecure(host), "{host}");
        }
        for host in [
            "docker.io",
            "registry.lan",
            "10.0.0.1:5000",
            "example.com:443",
        ] {
            assert!(!registries.is_insecure(host), "{host}");
        }
    }

    #[test]
    fn auth_prefers_tokens() {
        let wire = WireAuth {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert!(matches!(auth(Some(&wire)), RegistryAuth::Basic(u, p) if u == "u" && p == "p"));
        let wire = WireAuth {
            registry_token: "t".into(),
            ..wire
        };
        assert!(matches!(auth(Some(&wire)), RegistryAuth::Bearer(t) if t == "t"));
        assert!(matches!(auth(None), RegistryAuth::Anonymous));
    }
}
