//! The content store, served read-only over the OCI distribution API
//! (`--serve-content ADDR`), so that other nodes can list this one as a
//! registry mirror (`hosts.toml`, capability `pull`) and fetch from it
//! what it already pulled, as Spegel does.
//!
//! Only `GET` and `HEAD` of `/v2/`, `/v2/<name>/manifests/<digest>` and
//! `/v2/<name>/blobs/<digest>`: no tags, no listing, no push. A blob is
//! served only by digest, only when an image this node holds needs it (a
//! manifest or config some image owns, or the blob a stored layer came
//! from), and only when it is public under the repository asked for
//! (`<name>`, the upstream's name: see [`crate::public`]): fetched by
//! this node without credentials from that repository. A blob pulled with
//! credentials, or that exists only here, is a 404 like a blob this node
//! never had, except to a fleet peer: with `--serve-content-tls-*` the
//! listener speaks TLS, and a client whose certificate the fleet's CA
//! signed may have every blob this node holds. Whoever fetches checks
//! what is served against its digest. A blob is served whole or by one
//! byte range (`Range: bytes=N-` or `bytes=N-M`, answered 206).
//!
//! With a fleet directory, a blob this node is fetching for the fleet (it
//! holds the claim) is served while it arrives, to a fleet peer, or to anyone when it is fetched without
//! credentials from the repository asked for ([`crate::fleet::in_flight`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use imaged_common::http::Verified;
use imaged_model::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::fleet::in_flight::InFlight;
use crate::store::content::ContentStore;
use crate::store::layers::LayerStore;

/// Largest manifest served (read whole to find its media type).
const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Clone)]
struct Served {
    content: ContentStore,
    layers: Arc<LayerStore>,
    /// Requests whose check runs on a blocking thread at once; the others
    /// wait their turn, so a crowd cannot take the blocking pool.
    checking: Arc<tokio::sync::Semaphore>,
    /// Blobs being fetched for the fleet, and how long their readers wait
    /// for the next bytes.
    in_flight: Option<(InFlight, std::time::Duration)>,
}

/// Checks (disk lookups) run at once, at most.
const CHECKS_AT_ONCE: usize = 8;

impl Served {
    /// Whether `digest` is a blob of an image this node holds that the
    /// client may have under `repository`: a fleet peer ([`Verified`])
    /// anything, anyone else what is public there.
    fn holds(&self, digest: &Digest, repository: &str, verified: Verified) -> bool {
        (verified.0 || self.content.public().allows(digest, repository))
            && self.content.contains(digest)
            && (self
                .layers
                .all()
                .iter()
                .any(|layer| layer.blobs().any(|b| b == digest))
                || self.content.is_owned(digest).unwrap_or(false))
    }
}

/// Serves the content store on `addr` until the task is dropped; with
/// `in_flight`, also the blobs being fetched for the fleet, whose readers
/// give up after the stall timeout without new bytes.
pub async fn serve(
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    content: ContentStore,
    layers: Arc<LayerStore>,
    in_flight: Option<(InFlight, std::time::Duration)>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve content on {addr}"))?;
    tracing::info!(%addr, "content served read-only over the OCI distribution API");
    let router = Router::new()
        .route("/v2/", get(ping))
        .route("/v2/{*rest}", get(fetch))
        .fallback(|| async { unknown("NAME_UNKNOWN", "not served here") })
        .with_state(Served {
            content,
            layers,
            checking: Arc::new(tokio::sync::Semaphore::new(CHECKS_AT_ONCE)),
            in_flight,
        });
    let listener = match tls {
        Some(acceptor) => imaged_common::http::Listener::Tls(listener, acceptor),
        None => imaged_common::http::Listener::Tcp(listener),
    };
    imaged_common::http::serve(listener, router, imaged_common::http::Limits::default()).await;
    anyhow::bail!("serving content stopped")
}

