//! Image configs: the JSON stored byte for byte, and what imaged reads
//! out of it, parsed once and strictly here for every process (metadata
//! records it; transfer pulls, loads, pushes, exports and commits by it).

use std::collections::BTreeMap;

use crate::{Digest, Error, Platform};
use serde_json::Value;

/// What imaged writes in the `docker_version` field of the configs it
/// makes (import, commit, the builder's cache), where Docker writes its
/// own version.
pub const DOCKER_VERSION: &str = concat!("imaged-", env!("CARGO_PKG_VERSION"));

/// One `history` entry of a config.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Unix nanoseconds, when the entry has a valid `created`.
    pub created: Option<i128>,
    pub created_by: String,
    pub comment: String,
    pub empty_layer: bool,
}

/// What imaged needs from an image config, parsed once.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    /// `created` as Unix nanoseconds, and as written.
    pub created: Option<(i128, String)>,
    pub labels: BTreeMap<String, String>,
    pub platform: Platform,
    pub os_version: String,
    pub rootfs_type: String,
    pub diff_ids: Vec<Digest>,
    /// The chain ID of each layer, bottom first: what the layer store
    /// names them by, worked out once here rather than by every reader.
    pub chain_ids: Vec<Digest>,
    pub history: Vec<History>,
    pub author: String,
    pub comment: String,
    pub docker_version: String,
    /// The `config` object (how a container runs the image).
    pub container_config: Value,
}

impl ImageConfig {
    /// Parses and validates a config as Docker's image store does.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            return Err(Error::InvalidArgument("invalid empty data".into()));
        }
        let json: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidArgument(format!("invalid image JSON: {e}")))?;
        Self::from_value(&json)
    }

    /// [`ImageConfig::parse`] of a config already read as JSON.
    pub fn from_value(json: &Value) -> Result<Self, Error> {
        let Some(object) = json.as_object() else {
            return Err(Error::InvalidArgument(
                "invalid image JSON: not an object".into(),
            ));
        };
        let Some(rootfs) = object.get("rootfs").filter(|r| !r.is_null()) else {
            return Err(Error::InvalidArgument(
                "invalid image JSON, no RootFS key".into(),
            ));
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
        let diff_ids = rootfs
            .get("diff_ids")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .map(|id| {
                        id.as_str().unwrap_or("").parse::<Digest>().map_err(|e| {
                            Error::InvalidArgument(format!("invalid image JSON: diff ID: {e}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let history: Vec<History> = object
            .get("history")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .map(|h| History {
                        created: h
                            .get("created")
                            .and_then(Value::as_str)
                            .and_then(parse_time),
                        created_by: text(h.get("created_by")),
                        comment: text(h.get("comment")),
                        empty_layer: h
                            .get("empty_layer")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if history.iter().filter(|h| !h.empty_layer).count() > diff_ids.len() {
            return Err(Error::InvalidArgument(
                "too many non-empty layers in History section".into(),
            ));
        }
        let container_config = object.get("config").cloned().unwrap_or(Value::Null);
        let labels = container_config
            .get("Labels")
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let created = object
            .get("created")
            .and_then(Value::as_str)
            .and_then(|raw| parse_time(raw).map(|t| (t, raw.to_string())));
        Ok(ImageConfig {
            created,
            labels,
            platform: Platform::new(
                &text(object.get("os")),
                &text(object.get("architecture")),
                &text(object.get("variant")),
            ),
            os_version: text(object.get("os.version")),
            rootfs_type: text(rootfs.get("type")),
            chain_ids: crate::digest::chain_ids(&diff_ids),
            diff_ids,
            history,
            author: text(object.get("author")),
            comment: text(object.get("comment")),
            docker_version: text(object.get("docker_version")),
            container_config,
        })
    }

    /// `created` in Unix seconds, 0 when absent (ImageSummary.Created).
    pub fn created_secs(&self) -> i64 {
        self.created
            .as_ref()
            .map(|(t, _)| t.div_euclid(1_000_000_000) as i64)
            .unwrap_or(0)
    }

    /// The OS, the host's when the config leaves it empty.
    pub fn os(&self) -> String {
        if self.platform.os.is_empty() {
            Platform::host().os
        } else {
            self.platform.os.clone()
        }
    }
}

/// RFC 3339 (with or without fraction) to Unix nanoseconds.
pub fn parse_time(raw: &str) -> Option<i128> {
    let t = chrono::DateTime::parse_from_rfc3339(raw).ok()?;
    Some(t.timestamp() as i128 * 1_000_000_000 + t.timestamp_subsec_nanos() as i128)
}

/// Formats Unix nanoseconds as RFC 3339 with nanoseconds (Go's
/// RFC3339Nano: trailing zeros of the fraction dropped).
pub fn format_time(nanos: i128) -> String {
    let secs = nanos.div_euclid(1_000_000_000) as i64;
    let sub = nanos.rem_euclid(1_000_000_000) as u32;
    let Some(t) = chrono::DateTime::from_timestamp(secs, 0) else {
        return String::new();
    };
    let mut out = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    if sub > 0 {
        out.push('.');
        out.push_str(format!("{sub:09}").trim_end_matches('0'));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_like_dockers_image_store() {
        let err = |s: &str| ImageConfig::parse(s.as_bytes()).unwrap_err().to_string();
        assert_eq!(err(""), "invalid empty data");
        assert!(err("{").starts_with("invalid image JSON"));
        assert_eq!(
            err("{\"architecture\":\"amd64\"}"),
            "invalid image JSON, no RootFS key"
        );
        assert_eq!(
            err(r#"{"rootfs":{"type":"layers","diff_ids":[]},"history":[{"created_by":"x"}]}"#),
            "too many non-empty layers in History section"
        );
        let ok = ImageConfig::parse(
            br#"{"created":"2023-11-14T22:13:20.5Z","os":"linux","architecture":"arm64","variant":"v8",
                "config":{"Labels":{"a":"b"}},"rootfs":{"type":"layers","diff_ids":[]},
                "history":[{"created_by":"ENV x","empty_layer":true}]}"#,
        )
        .unwrap();
        assert_eq!(ok.created_secs(), 1_700_000_000);
        assert_eq!(ok.labels["a"], "b");
        assert_eq!(ok.platform.to_string(), "linux/arm64/v8");
        assert_eq!(format_time(ok.created.unwrap().0), "2023-11-14T22:13:20.5Z");
    }
}
