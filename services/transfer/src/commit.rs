//! Docker's CommitImage (spec 8.3) and SquashImage (spec 8.4): a new layer
//! made from a directory in overlay form — a container's writes, or an
//! image's upper layers merged — registered on a parent chain, and a new
//! image config for it, stored through imaged-metadata.

use std::sync::Arc;

use imaged_common::Error;
use imaged_model::digest::{chain_id, chain_ids, child_chain};
use imaged_model::{Digest, Platform, Reference, changes};
use serde_json::{Map, Value, json};

use crate::containers::records::Containers;
use crate::neighbours::Recorder;
use crate::neighbours::recorder::config_diff_ids;
use crate::store::content::ContentStore;
use crate::store::holds::hold_for_record;
use crate::store::layers::{Layer, LayerStore};
use crate::store::leases::Leases;

/// What a commit makes an image of (Docker's CommitImage).
#[derive(Clone, Debug, Default)]
pub struct CommitOrder {
    pub container_id: String,
    /// `name[:tag]` to tag the new image with; empty for none.
    pub reference: String,
    pub author: String,
    pub comment: String,
    /// Dockerfile instructions applied to the config, as import's.
    pub changes: Vec<String>,
}

/// The commit and squash engine.
pub struct Committer {
    content: ContentStore,
    layers: Arc<LayerStore>,
    containers: Arc<Containers>,
    leases: Arc<Leases>,
    metadata: Arc<dyn Recorder>,
}

impl Committer {
    pub fn new(
        content: ContentStore,
        layers: Arc<LayerStore>,
        containers: Arc<Containers>,
        leases: Arc<Leases>,
        metadata: Arc<dyn Recorder>,
    ) -> Self {
        Committer {
            content,
            layers,
            containers,
            leases,
            metadata,
        }
    }