/// `GET /v2/`: the API version check every registry client makes.
async fn ping() -> Response {
    (
        [("Docker-Distribution-API-Version", "registry/2.0")],
        axum::Json(serde_json::json!({})),
    )
        .into_response()
}

/// `GET`/`HEAD /v2/<name>/(manifests|blobs)/<digest>`.
async fn fetch(
    State(served): State<Served>,
    verified: Option<Extension<Verified>>,
    method: Method,
    headers: axum::http::HeaderMap,
    Path(rest): Path<String>,
) -> Response {
    let verified = verified.map_or(Verified(false), |Extension(v)| v);
    let Some((name_and_kind, reference)) = rest.rsplit_once('/') else {
        return unknown("NAME_UNKNOWN", "not served here");
    };
    let (kind, code, repository) =
        if let Some(repository) = name_and_kind.strip_suffix("/manifests") {
            ("manifest", "MANIFEST_UNKNOWN", repository.to_string())
        } else if let Some(repository) = name_and_kind.strip_suffix("/blobs") {
            ("blob", "BLOB_UNKNOWN", repository.to_string())
        } else {
            return unknown("NAME_UNKNOWN", "not served here");
        };
    // By digest only: this node answers no tags.
    let Ok(digest) = reference.parse::<Digest>() else {
        return unknown(code, "only digests are served here");
    };
    let holds = {
        let Ok(_turn) = served.checking.acquire().await else {
            return unknown(code, &format!("{kind} unknown"));
        };
        let served = served.clone();
        let digest = digest.clone();
        let repository = repository.clone();
        tokio::task::spawn_blocking(move || served.holds(&digest, &repository, verified))
            .await
            .unwrap_or(false)
    };
    if !holds {
        if kind == "blob"
            && let Some(response) =
                in_flight(&served, &digest, &repository, verified, &method, &headers)
        {
            return response;
        }
        return unknown(code, &format!("{kind} unknown"));
    }
    let path = served.content.path(&digest);
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return unknown(code, &format!("{kind} unknown"));
    };
    let Ok(meta) = file.metadata().await else {
        return unknown(code, &format!("{kind} unknown"));
    };
    let media_type = if kind == "manifest" {
        if meta.len() > MAX_MANIFEST {
            return unknown(code, "manifest too large");
        }
        match tokio::fs::read(&path).await {
            Ok(bytes) => manifest_media_type(&bytes),
            Err(_) => return unknown(code, "manifest unknown"),
        }
    } else {
        "application/octet-stream".to_string()
    };
    let size = meta.len();
    // A blob by range (a resumed download, or one part of a layer read
    // from several peers); a manifest always whole.
    let range = if kind == "blob" {
        match asked_range(&headers, size) {
            Ok(range) => range,
            Err(refused) => return refused,
        }
    } else {
        None
    };
    let (start, len) = range
        .as_ref()
        .map_or((0, size), |r| (*r.start(), r.end() - r.start() + 1));
    let response = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        if kind == "blob" {
            crate::metrics::served(len);
        }
        let mut file = file;
        if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return unknown(code, &format!("{kind} unknown"));
        }
        Response::new(Body::from_stream(
            tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 << 10),
        ))
    };
    described(response, &digest, &media_type, size, range)
}

/// `response` with a blob's headers: its length (of the range, if one was
/// asked, then 206 and its Content-Range), type and digest.
fn described(
    mut response: Response,
    digest: &Digest,
    media_type: &str,
    size: u64,
    range: Option<std::ops::RangeInclusive<u64>>,
) -> Response {
    let len = range.as_ref().map_or(size, |r| r.end() - r.start() + 1);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(value) = HeaderValue::from_str(media_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
        headers.insert("Docker-Content-Digest", value);
    }
    if let Some(range) = range {
        let value = format!("bytes {}-{}/{size}", range.start(), range.end());
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(header::CONTENT_RANGE, value);
        }
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    response
}

