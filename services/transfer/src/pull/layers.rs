//! Bringing an image's layers into the store: which are missing, one
//! shared job per layer however many pulls want it (download slot,
//! retries, mirror fallback, resume), committed in chain order.

use super::*;
use events::Bytes;
use origin::{ByOrigin, Origin};
use said::Said;

pub(super) type LayerFuture = Shared<BoxFuture<'static, Result<Arc<Layer>, Error>>>;

pub(super) struct Job {
    done: WeakShared<BoxFuture<'static, Result<Arc<Layer>, Error>>>,
    progress: watch::Receiver<State>,
    origin: Fetched,
}

/// Where a job's layer came from, once it is in.
pub(super) type Fetched = Arc<std::sync::OnceLock<Origin>>;

fn layer_event(blob: &Digest, state: State, bytes: Bytes) -> PullEvent {
    PullEvent::Layer {
        blob: blob.clone(),
        state,
        bytes,
    }
}

/// One layer a pull brings into the store: where it comes from, what it
/// must unpack to, and where it sits in the chain.
pub(super) struct LayerJob {
    /// Where to fetch it from, in order: mirrors, then the registry.
    pub(super) sources: Vec<Source>,
    pub(super) desc: OciDescriptor,
    /// The compressed blob (`desc.digest`).
    pub(super) blob: Digest,
    /// What the config says the unpacked tar hashes to.
    diff_id: Digest,
    chain_id: Digest,
    /// The chain below; `None` for a base layer.
    parent_chain: Option<Digest>,
}

impl LayerJob {
    /// Layer `i` of an image (`layers` and `diff_ids` bottom first, their
    /// `chains`), fetched from `target`'s repository.
    pub(super) fn new(
        target: &Target,
        layers: &[OciDescriptor],
        diff_ids: &[Digest],
        chains: &[Digest],
        i: usize,
    ) -> Result<Self, Error> {
        Ok(LayerJob {
            sources: target.sources.clone(),
            desc: layers[i].clone(),
            blob: layers[i].digest.parse()?,
            diff_id: diff_ids[i].clone(),
            chain_id: chains[i].clone(),
            parent_chain: i.checked_sub(1).map(|p| chains[p].clone()),
        })
    }
}

/// Which of an image's layers a pull must fetch: those whose chain is not
/// stored yet. Planned before any download, so the totals Docker's progress
/// shows are known up front.
#[derive(Debug, PartialEq)]
pub(super) struct LayerPlan {
    pub(super) chains: Vec<Digest>,
    /// Per layer: fetch it (true) or it is stored already.
    pub(super) fetch: Vec<bool>,
    /// Per layer: the bytes to download (0 for a stored one).
    pub(super) totals: Vec<u64>,
}

impl LayerPlan {
    pub(super) fn new(layers: &LayerStore, descs: &[OciDescriptor], chains: &[Digest]) -> Self {
        let fetch: Vec<bool> = chains.iter().map(|c| layers.get(c).is_none()).collect();
        let totals = descs
            .iter()
            .zip(&fetch)
            .map(|(desc, fetch)| if *fetch { desc.size.max(0) as u64 } else { 0 })
            .collect();
        LayerPlan {
            chains: chains.to_vec(),
            fetch,
            totals,
        }
    }

    /// Bytes the pull downloads.
    pub(super) fn total(&self) -> u64 {
        self.totals.iter().sum()
    }
}

