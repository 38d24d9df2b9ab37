//! Docker's load (spec 9.3, the manifest.json form): the archive streams
//! in, is unpacked safely into a staging directory (only files and
//! directories, every path inside it; links between its own files are
//! followed, never made), then each image's layers are
//! registered in order — reused when the chain is here, else kept as blobs
//! and unpacked — and the image is recorded in imaged-metadata with its
//! tags, which sends the `load` event.

pub mod events;
pub(crate) mod legacy;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::neighbours::recorder::Record;
use crate::store::holds::hold_for_record;
use bytes::Bytes;
use imaged_common::Error;
use imaged_model::digest::chain_ids;
use imaged_model::image_config::ImageConfig;
use imaged_model::{Digest, Platform, Reference};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::archive::tar_limits::TarGuard;
use crate::archive::unpack::{self, relative_path};
use crate::neighbours::Recorder;
use crate::registry::manifest::{MAX_JSON_BLOB, MAX_MANIFEST, check_depth};
use crate::store::content::ContentStore;
use crate::store::layers::{Layer, LayerStore};
use crate::store::leases::Leases;

use events::{LoadEvent, LoadOptions, Progress, say};

/// One entry of manifest.json.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
    /// The parent image's ID, when the parent is in the archive too.
    #[serde(rename = "Parent", default)]
    parent: Option<String>,
}

/// What a load needs from an image config.
/// The load engine.
pub struct Loader {
    pub(crate) content: ContentStore,
    pub(crate) layers: Arc<LayerStore>,
    pub(crate) leases: Arc<Leases>,
    pub(crate) metadata: Arc<dyn Recorder>,
}

impl Loader {
    pub fn new(
        content: ContentStore,
        layers: Arc<LayerStore>,
        leases: Arc<Leases>,
        metadata: Arc<dyn Recorder>,
    ) -> Self {
        Loader {
            content,
            layers,
            leases,
            metadata,
        }
    }

