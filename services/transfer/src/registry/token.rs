//! The registry token exchange (distribution's token auth), in imaged's
//! own bounded code: a registry's `WWW-Authenticate: Bearer realm=…`
//! names where to ask for a token, and a hostile registry can name any
//! place. So the realm is checked before anything is sent to it:
//!
//! - it is HTTPS, unless the registry itself is plain HTTP by
//!   configuration;
//! - it is never link-local (a cloud's metadata service lives there), and
//!   never loopback unless the registry is;
//! - the registry's basic credentials go to it only over TLS, or when it
//!   is the registry itself.
//!
//! Its answer is read up to [`MAX_TOKEN_BODY`], within [`TOKEN_TIMEOUT`];
//! a refusal's body up to [`crate::registry::fetch::MAX_ERROR_BODY`], of which only a
//! short first line reaches the caller.

use std::net::IpAddr;
use std::time::Duration;

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use crate::registry::fetch;

/// The most a token answer may be.
pub const MAX_TOKEN_BODY: usize = 1 << 20;
/// How long a token request may take, answer included.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a `WWW-Authenticate` header asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    /// A token from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// Basic credentials, sent to the registry itself.
    Basic,
}

impl Challenge {
    /// Reads a `WWW-Authenticate` value; `None` for another scheme.
    pub fn parse(header: &str) -> Option<Challenge> {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut realm = None;
        let mut service = None;
        for (key, value) in parameters(params) {
            match key.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "service" => service = Some(value),
                _ => {}
            }
        }
        Some(Challenge::Bearer {
            realm: realm?,
            service,
        })
    }
}

/// `key="value", key=value` pairs, quotes (with `\"`) respected.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            match after.split_once(',') {
                Some((value, next)) => (value.trim().to_string(), next),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((key, value));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// Where a registry is and how it is reached, for the realm rules.
pub struct Registry<'a> {
    /// `host[:port]`.
    pub host: &'a str,
    /// Reached over plain HTTP (by configuration, or loopback).
    pub plain_http: bool,
}

/// Checks `realm` against the rules above before anything is sent;
/// answers whether the registry's basic credentials may go to it. Names
/// are resolved and every address checked.
pub async fn check_realm(realm: &str, registry: &Registry<'_>) -> Result<bool, String> {
    let url = reqwest::Url::parse(realm).map_err(|err| format!("realm {realm:?}: {err}"))?;
    let addresses: Vec<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(url::Host::Domain(name)) if name.eq_ignore_ascii_case("localhost") => {
            vec![IpAddr::from([127, 0, 0, 1])]
        }
        Some(url::Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            tokio::net::lookup_host((name, port))
                .await
                .map_err(|err| format!("realm {realm:?}: cannot resolve {name}: {err}"))?
                .map(|addr| addr.ip())
                .collect()
        }
        None => return Err(format!("realm {realm:?} names no host")),
    };
    check_realm_addresses(&url, &addresses, registry)
}

/// [`check_realm`] once the realm's addresses are known.
fn check_realm_addresses(
    url: &reqwest::Url,
    addresses: &[IpAddr],
    registry: &Registry<'_>,
) -> Result<bool, String> {
    let realm = url.as_str();
    match url.scheme() {
        "https" => {}
        "http" if registry.plain_http => {}
        "http" => {
            return Err(format!(
                "realm {realm:?} is plain HTTP, but the registry is reached over TLS"
            ));
        }
        other => return Err(format!("realm {realm:?}: scheme {other} is not HTTP")),
    }
    let registry_loopback = host_is_loopback(registry.host);
    for ip in addresses {
        if link_local(ip) || ip.is_unspecified() || ip.is_multicast() {
            return Err(format!(
                "realm {realm:?} is at {ip}, where no registry lives"
            ));
        }
        if ip.is_loopback() && !registry_loopback {
            return Err(format!(
                "realm {realm:?} is on this machine ({ip}), but the registry is not"
            ));
        }
    }
    if addresses.is_empty() {
        return Err(format!("realm {realm:?} resolves to no address"));
    }
    let same_host = url
        .host_str()
        .map(|host| match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        })
        .is_some_and(|realm_host| realm_host.eq_ignore_ascii_case(registry.host));
    Ok(url.scheme() == "https" || same_host)
}