impl Puller {
    /// Step 3: the planned layers, each a shared job (fetched once however
    /// many pulls want it), committed in chain order, with Docker's
    /// progress; answers where their bytes came from.
    pub(super) async fn bring_layers(
        self: &Arc<Self>,
        target: &Target,
        resolved: &Resolved,
        configured: &Configured,
        plan: &LayerPlan,
        tx: &Progress,
    ) -> Result<ByOrigin, Error> {
        let layers = &resolved.manifest.layers;
        let chains = &plan.chains;
        let mut waits: Vec<LayerFuture> = Vec::new();
        let mut watches = Vec::new();
        let mut origins = Vec::new();
        let mut parent: Option<LayerFuture> = None;
        let mut blobs = Vec::with_capacity(layers.len());
        for (i, desc) in layers.iter().enumerate() {
            let blob: Digest = desc.digest.parse()?;
            blobs.push(blob.clone());
            if !plan.fetch[i] {
                say(
                    tx,
                    layer_event(&blob, State::AlreadyExists, Bytes::default()),
                )
                .await;
                parent = None;
                continue;
            }
            say(tx, layer_event(&blob, State::Announced, Bytes::default())).await;
            let job = LayerJob::new(target, layers, &configured.diff_ids, chains, i)?;
            let (done, progress, origin) = self.job(job, parent.take());
            origins.push((plan.totals[i], origin));
            waits.push(done.clone());
            watches.push(WatchStream::new(progress).map(move |state| (i, state)));
            parent = Some(done);
        }

        let mut said = Said::new(&plan.fetch, &plan.totals);
        let mut updates = stream::select_all(watches);
        let mut all = futures::future::try_join_all(waits).fuse();
        loop {
            tokio::select! {
                result = &mut all => { result?; break; }
                Some((i, state)) = updates.next() => {
                    for (i, state, bytes) in said.reached(i, state) {
                        say(tx, layer_event(&blobs[i], state, bytes)).await;
                    }
                }
            }
        }
        // Layers that finished between the last update and the join.
        for (i, state, bytes) in said.finish() {
            say(tx, layer_event(&blobs[i], state, bytes)).await;
        }
        let mut from = ByOrigin::default();
        for (size, origin) in origins {
            if let Some(origin) = origin.get() {
                from.add(*origin, size);
            }
        }
        Ok(from)
    }

