//! `containerd.services.snapshots.v1.Snapshots` over the snapshot store:
//! what containerd calls on a proxy snapshotter. Besides translating, it
//! answers containerd's remote-snapshot protocol in Prepare: a layer
//! imaged has, or fetches itself from the `containerd.io/snapshot/cri.*`
//! labels, is committed under its chain ID and answered ALREADY_EXISTS, so
//! containerd downloads nothing (as stargz-snapshotter does).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use imaged_api::containerd::services::snapshots::v1 as pb;
use imaged_api::containerd::types::Mount as WireMount;
use imaged_common::Error;
use imaged_model::Digest;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::filter::Filter;
use super::{Info, Kind, REF_LABEL, Snapshots};
use crate::pull::Puller;
use crate::storage::Mount;
use crate::store::gc::Gc;

/// The labels containerd's CRI plugin adds for remote snapshotters.
const IMAGE_REF_LABEL: &str = "containerd.io/snapshot/cri.image-ref";
const MANIFEST_LABEL: &str = "containerd.io/snapshot/cri.manifest-digest";
const LAYER_LABEL: &str = "containerd.io/snapshot/cri.layer-digest";

/// Infos per List message, as containerd batches them.
const LIST_BATCH: usize = 100;

/// The proxy snapshotter.
pub struct SnapshotService {
    pub store: Arc<Snapshots>,
    pub puller: Arc<Puller>,
    /// Collects the layers a removed snapshot was the last to hold.
    pub gc: Arc<Gc>,
}

impl SnapshotService {
    /// Runs a blocking store call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Snapshots) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::from)
    }

    /// The remote-snapshot answer to a Prepare with
    /// `containerd.io/snapshot.ref`: `Some(status)` (ALREADY_EXISTS) when
    /// the layer is committed now, `None` to prepare as usual (containerd
    /// then downloads and applies the layer itself).
    async fn remote(&self, parent: &str, labels: &BTreeMap<String, String>) -> Option<Status> {
        let target = labels.get(REF_LABEL)?;
        let chain: Digest = target.parse().ok()?;
        let layers = &self.puller.layers;
        let fetched = layers.get(&chain).is_none();
        if fetched {
            let image = labels.get(IMAGE_REF_LABEL)?;
            let manifest: Digest = labels.get(MANIFEST_LABEL)?.parse().ok()?;
            let blob: Digest = labels.get(LAYER_LABEL)?.parse().ok()?;
            if let Err(err) = self
                .puller
                .remote_layer(image, &manifest, &blob, &chain)
                .await
            {
                tracing::warn!(%image, layer = %blob, "remote snapshot not fetched; containerd will fetch it: {err}");
                return None;
            }
        }
        let layer = layers.get(&chain)?;
        let layer_parent = layer
            .parent
            .as_ref()
            .map(Digest::to_string)
            .unwrap_or_default();
        if layer_parent != parent {
            // containerd looks for the target on this parent only.
            return None;
        }
        let labels = labels.clone();
        if let Err(status) = self.blocking(move |s| s.adopt_layer(&chain, labels)).await {
            return Some(status);
        }
        if fetched {
            // Fetched for containerd alone: it goes with containerd's
            // snapshot, once imaged-metadata says no image needs it.
            self.puller.leases.defer(layer.chain_id.clone());
        }
        Some(Status::already_exists(format!(
            "target snapshot {target} already exists"
        )))
    }
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for SnapshotService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        if let Some(status) = self.remote(&r.parent, &labels).await {
            return Err(status);
        }
        let mounts = self
            .blocking(move |s| s.prepare(&r.key, &r.parent, labels, false))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: wire_mounts(mounts),
        }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        let mounts = self
            .blocking(move |s| s.prepare(&r.key, &r.parent, labels, true))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: wire_mounts(mounts),
        }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let mounts = self.store.mounts(&request.into_inner().key)?;
        Ok(Response::new(pb::MountsResponse {
            mounts: wire_mounts(mounts),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        let labels = r.labels.into_iter().collect();
        self.blocking(move |s| s.commit(&r.name, &r.key, labels))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        self.blocking(move |s| s.remove(&key)).await?;
        self.gc.collect_deferred().await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let info = self.store.stat(&request.into_inner().key)?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(wire_info(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("info is required"))?;
        let wanted = Info {
            name: info.name,
            parent: info.parent,
            kind: Kind::Committed,
            labels: info.labels.into_iter().collect(),
            created: 0,
            updated: 0,
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let updated = self.blocking(move |s| s.update(&wanted, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(wire_info(updated)),
        }))
    }

    type ListStream = ReceiverStream<Result<pb::ListSnapshotsResponse, Status>>;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = request
            .into_inner()
            .filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>, _>>()?;
        let infos = self.store.list(&filters);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for batch in infos.chunks(LIST_BATCH) {
                let message = pb::ListSnapshotsResponse {
                    info: batch.iter().cloned().map(wire_info).collect(),
                };
                if tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = request.into_inner().key;
        let usage = self.blocking(move |s| s.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: usage.size as i64,
            inodes: usage.inodes as i64,
        }))
    }

    async fn cleanup(&self, _: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.blocking(|s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

/// Serves the snapshot service on the Unix socket `path` (mode 0660, group
/// `gid`) until the process stops; answers only when it cannot.
pub async fn serve(
    path: &std::path::Path,
    service: SnapshotService,
    gid: Option<u32>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = imaged_common::server::bind_unix(path, gid)?;
    tracing::info!(listen = %path.display(), "containerd proxy snapshotter serving");
    tonic::transport::Server::builder()
        .add_service(pb::snapshots_server::SnapshotsServer::new(service))
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
        .await
        .context("the snapshot service stopped")
}

fn wire_info(info: Info) -> pb::Info {
    pb::Info {
        name: info.name,
        parent: info.parent,
        kind: match info.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(imaged_api::timestamp(info.created.into())),
        updated_at: Some(imaged_api::timestamp(info.updated.into())),
        labels: info.labels.into_iter().collect::<HashMap<_, _>>(),
    }
}

fn wire_mounts(mounts: Vec<Mount>) -> Vec<WireMount> {
    mounts
        .into_iter()
        .map(|m| WireMount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}