    /// Loads the archive arriving on `inbound`, saying how it goes on
    /// `tx`.
    pub async fn load(
        &self,
        options: LoadOptions,
        mut inbound: impl tokio_stream::Stream<Item = Result<Bytes, Error>> + Unpin,
        tx: Progress,
    ) -> Result<(), Error> {
        let quiet = options.quiet;
        let platform = options.platform.map(|p| p.normalize());

        // Unpack the archive while it arrives.
        let staging = self.layers.stage()?;
        let dir = staging.diff();
        let (chunks_tx, chunks_rx) = mpsc::channel::<Option<Bytes>>(4);
        let target = dir.clone();
        // The whole archive may take at most the free space it lands on.
        let limit = staging.budget().free;
        let extracting = tokio::task::spawn_blocking(move || {
            extract(ChannelReader::new(chunks_rx), &target, limit)
        });
        while let Some(chunk) = inbound.next().await {
            let chunk = chunk
                .map_err(|e| Error::invalid_argument(format!("the archive stream broke: {e}")))?;
            if chunks_tx.send(Some(chunk)).await.is_err() {
                break; // extraction stopped; its error follows
            }
        }
        let _ = chunks_tx.send(None).await;
        drop(chunks_tx);
        let links = extracting.await.map_err(Error::internal)??;

        let manifest_path = archive_file(&dir, &links, "manifest.json")?;
        if !manifest_path.exists() {
            // Written before Docker 1.10.
            return self.load_legacy(&dir, &links).await;
        }
        let manifest = read_capped(&manifest_path, MAX_MANIFEST as u64, "manifest.json")?;
        let entries: Option<Vec<Entry>> = serde_json::from_slice(&manifest)
            .map_err(|e| Error::invalid_argument(format!("invalid manifest.json: {e}")))?;
        let entries = entries.ok_or_else(|| {
            Error::invalid_argument("invalid manifest, manifest cannot be null (but can be [])")
        })?;

        // Every path the manifest names is checked before anything is
        // stored: a bad one refuses the whole archive.
        for entry in &entries {
            archive_file(&dir, &links, &entry.config)?;
            for layer in &entry.layers {
                archive_file(&dir, &links, layer)?;
            }
            check_depth("invalid manifest.json", entry.layers.len())?;
        }
        let mut adopted: HashMap<PathBuf, Digest> = HashMap::new();
        let mut loaded = Vec::new();
        // (child ID, its config, the parent it names), applied at the end.
        let mut parents: Vec<(String, Vec<u8>, String)> = Vec::new();
        let mut configs: HashMap<String, Vec<u8>> = HashMap::new();
        let mut last_tagged = false;
        for entry in entries {
            let config = read_capped(
                &archive_file(&dir, &links, &entry.config)?,
                MAX_JSON_BLOB,
                "config",
            )?;
            let parsed = ImageConfig::parse(&config)?;
            let image_platform = parsed.platform.clone();
            let host = Platform::host();
            if !image_platform.os.is_empty() && !image_platform.os.eq_ignore_ascii_case(&host.os) {
                return Err(Error::invalid_argument(format!(
                    "cannot load {} image on {}",
                    image_platform.os, host.os
                )));
            }
            if let Some(wanted) = &platform
                && !wanted.is(&image_platform)
            {
                continue; // Docker skips it silently
            }
            let diff_ids = parsed.diff_ids;
            if diff_ids.len() != entry.layers.len() {
                return Err(Error::invalid_argument(format!(
                    "invalid manifest, layers length mismatch: expected {}, got {}",
                    diff_ids.len(),
                    entry.layers.len()
                )));
            }
            let tags = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    Reference::parse(t)
                        .ok()
                        .filter(|r| r.tag().is_some() && r.digest().is_none())
                        .ok_or_else(|| Error::invalid_argument(format!("invalid tag \"{t}\"")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let chains = chain_ids(&diff_ids);
            let _lease = self.leases.lease(&chains);
            let mut sizes = Vec::new();
            for (i, (chain, diff_id)) in chains.iter().zip(&diff_ids).enumerate() {
                if let Some(layer) = self.layers.get(chain) {
                    sizes.push(layer.size as i64);
                    continue;
                }
                if !quiet {
                    say(
                        &tx,
                        LoadEvent::LoadingLayer {
                            diff_id: diff_id.clone(),
                        },
                    )
                    .await;
                }
                let path = archive_file(&dir, &links, &entry.layers[i])?;
                let layer = Layer {
                    chain_id: chain.clone(),
                    diff_id: diff_id.clone(),
                    parent: i.checked_sub(1).map(|p| chains[p].clone()),
                    size: 0,
                    blob: None,
                    inodes: 0,
                    tar_size: 0,
                    gzip: None,
                };
                let committed = self.register(path, layer, i, &mut adopted).await?;
                sizes.push(committed.size as i64);
            }

            let put = Record {
                content_size: 0,
                config: config.clone(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                digests: Vec::new(),
                layer_sizes: sizes,
                action: "load".into(),
                event_ref: Digest::sha256_of(&config).to_string(),
                tag_events: false,
            };
            // The image holds its chain before metadata has it (see
            // crate::store::holds).
            let _image_lease =
                hold_for_record(&self.content, &self.leases, &config, chains.last())?;
            let recorded = self.metadata.record(put).await?;
            for moved in recorded.moved {
                let (tag, from_id) = (moved.tag, moved.from_id);
                say(&tx, LoadEvent::Renamed { tag, from_id }).await;
            }
            for tag in &tags {
                say(&tx, LoadEvent::Loaded { tag: tag.clone() }).await;
            }
            last_tagged = !tags.is_empty();
            if let Some(parent) = entry.parent.filter(|p| !p.is_empty()) {
                parents.push((recorded.id.clone(), config.clone(), parent));
            }
            configs.insert(recorded.id.clone(), config);
            loaded.push(recorded.id);
        }
        // Parent links, only to a parent loaded from the same archive that
        // is a valid parent (Docker's rule).
        for (child, config, parent) in parents {
            let Some(parent_config) = configs.get(&parent) else {
                continue;
            };
            if !valid_parent(parent_config, &config) {
                return Err(Error::invalid_argument(format!(
                    "image {parent} is not a valid parent for {child}"
                )));
            }
            self.metadata.create_image(config, &parent).await?;
        }
        if !last_tagged {
            for id in &loaded {
                say(&tx, LoadEvent::LoadedId { id: id.clone() }).await;
            }
        }
        drop(staging);
        Ok(())
    }

    /// Keeps the layer file as a blob and unpacks it into the layer store.
    async fn register(
        &self,
        path: PathBuf,
        mut layer: Layer,
        index: usize,
        adopted: &mut HashMap<PathBuf, Digest>,
    ) -> Result<Arc<Layer>, Error> {
        // A file two entries share was kept as a blob the first time.
        let source = match adopted.get(&path) {
            Some(blob) => self.content.path(blob),
            None => path.clone(),
        };
        let (content, layers) = (self.content.clone(), Arc::clone(&self.layers));
        let (blob, layer) = tokio::task::spawn_blocking(move || {
            let (blob, unpacked, staging) = unpack::unpack_and_keep(&content, &layers, &source)?;
            if unpacked.diff_id != layer.diff_id {
                return Err(Error::invalid_argument(format!(
                    "invalid diffID for layer {index}: expected \"{}\", got \"{}\"",
                    layer.diff_id, unpacked.diff_id
                )));
            }
            layer.size = unpacked.size;
            layer.inodes = unpacked.entries;
            layer.tar_size = unpacked.tar_size;
            layer.blob = Some(blob.clone());
            Ok::<_, Error>((blob, layers.commit(staging, layer)?))
        })
        .await
        .map_err(Error::internal)??;
        adopted.insert(path, blob);
        Ok(layer)
    }
}

/// Docker's valid-parent check: the child's history is the parent's plus
/// one entry, with an equal prefix (and so equal `created` times).
fn valid_parent(parent: &[u8], child: &[u8]) -> bool {
    let history = |bytes: &[u8]| -> Vec<serde_json::Value> {
        serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|c| c["history"].as_array().cloned())
            .unwrap_or_default()
    };
    let (p, c) = (history(parent), history(child));
    c.len() == p.len() + 1 && c[..p.len()] == p[..]
}

/// An archive that is not a tar, or ends inside one, in Docker's words
/// (its untar runs in a child process, hence the exit status).
fn archive_error(err: io::Error) -> Error {
    let err = unpack::classify(err);
    match err.code() {
        tonic::Code::InvalidArgument => {
            let text = err.message().trim_start_matches("invalid layer tar: ");
            let why = if text.contains("failed to read entire block") {
                "unexpected EOF"
            } else {
                text
            };
            Error::invalid_argument(format!("Error processing tar file(exit status 1): {why}"))
        }
        _ => err,
    }
}

/// Reads a JSON file of the archive, refusing one bigger than `max`. A
/// missing one is Docker's `open <path>: no such file or directory`.
pub(crate) fn read_capped(path: &Path, max: u64, what: &str) -> Result<Vec<u8>, Error> {
    let file = std::fs::File::open(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => Error::invalid_argument(format!(
            "open {}: no such file or directory",
            path.display()
        )),
        _ => err.into(),
    })?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::invalid_argument(format!(
            "{what} exceeds the {max}-byte limit"
        )));
    }
    Ok(bytes)
}

