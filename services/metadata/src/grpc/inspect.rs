//! ImageInspect as the API shows it: the stored image, its references
//! and where its layers are.

use imaged_api::internal::v1::{InspectedImage, StoredReference};
use imaged_api::timestamp;
use imaged_api::v1::{ContainerConfig, GraphDriver, HealthConfig, ImageInspect, RootFs};
use imaged_model::image_config::format_time;
use serde_json::Value;

use crate::inspect::{Layout, graph_driver};
use crate::store::{Image, Index};

/// The zero time Docker shows for an image never tagged with TagImage.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Every image's InspectImage answer (encoded, no platform asked) and
/// every reference: what the gateway's read model answers from.
pub fn inspect_all(
    index: &Index,
    layout: Option<&Layout>,
) -> (Vec<InspectedImage>, Vec<StoredReference>) {
    let mut images = Vec::with_capacity(index.image_count());
    for image in index.images() {
        images.push(InspectedImage {
            id: image.id.to_string(),
            inspect: prost::Message::encode_to_vec(&inspect_image(index, image, layout)).into(),
        });
    }
    let references = index
        .refs()
        .map(|(reference, id)| StoredReference {
            key: reference.to_string(),
            id: id.to_string(),
        })
        .collect();
    (images, references)
}

/// The InspectImage answer for `image` (`docker image inspect`).
pub fn inspect_image(index: &Index, image: &Image, layout: Option<&Layout>) -> ImageInspect {
    let id = image.id.to_string();
    let (digests, tags): (Vec<_>, Vec<_>) = index
        .refs_of(&id)
        .into_iter()
        .partition(|r| r.digest().is_some());
    let config = &image.config;
    let comment = if config.comment.is_empty() {
        config
            .history
            .last()
            .map(|h| h.comment.clone())
            .unwrap_or_default()
    } else {
        config.comment.clone()
    };
    ImageInspect {
        content_size: image.meta.content_size,
        repo_tags: tags.iter().map(|r| r.familiar()).collect(),
        repo_digests: digests.iter().map(|r| r.familiar()).collect(),
        parent: image.meta.parent.clone().unwrap_or_default(),
        comment,
        created: config
            .created
            .as_ref()
            .map(|(t, _)| format_time(*t))
            .unwrap_or_default(),
        docker_version: config.docker_version.clone(),
        author: config.author.clone(),
        config: Some(container_config(&config.container_config)),
        architecture: config.platform.architecture.clone(),
        variant: config.platform.variant.clone(),
        os: config.os(),
        os_version: config.os_version.clone(),
        size: image.size(),
        root_fs: Some(RootFs {
            r#type: config.rootfs_type.clone(),
            layers: config.diff_ids.iter().map(|d| d.to_string()).collect(),
        }),
        last_tag_time: image
            .meta
            .last_tag_time
            .map(format_time)
            .unwrap_or_else(|| ZERO_TIME.to_string()),
        config_json: image.config_bytes.clone(),
        created_at: config.created.as_ref().map(|(t, _)| timestamp(*t)),
        last_tagged_at: image.meta.last_tag_time.map(timestamp),
        graph_driver: layout.map(|l| GraphDriver {
            name: l.driver.clone(),
            data: graph_driver(l, &config.chain_ids),
        }),
        id,
    }
}

fn container_config(value: &Value) -> ContainerConfig {
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let list = |key: &str| -> Vec<String> {
        value
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let keys = |key: &str| -> Vec<String> {
        value
            .get(key)
            .and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let health = value.get("Healthcheck").filter(|h| h.is_object()).map(|h| {
        let n = |k: &str| h.get(k).and_then(Value::as_i64).unwrap_or(0);
        HealthConfig {
            test: h
                .get("Test")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            interval: n("Interval"),
            timeout: n("Timeout"),
            start_period: n("StartPeriod"),
            start_interval: n("StartInterval"),
            retries: n("Retries"),
        }
    });
    ContainerConfig {
        user: text("User"),
        env: list("Env"),
        entrypoint: list("Entrypoint"),
        cmd: list("Cmd"),
        volumes: keys("Volumes"),
        working_dir: text("WorkingDir"),
        labels: value
            .get("Labels")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        stop_signal: text("StopSignal"),
        args_escaped: value
            .get("ArgsEscaped")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        exposed_ports: keys("ExposedPorts"),
        healthcheck: health,
        on_build: list("OnBuild"),
        shell: list("Shell"),
        stop_timeout: value.get("StopTimeout").and_then(Value::as_i64),
    }
}
