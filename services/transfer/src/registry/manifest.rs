//! What a pull reads from the registry before any layer: manifests,
//! indexes and configs, the platform choice, and the checks Docker makes on
//! them (media types, schema 1). And the one manifest imaged writes itself,
//! for an image it has no registry manifest for ([`uncompressed_manifest`]).

use imaged_common::Error;
use imaged_model::media_type::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use imaged_model::{Digest, Platform};
use oci_client::manifest::OciDescriptor;
use serde::Deserialize;

/// The descriptor of a layer as stored uncompressed: its diff ID and the
/// size of its tar.
pub(crate) fn uncompressed_layer(diff_id: &Digest, size: u64) -> serde_json::Value {
    serde_json::json!({"mediaType": OCI_LAYER, "digest": diff_id.to_string(), "size": size})
}

/// An OCI manifest of the config `config` (whose digest is `id`) and its
/// layers as [`uncompressed_layer`] describes them, bottom first: what
/// `save` writes and what containerd is given for an image that came from
/// no registry.
pub(crate) fn uncompressed_manifest(
    id: &Digest,
    config: &[u8],
    layers: Vec<serde_json::Value>,
) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": id.to_string(), "size": config.len()},
        "layers": layers,
    }))
    .map_err(Error::internal)
}

/// Manifest media types a pull accepts.
pub(crate) use imaged_model::media_type::PULLABLE as ACCEPTED;
use imaged_model::media_type::{DOCKER_AI_PREFIX, DOCKER_SCHEMA1_PREFIX};

/// Largest config a pull reads into memory. Docker caps manifests at
/// 4 MiB; a valid config with many labels or history entries can be
/// bigger, so configs get more room.
pub(crate) const MAX_JSON_BLOB: u64 = 8 << 20;

/// Docker's cap on manifests and indexes (distribution's
/// `maxManifestBodySize`).
pub(crate) const MAX_MANIFEST: usize = 4 << 20;

/// Docker's deepest layer chain (`layer.maxLayerDepth`): an image with
/// more layers is refused before anything is downloaded.
pub(crate) const MAX_LAYERS: usize = 125;

/// How long a registry may take to answer a manifest request whole.
pub(crate) const MANIFEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Refuses a manifest or index that is too big, of a media type a pull
/// does not read, or of more layers than a chain may hold.
pub(crate) fn check_manifest(what: &str, bytes: &[u8], probe: &Probe) -> Result<(), Error> {
    if bytes.len() > MAX_MANIFEST {
        return Err(Error::invalid_argument(format!(
            "{what}: manifest of {} bytes exceeds the {MAX_MANIFEST}-byte limit",
            bytes.len()
        )));
    }
    if let Some(media) = probe.media_type.as_deref()
        && !media.is_empty()
        && !media.starts_with(DOCKER_SCHEMA1_PREFIX)
        && !ACCEPTED.contains(&media)
    {
        return Err(Error::invalid_argument(format!(
            "{what}: unsupported manifest media type {}",
            crate::archive::beneath::quote(media.as_ref())
        )));
    }
    Ok(())
}

/// Refuses a chain deeper than Docker's.
pub(crate) fn check_depth(what: &str, layers: usize) -> Result<(), Error> {
    if layers > MAX_LAYERS {
        return Err(Error::invalid_argument(format!(
            "{what}: max depth exceeded: {layers} layers, at most {MAX_LAYERS}"
        )));
    }
    Ok(())
}

/// The fields of a manifest or index that say which it is.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Probe {
    pub(crate) schema_version: Option<i64>,
    pub(crate) media_type: Option<String>,
    pub(crate) manifests: Option<Vec<IndexEntry>>,
}

/// One entry of an OCI index or Docker manifest list.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    pub(crate) digest: String,
    #[serde(default)]
    pub(crate) media_type: String,
    pub(crate) platform: Option<EntryPlatform>,
}

/// The platform an index entry is for.
#[derive(Deserialize)]
pub(crate) struct EntryPlatform {
    pub(crate) os: String,
    pub(crate) architecture: String,
    #[serde(default)]
    pub(crate) variant: Option<String>,
}

/// An image manifest: its config and layers (OCI and Docker schema 2
/// share these fields).
#[derive(Deserialize)]
pub(crate) struct Manifest {
    pub(crate) config: OciDescriptor,
    pub(crate) layers: Vec<OciDescriptor>,
}

