//! Docker's MakeImageCache (spec 8.5): the classic builder asks whether a
//! step was built before. The local cache finds the newest locally built
//! child of the parent whose `container_config` matches the step's; the
//! history cache (with `source_refs`, as `--cache-from`) matches the step
//! against the history of the given images and may synthesize the
//! intermediate image.

use std::sync::Arc;

use imaged_common::Error;
use imaged_model::{Digest, Platform};
use serde_json::{Value, json};

use crate::resolve::get_image;
use crate::store::{Image, ImageMeta, Index, Tx};
use imaged_model::image_config::ImageConfig;

/// Answers the cached image for building `config` (a container config) on
/// `parent` (empty: FROM scratch), or `None`.
pub fn lookup(
    tx: &mut Tx<'_>,
    parent: &str,
    config: &[u8],
    source_refs: &[String],
) -> Result<Option<String>, Error> {
    let cfg: Value = serde_json::from_slice(config)
        .map_err(|e| Error::invalid_argument(format!("invalid container config: {e}")))?;
    if cfg.is_null() {
        return Ok(None); // a nil config never hits
    }
    let parent_image = match parent {
        "" => None,
        p => Some(get_image(tx.index(), p, None)?.clone()),
    };
    let parent_id = parent_image.as_ref().map(|p| p.id.to_string());
    let local = local_cache(tx.index(), parent_id.as_deref(), &cfg);
    if source_refs.is_empty() {
        return Ok(local);
    }

    let sources: Vec<Arc<Image>> = source_refs
        .iter()
        .filter_map(|r| match get_image(tx.index(), r, None) {
            Ok(image) => Some(image.clone()),
            Err(err) => {
                tracing::warn!(source = %r, "cache source skipped: {err}");
                None
            }
        })
        .collect();
    if let Some(hit) = local
        && sources
            .iter()
            .any(|s| is_ancestor(tx.index(), &hit, &s.id.to_string()))
    {
        return Ok(Some(hit));
    }
    for source in sources {
        if let Some(id) = history_cache(tx, parent_image.as_ref(), &source, &cfg)? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The newest locally built child of `parent` whose container config
/// matches `cfg`.
fn local_cache(index: &Index, parent: Option<&str>, cfg: &Value) -> Option<String> {
    let host = Platform::host();
    index
        .images()
        .filter(|image| image.meta.parent.as_deref() == parent)
        .filter(|image| image.meta.built_locally)
        .filter(|image| {
            let p = &image.config.platform;
            (!p.os.is_empty() || !p.architecture.is_empty()) && host.runs(p)
        })
        .filter(|image| {
            serde_json::from_slice::<Value>(&image.config_bytes)
                .ok()
                .is_some_and(|json| same_config(&json["container_config"], cfg))
        })
        .max_by_key(|image| image.config.created.as_ref().map_or(i128::MIN, |(t, _)| *t))
        .map(|image| image.id.to_string())
}

/// Whether `ancestor` is `id` or one of its parents.
fn is_ancestor(index: &Index, ancestor: &str, id: &str) -> bool {
    let mut current = Some(id.to_string());
    while let Some(id) = current {
        if id == ancestor {
            return true;
        }
        current = index.image(&id).and_then(|i| i.meta.parent.clone());
    }
    false
}

/// Matches the step against `source`'s history after the parent's; on a
/// hit answers the source itself (its last step) or a synthesized
/// intermediate image.
fn history_cache(
    tx: &mut Tx<'_>,
    parent: Option<&Arc<Image>>,
    source: &Arc<Image>,
    cfg: &Value,
) -> Result<Option<String>, Error> {
    let source_json: Value =
        serde_json::from_slice(&source.config_bytes).map_err(Error::internal)?;
    let source_history = source_json["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let (parent_history, parent_diff_ids) = match parent {
        Some(p) => {
            let json: Value = serde_json::from_slice(&p.config_bytes).map_err(Error::internal)?;
            (
                json["history"].as_array().cloned().unwrap_or_default(),
                p.config.diff_ids.clone(),
            )
        }
        None => (Vec::new(), Vec::new()),
    };
    let n = parent_history.len();
    if source_history.len() <= n
        || source_history[..n] != parent_history[..]
        || !source.config.diff_ids.starts_with(&parent_diff_ids)
    {
        return Ok(None);
    }
    let entry = &source_history[n];
    let wanted = cfg["Cmd"]
        .as_array()
        .map(|cmd| {
            cmd.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    if entry["created_by"].as_str().unwrap_or_default() != wanted {
        return Ok(None);
    }
    let parent_id = parent.map(|p| p.id.to_string());
    let source_id = source.id.to_string();
    if n + 1 == source_history.len() {
        let mut updated = (**source).clone();
        updated.meta.parent = parent_id;
        tx.put_image(updated);
        return Ok(Some(source_id));
    }

    // An intermediate image: the parent plus this one step.
    let empty = entry["empty_layer"].as_bool().unwrap_or(false);
    let mut diff_ids: Vec<Value> = parent_diff_ids
        .iter()
        .map(|d| json!(d.to_string()))
        .collect();
    if !empty {
        let Some(layer) = source.config.diff_ids.get(parent_diff_ids.len()) else {
            return Ok(None);
        };
        diff_ids.push(json!(layer.to_string()));
    }
    let mut history = parent_history;
    history.push(entry.clone());
    let mut config = json!({
        "architecture": source_json["architecture"],
        "os": source_json["os"],
        "created": entry["created"],
        "config": cfg,
        "container_config": cfg,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
        "docker_version": imaged_model::image_config::DOCKER_VERSION,
    });
    for key in ["author", "os.version", "os.features"] {
        if let Some(value) = source_json.get(key) {
            config[key] = value.clone();
        }
    }
    let bytes = serde_json::to_vec(&config).map_err(Error::internal)?;
    let parsed = ImageConfig::parse(&bytes)?;
    let id = Digest::sha256_of(&bytes);
    let layers = parsed.chain_ids.len();
    let layer_sizes = source
        .meta
        .layer_sizes
        .iter()
        .take(layers)
        .copied()
        .collect();
    let id_text = id.to_string();
    if tx.index().image(&id_text).is_none() {
        tx.put_image(Image {
            id,
            config_bytes: bytes,
            config: parsed,
            meta: ImageMeta {
                parent: parent_id,
                last_tag_time: None,
                built_locally: true,
                layer_sizes,
                content_size: 0,
            },
        });
    }
    Ok(Some(id_text))
}

/// Docker's cache comparison of two container configs.
fn same_config(a: &Value, b: &Value) -> bool {
    if a.is_null() || b.is_null() {
        return false;
    }
    let list =
        |v: &Value, key: &str| -> Vec<Value> { v[key].as_array().cloned().unwrap_or_default() };
    let keys = |v: &Value, key: &str| -> Vec<String> {
        let mut keys: Vec<String> = v[key]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    };
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    let flag = |v: &Value, key: &str| v[key].as_bool().unwrap_or(false);
    let lists_equal = ["Env", "Cmd", "Entrypoint", "Shell", "OnBuild"]
        .iter()
        .all(|k| list(a, k) == list(b, k));
    let health_test = list(&a["Healthcheck"], "Test") == list(&b["Healthcheck"], "Test");
    let key_sets = ["ExposedPorts", "Volumes"]
        .iter()
        .all(|k| keys(a, k) == keys(b, k));
    let labels = a["Labels"].as_object().cloned().unwrap_or_default()
        == b["Labels"].as_object().cloned().unwrap_or_default();
    let flags = [
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "NetworkDisabled",
        "Tty",
        "OpenStdin",
        "StdinOnce",
        "ArgsEscaped",
    ]
    .iter()
    .all(|k| flag(a, k) == flag(b, k));
    let texts = ["User", "WorkingDir", "StopSignal"]
        .iter()
        .all(|k| text(a, k) == text(b, k));
    let stop_timeout = a.get("StopTimeout").filter(|v| !v.is_null())
        == b.get("StopTimeout").filter(|v| !v.is_null());
    let health = {
        let (ha, hb) = (
            a.get("Healthcheck").filter(|v| !v.is_null()),
            b.get("Healthcheck").filter(|v| !v.is_null()),
        );
        match (ha, hb) {
            (None, None) => true,
            (Some(x), Some(y)) => [
                "Interval",
                "StartInterval",
                "StartPeriod",
                "Timeout",
                "Retries",
            ]
            .iter()
            .all(|k| x.get(*k) == y.get(*k)),
            _ => false,
        }
    };
    lists_equal && health_test && key_sets && labels && flags && texts && stop_timeout && health
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_configs_as_docker_does() {
        let a = json!({"Cmd": ["/bin/sh", "-c", "make"], "Env": ["A=1"], "Hostname": "x",
                       "ExposedPorts": {"80/tcp": {}}, "Labels": {"k": "v"}});
        let mut b = a.clone();
        b["Hostname"] = json!("other");
        assert!(same_config(&a, &b), "Hostname is ignored");
        b["ExposedPorts"] = json!({"80/tcp": {"x": 1}});
        assert!(same_config(&a, &b), "only the key sets count");
        b["Env"] = json!(["A=2"]);
        assert!(!same_config(&a, &b));
        assert!(!same_config(&Value::Null, &a));
        let mut c = a.clone();
        c["StopTimeout"] = json!(10);
        assert!(!same_config(&a, &c));
        c["StopTimeout"] = Value::Null;
        assert!(same_config(&a, &c));
    }
}
