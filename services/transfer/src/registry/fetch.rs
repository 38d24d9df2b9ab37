//! What a pull asks a registry (or a mirror), in imaged's own code, so
//! that every answer is bounded: manifests, blobs, tag lists and tokens.
//! oci-client reads error bodies, token answers and tag lists whole, and
//! does the token exchange wherever a registry's challenge points; here
//! a manifest is read up to the caller's limit, an error body up to
//! [`MAX_ERROR_BODY`] (and only a short first line of it reaches the
//! caller), a tag list page by page up to [`MAX_TAGS`], and the token
//! exchange goes through [`crate::registry::token`]'s rules. Time is bounded by the
//! callers: the stall timeout for a blob, the manifest timeout for the
//! rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest as _, Sha256};

use crate::neighbours::fetcher::{Blob, Fetcher, TO_THE_END};
use crate::registry::Source;
use crate::registry::token::{self, Challenge};

/// The most of an error answer's body that is read.
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most of an error's text that reaches the caller.
const MAX_ERROR_TEXT: usize = 200;
/// The most tags a tag list may give, over every page.
pub const MAX_TAGS: usize = 100_000;
/// The most one page of a tag list may be.
const MAX_TAG_PAGE: usize = 4 << 20;

/// Tokens a client got, by scope (`repository:library/busybox:pull`),
/// shared by every pull through the same client.
pub type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// Reads at most `max` bytes of `response`'s body (then stops reading).
pub async fn read_capped(
    response: reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        let room = max - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= max {
            break;
        }
    }
    Ok(body)
}

/// The first line of `body`, at most [`MAX_ERROR_TEXT`] characters, with
/// control characters escaped: what a caller (and kubelet's pod events)
/// may see of a registry's words.
pub fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut shown: String = line
        .trim()
        .chars()
        .take(MAX_ERROR_TEXT)
        .flat_map(char::escape_default)
        .collect();
    if line.trim().chars().count() > MAX_ERROR_TEXT {
        shown.push('…');
    }
    shown
}

/// What a non-success answer means, its body read up to
/// [`MAX_ERROR_BODY`]: the registry's error envelope (each message cut to
/// its first line), or the status and the body's first line.
pub async fn failure(response: reqwest::Response) -> OciDistributionError {
    let status = response.status();
    let url = response.url().to_string();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError { url };
    }
    let body = match read_capped(response, MAX_ERROR_BODY).await {
        Ok(body) => body,
        Err(err) => return err.into(),
    };
    match serde_json::from_slice::<OciEnvelope>(&body) {
        Ok(mut envelope) if !envelope.errors.is_empty() => {
            envelope.errors.truncate(3);
            for error in &mut envelope.errors {
                error.message = first_line(error.message.as_bytes());
                error.detail = serde_json::Value::Null;
            }
            OciDistributionError::RegistryError { envelope, url }
        }
        _ => OciDistributionError::ServerError {
            code: status.as_u16(),
            url,
            message: first_line(&body),
        },
    }
}

/// Sends the request `build` makes to `source`, with what credentials it
/// has: a token for `oref`'s repository if one was got, else the basic
/// credentials or token given. On a 401 that asks for a token, the token
/// is got (once) and the request sent again.
async fn send(
    source: &Source,
    oref: &oci_client::Reference,
    build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, OciDistributionError> {
    let scope = format!("repository:{}:pull", oref.repository());
    let mut exchanged = false;
    loop {
        let token = source
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&scope)
            .cloned();
        let request = build(&source.http);
        let request = match (&token, &source.auth) {
            (Some(token), _) | (None, RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(user, password)) => request.basic_auth(user, Some(password)),
            (None, RegistryAuth::Anonymous) => request,
        };
        let response = request.send().await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED || exchanged {
            return Ok(response);
        }
        let Some(got) = token_for(source, oref, &response, &scope).await? else {
            return Ok(response); // basic, and the credentials did not do
        };
        source
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(scope.clone(), got);
        exchanged = true;
    }
}

