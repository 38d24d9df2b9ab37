//! Docker's save (Moby v28 layout, spec 9.2): an OCI image layout —
//! `blobs/sha256/<hex>` for configs, uncompressed layer tars (named by
//! diffID) and one OCI manifest per image, `index.json`, `oci-layout` —
//! plus Docker's `manifest.json` and `repositories`. The tar is written on a
//! blocking thread straight into bounded 1 MiB chunks for the caller; layer
//! tars are decompressed from the stored blobs as they are written.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read, Write};
use std::sync::Arc;

use imaged_common::Error;
use imaged_common::events::ImageEvents;
use imaged_model::digest::chain_ids;
use imaged_model::{Digest, Platform, Reference};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::archive::unpack::{self, HashingReader};
use crate::neighbours::Recorder;
use crate::neighbours::recorder::{ExportedImage, config_diff_ids, config_labels};
use crate::registry::manifest::{uncompressed_layer, uncompressed_manifest};
use crate::store::content::ContentStore;
use crate::store::layers::{Layer, LayerStore};

const CHUNK: usize = 1 << 20;
use imaged_model::media_type::{OCI_INDEX, OCI_MANIFEST};

/// What an export sends its caller.
pub type Chunks = mpsc::Sender<Vec<u8>>;

/// One image of the archive with its layers, bottom first.
struct Planned {
    image: ExportedImage,
    diff_ids: Vec<Digest>,
    layers: Vec<Arc<Layer>>,
    created: u64,
    labels: BTreeMap<String, String>,
}

/// The save engine.
pub struct Exporter {
    content: ContentStore,
    layers: Arc<LayerStore>,
    metadata: Arc<dyn Recorder>,
    events: Arc<dyn ImageEvents>,
}

impl Exporter {
    pub fn new(
        content: ContentStore,
        layers: Arc<LayerStore>,
        metadata: Arc<dyn Recorder>,
        events: Arc<dyn ImageEvents>,
    ) -> Self {
        Exporter {
            content,
            layers,
            metadata,
            events,
        }
    }

    /// Writes the archive of the images `names` name (of `platform`
    /// only, when given) to `tx`.
    pub async fn export(
        &self,
        names: Vec<String>,
        platform: Option<Platform>,
        tx: Chunks,
    ) -> Result<(), Error> {
        let set = self.metadata.export_set(names, platform.as_ref()).await?;
        let plan = set
            .into_iter()
            .map(|image| self.plan(image))
            .collect::<Result<Vec<_>, _>>()?;
        let content = self.content.clone();
        let plan = Arc::new(plan);
        let writing = Arc::clone(&plan);
        tokio::task::spawn_blocking(move || {
            write_archive(ChunkWriter::new(tx), &writing, &content)
        })
        .await
        .map_err(Error::internal)??;
        let mut last = None;
        for planned in plan.iter() {
            let id = &planned.image.id;
            last = Some(self.events.image("save", id, &planned.labels, Some(id)));
        }
        // Logged before the archive's end reaches the caller.
        if let Some(last) = last {
            self.events.delivered(last).await;
        }
        Ok(())
    }

    /// Checks that every layer of `image` and its blob are here.
    fn plan(&self, image: ExportedImage) -> Result<Planned, Error> {
        let config: Value = serde_json::from_slice(&image.config)
            .map_err(|e| Error::internal(format!("stored config of {}: {e}", image.id)))?;
        let diff_ids = config_diff_ids(&config)?;
        if diff_ids.is_empty() {
            return Err(Error::invalid_argument("empty export - not implemented"));
        }
        let mut layers = Vec::new();
        for chain in chain_ids(&diff_ids) {
            let layer = self.layers.get(&chain).ok_or_else(|| {
                Error::failed_precondition(format!(
                    "layer {chain} of {} is not in the layer store",
                    image.id
                ))
            })?;
            match &layer.blob {
                Some(blob) if self.content.contains(blob) => {}
                _ => {
                    return Err(Error::failed_precondition(format!(
                        "layer {} of {} has no stored blob to export",
                        layer.diff_id, image.id
                    )));
                }
            }
            layers.push(layer);
        }
        let created = config["created"]
            .as_str()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map_or(0, |t| t.timestamp().max(0) as u64);
        let labels = config_labels(&config);
        Ok(Planned {
            image,
            diff_ids,
            layers,
            created,
            labels,
        })
    }
}