fn link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// Whether `host[:port]` names this machine.
fn host_is_loopback(host: &str) -> bool {
    let bare = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Asks `realm` for a token for `scope`, as the registry's challenge
/// says; basic credentials go along only where [`check_realm`] allows.
pub async fn exchange(
    http: &reqwest::Client,
    challenge: (&str, Option<&str>),
    scope: &str,
    registry: &Registry<'_>,
    auth: &RegistryAuth,
) -> Result<String, OciDistributionError> {
    let asked = Ask {
        scope: Some(scope),
        offline: false,
    };
    Ok(exchange_for(http, challenge, asked, registry, auth)
        .await?
        .token)
}

/// The user name an identity token goes under (Docker's credential
/// helpers keep it so): the secret is then a refresh token.
pub const IDENTITY_TOKEN_USER: &str = "<token>";

/// What a token request asks for.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    /// The scope (`repository:library/busybox:pull`); none for a login.
    pub scope: Option<&'a str>,
    /// Ask for a refresh token too (Docker's `offline_token=true`,
    /// `client_id=docker`): what a login keeps instead of the password.
    pub offline: bool,
}

/// What a token service answered.
pub struct Answer {
    pub token: String,
    /// The refresh token, when asked for and given.
    pub refresh_token: Option<String>,
}

