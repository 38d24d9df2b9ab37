//! Reaching registries: one set of clients per registry, way of reaching
//! it and credentials, plain HTTP only where allowed; the one mapping from
//! registry failures to imaged's errors is in [`errors`].

pub(crate) mod fetch;
pub(crate) mod login;
pub(crate) mod manifest;
pub(crate) mod mirrors;
pub(crate) mod push;
pub(crate) mod serve_content;
pub(crate) mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use imaged_model::Reference;
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest as _, Sha256};

use crate::registry::mirrors::{Mirror, MirrorConfig};

mod errors;
pub use errors::{Retry, error, pull_error};

/// Registry clients, shared by pulls and pushes so connections and tokens
/// are reused; a client is never shared between different credentials.
pub struct Registries {
    insecure: Vec<String>,
    /// At most [`MAX_CLIENTS`], the least recently used going first: one
    /// per host and credentials would otherwise grow with every caller.
    clients: Mutex<ClientCache>,
    /// The HTTP client every host without TLS settings of its own shares
    /// (made at start-up, so the first pull does not pay for it).
    http: reqwest::Client,
    /// Where the mirrors of each registry are configured.
    mirrors: MirrorConfig,
}

/// What a client is shared by: the host, how it is reached (plain HTTP,
/// any certificate, the digest of its extra CAs and client certificate)
/// and the credentials. The
/// same host may be a registry over HTTPS and a mirror over HTTP.
type ClientKey = (String, bool, bool, [u8; 32], [u8; 32]);

/// How a host is reached: plain HTTP, any certificate accepted, extra CAs
/// (PEM), the client certificate and key presented (PEM).
#[derive(Clone, Copy, Default)]
struct Reach<'a> {
    plain_http: bool,
    skip_verify: bool,
    ca: &'a [Vec<u8>],
    client: Option<&'a [u8]>,
}

/// Clients kept at most.
const MAX_CLIENTS: usize = 64;

/// The kept clients, each with the tick it was last used at.
#[derive(Default)]
struct ClientCache {
    tick: u64,
    clients: HashMap<ClientKey, (u64, Clients)>,
}

/// The oci-client a push uploads through (pushes go to the registry
/// itself, never to a mirror with TLS settings of its own).
fn registry_client(plain_http: bool) -> Client {
    Client::new(ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        ..Default::default()
    })
}

/// The clients of a [`ClientKey`]: the HTTP client pulls read with (the
/// shared one unless TLS is configured), and the oci-client pushes upload
/// through, made on the first push.
#[derive(Clone)]
struct Clients {
    pushes: Arc<std::sync::OnceLock<Client>>,
    http: reqwest::Client,
    /// The tokens got for these credentials.
    tokens: fetch::Tokens,
}

/// One place a pull reads from: a mirror of the registry (from
/// `hosts.toml`, asked without credentials: they are the registry's) or
/// the registry itself.
#[derive(Clone)]
pub struct Source {
    /// The image's repository there, with the request's tag or digest.
    pub oref: oci_client::Reference,
    pub auth: RegistryAuth,
    /// For manifests, blobs and tags, read with limits ([`fetch`]).
    pub(crate) http: reqwest::Client,
    pub(crate) plain_http: bool,
    /// Tokens got from this source's realm, shared by the pulls that use
    /// the same client.
    pub(crate) tokens: fetch::Tokens,
    /// Whether this node presents a client certificate to it (a fleet
    /// peer that may serve private blobs): what it serves is then not
    /// known to be public.
    pub identified: bool,
    /// The mirror's host; `None` for the registry itself.
    pub mirror: Option<String>,
    /// Whether it may answer a tag (a mirror needs `resolve`).
    pub resolves: bool,
    /// Whether it is a fleet peer the directory named (a mirror too).
    pub peer: bool,
}

impl Source {
    /// Where messages say a failure came from.
    pub fn name(&self) -> &str {
        self.mirror.as_deref().unwrap_or(self.oref.registry())
    }

    /// The same repository here, at `digest`.
    pub fn at_digest(&self, digest: &str) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.oref.registry().to_string(),
            self.oref.repository().to_string(),
            digest.to_string(),
        )
    }

    /// The URL a fleet peer was named by (`http://host:port`).
    pub fn peer_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.name())
    }

    /// The same repository here, at `tag`.
    pub fn at_tag(&self, tag: &str) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            self.oref.registry().to_string(),
            self.oref.repository().to_string(),
            tag.to_string(),
        )
    }
}