/// The token a push to `oref`'s repository needs (`pull,push`), got
/// through [`token`]'s rules, for oci-client's uploads to carry: the
/// registry's `/v2/` is asked which challenge it makes. `None` when it
/// wants no token (basic credentials, or none).
pub async fn push_token(
    source: &Source,
    oref: &oci_client::Reference,
) -> Result<Option<String>, OciDistributionError> {
    let scheme = if source.plain_http { "http" } else { "https" };
    let url = format!("{scheme}://{}/v2/", oref.resolve_registry());
    let response = source
        .http
        .get(&url)
        .timeout(token::TOKEN_TIMEOUT)
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(None);
    }
    let scope = format!("repository:{}:pull,push", oref.repository());
    token_for(source, oref, &response, &scope).await
}

/// The token for `scope` that `response`'s `WWW-Authenticate: Bearer`
/// challenge asks for, got through [`token::exchange`]; `None` when it
/// asks for none (basic credentials, or no challenge).
async fn token_for(
    source: &Source,
    oref: &oci_client::Reference,
    response: &reqwest::Response,
    scope: &str,
) -> Result<Option<String>, OciDistributionError> {
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(Challenge::parse);
    let Some(Challenge::Bearer { realm, service }) = challenge else {
        return Ok(None);
    };
    let registry = token::Registry {
        host: oref.resolve_registry(),
        plain_http: source.plain_http,
    };
    let got = token::exchange(
        &source.http,
        (&realm, service.as_deref()),
        scope,
        &registry,
        &source.auth,
    )
    .await?;
    Ok(Some(got))
}

/// `scheme://registry/v2/<repository>/<rest>`.
fn url(source: &Source, oref: &oci_client::Reference, rest: &str) -> String {
    let scheme = if source.plain_http { "http" } else { "https" };
    format!(
        "{scheme}://{}/v2/{}/{rest}",
        oref.resolve_registry(),
        oref.repository()
    )
}