/// [`exchange`], asking what `asked` says; answers the refresh token too.
pub async fn exchange_for(
    http: &reqwest::Client,
    challenge: (&str, Option<&str>),
    asked: Ask<'_>,
    registry: &Registry<'_>,
    auth: &RegistryAuth,
) -> Result<Answer, OciDistributionError> {
    let (realm, service) = challenge;
    let refused = |why: String| OciDistributionError::AuthenticationFailure(why);
    let credentials_allowed = check_realm(realm, registry).await.map_err(refused)?;
    let mut query = Vec::new();
    if let Some(scope) = asked.scope {
        query.push(("scope", scope));
    }
    if let Some(service) = service {
        query.push(("service", service));
    }
    if matches!(auth, RegistryAuth::Basic(..)) && !credentials_allowed {
        return Err(refused(format!(
            "realm {realm:?} is plain HTTP and not the registry: credentials go to it only over TLS"
        )));
    }
    let request = match auth {
        // An identity token (a login's refresh token, kept as Docker's
        // credential helpers keep it) is exchanged as OAuth2 asks: a POST
        // of the refresh grant, as Docker's client sends it.
        RegistryAuth::Basic(user, refresh_token) if user == IDENTITY_TOKEN_USER => {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.as_str()),
                ("client_id", "docker"),
            ];
            form.extend(query.iter().copied());
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            http.post(realm)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
        }
        RegistryAuth::Basic(user, password) => {
            if asked.offline {
                query.push(("offline_token", "true"));
                query.push(("client_id", "docker"));
                query.push(("account", user.as_str()));
            }
            http.get(realm)
                .query(&query)
                .basic_auth(user, Some(password))
        }
        _ => http.get(realm).query(&query),
    };
    let request = request.timeout(TOKEN_TIMEOUT);
    let response = request.send().await?;
    if !response.status().is_success() {
        let status = response.status().as_u16();
        let body = fetch::read_capped(response, fetch::MAX_ERROR_BODY).await?;
        return Err(refused(format!(
            "token request answered {status}: {}",
            fetch::first_line(&body)
        )));
    }
    let body = fetch::read_capped(response, MAX_TOKEN_BODY + 1).await?;
    if body.len() > MAX_TOKEN_BODY {
        return Err(refused(format!(
            "the token answer is larger than {MAX_TOKEN_BODY} bytes"
        )));
    }
    #[derive(serde::Deserialize)]
    struct Wire {
        token: Option<String>,
        access_token: Option<String>,
        refresh_token: Option<String>,
    }
    let wire: Wire = serde_json::from_slice(&body)
        .map_err(|err| refused(format!("the token answer is not JSON: {err}")))?;
    let token = wire
        .token
        .or(wire.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refused("the token answer holds no token".into()))?;
    Ok(Answer {
        token,
        refresh_token: wire.refresh_token.filter(|t| !t.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_registries_write_them() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm="https://r/t?a=\"b\"", service=reg"#),
            Some(Challenge::Bearer {
                realm: r#"https://r/t?a="b""#.into(),
                service: Some("reg".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
    }

    fn check(realm: &str, ips: &[&str], host: &str, plain_http: bool) -> Result<bool, String> {
        let url = reqwest::Url::parse(realm).unwrap();
        let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        check_realm_addresses(&url, &ips, &Registry { host, plain_http })
    }

    #[test]
    fn a_realm_is_https_and_never_link_local_nor_loopback_for_a_remote_registry() {
        let public = ["203.0.113.7"];
        assert_eq!(
            check("https://auth.example/token", &public, "reg.example", false),
            Ok(true)
        );
        // Plain HTTP under a TLS registry.
        assert!(check("http://auth.example/token", &public, "reg.example", false).is_err());
        assert!(
            check(
                "http://127.0.0.1:5001/token",
                &["127.0.0.1"],
                "127.0.0.1:5000",
                false
            )
            .is_err()
        );
        // Link-local, whatever the registry.
        for ip in ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254"] {
            assert!(
                check("https://meta/token", &[ip], "reg.example", false).is_err(),
                "{ip}"
            );
            assert!(
                check("https://meta/token", &[ip], "127.0.0.1:5000", true).is_err(),
                "{ip}"
            );
        }
        // One bad address among good ones is enough.
        assert!(
            check(
                "https://a/t",
                &["203.0.113.7", "169.254.1.1"],
                "reg.example",
                false
            )
            .is_err()
        );
        // Loopback only for a loopback registry.
        assert!(
            check(
                "https://localhost/token",
                &["127.0.0.1"],
                "reg.example",
                false
            )
            .is_err()
        );
        assert!(check("https://x/token", &["::1"], "reg.example", false).is_err());
        assert_eq!(
            check("https://x/token", &["127.0.0.1"], "localhost:5000", false),
            Ok(true)
        );
        assert!(check("https://x/token", &["0.0.0.0"], "localhost:5000", false).is_err());
        assert!(check("ftp://x/token", &public, "reg.example", false).is_err());
    }

    #[test]
    fn basic_credentials_go_to_a_realm_only_over_tls_or_to_the_registry_itself() {
        let loopback = ["127.0.0.1"];
        // A plain-HTTP registry (loopback) whose realm is another port.
        assert_eq!(
            check(
                "http://127.0.0.1:5001/token",
                &loopback,
                "127.0.0.1:5000",
                true
            ),
            Ok(false)
        );
        assert_eq!(
            check(
                "http://127.0.0.1:5000/token",
                &loopback,
                "127.0.0.1:5000",
                true
            ),
            Ok(true)
        );
        assert_eq!(
            check(
                "https://127.0.0.1:5001/token",
                &loopback,
                "127.0.0.1:5000",
                true
            ),
            Ok(true)
        );
    }

    /// A token service on loopback that answers one request with
    /// `answer` and hands back the request it read.
    async fn one_answer(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (realm, served)
    }

    #[tokio::test]
    async fn an_identity_token_is_exchanged_by_the_refresh_grant_and_a_login_asks_for_one() {
        let http = reqwest::Client::new();
        // The registry is its own token service here: credentials may go.
        let at = |realm: &str| {
            realm
                .trim_start_matches("http://")
                .trim_end_matches("/token")
                .to_string()
        };
        let asked = Ask {
            scope: Some("repository:app:pull"),
            offline: false,
        };
        let (realm, served) = one_answer(r#"{"access_token":"t1"}"#).await;
        let identity = RegistryAuth::Basic(IDENTITY_TOKEN_USER.into(), "refresh-1".into());
        let host = at(&realm);
        let registry = Registry {
            host: &host,
            plain_http: true,
        };
        let got = exchange_for(&http, (&realm, Some("reg")), asked, &registry, &identity)
            .await
            .unwrap();
        assert_eq!(got.token, "t1");
        let request = served.await.unwrap();
        assert!(request.starts_with("POST /token "), "{request}");
        assert!(request.contains("grant_type=refresh_token&refresh_token=refresh-1&client_id=docker&scope=repository%3Aapp%3Apull&service=reg"), "{request}");

        let (realm, served) = one_answer(r#"{"token":"t2","refresh_token":"refresh-2"}"#).await;
        let login = Ask {
            scope: None,
            offline: true,
        };
        let basic = RegistryAuth::Basic("alice".into(), "pw".into());
        let host = at(&realm);
        let registry = Registry {
            host: &host,
            plain_http: true,
        };
        let got = exchange_for(&http, (&realm, None), login, &registry, &basic)
            .await
            .unwrap();
        assert_eq!(got.refresh_token.as_deref(), Some("refresh-2"));
        let request = served.await.unwrap();
        assert!(
            request.starts_with("GET /token?offline_token=true&client_id=docker&account=alice "),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: basic "),
            "{request}"
        );
    }
}