impl Registries {
    /// The HTTP client shared by every host without TLS settings of its
    /// own (also what reads an `http(s)://` signature lookaside).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `insecure` lists registries (`host[:port]`) reached over plain HTTP
    /// besides loopback ones; `mirrors` says where their mirrors are.
    pub fn new(insecure: Vec<String>, mirrors: MirrorConfig) -> Self {
        Registries {
            insecure,
            clients: Mutex::default(),
            http: http_client(false, &[], None),
            mirrors,
        }
    }

    /// The oci-client for `reference`'s registry and these credentials,
    /// which pushes upload through; made on the first push (about 5 ms of
    /// CPU), since pulls do not use it.
    pub fn client(&self, reference: &Reference, auth: &RegistryAuth) -> Client {
        let host = reference.domain();
        let plain_http = self.is_insecure(host);
        let reach = Reach {
            plain_http,
            ..Reach::default()
        };
        let clients = self.clients_for(host, auth, &reach);
        clients
            .pushes
            .get_or_init(|| registry_client(plain_http))
            .clone()
    }

    /// The clients for `host` reached this way with these credentials,
    /// made once and kept.
    fn clients_for(&self, host: &str, auth: &RegistryAuth, reach: &Reach<'_>) -> Clients {
        let Reach {
            plain_http,
            skip_verify,
            ca,
            client,
        } = *reach;
        let mut tls = Sha256::new();
        for pem in ca {
            tls.update(Sha256::digest(pem));
        }
        if let Some(identity) = client {
            tls.update(b"client");
            tls.update(Sha256::digest(identity));
        }
        let key = (
            host.to_string(),
            plain_http,
            skip_verify,
            tls.finalize().into(),
            credential_key(auth),
        );
        let mut cache = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        cache.tick += 1;
        let tick = cache.tick;
        if let Some((used, clients)) = cache.clients.get_mut(&key) {
            *used = tick;
            return clients.clone();
        }
        if cache.clients.len() >= MAX_CLIENTS
            && let Some(oldest) = cache
                .clients
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(key, _)| key.clone())
        {
            cache.clients.remove(&oldest);
        }
        let clients = Clients {
            tokens: fetch::Tokens::default(),
            http: if skip_verify || !ca.is_empty() || client.is_some() {
                http_client(skip_verify, ca, client)
            } else {
                self.http.clone()
            },
            pushes: Arc::default(),
        };
        cache.clients.insert(key, (tick, clients.clone()));
        clients
    }

    /// Where a pull of `reference` reads from, in order: the registry's
    /// mirrors (`hosts.toml`), then the registry itself, last.
    pub fn sources(&self, reference: &Reference, auth: &RegistryAuth) -> Vec<Source> {
        let upstream = oci_reference(reference);
        let mut sources: Vec<Source> = self
            .mirrors
            .for_registry(reference.domain())
            .into_iter()
            .map(|mirror| self.mirror(&upstream, mirror))
            .collect();
        sources.push(self.registry(reference, auth));
        sources
    }

    /// `mirror`, as a [`Source`] of `upstream`'s repository: read without
    /// credentials, presenting its client certificate if it has one.
    fn mirror(&self, upstream: &oci_client::Reference, mirror: Mirror) -> Source {
        let anonymous = RegistryAuth::Anonymous;
        let reach = Reach {
            plain_http: mirror.plain_http,
            skip_verify: mirror.skip_verify,
            ca: &mirror.ca,
            client: mirror.client.as_deref(),
        };
        let clients = self.clients_for(&mirror.host, &anonymous, &reach);
        Source {
            identified: mirror.client.is_some(),
            oref: at_host(upstream, &mirror.host),
            auth: anonymous,
            http: clients.http,
            tokens: clients.tokens,
            plain_http: mirror.plain_http,
            mirror: Some(mirror.host),
            resolves: mirror.resolve,
            peer: false,
        }
    }

    /// A fleet peer's serve-content at `url` (`http(s)://host:port`): a
    /// mirror of `upstream`'s repository that answers blobs by digest,
    /// over TLS checked against `tls.ca`, presenting `tls.client`.
    pub fn peer(
        &self,
        upstream: &oci_client::Reference,
        url: &str,
        tls: &crate::fleet::PeerTls,
    ) -> Source {
        let plain_http = url.starts_with("http://");
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string();
        let mirror = Mirror {
            host,
            plain_http,
            resolve: false,
            skip_verify: false,
            ca: tls.ca.clone(),
            // A certificate is presented over TLS only.
            client: tls.client.clone().filter(|_| !plain_http),
        };
        Source {
            peer: true,
            ..self.mirror(upstream, mirror)
        }
    }

    /// The registry itself, as a [`Source`]: where a pull reads last and
    /// where a push goes.
    pub fn registry(&self, reference: &Reference, auth: &RegistryAuth) -> Source {
        self.registry_at(oci_reference(reference), auth)
    }

    /// The registry at `host` (`host[:port]`) itself, for what concerns
    /// no repository (a login).
    pub fn host(&self, host: &str, auth: &RegistryAuth) -> Source {
        let oref = oci_client::Reference::with_tag(host.into(), "library".into(), "latest".into());
        self.registry_at(oref, auth)
    }

    fn registry_at(&self, oref: oci_client::Reference, auth: &RegistryAuth) -> Source {
        let domain = oref.registry().to_string();
        let plain_http = self.is_insecure(&domain);
        let reach = Reach {
            plain_http,
            ..Reach::default()
        };
        let clients = self.clients_for(&domain, auth, &reach);
        Source {
            plain_http,
            oref,
            auth: auth.clone(),
            http: clients.http,
            tokens: clients.tokens,
            identified: false,
            mirror: None,
            resolves: true,
            peer: false,
        }
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

/// `reference` (tag or digest) in the same repository on `host`.
fn at_host(reference: &oci_client::Reference, host: &str) -> oci_client::Reference {
    match reference.digest() {
        Some(digest) => oci_client::Reference::with_digest(
            host.to_string(),
            reference.repository().to_string(),
            digest.to_string(),
        ),
        None => oci_client::Reference::with_tag(
            host.to_string(),
            reference.repository().to_string(),
            reference.tag().unwrap_or("latest").to_string(),
        ),
    }
}

/// A client for manifest requests, trusting `ca` too, or any certificate.
fn http_client(skip_verify: bool, ca: &[Vec<u8>], client: Option<&[u8]>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            // A registry may send a blob to its storage, not to a cloud's
            // metadata service, and not round and round.
            let link_local = match attempt.url().host() {
                Some(url::Host::Ipv4(ip)) => ip.is_link_local(),
                Some(url::Host::Ipv6(ip)) => (ip.segments()[0] & 0xffc0) == 0xfe80,
                _ => false,
            };
            if link_local {
                attempt.error("a redirect to a link-local address")
            } else if attempt.previous().len() >= 10 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        }))
        .danger_accept_invalid_certs(skip_verify);
    for pem in ca {
        match reqwest::Certificate::from_pem(pem) {
            Ok(cert) => builder = builder.add_root_certificate(cert),
            Err(err) => tracing::warn!("a mirror's CA certificate is not PEM: {err}"),
        }
    }
    if let Some(pem) = client {
        match reqwest::Identity::from_pem(pem) {
            Ok(identity) => builder = builder.identity(identity),
            Err(err) => tracing::warn!("a mirror's client certificate is not PEM: {err}"),
        }
    }
    builder.build().unwrap_or_else(|err| {
        tracing::warn!("a registry client cannot be made as configured: {err}");
        reqwest::Client::default()
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let registries = Registries::new(vec!["registry.lan:5000".into()], MirrorConfig::default());
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
    fn the_client_cache_keeps_the_most_recently_used() {
        let registries = Registries::new(Vec::new(), MirrorConfig::default());
        let user = |n: usize| RegistryAuth::Basic(format!("user{n}"), "pw".into());
        let first = registries.clients_for("reg.example", &user(0), &Reach::default());
        for n in 1..MAX_CLIENTS + 10 {
            // The first is used again and again: it stays.
            registries.clients_for("reg.example", &user(0), &Reach::default());
            registries.clients_for("reg.example", &user(n), &Reach::default());
        }
        let kept = registries.clients.lock().unwrap().clients.len();
        assert_eq!(kept, MAX_CLIENTS);
        let again = registries.clients_for("reg.example", &user(0), &Reach::default());
        assert!(std::sync::Arc::ptr_eq(&first.tokens, &again.tokens));
    }
}