/// Picks the index entry for `platform` with Docker's matching: an exact
/// match first, else the best compatible one.
pub(crate) fn choose_platform(
    entries: &[IndexEntry],
    platform: &Platform,
    shown: &str,
) -> Result<String, Error> {
    let candidates: Vec<(&IndexEntry, Platform)> = entries
        .iter()
        .filter(|e| !e.media_type.contains("attestation"))
        .filter_map(|e| {
            let p = e.platform.as_ref()?;
            Some((
                e,
                Platform::new(&p.os, &p.architecture, p.variant.as_deref().unwrap_or(""))
                    .normalize(),
            ))
        })
        .collect();
    if let Some((entry, _)) = candidates.iter().find(|(_, p)| p == platform) {
        return Ok(entry.digest.clone());
    }
    if let Some((entry, _)) = candidates.iter().find(|(_, p)| platform.runs(p)) {
        return Ok(entry.digest.clone());
    }
    let available: Vec<String> = candidates.iter().map(|(_, p)| p.to_string()).collect();
    Err(Error::not_found(format!(
        "no matching manifest for {platform} in the manifest list entries (available for {shown}: {})",
        available.join(", ")
    )))
}

/// Docker's media-type gate for config and layer descriptors.
pub(crate) fn check_media_type(media_type: &str) -> Result<(), Error> {
    const LEGACY: &[&str] = &[
        "application/octet-stream",
        "application/json",
        "text/html",
        "",
    ];
    if media_type.starts_with(DOCKER_AI_PREFIX) {
        return Err(Error::invalid_argument(
            "AI models are not yet supported by the Engine, please use \"docker model pull/run\" instead",
        ));
    }
    let known = ["application/vnd.oci.image", "application/vnd.docker"]
        .iter()
        .any(|prefix| media_type == *prefix || media_type.starts_with(&format!("{prefix}.")));
    if known || LEGACY.contains(&media_type) {
        Ok(())
    } else {
        Err(Error::invalid_argument(format!(
            "unsupported media type {media_type}"
        )))
    }
}

/// Docker v28's refusal of schema 1 manifests.
pub(crate) fn schema1(shown: &str) -> Error {
    Error::invalid_argument(format!(
        "Docker Image Format v1 and Docker Image manifest version 2, schema 1 support has been removed. \
         Suggest the author of {shown} to upgrade the image to the OCI Format or Docker Image manifest v2, schema 2. \
         More information at https://docs.docker.com/go/deprecated-image-specs/"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_pass_dockers_gate() {
        for ok in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.config.v1+json",
            "application/octet-stream",
            "",
        ] {
            check_media_type(ok).unwrap();
        }
        let err =
            check_media_type("application/vnd.cncf.helm.chart.content.v1.tar+gzip").unwrap_err();
        assert!(
            err.to_string().starts_with("unsupported media type"),
            "{err}"
        );
        let err = check_media_type("application/vnd.docker.ai.gguf.v3").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("AI models are not yet supported"),
            "{err}"
        );
        assert!(check_media_type("application/vnd.oci.imagery").is_err());
    }

    #[test]
    fn index_entries_match_the_platform_or_list_what_there_is() {
        let entry = |digest: &str, os: &str, arch: &str, variant: Option<&str>| IndexEntry {
            digest: digest.into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            platform: Some(EntryPlatform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(str::to_string),
            }),
        };
        let entries = [
            entry("a", "linux", "amd64", None),
            entry("b", "linux", "arm64", Some("v8")),
            entry("c", "linux", "arm", Some("v7")),
        ];
        let want = |p: &str| Platform::parse(p).unwrap().normalize();
        assert_eq!(
            choose_platform(&entries, &want("linux/arm64"), "x").unwrap(),
            "b"
        );
        assert_eq!(
            choose_platform(&entries, &want("linux/amd64"), "x").unwrap(),
            "a"
        );
        assert_eq!(
            choose_platform(&entries, &want("linux/arm/v7"), "x").unwrap(),
            "c"
        );
        let err = choose_platform(&entries, &want("linux/s390x"), "x").unwrap_err();
        assert!(err.is(tonic::Code::NotFound));
        assert!(err.to_string().contains("linux/arm/v7"), "{err}");
    }
}
