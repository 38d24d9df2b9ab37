//! Docker's import (spec 8.6): a root filesystem tar becomes a one-layer
//! image. The tar streams to a staging file (bounded memory), becomes a
//! blob, is unpacked as a base layer, and a config is made for it: the
//! platform, `created` now, the message as comment and one history entry,
//! the `changes` applied to an empty container config.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use imaged_common::Error;
use imaged_model::{Platform, Reference, changes};
use serde_json::{Map, Value, json};
use tokio_stream::{Stream, StreamExt};

use crate::archive::unpack;
use crate::neighbours::Recorder;
use crate::neighbours::recorder::Record;
use crate::store::content::ContentStore;
use crate::store::holds::hold_for_record;
use crate::store::layers::{Layer, LayerStore};
use crate::store::leases::Leases;

/// What to import, as the caller asked for it.
#[derive(Clone, Debug, Default)]
pub struct ImportOrder {
    /// `name[:tag]` to tag the image with; empty: no tag.
    pub reference: String,
    /// The image's platform; the host's when unset.
    pub platform: Option<Platform>,
    /// The image comment.
    pub message: String,
    /// Dockerfile instructions applied to the config.
    pub changes: Vec<String>,
}

/// The import engine.
pub struct Importer {
    content: ContentStore,
    layers: Arc<LayerStore>,
    leases: Arc<Leases>,
    metadata: Arc<dyn Recorder>,
}

impl Importer {
    pub fn new(
        content: ContentStore,
        layers: Arc<LayerStore>,
        leases: Arc<Leases>,
        metadata: Arc<dyn Recorder>,
    ) -> Self {
        Importer {
            content,
            layers,
            leases,
            metadata,
        }
    }

    /// Imports the tar arriving on `inbound`; answers the image ID.
    pub async fn import(
        &self,
        order: ImportOrder,
        mut inbound: impl Stream<Item = Result<Bytes, Error>> + Unpin,
    ) -> Result<String, Error> {
        let reference = match order.reference.trim() {
            "" => None,
            text => {
                let reference = Reference::parse(text)?;
                if reference.digest().is_some() {
                    return Err(Error::invalid_argument("cannot import digest reference"));
                }
                Some(reference.with_default_tag())
            }
        };
        let host = Platform::host();
        let platform = order.platform.as_ref().map_or_else(
            || Platform::or_host("", "", ""),
            |p| Platform::or_host(&p.os, &p.architecture, &p.variant),
        );
        if !platform.os.eq_ignore_ascii_case(&host.os) {
            return Err(Error::invalid_argument("operating system is not supported"));
        }
        let mut container_config = Map::new();
        changes::apply(&mut container_config, &order.changes)?;

        // The tar, to a staging file: the caller's bytes never pile up here.
        let spooled = self.layers.stage()?;
        let spool = spooled.diff().with_extension("tar");
        let mut file = std::fs::File::create(&spool)?;
        // It becomes one layer: at most what a layer may take.
        let limit = spooled.budget().stream;
        let mut spooled_bytes = 0u64;
        while let Some(chunk) = inbound.next().await {
            let chunk = chunk
                .map_err(|e| Error::invalid_argument(format!("the import stream broke: {e}")))?;
            spooled_bytes += chunk.len() as u64;
            if spooled_bytes > limit {
                return Err(Error::resource_exhausted(format!(
                    "the imported archive is larger than the {limit} bytes a layer may take"
                )));
            }
            file.write_all(&chunk)?;
        }
        drop(file);
        let (content, layers) = (self.content.clone(), Arc::clone(&self.layers));
        let (blob, unpacked, staging) =
            tokio::task::spawn_blocking(move || unpack::unpack_and_keep(&content, &layers, &spool))
                .await
                .map_err(Error::internal)??;
        drop(spooled);
        let layers = Arc::clone(&self.layers);

        let chain = unpacked.diff_id.clone();
        let _lease = self.leases.lease(std::slice::from_ref(&chain));
        let layer = match self.layers.get(&chain) {
            Some(layer) => layer,
            None => {
                let layer = Layer::unpacked(None, blob, &unpacked);
                tokio::task::spawn_blocking(move || layers.commit(staging, layer))
                    .await
                    .map_err(Error::internal)??
            }
        };

        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "created": now,
            "docker_version": imaged_model::image_config::DOCKER_VERSION,
            "config": Value::Object(container_config),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
            "history": [{"created": now}],
        });
        if !platform.variant.is_empty() {
            config["variant"] = json!(platform.variant);
        }
        if !order.message.is_empty() {
            config["comment"] = json!(order.message);
            config["history"][0]["comment"] = json!(order.message);
        }
        let config = serde_json::to_vec(&config).map_err(Error::internal)?;
        let id = imaged_model::Digest::sha256_of(&config).to_string();
        // Tagged as TagImage would, then the `import` event: one producer,
        // so the events keep Docker's order.
        let put = Record {
            content_size: 0,
            config,
            tags: reference.iter().map(|r| r.to_string()).collect(),
            digests: Vec::new(),
            layer_sizes: vec![layer.size as i64],
            action: "import".into(),
            event_ref: id.clone(),
            tag_events: true,
        };
        let chain = Some(&layer.chain_id);
        let _image_lease = hold_for_record(&self.content, &self.leases, &put.config, chain)?;
        self.metadata.record(put).await?;
        Ok(id)
    }
}
