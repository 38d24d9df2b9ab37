//! The Docker Engine API's system routes, as far as images go: ping,
//! version, info, disk usage, events; and the answer to every route of
//! containers, networks and volumes.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use imaged_api::v1::{DiskUsageRequest, SubscribeRequest, SystemInfoRequest};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::images::summary;
use super::params::{self, one};
use super::{Api, MAX_VERSION, MIN_VERSION, stream};

/// `GET|HEAD /_ping`: what the CLI negotiates its API version from.
pub async fn ping() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
        ],
        [
            ("OSType", "linux"),
            ("Docker-Experimental", "false"),
            ("Builder-Version", "1"),
        ],
        "OK",
    )
        .into_response()
}

/// `GET /version`.
pub async fn version() -> Json<Value> {
    let version = env!("CARGO_PKG_VERSION");
    let arch = imaged_model::platform::Platform::host().architecture;
    let kernel = kernel_version();
    Json(json!({
        "Platform": { "Name": "imaged" },
        "Components": [{
            "Name": "imaged",
            "Version": version,
            "Details": { "ApiVersion": MAX_VERSION, "MinAPIVersion": MIN_VERSION },
        }],
        "Version": version,
        "ApiVersion": MAX_VERSION,
        "MinAPIVersion": MIN_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch,
        "KernelVersion": kernel,
        "BuildTime": "",
    }))
}

/// The running kernel's release, as Docker's `/version` and `/info` give it.
fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `GET /info`: the image part of `docker info`; there are no containers.
pub async fn info(State(api): State<Api>) -> ApiResult<Json<Value>> {
    let info = api
        .images()
        .system_info(SystemInfoRequest {})
        .await?
        .into_inner();
    let host = imaged_model::platform::Platform::host();
    let status: Vec<[String; 2]> = info
        .layer_store_status
        .into_iter()
        .map(|kv| [kv.key, kv.value])
        .collect();
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(Json(json!({
        "ID": "",
        "Containers": 0,
        "ContainersRunning": 0,
        "ContainersPaused": 0,
        "ContainersStopped": 0,
        "Images": info.images,
        "Driver": info.storage_driver,
        "DriverStatus": status,
        "Plugins": { "Volume": [], "Network": [], "Authorization": null, "Log": [] },
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "OperatingSystem": "imaged",
        "OSType": host.os,
        "Architecture": std::env::consts::ARCH,
        "KernelVersion": kernel_version(),
        "Name": name,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "DockerRootDir": api.root.display().to_string(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "IndexConfigs": {},
            "InsecureRegistryCIDRs": [],
            "Mirrors": [],
        },
        "Warnings": [],
    })))
}

/// `GET /system/df`: the images part of `docker system df`.
pub async fn disk_usage(State(api): State<Api>) -> ApiResult<Json<Value>> {
    let usage = api
        .images()
        .disk_usage(DiskUsageRequest {})
        .await?
        .into_inner();
    let images: Vec<Value> = usage
        .images
        .into_iter()
        .map(|image| summary(image, true))
        .collect();
    Ok(Json(json!({
        "LayersSize": usage.layers_size,
        "Images": images,
        "Containers": [],
        "Volumes": [],
        "BuildCache": [],
    })))
}

/// `GET /events`: `docker events`, streamed until `until` or the client
/// goes away.
pub async fn events(
    State(api): State<Api>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let request = SubscribeRequest {
        filters: params::filters(one(&q, "filters"))?,
        since: one(&q, "since").unwrap_or_default().to_string(),
        until: one(&q, "until").unwrap_or_default().to_string(),
    };
    // A bad filter or time fails the call itself, before any event.
    let answers = api.events().subscribe(request).await?.into_inner();
    Ok(stream::json_lines(answers, |event| {
        vec![imaged_common::events::docker_message(&event)]
    }))
}

/// Every route imaged does not serve: containers, networks, volumes,
/// swarm, build, plugins.
pub async fn not_images(uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_IMPLEMENTED,
        message: format!(
            "imaged serves images only: {} is not an image endpoint of the Docker Engine API",
            uri.path()
        ),
    }
}