/// Links an archive holds between its own files: link path → the path it
/// names, both relative to the archive's root. `docker save` up to v24 and
/// skopeo's docker-archive write one `layer.tar` per image and link the
/// shared ones. Links are never made on disk: a path the manifest names is
/// followed through this map ([`archive_file`]).
pub(crate) type Links = HashMap<PathBuf, PathBuf>;

/// The most links an archive may hold (one per layer an image shares with
/// another, in the archives Docker writes): the map stays small.
const MAX_LINKS: usize = 65_536;

/// Unpacks the archive: regular files and directories, every path inside
/// `dir`; links (symbolic or hard) that stay inside the archive are
/// answered, not made.
fn extract(reader: impl Read, dir: &Path, limit: u64) -> Result<Links, Error> {
    let root = crate::archive::beneath::Root::open(dir)?;
    let mut archive = tar::Archive::new(TarGuard::new(reader, limit));
    let mut links = Links::new();
    for entry in archive.entries().map_err(archive_error)? {
        let mut entry = entry.map_err(archive_error)?;
        let raw = entry.path().map_err(unpack::classify)?.into_owned();
        let path = relative_path(&raw)?;
        if path.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                root.create_dirs(&path).map_err(unpack::classify)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let at = root.entry(&path).map_err(unpack::classify)?;
                at.remove().map_err(unpack::classify)?;
                let mut file = at.create_file().map_err(unpack::classify)?;
                crate::archive::sparse::write_sparse(&mut entry, &mut file)
                    .map_err(unpack::classify)?;
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(unpack::classify)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                // A symlink names a path from its own directory, a hard
                // link from the archive's root.
                let from = match kind {
                    tar::EntryType::Symlink => path.parent().unwrap_or(Path::new("")),
                    _ => Path::new(""),
                };
                if links.len() >= MAX_LINKS {
                    return Err(Error::invalid_argument(format!(
                        "invalid archive: more than {MAX_LINKS} links"
                    )));
                }
                links.insert(path.clone(), link_target(&raw, from, &target)?);
            }
            other => {
                return Err(Error::invalid_argument(format!(
                    "invalid archive: {} is a {other:?}; an image archive holds only files, directories and links between them",
                    crate::archive::beneath::quote(raw.as_os_str())
                )));
            }
        }
    }
    Ok(links)
}

