//! Docker's legacy load (spec 9.3): an archive written before Docker 1.10,
//! without manifest.json. Every top-level directory is a v1 image
//! (`<id>/json`, `<id>/layer.tar`) whose `parent` names another; each is
//! loaded after its parent, its layer unpacked on the parent's chain, and
//! an image config made from its v1 JSON as Docker's
//! `MakeConfigFromV1Config` makes it, so the image gets the ID Docker gives
//! it. Tags come from the mandatory `repositories` file. Like Docker, a
//! legacy load prints no `Loaded image` lines.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::neighbours::recorder::Record;
use crate::store::holds::hold_for_record;
use imaged_common::Error;
use imaged_model::digest::chain_ids;
use imaged_model::{Digest, Platform, Reference};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::archive::unpack;
use crate::load::{Links, Loader, archive_file, read_capped};
use crate::registry::manifest::{MAX_JSON_BLOB, MAX_MANIFEST, check_depth};
use crate::store::layers::Layer;

/// A v1 image loaded: its new ID, layers and history so far.
#[derive(Clone)]
struct Loaded {
    id: String,
    config: Vec<u8>,
    diff_ids: Vec<Digest>,
    history: Vec<History>,
    sizes: Vec<i64>,
}

/// One history entry, fields in the order Go marshals `image.History`.
#[derive(Clone, Debug, Serialize)]
struct History {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    author: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    created_by: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    comment: String,
}

/// `rootfs`, fields in the order Go marshals `image.RootFS`.
#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