    /// The shared job that brings one layer into the store, created or
    /// joined: its end, its progress, and where it came from once in.
    pub(super) fn job(
        self: &Arc<Self>,
        job: LayerJob,
        parent: Option<LayerFuture>,
    ) -> (LayerFuture, watch::Receiver<State>, Fetched) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = jobs.get(&job.chain_id)
            && let Some(done) = running.done.upgrade()
        {
            return (done, running.progress.clone(), running.origin.clone());
        }
        let (progress_tx, progress) = watch::channel(State::Pending);
        let origin = Fetched::default();
        let this = Arc::clone(self);
        let key = job.chain_id.clone();
        let fetched = origin.clone();
        let future = async move {
            let result = this.bring_layer(&job, parent, &progress_tx, &fetched).await;
            this.jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&job.chain_id);
            result
        }
        .boxed()
        .shared();
        jobs.insert(
            key,
            Job {
                done: future.downgrade().expect("a fresh shared future upgrades"),
                progress: progress.clone(),
                origin: origin.clone(),
            },
        );
        (future, progress, origin)
    }

    /// How many of the `whole` holders next in line a blob of `size`
    /// bytes is read from at once: several for a big blob (at least the
    /// fleet's `--peer-split-mib`), else one source.
    fn split_over(&self, whole: usize, size: i64) -> usize {
        let big = self
            .fleet
            .as_ref()
            .and_then(|fleet| fleet.split_min())
            .is_some_and(|min| size.max(0) as u64 >= min);
        if whole >= 2 && big {
            whole.min(split::MOST_HOLDERS)
        } else {
            1
        }
    }

    /// Downloads and unpacks one layer (retrying what may pass), then
    /// commits it once its parent is in; says where it came from in
    /// `fetched`.
    pub(super) async fn bring_layer(
        &self,
        job: &LayerJob,
        parent: Option<LayerFuture>,
        progress: &watch::Sender<State>,
        fetched: &Fetched,
    ) -> Result<Arc<Layer>, Error> {
        let id = short(&job.desc.digest);
        let blob = &job.blob;
        let mut attempt = 1;
        let turns = self.content.ingest_turns(blob);
        let mut source = 0;
        // The fleet's peers first, when it has the blob or fetches it; or
        // this node's claim to fetch it for the fleet, held until the
        // layer is in the store and announced.
        let answer = self.fleet_sources(job).await;
        let mut claim = answer.claim;
        // How many sources from `source` on hold the blob whole.
        let mut whole = if answer.whole { answer.peers.len() } else { 0 };
        let mut sources = answer.peers;
        sources.extend(job.sources.iter().cloned());
        // Whether anyone may have the blob from this node (see
        // `registry::serve_content`): fetched without credentials.
        let mut public = false;
        let (staging, unpacked) = loop {
            let writing = turns.take().await;
            let admitted = self
                .limits
                .downloads
                .admit_or(|| {
                    progress.send_replace(State::Waiting);
                })
                .await;
            // One source, or several holders of a big blob at once.
            let span = self.split_over(whole, job.desc.size);
            let from = &sources[source..source + span];
            let result = self
                .fetch_layer(from, &job.desc, blob, progress, claim.is_some())
                .await;
            drop(admitted);
            drop(writing);
            let first = &from[0];
            match result {
                Ok(done) => {
                    if matches!(first.auth, RegistryAuth::Anonymous) && !first.identified {
                        self.content.public().mark(blob, first.oref.repository())?;
                        public = true;
                    }
                    let origin = Origin::of(first);
                    crate::metrics::pulled(origin, job.desc.size.max(0) as u64);
                    let _ = fetched.set(origin);
                    break done;
                }
                // A mirror that fails is skipped (once per layer); what it
                // wrote is resumed from the next source. Leaving the
                // fleet's peers, the fleet is asked again: another may
                // hold it by now, or the claim may be this node's to take.
                Err(err) if first.mirror.is_some() => {
                    let names: Vec<&str> = from.iter().map(|s| s.name()).collect();
                    tracing::warn!(layer = %id, mirror = names.join(", "), "mirror failed, trying the next source: {err}");
                    let left_peers = first.peer;
                    source += span;
                    whole = whole.saturating_sub(span);
                    if left_peers && !sources[source].peer && claim.is_none() {
                        let fresh = self.fleet_again(job, &sources[..source]).await;
                        whole = if fresh.whole { fresh.peers.len() } else { 0 };
                        sources.splice(source..source, fresh.peers);
                        claim = fresh.claim;
                    }
                }
                Err(err) => match self.retry().after(attempt, &err) {
                    Some(delay) => {
                        tracing::warn!(layer = %id, attempt, "layer download failed, retrying: {err}");
                        progress.send_replace(State::Retrying {
                            seconds: delay.as_secs(),
                        });
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(crate::pull::download::final_error(err)),
                },
            }
        };
        drop(turns);
        if unpacked.diff_id != job.diff_id {
            return Err(Error::invalid_argument(format!(
                "layer {id}: unpacked content has diffID {} but the config says {}",
                unpacked.diff_id, job.diff_id
            )));
        }
        progress.send_replace(State::Extracting);
        if let Some(parent) = parent {
            parent.await?;
        } else if let Some(parent_chain) = &job.parent_chain
            && self.layers.get(parent_chain).is_none()
        {
            return Err(Error::internal(format!(
                "layer {id}: parent layer {parent_chain} vanished during the pull"
            )));
        }
        let layers = Arc::clone(&self.layers);
        let layer = Layer {
            chain_id: job.chain_id.clone(),
            diff_id: job.diff_id.clone(),
            parent: job.parent_chain.clone(),
            size: unpacked.size,
            blob: Some(blob.clone()),
            inodes: unpacked.entries,
            tar_size: unpacked.tar_size,
            gzip: None,
        };
        let committed = tokio::task::spawn_blocking(move || layers.commit(staging, layer))
            .await
            .map_err(Error::internal)??;
        if let Some(fleet) = &self.fleet {
            fleet.holding(blob, public);
        }
        drop(claim);
        progress.send_replace(State::Complete);
        Ok(committed)
    }
}