/// Where a link at `raw` whose directory is `from` leads, when that stays
/// inside the archive.
fn link_target(raw: &Path, from: &Path, target: &Path) -> Result<PathBuf, Error> {
    let refuse = |why: &str| {
        Error::invalid_argument(format!(
            "invalid archive: {} {why}",
            crate::archive::beneath::quote(raw.as_os_str())
        ))
    };
    if target.as_os_str().is_empty() {
        return Err(refuse("links to nothing"));
    }
    let mut out = from.to_path_buf();
    for component in target.components() {
        match component {
            std::path::Component::Normal(part) => out.push(part),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    return Err(refuse("links out of the archive"));
                }
            }
            std::path::Component::RootDir | std::path::Component::Prefix(_) => {
                return Err(refuse("links out of the archive"));
            }
        }
    }
    Ok(out)
}

/// The file the manifest's `rel` names in the unpacked archive, followed
/// through the archive's links.
pub(crate) fn archive_file(dir: &Path, links: &Links, rel: &str) -> Result<PathBuf, Error> {
    let mut path = relative_path(Path::new(rel))?;
    for _ in 0..40 {
        match links.get(&path) {
            Some(next) => path = next.clone(),
            None => return Ok(dir.join(path)),
        }
    }
    Err(Error::invalid_argument(format!(
        "invalid archive: {rel} is a loop of links"
    )))
}

/// Reads the chunks the async side receives; `None` ends the archive, a
/// dropped sender means the caller went away.
struct ChannelReader {
    chunks: mpsc::Receiver<Option<Bytes>>,
    current: Bytes,
    ended: bool,
}

impl ChannelReader {
    fn new(chunks: mpsc::Receiver<Option<Bytes>>) -> Self {
        ChannelReader {
            chunks,
            current: Bytes::new(),
            ended: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.chunks.blocking_recv() {
                Some(Some(bytes)) => self.current = bytes,
                Some(None) => self.ended = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the archive stream ended early",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