impl Loader {
    /// Loads the legacy archive unpacked in `dir`.
    pub(crate) async fn load_legacy(&self, dir: &Path, links: &Links) -> Result<(), Error> {
        let mut old_ids: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        old_ids.sort(); // Go's os.ReadDir order
        let mut loaded: HashMap<String, Loaded> = HashMap::new();
        for old_id in &old_ids {
            // The chain of parents not loaded yet, this one first.
            let mut pending = vec![old_id.clone()];
            let mut jsons = HashMap::new();
            loop {
                let current = pending.last().expect("one at least").clone();
                if loaded.contains_key(&current) {
                    pending.pop();
                    break;
                }
                let raw = read_capped(
                    &archive_file(dir, links, &format!("{current}/json"))?,
                    MAX_JSON_BLOB,
                    "legacy image json",
                )?;
                let v1: Value = serde_json::from_slice(&raw).map_err(|e| {
                    Error::invalid_argument(format!("invalid legacy image json of {current}: {e}"))
                })?;
                let os = v1["os"].as_str().unwrap_or_default();
                let host = Platform::host();
                if !os.is_empty() && !os.eq_ignore_ascii_case(&host.os) {
                    return Err(Error::invalid_argument(format!(
                        "cannot load {os} image on {}",
                        host.os
                    )));
                }
                let parent = v1["parent"].as_str().unwrap_or_default().to_string();
                jsons.insert(current.clone(), (raw, v1));
                if parent.is_empty() {
                    break;
                }
                if pending.contains(&parent) {
                    return Err(Error::invalid_argument(format!(
                        "invalid archive: legacy image {parent} is its own ancestor"
                    )));
                }
                pending.push(parent);
                check_depth("invalid legacy archive", pending.len())?;
            }
            // Oldest first.
            while let Some(current) = pending.pop() {
                let (raw, v1) = jsons.remove(&current).expect("read above");
                let parent = v1["parent"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .map(|p| loaded.get(p).cloned().expect("parents load first"));
                let image = self
                    .load_v1(dir, links, &current, &raw, &v1, parent.as_ref())
                    .await?;
                loaded.insert(current, image);
            }
        }

        let repositories = read_capped(
            &archive_file(dir, links, "repositories")?,
            MAX_MANIFEST as u64,
            "repositories",
        )?;
        let repositories: BTreeMap<String, BTreeMap<String, String>> =
            serde_json::from_slice(&repositories)
                .map_err(|e| Error::invalid_argument(format!("invalid repositories file: {e}")))?;
        for (name, tags) in repositories {
            for (tag, old_id) in tags {
                let image = loaded.get(&old_id).ok_or_else(|| {
                    Error::invalid_argument(format!("invalid target ID: {old_id}"))
                })?;
                let reference = Reference::parse(&name)?.with_tag(&tag)?;
                self.metadata
                    .record(Record {
                        config: image.config.clone(),
                        tags: vec![reference.to_string()],
                        layer_sizes: image.sizes.clone(),
                        ..Default::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// One v1 image: its layer on its parent's chain, its config, its
    /// record and parent link.
    async fn load_v1(
        &self,
        dir: &Path,
        links: &Links,
        old_id: &str,
        raw: &[u8],
        v1: &Value,
        parent: Option<&Loaded>,
    ) -> Result<Loaded, Error> {
        let mut diff_ids = parent.map(|p| p.diff_ids.clone()).unwrap_or_default();
        let mut history = parent.map(|p| p.history.clone()).unwrap_or_default();
        let mut sizes = parent.map(|p| p.sizes.clone()).unwrap_or_default();
        let parent_chain = chain_ids(&diff_ids).last().cloned();

        let path = archive_file(dir, links, &format!("{old_id}/layer.tar"))?;
        let (content, layers) = (self.content.clone(), Arc::clone(&self.layers));
        let layer = tokio::task::spawn_blocking(move || {
            let (blob, unpacked, staging) = unpack::unpack_and_keep(&content, &layers, &path)?;
            layers.commit(staging, Layer::unpacked(parent_chain, blob, &unpacked))
        })
        .await
        .map_err(Error::internal)??;
        diff_ids.push(layer.diff_id.clone());
        sizes.push(layer.size as i64);
        history.push(history_from_v1(v1));
        let config = config_from_v1(raw, &diff_ids, &history)?;
        let put = Record {
            config: config.clone(),
            layer_sizes: sizes.clone(),
            ..Default::default()
        };
        let chain = chain_ids(&diff_ids).last().cloned();
        let _image_lease = hold_for_record(&self.content, &self.leases, &config, chain.as_ref())?;
        let id = self.metadata.record(put).await?.id;
        if let Some(parent) = parent {
            self.metadata
                .create_image(config.clone(), &parent.id)
                .await?;
        }
        Ok(Loaded {
            id,
            config,
            diff_ids,
            history,
            sizes,
        })
    }
}

/// Docker's `HistoryFromConfig`: the v1 image's author, created time,
/// command and comment.
fn history_from_v1(v1: &Value) -> History {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let created_by: Vec<String> = v1["container_config"]["Cmd"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    History {
        created: v1["created"]
            .as_str()
            .and_then(imaged_model::image_config::parse_time)
            .map(imaged_model::image_config::format_time),
        author: text(&v1["author"]),
        created_by: created_by.join(" "),
        comment: text(&v1["comment"]),
    }
}

/// Docker's `MakeConfigFromV1Config`: the v1 JSON's own fields (their
/// values as written, compacted as Go compacts them) less `id`, `parent`,
/// `Size`, `parent_id`, `layer_id` and `throwaway`, plus `rootfs` and
/// `history`, keys sorted, as Go marshals a map.
fn config_from_v1(raw: &[u8], diff_ids: &[Digest], history: &[History]) -> Result<Vec<u8>, Error> {
    let fields: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(raw)
        .map_err(|e| Error::invalid_argument(format!("invalid legacy image json: {e}")))?;
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in fields {
        if !["id", "parent", "Size", "parent_id", "layer_id", "throwaway"].contains(&key.as_str()) {
            out.insert(key, go_compact(value.get()));
        }
    }
    let rootfs = RootFs {
        kind: "layers",
        diff_ids: diff_ids.iter().map(|d| d.to_string()).collect(),
    };
    out.insert(
        "rootfs".into(),
        go_compact(&serde_json::to_string(&rootfs).map_err(Error::internal)?),
    );
    out.insert(
        "history".into(),
        go_compact(&serde_json::to_string(history).map_err(Error::internal)?),
    );
    let mut bytes = b"{".to_vec();
    for (i, (key, value)) in out.iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        bytes.extend(go_compact(&serde_json::to_string(key).map_err(Error::internal)?).bytes());
        bytes.push(b':');
        bytes.extend(value.bytes());
    }
    bytes.push(b'}');
    Ok(bytes)
}

/// JSON text as Go's `json.Compact` with HTML escaping leaves it (what
/// `json.Marshal` does to a `RawMessage`): no insignificant whitespace,
/// and `<`, `>`, `&`, U+2028 and U+2029 inside strings escaped.
fn go_compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            match c {
                _ if escaped => {
                    escaped = false;
                    out.push(c);
                }
                '\\' => {
                    escaped = true;
                    out.push(c);
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                '<' => out.push_str("\\u003c"),
                '>' => out.push_str("\\u003e"),
                '&' => out.push_str("\\u0026"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                _ => out.push(c),
            }
        } else {
            match c {
                ' ' | '\t' | '\n' | '\r' => {}
                '"' => {
                    in_string = true;
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_made_as_dockers_make_config_from_v1_config() {
        let raw = br#"{"id":"aa","parent":"bb","Size":3,"created":"2015-01-02T03:04:05.500Z",
            "container_config":{"Cmd": ["/bin/sh", "-c", "echo <hi> & bye"]},
            "os":"linux","architecture":"amd64","docker_version":"1.9.1"}"#;
        let v1: Value = serde_json::from_slice(raw).unwrap();
        let diff = Digest::sha256_of(b"layer");
        let history = vec![history_from_v1(&v1)];
        let config =
            String::from_utf8(config_from_v1(raw, std::slice::from_ref(&diff), &history).unwrap())
                .unwrap();
        assert_eq!(
            config,
            format!(
                r#"{{"architecture":"amd64","container_config":{{"Cmd":["/bin/sh","-c","echo \u003chi\u003e \u0026 bye"]}},"created":"2015-01-02T03:04:05.500Z","docker_version":"1.9.1","history":[{{"created":"2015-01-02T03:04:05.5Z","created_by":"/bin/sh -c echo \u003chi\u003e \u0026 bye"}}],"os":"linux","rootfs":{{"type":"layers","diff_ids":["{diff}"]}}}}"#
            )
        );
    }
}
