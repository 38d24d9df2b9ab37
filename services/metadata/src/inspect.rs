//! Docker's ImageInspect, ImageHistory and Children.

use imaged_api::internal::v1::{InspectedImage, StoredReference};
use imaged_api::timestamp;
use imaged_api::v1::{
    ContainerConfig, GraphDriver, HealthConfig, HistoryItem, ImageInspect, RootFs,
};
use imaged_common::Error;
use imaged_model::Platform;
use serde_json::Value;

use crate::resolve::get_image;
use crate::store::{Image, Index};
use imaged_model::image_config::format_time;

/// The zero time Docker shows for an image never tagged with TagImage.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// `docker image inspect`.
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

pub fn inspect(
    index: &Index,
    input: &str,
    platform: Option<&Platform>,
    layout: Option<&Layout>,
) -> Result<ImageInspect, Error> {
    Ok(inspect_image(
        index,
        get_image(index, input, platform)?,
        layout,
    ))
}

/// The InspectImage answer for `image`.
fn inspect_image(index: &Index, image: &Image, layout: Option<&Layout>) -> ImageInspect {
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
        graph_driver: layout.map(|l| graph_driver(l, &config.chain_ids)),
        id,
    }
}

/// `docker history`: the config's history, newest first, with sizes from
/// the layers and IDs and tags from the local parent chain.
pub fn history(
    index: &Index,
    input: &str,
    platform: Option<&Platform>,
) -> Result<Vec<HistoryItem>, Error> {
    let image = get_image(index, input, platform)?;
    let mut layer = 0;
    let mut items = Vec::new();
    for h in &image.config.history {
        let size = if h.empty_layer {
            0
        } else {
            let size = *image.meta.layer_sizes.get(layer).ok_or_else(|| {
                Error::InvalidArgument("too many non-empty layers in History section".into())
            })?;
            layer += 1;
            size
        };
        items.push(HistoryItem {
            id: "<missing>".into(),
            created: h
                .created
                .map(|t| t.div_euclid(1_000_000_000) as i64)
                .unwrap_or(0),
            created_at: h.created.map(timestamp),
            created_by: h.created_by.clone(),
            tags: Vec::new(),
            size,
            comment: h.comment.clone(),
        });
    }
    items.reverse();
    // Walk the local parent chain from the top row down.
    let mut current = Some(image);
    for item in items.iter_mut() {
        let Some(img) = current else { break };
        let id = img.id.to_string();
        item.tags = index
            .refs_of(&id)
            .into_iter()
            .filter(|r| r.digest().is_none())
            .map(|r| r.familiar())
            .collect();
        current = img.meta.parent.as_deref().and_then(|p| index.image(p));
        item.id = id;
    }
    Ok(items)
}

/// Docker's Children: IDs of images whose parent is the image.
pub fn children(index: &Index, input: &str) -> Result<Vec<String>, Error> {
    let image = get_image(index, input, None)?;
    Ok(index
        .children_of(&image.id.to_string())
        .into_iter()
        .map(str::to_string)
        .collect())
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

/// imaged-transfer's storage driver and where its layers are.
#[derive(Clone, Debug)]
pub struct Layout {
    pub driver: String,
    pub layers_dir: std::path::PathBuf,
}

/// Docker's GraphDriver of an image whose layers are `chains` (bottom
/// first): overlay2 shows the layer directories; vfs shows none.
pub fn graph_driver(layout: &Layout, chains: &[imaged_model::Digest]) -> GraphDriver {
    let mut data = std::collections::HashMap::new();
    if layout.driver == "overlay2"
        && let Some((top, parents)) = chains.split_last()
    {
        let dir = |chain: &imaged_model::Digest| layout.layers_dir.join(chain.hex());
        let lower: Vec<String> = parents
            .iter()
            .rev()
            .map(|c| dir(c).join("diff").display().to_string())
            .collect();
        if !lower.is_empty() {
            data.insert("LowerDir".to_string(), lower.join(":"));
        }
        for (key, sub) in [
            ("UpperDir", "diff"),
            ("WorkDir", "work"),
            ("MergedDir", "merged"),
        ] {
            data.insert(key.to_string(), dir(top).join(sub).display().to_string());
        }
    }
    GraphDriver {
        name: layout.driver.clone(),
        data,
    }
}

#[cfg(test)]
mod graph_driver_tests {
    use super::*;
    use imaged_model::Digest;

    #[test]
    fn overlay2_names_the_layer_dirs_top_first_and_vfs_none() {
        let diff_ids: Vec<Digest> = ["a", "b", "c"]
            .iter()
            .map(|s| Digest::sha256_of(s.as_bytes()))
            .collect();
        let chains = imaged_model::digest::chain_ids(&diff_ids);
        let layout = Layout {
            driver: "overlay2".into(),
            layers_dir: "/var/lib/imaged/transfer/layers".into(),
        };
        let dir = |i: usize| format!("/var/lib/imaged/transfer/layers/{}", chains[i].hex());
        let driver = graph_driver(&layout, &chains);
        assert_eq!(driver.name, "overlay2");
        assert_eq!(
            driver.data["LowerDir"],
            format!("{}/diff:{}/diff", dir(1), dir(0))
        );
        assert_eq!(driver.data["UpperDir"], format!("{}/diff", dir(2)));
        assert_eq!(driver.data["WorkDir"], format!("{}/work", dir(2)));
        assert_eq!(driver.data["MergedDir"], format!("{}/merged", dir(2)));
        let one = graph_driver(&layout, &chains[..1]);
        assert!(!one.data.contains_key("LowerDir"));
        let vfs = Layout {
            driver: "vfs".into(),
            ..layout
        };
        assert!(graph_driver(&vfs, &chains).data.is_empty());
    }
}
