//! The Docker Engine API's image routes, each onto its `imaged.v1.Images`
//! call: list, inspect, history, tag, remove, prune, create (pull and
//! import), push, get (save) and load.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use imaged_api::v1::delete_item::Item;
use imaged_api::v1::*;
use imaged_model::reference::Reference;
use serde_json::{Value, json};

use super::Api;
use super::error::{ApiError, ApiResult};
use super::params::{self, boolean, one};
use super::stream::{self, Answers, started};

/// The query string, every pair in order.
type Params = Query<Vec<(String, String)>>;

/// Largest chunk of a request body sent in one gRPC message.
const CHUNK: usize = 1 << 20;

/// `GET /images/json`: `docker images`.
pub async fn list(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Vec<Value>>> {
    let request = ListImagesRequest {
        filters: params::filters(one(&q, "filters"))?,
        all: boolean(one(&q, "all")),
        shared_size: boolean(one(&q, "shared-size")),
    };
    let images = api.images().list_images(request).await?.into_inner();
    Ok(Json(
        images
            .images
            .into_iter()
            .map(|i| summary(i, false))
            .collect(),
    ))
}

/// Docker's `image.Summary`. `Containers` is counted only for
/// `/system/df`; the list answers -1 ("N/A"), as Docker's does.
pub fn summary(image: ImageSummary, containers: bool) -> Value {
    json!({
        "Containers": if containers { image.containers } else { -1 },
        "Created": image.created,
        "Id": image.id,
        "Labels": labels(image.labels),
        "ParentId": image.parent_id,
        "RepoDigests": image.repo_digests,
        "RepoTags": image.repo_tags,
        "SharedSize": image.shared_size,
        "Size": image.size,
    })
}

/// Labels as Go encodes a map: `null` when there are none.
fn labels(labels: std::collections::HashMap<String, String>) -> Value {
    if labels.is_empty() {
        Value::Null
    } else {
        json!(labels)
    }
}

/// `GET /images/{name}/…`: inspect (`json`), history, save (`get`).
pub async fn get_named(
    State(api): State<Api>,
    Path(rest): Path<String>,
    Query(q): Params,
) -> ApiResult<Response> {
    if let Some(name) = rest.strip_suffix("/json") {
        let request = InspectImageRequest {
            image: name.to_string(),
            platform: params::platform(one(&q, "platform"))?,
        };
        let image = api.images().inspect_image(request).await?.into_inner();
        return Ok(Json(inspect(image)).into_response());
    }
    if let Some(name) = rest.strip_suffix("/history") {
        let request = ImageHistoryRequest {
            image: name.to_string(),
            platform: params::platform(one(&q, "platform"))?,
        };
        let history = api.images().image_history(request).await?.into_inner();
        let items: Vec<Value> = history
            .items
            .into_iter()
            .map(|item| {
                json!({
                    "Comment": item.comment,
                    "Created": item.created,
                    "CreatedBy": item.created_by,
                    "Id": item.id,
                    "Size": item.size,
                    "Tags": if item.tags.is_empty() { Value::Null } else { json!(item.tags) },
                })
            })
            .collect();
        return Ok(Json(items).into_response());
    }
    if let Some(name) = rest.strip_suffix("/get") {
        return save(api, vec![name.to_string()], &q).await;
    }
    Err(not_found())
}

/// Docker's `image.InspectResponse` from imaged's record; `Config` is the
/// stored config's own `config` object, as Docker reads it.
fn inspect(image: ImageInspect) -> Value {
    let config = serde_json::from_slice::<Value>(&image.config_json)
        .ok()
        .and_then(|mut c| c.get_mut("config").map(Value::take))
        .unwrap_or(Value::Null);
    let graph_driver = image
        .graph_driver
        .map(|driver| json!({ "Data": driver.data, "Name": driver.name }));
    let root_fs = image.root_fs.unwrap_or_default();
    let mut out = json!({
        "Id": image.id,
        "RepoTags": image.repo_tags,
        "RepoDigests": image.repo_digests,
        "Parent": image.parent,
        "Comment": image.comment,
        "DockerVersion": image.docker_version,
        "Author": image.author,
        "Config": config,
        "Architecture": image.architecture,
        "Os": image.os,
        "Size": image.size,
        "GraphDriver": graph_driver,
        "RootFS": { "Type": root_fs.r#type, "Layers": root_fs.layers },
        "Metadata": { "LastTagTime": image.last_tag_time },
    });
    // Docker leaves these out when empty (`omitempty`).
    for (key, value) in [
        ("Created", image.created),
        ("Variant", image.variant),
        ("OsVersion", image.os_version),
    ] {
        if !value.is_empty() {
            out[key] = Value::String(value);
        }
    }
    out
}

/// `POST /images/{name}/…`: tag, push.
pub async fn post_named(
    State(api): State<Api>,
    Path(rest): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(name) = rest.strip_suffix("/tag") {
        let repo = one(&q, "repo").unwrap_or_default();
        if repo.is_empty() {
            return Err(ApiError::bad_request("repo parameter is required"));
        }
        let target = match one(&q, "tag").filter(|t| !t.is_empty()) {
            Some(tag) => format!("{repo}:{tag}"),
            None => repo.to_string(),
        };
        api.images()
            .tag_image(TagImageRequest {
                source: name.to_string(),
                target,
            })
            .await?;
        return Ok(StatusCode::CREATED.into_response());
    }
    if let Some(name) = rest.strip_suffix("/push") {
        let (reference, all_tags) = with_tag(name, one(&q, "tag"))?;
        let request = PushImageRequest {
            reference,
            platform: params::platform(one(&q, "platform"))?,
            auth: params::registry_auth(&headers)?,
            all_tags,
        };
        let answers: Answers<_> = Box::pin(api.images().push_image(request).await?.into_inner());
        return Ok(stream::json_lines(started(answers).await?, push_lines));
    }
    Err(not_found())
}

/// The reference `name` and the `tag` parameter make, as Moby's routes
/// read them: a tag that is a digest makes `name@digest`; no tag on a
/// name without one means every tag (pull -a, push --all-tags).
fn with_tag(name: &str, tag: Option<&str>) -> ApiResult<(String, bool)> {
    match tag.filter(|t| !t.is_empty()) {
        Some(digest) if digest.contains(':') => Ok((format!("{name}@{digest}"), false)),
        Some(tag) => Ok((format!("{name}:{tag}"), false)),
        None => {
            let parsed =
                Reference::parse(name).map_err(|err| ApiError::bad_request(err.to_string()))?;
            let named_only = parsed.tag().is_none() && parsed.digest().is_none();
            Ok((name.to_string(), named_only))
        }
    }
}

fn push_lines(p: PushImageProgress) -> Vec<Value> {
    let mut lines = vec![if p.status == "Pushing" && p.total > 0 {
        stream::progress(&p.id, &p.status, p.current, p.total)
    } else {
        stream::status(&p.id, &p.status)
    }];
    if !p.digest.is_empty() {
        lines.push(json!({
            "progressDetail": {},
            "aux": { "Tag": p.tag, "Digest": p.digest, "Size": p.size },
        }));
    }
    lines
}

/// `DELETE /images/{name}`: `docker rmi`.
pub async fn remove(
    State(api): State<Api>,
    Path(name): Path<String>,
    Query(q): Params,
) -> ApiResult<Json<Vec<Value>>> {
    let request = RemoveImageRequest {
        image: name,
        force: boolean(one(&q, "force")),
        prune_children: Some(!boolean(one(&q, "noprune"))),
    };
    let removed = api.images().remove_image(request).await?.into_inner();
    Ok(Json(delete_items(removed.items)))
}

/// Docker's `DeleteResponse` lines.
fn delete_items(items: Vec<DeleteItem>) -> Vec<Value> {
    items
        .into_iter()
        .filter_map(|item| match item.item? {
            Item::Untagged(r) => Some(json!({ "Untagged": r })),
            Item::Deleted(id) => Some(json!({ "Deleted": id })),
        })
        .collect()
}

/// `POST /images/prune`: `docker image prune`.
pub async fn prune(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Value>> {
    let request = PruneImagesRequest {
        filters: params::filters(one(&q, "filters"))?,
    };
    let pruned = api.images().prune_images(request).await?.into_inner();
    let deleted = delete_items(pruned.deleted);
    Ok(Json(json!({
        "ImagesDeleted": if deleted.is_empty() { Value::Null } else { json!(deleted) },
        "SpaceReclaimed": pruned.space_reclaimed,
    })))
}

/// `POST /images/create`: `docker pull` (fromImage) or `docker import`
/// (fromSrc=-, the tar in the body).
pub async fn create(
    State(api): State<Api>,
    Query(q): Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let platform = params::platform(one(&q, "platform"))?;
    if let Some(image) = one(&q, "fromImage").filter(|i| !i.is_empty()) {
        let (reference, all_tags) = with_tag(image, one(&q, "tag"))?;
        let request = PullImageRequest {
            reference,
            platform,
            auth: params::registry_auth(&headers)?,
            all_tags,
            policy_namespace: String::new(),
        };
        let answers: Answers<_> = Box::pin(api.images().pull_image(request).await?.into_inner());
        return Ok(stream::json_lines(started(answers).await?, pull_lines));
    }
    match one(&q, "fromSrc") {
        Some("-") => {}
        Some("") | None => {
            return Err(ApiError::bad_request("fromImage or fromSrc is required"));
        }
        Some(url) => {
            return Err(ApiError::bad_request(format!(
                "imaged imports from the request body only (fromSrc=-), not from {url}"
            )));
        }
    }
    let reference = match (
        one(&q, "repo").unwrap_or_default(),
        one(&q, "tag").unwrap_or_default(),
    ) {
        ("", _) => String::new(),
        (repo, "") => repo.to_string(),
        (repo, tag) => format!("{repo}:{tag}"),
    };
    let first = ImportImageRequest {
        reference,
        platform,
        // Moby's router: "Imported from <fromSrc>" unless a message is
        // given; only `-` (the body) is taken here.
        message: one(&q, "message")
            .filter(|m| !m.is_empty())
            .unwrap_or("Imported from -")
            .to_string(),
        changes: params::all(&q, "changes"),
        chunk: Vec::new(),
    };
    let chunks = body_chunks(body).map(|chunk| ImportImageRequest {
        chunk,
        ..Default::default()
    });
    let imported = api
        .images()
        .import_image(futures::stream::iter([first]).chain(chunks))
        .await?
        .into_inner();
    Ok(stream::json_lines(
        futures::stream::iter([Ok(imported)]),
        |imported: ImportImageResponse| vec![json!({ "status": imported.id })],
    ))
}

fn pull_lines(p: PullImageProgress) -> Vec<Value> {
    let line = if matches!(p.status.as_str(), "Downloading" | "Extracting") && p.total > 0 {
        stream::progress(&p.id, &p.status, p.current, p.total)
    } else {
        stream::status(&p.id, &p.status)
    };
    vec![line]
}

/// A request body as chunks of at most [`CHUNK`] bytes, as they arrive
/// (bounded memory: one frame at a time). A body that fails to arrive
/// ends early, and the tar reader then reports it truncated.
fn body_chunks(body: Body) -> impl Stream<Item = Vec<u8>> + Send + 'static {
    body.into_data_stream()
        .take_while(|frame| futures::future::ready(frame.is_ok()))
        .filter_map(|frame| futures::future::ready(frame.ok()))
        .flat_map(|frame| {
            let parts: Vec<Vec<u8>> = frame.chunks(CHUNK).map(<[u8]>::to_vec).collect();
            futures::stream::iter(parts)
        })
}

/// `GET /images/get?names=…`: `docker save`.
pub async fn save_many(State(api): State<Api>, Query(q): Params) -> ApiResult<Response> {
    let names = params::all(&q, "names");
    save(api, names, &q).await
}

async fn save(api: Api, names: Vec<String>, q: &[(String, String)]) -> ApiResult<Response> {
    let request = ExportImagesRequest {
        names,
        platform: params::platform(one(q, "platform"))?,
    };
    let answers: Answers<_> = Box::pin(api.images().export_images(request).await?.into_inner());
    Ok(stream::bytes(
        started(answers).await?,
        "application/x-tar",
        |chunk: ExportImagesChunk| chunk.chunk,
    ))
}

/// `POST /images/load`: `docker load`, the tar in the body.
pub async fn load(State(api): State<Api>, Query(q): Params, body: Body) -> ApiResult<Response> {
    let first = LoadImagesRequest {
        chunk: Vec::new(),
        quiet: boolean(one(&q, "quiet")),
        platform: params::platform(one(&q, "platform"))?,
    };
    let chunks = body_chunks(body).map(|chunk| LoadImagesRequest {
        chunk,
        ..Default::default()
    });
    let answers: Answers<_> = Box::pin(
        api.images()
            .load_images(futures::stream::iter([first]).chain(chunks))
            .await?
            .into_inner(),
    );
    Ok(stream::json_lines(answers, |line: LoadImagesResponse| {
        vec![json!({ "stream": format!("{}\n", line.message) })]
    }))
}

/// Docker's answer to a route it does not have.
pub fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "page not found".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_from_name_and_tag_as_moby_reads_them() {
        let read = |name: &str, tag: Option<&str>| with_tag(name, tag).unwrap();
        assert_eq!(
            read("busybox", Some("1.36")),
            ("busybox:1.36".into(), false)
        );
        assert_eq!(
            read("busybox", Some("sha256:abc")),
            ("busybox@sha256:abc".into(), false)
        );
        // No tag on a bare name: every tag (pull -a, push --all-tags).
        assert_eq!(read("busybox", None), ("busybox".into(), true));
        assert_eq!(read("busybox", Some("")), ("busybox".into(), true));
        assert_eq!(read("busybox:1.36", None), ("busybox:1.36".into(), false));
        assert!(with_tag("Not A Name", None).is_err());
    }

    #[test]
    fn inspect_takes_config_from_the_stored_json_and_omits_empty_fields() {
        let record = ImageInspect {
            id: "sha256:1".into(),
            config_json: br#"{"config":{"Cmd":["/bin/sh"],"User":"1000"},"os":"linux"}"#.to_vec(),
            created: String::new(),
            variant: "v8".into(),
            ..Default::default()
        };
        let json = inspect(record);
        assert_eq!(json["Config"]["Cmd"][0], "/bin/sh");
        assert_eq!(json["Config"]["User"], "1000");
        assert_eq!(json["Variant"], "v8");
        assert!(json.get("Created").is_none());
        assert!(json.get("OsVersion").is_none());
        assert_eq!(json["RepoTags"], serde_json::json!([]));
        // A config that is not JSON gives a null Config, not a failure.
        let broken = inspect(ImageInspect {
            config_json: b"{".to_vec(),
            ..Default::default()
        });
        assert!(broken["Config"].is_null());
    }

    #[test]
    fn list_rows_count_containers_only_for_disk_usage() {
        let image = ImageSummary {
            id: "sha256:1".into(),
            containers: 2,
            ..Default::default()
        };
        assert_eq!(summary(image.clone(), false)["Containers"], -1);
        assert_eq!(summary(image, true)["Containers"], 2);
    }
}