/// Fetches the manifest or index `oref` names, reading at most `max`
/// bytes; answers the bytes and their digest (checked against `oref`'s
/// digest when it has one).
pub async fn manifest(
    source: &Source,
    oref: &oci_client::Reference,
    accepted: &[&str],
    max: usize,
) -> Result<(Bytes, String), OciDistributionError> {
    let reference = oref.digest().or(oref.tag()).unwrap_or("latest");
    let url = url(source, oref, &format!("manifests/{reference}"));
    let response = send(source, oref, |http| {
        http.get(&url)
            .header(reqwest::header::ACCEPT, accepted.join(", "))
    })
    .await?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    let too_big = || {
        OciDistributionError::ManifestParsingError(format!("manifest exceeds the {max}-byte limit"))
    };
    if response.content_length().unwrap_or(0) > max as u64 {
        return Err(too_big());
    }
    let body = read_capped(response, max + 1).await?;
    if body.len() > max {
        return Err(too_big());
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    if let Some(wanted) = oref.digest()
        && wanted != digest
    {
        return Err(OciDistributionError::ManifestParsingError(format!(
            "digest mismatch: asked for {wanted}, got {digest}"
        )));
    }
    Ok((Bytes::from(body), digest))
}

/// Asks for the bytes `range` of the blob `digest` of `oref`'s
/// repository (`bytes=N-` to its end, `bytes=N-M` for a part). The body
/// is the caller's to read and bound.
pub async fn blob(
    source: &Source,
    oref: &oci_client::Reference,
    digest: &str,
    range: std::ops::Range<u64>,
) -> Result<Blob, OciDistributionError> {
    let url = url(source, oref, &format!("blobs/{digest}"));
    let asked = match range.end {
        TO_THE_END => format!("bytes={}-", range.start),
        end => format!("bytes={}-{}", range.start, end.saturating_sub(1)),
    };
    let response = send(source, oref, |http| {
        http.get(&url).header(reqwest::header::RANGE, &asked)
    })
    .await?;
    let partial = match response.status() {
        reqwest::StatusCode::OK => false,
        reqwest::StatusCode::PARTIAL_CONTENT => true,
        _ => return Err(failure(response).await),
    };
    Ok(Blob {
        partial,
        body: response
            .bytes_stream()
            .map_err(std::io::Error::other)
            .boxed(),
    })
}

/// The real registry: HTTP, with the limits above.
pub struct Http;

#[tonic::async_trait]
impl Fetcher for Http {
    async fn manifest(
        &self,
        source: &Source,
        oref: &oci_client::Reference,
        accepted: &[&str],
        max: usize,
    ) -> Result<(Bytes, String), OciDistributionError> {
        manifest(source, oref, accepted, max).await
    }

    async fn blob(
        &self,
        source: &Source,
        digest: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Blob, OciDistributionError> {
        blob(source, &source.oref, digest, range).await
    }

    async fn tags(&self, source: &Source) -> Result<Vec<String>, OciDistributionError> {
        tags(source, &source.oref).await
    }
}

/// The tags of `oref`'s repository, in the registry's order, page by
/// page (`n=1000`, following `Link: <…>; rel="next"` on the same
/// registry), at most [`MAX_TAGS`].
pub async fn tags(
    source: &Source,
    oref: &oci_client::Reference,
) -> Result<Vec<String>, OciDistributionError> {
    let scheme = if source.plain_http { "http" } else { "https" };
    let origin = format!("{scheme}://{}", oref.resolve_registry());
    let mut next = Some(format!("/v2/{}/tags/list?n=1000", oref.repository()));
    let mut tags = Vec::new();
    while let Some(path) = next.take() {
        let url = format!("{origin}{path}");
        let response = send(source, oref, |http| http.get(&url)).await?;
        if !response.status().is_success() {
            return Err(failure(response).await);
        }
        next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_page);
        let body = read_capped(response, MAX_TAG_PAGE + 1).await?;
        if body.len() > MAX_TAG_PAGE {
            return Err(OciDistributionError::GenericError(Some(format!(
                "a tag list page is larger than {MAX_TAG_PAGE} bytes"
            ))));
        }
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let page: Page = serde_json::from_slice(&body).map_err(|err| {
            OciDistributionError::GenericError(Some(format!("the tag list is not JSON: {err}")))
        })?;
        let page = page.tags.unwrap_or_default();
        if page.is_empty() {
            break;
        }
        tags.extend(page);
        if tags.len() > MAX_TAGS {
            return Err(OciDistributionError::GenericError(Some(format!(
                "the repository lists more than {MAX_TAGS} tags"
            ))));
        }
    }
    Ok(tags)
}

/// The path of a `Link: </v2/…>; rel="next"` header: on the same registry
/// only (a path, never another host).
fn next_page(link: &str) -> Option<String> {
    let (target, params) = link.split_once(';')?;
    if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
        return None;
    }
    let path = target.trim().strip_prefix('<')?.strip_suffix('>')?;
    path.starts_with("/v2/").then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_error_reaches_the_caller_as_a_short_first_line() {
        assert_eq!(first_line(b"\n  bad gateway\nsecond line"), "bad gateway");
        let long = "x".repeat(10_000);
        let shown = first_line(long.as_bytes());
        assert_eq!(shown.chars().count(), MAX_ERROR_TEXT + 1);
        assert_eq!(first_line(b"a\x1b[31mred"), "a\\u{1b}[31mred");
    }

    #[test]
    fn only_a_next_page_on_the_same_registry_is_followed() {
        assert_eq!(
            next_page(r#"</v2/app/tags/list?n=1000&last=b>; rel="next""#),
            Some("/v2/app/tags/list?n=1000&last=b".into())
        );
        assert_eq!(next_page(r#"<https://elsewhere/v2/x>; rel="next""#), None);
        assert_eq!(next_page(r#"</v2/app/tags/list>; rel="prev""#), None);
    }
}