fn write_archive(out: ChunkWriter, plan: &[Planned], content: &ContentStore) -> Result<(), Error> {
    let mut tar = tar::Builder::new(out);
    dir(&mut tar, "blobs/")?;
    dir(&mut tar, "blobs/sha256/")?;
    let mut written: HashSet<String> = HashSet::new();
    let mut index_entries = Vec::new();
    let mut manifest_json = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();

    for planned in plan {
        let image = &planned.image;
        let id: Digest = image.id.parse()?;
        if written.insert(id.hex().to_string()) {
            file(&mut tar, &blob_path(&id), planned.created, &image.config)?;
        }
        let mut descriptors = Vec::new();
        let mut sources = serde_json::Map::new();
        for (layer, diff_id) in planned.layers.iter().zip(&planned.diff_ids) {
            let size = write_layer(&mut tar, layer, planned.created, content, &mut written)?;
            let descriptor = uncompressed_layer(diff_id, size);
            sources.insert(diff_id.to_string(), descriptor.clone());
            descriptors.push(descriptor);
        }
        let manifest = uncompressed_manifest(&id, &image.config, descriptors)?;
        let manifest_digest = Digest::sha256_of(&manifest);
        if written.insert(manifest_digest.hex().to_string()) {
            file(&mut tar, &blob_path(&manifest_digest), 0, &manifest)?;
        }
        let descriptor = json!({"mediaType": OCI_MANIFEST, "digest": manifest_digest.to_string(), "size": manifest.len()});
        if image.repo_tags.is_empty() {
            // Docker adds an untagged image only when the index is still
            // empty; every image is listed here, so none is lost on load.
            index_entries.push(descriptor.clone());
        }
        for tag in &image.repo_tags {
            let reference = Reference::parse(tag)?;
            let tag_only = reference.tag().unwrap_or("latest").to_string();
            let mut entry = descriptor.clone();
            entry["annotations"] = json!({
                "io.containerd.image.name": reference.to_string(),
                "org.opencontainers.image.ref.name": tag_only,
            });
            index_entries.push(entry);
            let top = planned
                .diff_ids
                .last()
                .map(|d| d.hex().to_string())
                .unwrap_or_default();
            repositories
                .entry(reference.familiar_name())
                .or_default()
                .insert(tag_only, top);
        }
        let mut entry = json!({
            "Config": blob_path(&id),
            "RepoTags": if image.repo_tags.is_empty() { Value::Null } else { json!(image.repo_tags) },
            "Layers": planned.diff_ids.iter().map(blob_path).collect::<Vec<_>>(),
            "LayerSources": sources,
        });
        if !image.parent.is_empty() {
            entry["Parent"] = json!(image.parent);
        }
        manifest_json.push(entry);
    }

    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries});
    file(&mut tar, "index.json", 0, &to_vec(&index)?)?;
    file(
        &mut tar,
        "manifest.json",
        0,
        &to_vec(&json!(manifest_json))?,
    )?;
    file(
        &mut tar,
        "oci-layout",
        0,
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )?;
    if !repositories.is_empty() {
        file(&mut tar, "repositories", 0, &to_vec(&json!(repositories))?)?;
    }
    let mut out = tar.into_inner().map_err(io_error)?;
    out.flush().map_err(io_error)?;
    Ok(())
}

/// Writes a layer's uncompressed tar (once per archive); answers its size.
fn write_layer(
    tar: &mut tar::Builder<ChunkWriter>,
    layer: &Layer,
    mtime: u64,
    content: &ContentStore,
    written: &mut HashSet<String>,
) -> Result<u64, Error> {
    let blob = layer
        .blob
        .as_ref()
        .ok_or_else(|| Error::internal(format!("layer {} lost its blob", layer.diff_id)))?;
    let open = || -> Result<HashingReader<Box<dyn Read>>, Error> {
        let file = std::fs::File::open(content.path(blob))?;
        Ok(HashingReader::new(unpack::decompressed(file)?))
    };
    let size = if layer.tar_size > 0 {
        layer.tar_size
    } else {
        // Layers stored before sizes were recorded: count once.
        let mut counting = open()?;
        io::copy(&mut counting, &mut io::sink()).map_err(unpack::classify)?;
        counting.finish()?.1
    };
    if !written.insert(layer.diff_id.hex().to_string()) {
        return Ok(size);
    }
    let mut reader = open()?;
    let mut header = header(tar::EntryType::Regular, size, mtime);
    tar.append_data(&mut header, blob_path(&layer.diff_id), &mut reader)
        .map_err(io_error)?;
    let (digest, bytes) = reader.finish()?;
    if digest != layer.diff_id || bytes != size {
        return Err(Error::internal(format!(
            "layer {}: its stored blob no longer matches ({digest}, {bytes} bytes)",
            layer.diff_id
        )));
    }
    Ok(size)
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn to_vec(value: &Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(Error::internal)
}

fn header(kind: tar::EntryType, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn dir(tar: &mut tar::Builder<ChunkWriter>, path: &str) -> Result<(), Error> {
    let mut header = header(tar::EntryType::Directory, 0, 0);
    tar.append_data(&mut header, path, io::empty())
        .map_err(io_error)
}

fn file(
    tar: &mut tar::Builder<ChunkWriter>,
    path: &str,
    mtime: u64,
    data: &[u8],
) -> Result<(), Error> {
    let mut header = header(tar::EntryType::Regular, data.len() as u64, mtime);
    tar.append_data(&mut header, path, data).map_err(io_error)
}

/// A write failure: the caller went away, or our own I/O failed.
fn io_error(err: io::Error) -> Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        Error::unavailable("the caller stopped reading the archive")
    } else {
        unpack::classify(err)
    }
}

/// Collects the tar into chunks of at most 1 MiB for the caller; a
/// full channel blocks the writer, so memory stays bounded.
struct ChunkWriter {
    tx: Chunks,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn new(tx: Chunks) -> Self {
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "caller went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
