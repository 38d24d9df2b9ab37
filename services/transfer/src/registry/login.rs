//! `docker login`'s check (Moby's `loginV2`): credentials are presented to
//! a registry the way a pull presents them, and the answer says whether
//! it took them. Nothing is kept: the caller stores what it stores.
//!
//! The registry's `/v2/` is asked first, without credentials. An answer
//! of 200 needs none: the login succeeds as Docker's does. A basic
//! challenge gets the credentials sent to `/v2/`; a bearer challenge gets
//! them exchanged at the realm (through [`crate::registry::token`]'s rules), asking
//! for a refresh token to keep instead of the password, and the token is
//! then shown to `/v2/`.

use std::time::Duration;

use imaged_common::Error;
use imaged_model::reference;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use crate::registry::token::{self, Ask, Challenge};
use crate::registry::{Registries, Source};

/// How long each request of a login may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks `auth` against the registry `server` names (`host[:port]`,
/// maybe with a scheme and path; empty for Docker Hub). Answers the
/// refresh token the registry's token service gave to keep instead of the
/// password, if any. `InvalidArgument` for a server that is not one,
/// `Unauthenticated` for credentials the registry refuses.
pub async fn login(
    registries: &Registries,
    server: &str,
    auth: &RegistryAuth,
) -> Result<Option<String>, Error> {
    let host = hostname(server)?;
    let source = registries.host(&host, auth);
    check(&source, auth).await
}

/// The registry host a server names (Docker's `ConvertToHostname`);
/// Docker Hub for none.
fn hostname(server: &str) -> Result<String, Error> {
    let server = match server.trim() {
        "" => reference::DOCKER_HUB_SERVER,
        text => text,
    };
    let host = reference::server_hostname(server);
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !valid {
        return Err(Error::invalid_argument(format!(
            "invalid registry server {server:?}: use host[:port]"
        )));
    }
    Ok(reference::registry_domain(host).to_string())
}

/// Presents `auth` to the registry; answers the refresh token its token
/// service gave, if any.
async fn check(source: &Source, auth: &RegistryAuth) -> Result<Option<String>, Error> {
    let scheme = if source.plain_http { "http" } else { "https" };
    let url = format!("{scheme}://{}/v2/", source.oref.resolve_registry());
    let unreachable = |err: reqwest::Error| {
        if err.is_timeout() {
            Error::deadline_exceeded(format!("Get \"{url}\": no answer in {LOGIN_TIMEOUT:?}"))
        } else {
            Error::unavailable(format!("Get \"{url}\": {}", error_chain(&err)))
        }
    };
    let get = || source.http.get(&url).timeout(LOGIN_TIMEOUT);
    let ping = get().send().await.map_err(unreachable)?;
    if ping.status().is_success() {
        return Ok(None);
    }
    if ping.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(refused(&url, ping.status()));
    }
    let challenge = ping
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(Challenge::parse);
    let (answer, refresh_token) = match challenge {
        Some(Challenge::Bearer { realm, service }) => {
            let registry = token::Registry {
                host: source.oref.resolve_registry(),
                plain_http: source.plain_http,
            };
            let asked = Ask {
                scope: None,
                offline: true,
            };
            let got = token::exchange_for(
                &source.http,
                (&realm, service.as_deref()),
                asked,
                &registry,
                auth,
            )
            .await
            .map_err(|err| {
                let why = match err {
                    OciDistributionError::AuthenticationFailure(why) => why,
                    other => other.to_string(),
                };
                Error::unauthenticated(format!("Get \"{url}\": unauthorized: {why}"))
            })?;
            let answer = get()
                .bearer_auth(&got.token)
                .send()
                .await
                .map_err(unreachable)?;
            (answer, got.refresh_token)
        }
        _ => {
            let request = match auth {
                RegistryAuth::Basic(user, password) => get().basic_auth(user, Some(password)),
                RegistryAuth::Bearer(token) => get().bearer_auth(token),
                RegistryAuth::Anonymous => get(),
            };
            (request.send().await.map_err(unreachable)?, None)
        }
    };
    if answer.status().is_success() {
        Ok(refresh_token)
    } else {
        Err(refused(&url, answer.status()))
    }
}

/// Docker's words for a registry that did not take the credentials.
fn refused(url: &str, status: reqwest::StatusCode) -> Error {
    let text = format!(
        "login attempt to {url} failed with status: {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    );
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        Error::unauthenticated(text)
    } else {
        Error::unavailable(text)
    }
}

/// An error with its causes, as one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_read_as_docker_reads_them() {
        assert_eq!(hostname("").unwrap(), "docker.io");
        assert_eq!(
            hostname("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert_eq!(hostname("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        assert_eq!(
            hostname("http://reg.example:5000/v2/").unwrap(),
            "reg.example:5000"
        );
        assert!(hostname("bad host").is_err());
        assert!(hostname("https:///x").is_err());
    }
}
