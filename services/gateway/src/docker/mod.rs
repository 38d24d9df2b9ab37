//! The Docker Engine API's image endpoints, over HTTP/1.1 on
//! `<root>/run/docker.sock`, so that the docker CLI, docker-py and the
//! other Docker SDKs drive imaged as they drive dockerd (as Podman's
//! Docker-compatible service does).
//!
//! Each route is a translation onto one `imaged.v1` call, made through a
//! generated client over an in-process channel to the gateway's own
//! services: no image logic lives here. Paths with and without a
//! `/vX.Y` prefix are served alike, for API versions [`MIN_VERSION`] to
//! [`MAX_VERSION`].

mod auth;
mod error;
mod images;
mod params;
mod stream;
mod system;

use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::TokioIo;
use imaged_api::v1::events_client::EventsClient;
use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::registries_client::RegistriesClient;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use error::ApiError;

/// The oldest Docker Engine API version served.
pub const MIN_VERSION: &str = "1.41";
/// The newest: the docker CLI 28's.
pub const MAX_VERSION: &str = "1.50";

/// What the handlers share: clients of the gateway's own `imaged.v1`.
#[derive(Clone)]
pub struct Api {
    channel: Channel,
    /// The imaged root, which `docker info` shows as its root dir.
    root: PathBuf,
}

impl Api {
    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
            .max_decoding_message_size(crate::MAX_ANSWER)
            .max_encoding_message_size(crate::MAX_REQUEST)
    }

    fn registries(&self) -> RegistriesClient<Channel> {
        RegistriesClient::new(self.channel.clone())
    }

    fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
}

/// A channel to `routes` served in this process: each connection is an
/// in-memory pipe, so a Docker request costs no socket.
pub fn in_process(routes: tonic::service::Routes) -> Channel {
    let (connections, incoming) =
        tokio::sync::mpsc::channel::<Result<tokio::io::DuplexStream, std::io::Error>>(4);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(ReceiverStream::new(incoming))
            .await;
        if let Err(err) = served {
            tracing::error!(%err, "the Docker API's in-process channel stopped");
        }
    });
    Endpoint::from_static("http://in-process.invalid").connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let connections = connections.clone();
            async move {
                let (client, server) = tokio::io::duplex(256 << 10);
                connections
                    .send(Ok(server))
                    .await
                    .map_err(|_| std::io::Error::other("the gateway is stopping"))?;
                Ok::<_, std::io::Error>(TokioIo::new(client))
            }
        }),
    )
}

/// The routes, under the version handling.
fn router(api: Api) -> Router {
    let routes = Router::new()
        .route("/_ping", get(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/events", get(system::events))
        .route("/system/df", get(system::disk_usage))
        .route("/auth", post(auth::login))
        .route("/images/json", get(images::list))
        .route("/images/create", post(images::create))
        .route("/images/prune", post(images::prune))
        .route("/images/get", get(images::save_many))
        .route("/images/load", post(images::load))
        .route(
            "/images/{*rest}",
            get(images::get_named)
                .post(images::post_named)
                .delete(images::remove),
        )
        .route("/images/search", get(system::not_images))
        .fallback(system::not_images)
        .with_state(api);
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(versioned))
}

/// Strips a `/vX.Y` prefix (refusing versions out of range, with Docker's
/// words) and adds `API-Version` and `Server` to every answer.
async fn versioned(mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if let Some(rest) = path.strip_prefix("/v")
        && let Some((version, tail)) = rest.split_once('/')
        && version.split_once('.').is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && (major.bytes().chain(minor.bytes())).all(|b| b.is_ascii_digit())
        })
    {
        if let Some(refused) = out_of_range(version) {
            return refused.into_response();
        }
        let stripped = match request.uri().query() {
            Some(query) => format!("/{tail}?{query}"),
            None => format!("/{tail}"),
        };
        match stripped.parse::<Uri>() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => return ApiError::bad_request("invalid request path").into_response(),
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("API-Version", HeaderValue::from_static(MAX_VERSION));
    headers.insert(
        "Server",
        HeaderValue::from_static(concat!("imaged/", env!("CARGO_PKG_VERSION"), " (linux)")),
    );
    response
}

/// Docker's refusal of a client version it does not serve.
fn out_of_range(version: &str) -> Option<ApiError> {
    let parse = |v: &str| -> (u32, u32) {
        let (major, minor) = v.split_once('.').unwrap_or((v, "0"));
        (major.parse().unwrap_or(0), minor.parse().unwrap_or(0))
    };
    let asked = parse(version);
    if asked < parse(MIN_VERSION) {
        return Some(ApiError::bad_request(format!(
            "client version {version} is too old. Minimum supported API version is {MIN_VERSION}, please upgrade your client to a newer version"
        )));
    }
    if asked > parse(MAX_VERSION) {
        return Some(ApiError::bad_request(format!(
            "client version {version} is too new. Maximum supported API version is {MAX_VERSION}"
        )));
    }
    None
}

/// Binds the Docker Engine API's Unix socket `path` (mode 0660, group
/// `gid` when given). Bound before the gRPC listener, so that the socket
/// is there once the gateway answers health checks.
pub fn bind(path: &Path, gid: Option<u32>) -> anyhow::Result<tokio::net::UnixListener> {
    let listener = imaged_common::server::bind_unix(path, gid)?;
    tracing::info!(socket = %path.display(), "Docker Engine API serving");
    Ok(listener)
}

/// Serves the Docker Engine API on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::UnixListener,
    root: PathBuf,
    channel: Channel,
) -> anyhow::Result<()> {
    let listener = imaged_common::http::Listener::Unix(listener);
    let router = router(Api { channel, root });
    imaged_common::http::serve(listener, router, imaged_common::http::Limits::default()).await;
    anyhow::bail!("the Docker Engine API stopped")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_out_of_range_are_refused_as_docker_does() {
        assert!(out_of_range("1.41").is_none());
        assert!(out_of_range("1.50").is_none());
        assert!(out_of_range("1.45").is_none());
        let old = out_of_range("1.40").unwrap();
        assert!(old.message.contains("too old"), "{}", old.message);
        let new = out_of_range("1.51").unwrap();
        assert!(new.message.contains("too new"), "{}", new.message);
        assert!(out_of_range("2.0").is_some());
    }
}