/// The one byte range a request asks of a `size`-byte blob (`Range:
/// bytes=N-` or `bytes=N-M`): `None` for the whole blob, when no range
/// is asked or one this server ignores, as HTTP lets it (several ranges,
/// a malformed header); a 416 for a range past the end.
#[allow(clippy::result_large_err)]
fn asked_range(
    headers: &axum::http::HeaderMap,
    size: u64,
) -> Result<Option<std::ops::RangeInclusive<u64>>, Response> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Ok(parsed) = http_range_header::parse_range_header(value) else {
        return Ok(None);
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => Ok(ranges.into_iter().next()),
        Ok(_) => Ok(None),
        Err(http_range_header::RangeUnsatisfiableError::Unsatisfiable) => {
            let mut refused = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                refused.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            Err(refused)
        }
        Err(_) => Ok(None),
    }
}

/// A blob being fetched for the fleet, streamed as it arrives from the
/// offset asked (`Range: bytes=N-`, answered 206); `None` when it is not
/// in flight here or not the client's to have.
fn in_flight(
    served: &Served,
    digest: &Digest,
    repository: &str,
    verified: Verified,
    method: &Method,
    headers: &axum::http::HeaderMap,
) -> Option<Response> {
    let (in_flight, stall) = served.in_flight.as_ref()?;
    let flight = in_flight.get(digest)?;
    if !verified.0 && flight.public_in.as_deref() != Some(repository) {
        return None;
    }
    let size = flight.size;
    let range = match asked_range(headers, size) {
        Ok(range) => range,
        Err(refused) => return Some(refused),
    };
    let (start, end) = range
        .as_ref()
        .map_or((0, size), |r| (*r.start(), r.end() + 1));
    let response = if *method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        crate::metrics::served(end - start);
        Response::new(Body::from_stream(in_flight.stream(
            digest,
            flight,
            start..end,
            *stall,
        )))
    };
    Some(described(
        response,
        digest,
        "application/octet-stream",
        size,
        range,
    ))
}

/// A manifest's media type: its own `mediaType`, else what its shape says.
fn manifest_media_type(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(media_type),
            ..
        }) => media_type,
        Ok(Probe {
            manifests: Some(_), ..
        }) => imaged_model::media_type::OCI_INDEX.to_string(),
        _ => imaged_model::media_type::OCI_MANIFEST.to_string(),
    }
}

/// The distribution API's 404.
fn unknown(code: &str, message: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "errors": [{ "code": code, "message": message }]
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_is_served_as_its_own_media_type_or_its_shape() {
        assert_eq!(
            manifest_media_type(
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#),
            imaged_model::media_type::OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"layers":[]}"#),
            imaged_model::media_type::OCI_MANIFEST
        );
        assert_eq!(
            manifest_media_type(b"not json"),
            imaged_model::media_type::OCI_MANIFEST
        );
    }

    #[test]
    fn a_blob_is_served_whole_or_by_one_range() {
        let asked = |range: Option<&str>| {
            let mut headers = axum::http::HeaderMap::new();
            if let Some(range) = range {
                headers.insert(header::RANGE, HeaderValue::from_str(range).unwrap());
            }
            asked_range(&headers, 10).map_err(|refused| refused.status())
        };
        assert_eq!(asked(None), Ok(None));
        assert_eq!(asked(Some("bytes=4-")), Ok(Some(4..=9)));
        assert_eq!(asked(Some("bytes=2-5")), Ok(Some(2..=5)));
        assert_eq!(asked(Some("bytes=2-50")), Ok(Some(2..=9)));
        // Several ranges, or a malformed header: the whole blob.
        assert_eq!(asked(Some("bytes=0-1,4-5")), Ok(None));
        assert_eq!(asked(Some("lines=1-2")), Ok(None));
        // Past the end: 416.
        assert_eq!(
            asked(Some("bytes=10-")),
            Err(StatusCode::RANGE_NOT_SATISFIABLE)
        );
    }
}