    /// Makes an image of the container's layer on its image; answers the ID.
    pub async fn commit(&self, request: CommitOrder) -> Result<String, Error> {
        let reference = parse_target(&request.reference)?;
        let record = self.containers.get(&request.container_id)?;
        let parent_config = match record.image_id.as_str() {
            "" => json!({}),
            id => self.image_config(id).await?.1,
        };
        let containers = Arc::clone(&self.containers);
        let diff_dir_record = record.clone();
        let staging = self.layers.stage()?;
        let diff = staging.diff();
        tokio::task::spawn_blocking(move || containers.diff_into(&diff_dir_record, &diff))
            .await
            .map_err(Error::internal)??;
        let layer = self
            .register(staging, record.chain_id.clone(), false)
            .await?;

        // The config: the parent's, the changes applied, one more step.
        let mut run_config = parent_config["config"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        changes::apply(&mut run_config, &request.changes)?;
        let now = now();
        let mut config = parent_config.as_object().cloned().unwrap_or_default();
        let host = Platform::host();
        if config
            .get("architecture")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            config.insert("architecture".into(), json!(host.architecture));
        }
        config.insert("os".into(), json!(host.os));
        config.insert("created".into(), json!(now));
        config.insert("container".into(), json!(request.container_id));
        config.insert("container_config".into(), parent_config["config"].clone());
        config.insert("config".into(), Value::Object(run_config.clone()));
        config.insert(
            "docker_version".into(),
            json!(imaged_model::image_config::DOCKER_VERSION),
        );
        set_text(&mut config, "author", &request.author);
        set_text(&mut config, "comment", &request.comment);
        let mut diff_ids = config_diff_ids(&parent_config)?;
        let empty_layer = layer.diff_id == empty_tar_digest();
        if !empty_layer {
            diff_ids.push(layer.diff_id.clone());
        }
        config.insert(
            "rootfs".into(),
            json!({"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()}),
        );
        let created_by = parent_config["config"]["Cmd"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let mut step = json!({"created": now, "created_by": created_by});
        if !request.author.is_empty() {
            step["author"] = json!(request.author);
        }
        if !request.comment.is_empty() {
            step["comment"] = json!(request.comment);
        }
        if empty_layer {
            step["empty_layer"] = json!(true);
        }
        push_history(&mut config, step);
        let id = self.create(Value::Object(config), &record.image_id).await?;
        if let Some(reference) = reference {
            self.metadata.tag(&id, &reference.to_string()).await?;
        }
        Ok(id)
    }

    /// Merges the layers of `image` above `parent` (an ancestor; empty
    /// flattens the whole image) into one; answers the new image's ID (the
    /// original stays).
    pub async fn squash(&self, image: &str, parent: &str) -> Result<String, Error> {
        let (image_id, config) = self.image_config(image).await?;
        let diff_ids = config_diff_ids(&config)?;
        let (parent_ids, parent_history_len) = match parent {
            "" => (Vec::new(), 0),
            parent => {
                let (parent_id, parent_config) = self.image_config(parent).await?;
                let ids = config_diff_ids(&parent_config)?;
                if !diff_ids.starts_with(&ids) {
                    return Err(Error::invalid_argument(format!(
                        "layer ID '{parent_id}' is not a parent of the specified layer: cannot provide diff to non-parent"
                    )));
                }
                let history = parent_config["history"].as_array().map_or(0, Vec::len);
                (ids, history)
            }
        };
        let chains = chain_ids(&diff_ids);
        let _lease = self.leases.lease(&chains);
        let above: Vec<_> = chains[parent_ids.len()..]
            .iter()
            .map(|c| self.layers.diff_path(c))
            .collect();
        let staging = self.layers.stage()?;
        let diff = staging.diff();
        let keep_whiteouts = !parent_ids.is_empty();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            for layer in &above {
                crate::archive::merge::apply(layer, &diff, keep_whiteouts)?;
            }
            Ok(())
        })
        .await
        .map_err(Error::internal)??;
        let layer = self.register(staging, chain_id(&parent_ids), true).await?;

        let now = now();
        let mut new = config.as_object().cloned().unwrap_or_default();
        let mut ids: Vec<String> = parent_ids.iter().map(|d| d.to_string()).collect();
        ids.push(layer.diff_id.to_string());
        new.insert("rootfs".into(), json!({"type": "layers", "diff_ids": ids}));
        if let Some(history) = new.get_mut("history").and_then(Value::as_array_mut) {
            for step in history.iter_mut().skip(parent_history_len) {
                step["empty_layer"] = json!(true);
            }
        }
        let comment = match parent {
            "" => format!("create new from {image_id}"),
            parent => format!("merge {image_id} to {parent}"),
        };
        push_history(&mut new, json!({"created": now, "comment": comment}));
        new.insert("created".into(), json!(now));
        self.create(Value::Object(new), "").await
    }

    /// Packs `staging`'s diff into a tar blob and registers it on `parent`.
    /// An empty diff is stored only with `keep_empty` (a squash's image
    /// lists it; a commit's does not).
    async fn register(
        &self,
        staging: crate::store::layers::Staging,
        parent: Option<Digest>,
        keep_empty: bool,
    ) -> Result<Arc<Layer>, Error> {
        let content = self.content.clone();
        let layers = Arc::clone(&self.layers);
        tokio::task::spawn_blocking(move || -> Result<Arc<Layer>, Error> {
            let diff = staging.diff();
            let tar_path = diff.with_extension("tar");
            let file = std::fs::File::create(&tar_path)?;
            crate::archive::pack::pack(&diff, std::io::BufWriter::new(file))?;
            // Unpack the tar itself, so the layer is exactly what its
            // diffID says.
            let (blob, unpacked, fresh) =
                crate::archive::unpack::unpack_and_keep(&content, &layers, &tar_path)?;
            drop(staging);
            let chain = child_chain(parent.as_ref(), &unpacked.diff_id);
            if let Some(existing) = layers.get(&chain) {
                return Ok(existing);
            }
            if !keep_empty && unpacked.diff_id == empty_tar_digest() {
                // As Docker: an empty diff is no layer (the image's step
                // says `empty_layer`), so nothing is kept of it.
                drop(fresh);
                let used = layers.all().iter().any(|l| l.blobs().any(|b| *b == blob));
                if !used {
                    content.delete(&blob)?;
                }
                return Ok(Arc::new(Layer::unpacked(parent, blob, &unpacked)));
            }
            layers.commit(fresh, Layer::unpacked(parent, blob, &unpacked))
        })
        .await
        .map_err(Error::internal)?
    }

    async fn image_config(&self, image: &str) -> Result<(String, Value), Error> {
        let answer = self.metadata.image(image, None).await?;
        let config = serde_json::from_slice(&answer.config).map_err(Error::internal)?;
        Ok((answer.id, config))
    }

    /// Records the image `config` describes, holding its chain first
    /// (see crate::store::holds).
    async fn create(&self, config: Value, parent: &str) -> Result<String, Error> {
        let top = chain_ids(&config_diff_ids(&config)?).last().cloned();
        let bytes = serde_json::to_vec(&config).map_err(Error::internal)?;
        let _image_lease = hold_for_record(&self.content, &self.leases, &bytes, top.as_ref())?;
        self.metadata.create_image(bytes, parent).await
    }
}

fn parse_target(reference: &str) -> Result<Option<Reference>, Error> {
    match reference.trim() {
        "" => Ok(None),
        text => {
            let parsed = Reference::parse(text)?;
            if parsed.digest().is_some() {
                return Err(Error::invalid_argument(format!(
                    "cannot commit to a digest reference: {text}"
                )));
            }
            Ok(Some(parsed.with_default_tag()))
        }
    }
}

fn push_history(config: &mut Map<String, Value>, step: Value) {
    let history = config.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    history.as_array_mut().expect("an array").push(step);
}

fn set_text(config: &mut Map<String, Value>, key: &str, value: &str) {
    if value.is_empty() {
        config.remove(key);
    } else {
        config.insert(key.into(), json!(value));
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The diffID of an empty layer tar (1024 zero bytes).
fn empty_tar_digest() -> Digest {
    Digest::sha256_of(&[0u8; 1024])
}
