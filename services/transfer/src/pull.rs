//! Docker's PullImage: resolve, pick the platform, fetch the config, then
//! stream every missing layer registry → hasher → decompressor → tar
//! reader → files, in parallel under the download limit, committing the
//! chain in order; finally record the image in imaged-metadata.
//!
//! A layer wanted by several pulls at once is fetched and unpacked once:
//! its job is shared, and it runs as long as one pull still waits on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use futures::{StreamExt, stream};
use imaged_api::internal::v1::PutImageRequest;
use imaged_api::v1::{PullImageProgress, PullImageRequest};
use imaged_common::Error;
use imaged_model::digest::chain_ids;
use imaged_model::image_config::ImageConfig;
use imaged_model::{Digest, Platform, Reference};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::WatchStream;

use crate::containerd::{self, Containerd};
use crate::content::ContentStore;
use crate::fetch;
use crate::layers::{Layer, LayerStore};
use crate::leases::Leases;
use crate::limits::Limits;
use crate::manifest::{
    ACCEPTED, MANIFEST_TIMEOUT, MAX_JSON_BLOB, MAX_MANIFEST, Manifest, Probe, check_depth,
    check_manifest, check_media_type, choose_platform, schema1,
};
use crate::metadata::Metadata;
use crate::registry::{self, Registries, Retry, Source};

/// How long a pull waits for bytes, and the throughput it must keep.
#[derive(clap::Args, Clone, Debug)]
pub struct PullArgs {
    /// Seconds without a byte from the registry before a layer download is
    /// cancelled as stalled.
    #[arg(long, env = "IMAGED_STALL_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout_secs: u64,
    /// Bytes per second a layer download must average over each stall
    /// window (0: only a complete stall cancels).
    #[arg(long, env = "IMAGED_MIN_DOWNLOAD_RATE", default_value_t = 1024)]
    pub min_download_rate: u64,
    /// Registries (`host[:port]`) reached over plain HTTP besides
    /// loopback ones. Repeatable.
    #[arg(
        long = "insecure-registry",
        env = "IMAGED_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// containerd's registry host configuration: `DIR/<registry
    /// host>/hosts.toml` (or `DIR/_default/hosts.toml`) lists the mirrors
    /// a pull tries, in order, before the registry itself.
    #[arg(long, env = "IMAGED_REGISTRY_CONFIG_DIR")]
    pub registry_config_dir: Option<std::path::PathBuf>,
    /// Mirrors of Docker Hub, as Docker's `registry-mirrors`
    /// (`https://mirror.example`); a `docker.io/hosts.toml` under
    /// `--registry-config-dir` takes precedence. Repeatable.
    #[arg(
        long = "registry-mirror",
        env = "IMAGED_REGISTRY_MIRRORS",
        value_delimiter = ','
    )]
    pub registry_mirrors: Vec<String>,
}

/// One layer's state, as Docker words it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum State {
    /// Created, not yet admitted: not shown. Docker says "Waiting" only
    /// for a download the concurrency limit holds back.
    Pending,
    Waiting,
    Downloading {
        current: u64,
        total: u64,
    },
    Retrying {
        seconds: u64,
    },
    Verifying,
    DownloadComplete,
    Extracting,
    Complete,
    AlreadyExists,
}

impl State {
    fn status(&self) -> String {
        match self {
            State::Pending | State::Waiting => "Waiting".into(),
            State::Downloading { .. } => "Downloading".into(),
            State::Retrying { seconds } => format!("Retrying in {seconds} seconds"),
            State::Verifying => "Verifying Checksum".into(),
            State::DownloadComplete => "Download complete".into(),
            State::Extracting => "Extracting".into(),
            State::Complete => "Pull complete".into(),
            State::AlreadyExists => "Already exists".into(),
        }
    }
}

type LayerFuture = Shared<BoxFuture<'static, Result<Arc<Layer>, Error>>>;

struct Job {
    done: WeakShared<BoxFuture<'static, Result<Arc<Layer>, Error>>>,
    progress: watch::Receiver<State>,
}

/// The pull engine, shared by every pull of the process.
pub struct Puller {
    pub(crate) content: ContentStore,
    pub(crate) layers: Arc<LayerStore>,
    limits: Arc<Limits>,
    registries: Arc<Registries>,
    metadata: Metadata,
    pub(crate) stall: Duration,
    pub(crate) min_rate: u64,
    jobs: Mutex<HashMap<Digest, Job>>,
    /// Chains pulls in flight hold (shared with load, import, commit and
    /// GC).
    pub(crate) leases: Arc<Leases>,
    /// The layers and diff IDs of manifests remote snapshots came from, by
    /// manifest digest: containerd asks layer by layer.
    remote_plans: Mutex<HashMap<Digest, Arc<RemotePlan>>>,
    /// The containerd every pulled image is registered in, if any.
    containerd: Option<Containerd>,
}

/// What a remote snapshot needs of its image: the layer descriptors and
/// the config's diff IDs, bottom first.
struct RemotePlan {
    layers: Vec<OciDescriptor>,
    diff_ids: Vec<Digest>,
}

/// How many images' plans [`Puller::remote_layer`] keeps.
const REMOTE_PLANS: usize = 64;

/// One layer a pull brings into the store: where it comes from, what it
/// must unpack to, and where it sits in the chain.
struct LayerJob {
    /// Where to fetch it from, in order: mirrors, then the registry.
    sources: Vec<Source>,
    desc: OciDescriptor,
    /// The compressed blob (`desc.digest`).
    blob: Digest,
    /// What the config says the unpacked tar hashes to.
    diff_id: Digest,
    chain_id: Digest,
    /// The chain below; `None` for a base layer.
    parent_chain: Option<Digest>,
}

impl LayerJob {
    /// Layer `i` of an image (`layers` and `diff_ids` bottom first, their
    /// `chains`), fetched from `target`'s repository.
    fn new(
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

/// What a pull reads from: the request, resolved once.
struct Target {
    /// With `latest` added when it named no tag or digest.
    reference: Reference,
    /// As Docker shows it (`busybox:latest`).
    shown: String,
    /// The platform wanted, the host's filling the gaps.
    platform: Platform,
    /// Whether the caller named a platform (Docker then warns on a
    /// mismatch).
    platform_asked: bool,
    /// Where it is read from: the registry's mirrors, then the registry
    /// itself (always the last).
    sources: Vec<Source>,
}

impl Target {
    fn new(request: &PullImageRequest, registries: &Registries) -> Result<Self, Error> {
        let reference = Reference::parse(&request.reference)?;
        if reference.familiar_name() == "scratch" {
            return Err(Error::InvalidArgument(
                "'scratch' is a reserved name".into(),
            ));
        }
        let reference = if reference.digest().is_some() {
            reference
        } else {
            reference.with_default_tag()
        };
        let platform = request.platform.as_ref().map_or_else(
            || Platform::or_host("", "", ""),
            |p| Platform::or_host(&p.os, &p.architecture, &p.variant),
        );
        let auth = registry::auth(request.auth.as_ref());
        Ok(Target {
            sources: registries.sources(&reference, &auth),
            shown: reference.familiar(),
            reference,
            platform,
            platform_asked: request.platform.is_some(),
        })
    }

    /// The registry itself, and the mirrors to try before it.
    fn upstream_and_mirrors(&self) -> (&Source, &[Source]) {
        self.sources
            .split_last()
            .expect("the registry itself is always a source")
    }

    /// The tag, or the digest, Docker's first line names.
    fn tag_or_digest(&self) -> String {
        self.reference
            .tag()
            .map(str::to_string)
            .or_else(|| self.reference.digest().map(|d| d.to_string()))
            .unwrap_or_default()
    }
}

/// What step 1 found: the image manifest, its digest as pulled (the index's
/// when there was one), and the small blobs to store once the layers are.
struct Resolved {
    top_digest: Digest,
    manifest: Manifest,
    small_blobs: Vec<(Digest, Bytes)>,
}

/// What step 2 read: the config bytes (recorded as they are) and its
/// diffIDs, bottom first.
struct Configured {
    config: Vec<u8>,
    diff_ids: Vec<Digest>,
}

/// Which of an image's layers a pull must fetch: those whose chain is not
/// stored yet. Planned before any download, so the totals Docker's progress
/// shows are known up front.
#[derive(Debug, PartialEq)]
struct LayerPlan {
    chains: Vec<Digest>,
    /// Per layer: fetch it (true) or it is stored already.
    fetch: Vec<bool>,
    /// Per layer: the bytes to download (0 for a stored one).
    totals: Vec<u64>,
}

impl LayerPlan {
    fn new(layers: &LayerStore, descs: &[OciDescriptor], chains: &[Digest]) -> Self {
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
    fn total(&self) -> u64 {
        self.totals.iter().sum()
    }
}

/// What a pull sends its caller.
pub type Progress = mpsc::Sender<Result<PullImageProgress, tonic::Status>>;

impl Puller {
    pub fn new(
        content: ContentStore,
        layers: Arc<LayerStore>,
        limits: Arc<Limits>,
        leases: Arc<Leases>,
        registries: Arc<Registries>,
        metadata: Metadata,
        args: &PullArgs,
    ) -> Self {
        Puller {
            content,
            layers,
            limits,
            registries,
            metadata,
            stall: Duration::from_secs(args.stall_timeout_secs),
            min_rate: args.min_download_rate,
            jobs: Mutex::new(HashMap::new()),
            leases,
            remote_plans: Mutex::new(HashMap::new()),
            containerd: None,
        }
    }

    /// Registers every image it pulls in `containerd` too.
    pub fn with_containerd(mut self, containerd: Option<Containerd>) -> Self {
        self.containerd = containerd;
        self
    }

    /// Brings one layer of `image` (whose platform manifest is `manifest`)
    /// into the store, as containerd's remote snapshots ask: the layer
    /// whose blob is `blob` and whose chain must come out as `chain`. Its
    /// parent layer must be stored already (containerd prepares layers
    /// bottom up). It is the pull's own layer job: the download limit,
    /// one download per layer however many ask, resume and stall
    /// detection. No image is recorded; the caller holds the layer.
    pub async fn remote_layer(
        self: &Arc<Self>,
        image: &str,
        manifest: &Digest,
        blob: &Digest,
        chain: &Digest,
    ) -> Result<Arc<Layer>, Error> {
        if let Some(layer) = self.layers.get(chain) {
            return Ok(layer);
        }
        let reference = Reference::parse(image)?.with_digest(manifest.clone());
        let target = Target::new(
            &PullImageRequest {
                reference: reference.to_string(),
                ..Default::default()
            },
            &self.registries,
        )?;
        let plan = self.remote_plan(&target, manifest).await?;
        let i = plan
            .layers
            .iter()
            .position(|d| d.digest == blob.to_string())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{image}: manifest {manifest} has no layer {blob}"))
            })?;
        let chains = chain_ids(&plan.diff_ids);
        if chains[i] != *chain {
            return Err(Error::InvalidArgument(format!(
                "{image}: layer {blob} makes chain {} in manifest {manifest}, not {chain}",
                chains[i]
            )));
        }
        let _lease = self.leases.lease(&chains[..=i]);
        // containerd prepares one layer at a time, bottom up: the layers
        // above are started now, each a shared job on the one below as a
        // pull chains them, so that they download in parallel and
        // containerd finds them done or in flight when it asks.
        let mut parent: Option<LayerFuture> = None;
        let mut wanted = None;
        let mut above = Vec::new();
        for j in i..plan.layers.len() {
            if self.layers.get(&chains[j]).is_some() {
                parent = None;
                continue;
            }
            let job = LayerJob::new(&target, &plan.layers, &plan.diff_ids, &chains, j)?;
            let (done, _) = self.job(job, parent.take());
            if j == i {
                wanted = Some(done.clone());
            } else {
                above.push((done.clone(), chains[j].clone()));
            }
            parent = Some(done);
        }
        if !above.is_empty() {
            let this = Arc::clone(self);
            let held = chains[i..].to_vec();
            tokio::spawn(async move {
                let _lease = this.leases.lease(&held);
                for (done, chain) in above {
                    if done.await.is_ok() {
                        // Fetched ahead for containerd: collectable unless
                        // it adopts them (or an image needs them).
                        this.leases.defer(chain);
                    }
                }
            });
        }
        match wanted {
            Some(done) => done.await,
            None => self.layers.get(chain).ok_or_else(|| {
                Error::Internal(format!(
                    "layer {chain} vanished while containerd asked for it"
                ))
            }),
        }
    }

    /// The layers and diff IDs of the image manifest `manifest`, fetched
    /// once and kept for the next layers containerd asks for.
    async fn remote_plan(
        &self,
        target: &Target,
        manifest: &Digest,
    ) -> Result<Arc<RemotePlan>, Error> {
        let cached = self
            .remote_plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(manifest)
            .cloned();
        if let Some(plan) = cached {
            return Ok(plan);
        }
        let mut resolved = self.resolve(target).await?;
        if resolved.top_digest != *manifest {
            return Err(Error::InvalidArgument(format!(
                "{}: {manifest} is an index, not an image manifest",
                target.shown
            )));
        }
        let (tx, _) = mpsc::channel(1);
        let configured = self.read_config(target, &mut resolved, &tx).await?;
        let plan = Arc::new(RemotePlan {
            layers: resolved.manifest.layers,
            diff_ids: configured.diff_ids,
        });
        let mut plans = self.remote_plans.lock().unwrap_or_else(|e| e.into_inner());
        if plans.len() >= REMOTE_PLANS {
            plans.clear();
        }
        plans.insert(manifest.clone(), Arc::clone(&plan));
        Ok(plan)
    }

    /// Runs one pull, sending progress to `tx`. Its span names the image,
    /// the manifest digest and the bytes fetched, for a trace to show.
    #[tracing::instrument(
        name = "pull",
        skip_all,
        fields(
            image.reference = %request.reference,
            image.manifest_digest = tracing::field::Empty,
            image.bytes = tracing::field::Empty,
        )
    )]
    pub async fn pull(
        self: &Arc<Self>,
        request: PullImageRequest,
        tx: Progress,
    ) -> Result<(), Error> {
        let target = Target::new(&request, &self.registries)?;
        // As Docker: said once the manifest is there, so a missing tag or
        // repository fails before anything is printed.
        let mut resolved = self.resolve(&target).await?;
        send(
            &tx,
            line(
                &target.tag_or_digest(),
                format!("Pulling from {}", target.reference.path()),
            ),
        )
        .await;
        let configured = self.read_config(&target, &mut resolved, &tx).await?;
        let chains = chain_ids(&configured.diff_ids);
        let _lease = self.leases.lease(&chains);
        let plan = LayerPlan::new(&self.layers, &resolved.manifest.layers, &chains);
        tracing::Span::current().record("image.bytes", plan.total());
        self.bring_layers(&target, &resolved, &configured, &plan, &tx)
            .await?;
        self.record(&target, resolved, configured, &plan, &tx).await
    }

    /// The tags the registry lists for the repository `request` names, in
    /// its order (`docker pull --all-tags`).
    pub async fn list_tags(&self, request: &PullImageRequest) -> Result<Vec<String>, Error> {
        let target = Target::new(request, &self.registries)?;
        let what = format!("tags of {}", target.reference.familiar_name());
        let (upstream, _) = target.upstream_and_mirrors();
        let listed = within(
            &what,
            self.with_retries(&|e| registry::pull_error(&target.reference, e), || {
                fetch::tags(upstream, &upstream.oref)
            }),
        )
        .await?;
        Ok(listed)
    }

    /// Step 1: the image manifest, through an index when there is one,
    /// checked as Docker checks it (schema 1, depth, media types).
    async fn resolve(&self, target: &Target) -> Result<Resolved, Error> {
        let shown = &target.shown;
        let what = format!("manifest for {shown}");
        let (top_bytes, top_digest) = self.fetch_manifest(target, None).await?;
        let top_digest: Digest = top_digest.parse()?;
        tracing::Span::current().record("image.manifest_digest", top_digest.to_string());
        let probe = probe_manifest(&what, &top_bytes)?;
        if probe.schema_version == Some(1) {
            return Err(schema1(shown));
        }
        // Manifests and the config are stored only once the layers are:
        // a refused pull leaves no blob behind.
        let mut small_blobs = vec![(top_digest.clone(), top_bytes.clone())];
        let manifest_bytes = match probe.manifests {
            Some(entries) => {
                let chosen = choose_platform(&entries, &target.platform, shown)?;
                let (bytes, digest) = self.fetch_manifest(target, Some(&chosen)).await?;
                if probe_manifest(&what, &bytes)?.manifests.is_some() {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: an index entry points at another index"
                    )));
                }
                small_blobs.push((digest.parse()?, bytes.clone()));
                bytes
            }
            None => {
                if let Some(media) = probe.media_type.as_deref()
                    && media.starts_with(imaged_model::media_type::DOCKER_SCHEMA1_PREFIX)
                {
                    return Err(schema1(shown));
                }
                top_bytes.clone()
            }
        };
        let mut manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| Error::InvalidArgument(format!("{what}: invalid manifest: {e}")))?;
        check_depth(shown, manifest.layers.len())?;
        for desc in std::iter::once(&mut manifest.config).chain(&mut manifest.layers) {
            check_media_type(&desc.media_type)?;
            // Foreign URLs are never followed: every byte comes from the
            // registry the user named (Docker follows them only for
            // foreign layers, and only when allowed).
            desc.urls = None;
        }
        Ok(Resolved {
            top_digest,
            manifest,
            small_blobs,
        })
    }

    /// Step 2: the config, fetched whole (or found stored) and checked
    /// against the platform and the manifest.
    async fn read_config(
        &self,
        target: &Target,
        resolved: &mut Resolved,
        tx: &Progress,
    ) -> Result<Configured, Error> {
        let shown = &target.shown;
        let manifest = &resolved.manifest;
        let config_digest: Digest = manifest.config.digest.parse()?;
        let config = match self.content.read(&config_digest) {
            Ok(bytes) => bytes,
            Err(_) => {
                let bytes = self
                    .fetch_small(target, &manifest.config, &format!("config of {shown}"))
                    .await?;
                resolved
                    .small_blobs
                    .push((config_digest.clone(), Bytes::from(bytes.clone())));
                bytes
            }
        };
        let image_config = ImageConfig::parse(&config)
            .map_err(|e| Error::InvalidArgument(format!("config of {shown}: {e}")))?;
        let image_platform = image_config.platform.clone();
        let platform = &target.platform;
        if !image_platform.os.is_empty() && !image_platform.os.eq_ignore_ascii_case(&platform.os) {
            return Err(Error::InvalidArgument(format!(
                "image operating system \"{}\" cannot be used on this platform",
                image_platform.os
            )));
        }
        if target.platform_asked && !platform.runs_with_fallback(&image_platform) {
            // Docker pulls it anyway and says so.
            send(
                tx,
                line(
                    "",
                    format!(
                        "WARNING: image with reference {shown} was found but its platform ({}) does not match the specified platform ({platform})",
                        image_platform.normalize()
                    ),
                ),
            )
            .await;
        }
        let diff_ids = image_config.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::InvalidArgument(format!(
                "{shown}: the manifest has {} layers but the config {} diff IDs",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        Ok(Configured { config, diff_ids })
    }

    /// Step 3: the planned layers, each a shared job (fetched once however
    /// many pulls want it), committed in chain order, with Docker's
    /// progress.
    async fn bring_layers(
        self: &Arc<Self>,
        target: &Target,
        resolved: &Resolved,
        configured: &Configured,
        plan: &LayerPlan,
        tx: &Progress,
    ) -> Result<(), Error> {
        let layers = &resolved.manifest.layers;
        let chains = &plan.chains;
        let mut waits: Vec<LayerFuture> = Vec::new();
        let mut watches = Vec::new();
        let mut parent: Option<LayerFuture> = None;
        for (i, desc) in layers.iter().enumerate() {
            let id = short(&desc.digest);
            if !plan.fetch[i] {
                send(tx, line(&id, State::AlreadyExists.status())).await;
                parent = None;
                continue;
            }
            send(tx, line(&id, "Pulling fs layer".into())).await;
            let job = LayerJob::new(target, layers, &configured.diff_ids, chains, i)?;
            let (done, progress) = self.job(job, parent.take());
            waits.push(done.clone());
            watches.push(WatchStream::new(progress).map(move |state| (i, id.clone(), state)));
            parent = Some(done);
        }

        let totals = &plan.totals;
        let aggregate_total = plan.total();
        let mut done_bytes = vec![0u64; chains.len()];
        let mut last_state: Vec<Option<State>> = vec![None; chains.len()];
        let mut updates = stream::select_all(watches);
        let mut all = futures::future::try_join_all(waits).fuse();
        loop {
            tokio::select! {
                result = &mut all => { result?; break; }
                Some((i, id, state)) = updates.next() => {
                    if state == State::Pending {
                        continue;
                    }
                    let (current, total) = match &state {
                        State::Downloading { current, total } => (*current, *total),
                        State::Verifying | State::DownloadComplete | State::Extracting | State::Complete => (totals[i], totals[i]),
                        _ => (0, 0),
                    };
                    done_bytes[i] = done_bytes[i].max(current);
                    last_state[i] = Some(state.clone());
                    let mut message = line(&id, state.status());
                    message.current = current as i64;
                    message.total = total as i64;
                    message.aggregate_current = done_bytes.iter().sum::<u64>() as i64;
                    message.aggregate_total = aggregate_total as i64;
                    send(tx, message).await;
                }
            }
        }
        // Layers that finished between the last update and the join.
        for (i, desc) in layers.iter().enumerate() {
            if plan.fetch[i] && last_state[i] != Some(State::Complete) {
                let mut message = line(&short(&desc.digest), State::Complete.status());
                message.current = totals[i] as i64;
                message.total = totals[i] as i64;
                message.aggregate_current = aggregate_total as i64;
                message.aggregate_total = aggregate_total as i64;
                send(tx, message).await;
            }
        }
        Ok(())
    }

    /// Step 4: the manifests and config stored, and the image recorded in
    /// metadata (tag moved, repo digest added, the pull event sent).
    async fn record(
        &self,
        target: &Target,
        resolved: Resolved,
        configured: Configured,
        plan: &LayerPlan,
        tx: &Progress,
    ) -> Result<(), Error> {
        let config_digest = Digest::sha256_of(&configured.config);
        // Until imaged-metadata has the image, a reconciliation or removal
        // decided without it must not forget the blobs written here.
        let _image_lease = self.leases.lease_image(&config_digest);
        for (digest, bytes) in &resolved.small_blobs {
            self.content.write(digest, bytes)?;
        }
        // They go with the last image that needs them.
        let small: Vec<Digest> = resolved
            .small_blobs
            .iter()
            .map(|(d, _)| d.clone())
            .collect();
        self.content.own(&config_digest, &small)?;
        // Fetched without credentials in this pull, from no source that
        // knows this node (what was found stored stays as private as it
        // was).
        let upstream = target.upstream_and_mirrors().0;
        let anonymous = target
            .sources
            .iter()
            .all(|source| matches!(source.auth, RegistryAuth::Anonymous) && !source.identified);
        if anonymous {
            for digest in &small {
                self.content
                    .public()
                    .mark(digest, upstream.oref.repository())?;
            }
        }
        let reference = &target.reference;
        let shown = target.shown.clone();
        let top_digest = resolved.top_digest;
        let layer_sizes = plan
            .chains
            .iter()
            .map(|c| self.layers.get(c).map_or(0, |l| l.size as i64))
            .collect();
        let name = reference.name();
        let config_bytes = Bytes::from(configured.config.clone());
        // As containerd sizes an image: what its registry holds of it.
        let content_size = resolved
            .small_blobs
            .iter()
            .filter(|(d, _)| *d != config_digest)
            .map(|(_, b)| b.len() as i64)
            .chain(resolved.manifest.layers.iter().map(|l| l.size.max(0)))
            .sum::<i64>()
            + config_bytes.len() as i64;
        let put = PutImageRequest {
            content_size,
            config: configured.config,
            tags: reference
                .tag()
                .map(|t| format!("{name}:{t}"))
                .into_iter()
                .collect(),
            digests: vec![format!("{name}@{top_digest}")],
            layer_sizes,
            action: "pull".into(),
            event_ref: shown.clone(),
            tag_events: false,
        };
        let names: Vec<String> = put.tags.iter().chain(&put.digests).cloned().collect();
        let recorded = self.metadata.put_image(put).await?;
        if let Some(containerd) = &self.containerd {
            // Manifests as pulled (index first), then the config.
            let mut blobs: Vec<containerd::Blob> = resolved
                .small_blobs
                .iter()
                .filter(|(d, _)| *d != config_digest)
                .map(|(digest, bytes)| containerd::Blob {
                    digest: digest.clone(),
                    bytes: bytes.clone(),
                })
                .collect();
            blobs.push(containerd::Blob {
                digest: config_digest.clone(),
                bytes: config_bytes,
            });
            let image = containerd::Image {
                id: config_digest,
                blobs,
                chains: plan.chains.clone(),
                names,
            };
            containerd.register(&image).await?;
        }
        crate::metrics::moved(crate::metrics::Kind::Pull, plan.total());
        send(tx, line("", format!("Digest: {top_digest}"))).await;
        let mut last = line(
            "",
            format!(
                "Status: {} for {shown}",
                if recorded.updated {
                    "Downloaded newer image"
                } else {
                    "Image is up to date"
                }
            ),
        );
        last.image_id = recorded.id;
        last.reference = shown;
        last.digest = top_digest.to_string();
        send(tx, last).await;
        Ok(())
    }

    /// The shared job that brings one layer into the store, created or
    /// joined.
    fn job(
        self: &Arc<Self>,
        job: LayerJob,
        parent: Option<LayerFuture>,
    ) -> (LayerFuture, watch::Receiver<State>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = jobs.get(&job.chain_id)
            && let Some(done) = running.done.upgrade()
        {
            return (done, running.progress.clone());
        }
        let (progress_tx, progress) = watch::channel(State::Pending);
        let this = Arc::clone(self);
        let key = job.chain_id.clone();
        let future = async move {
            let result = this.bring_layer(&job, parent, &progress_tx).await;
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
            },
        );
        (future, progress)
    }

    /// Downloads and unpacks one layer (retrying what may pass), then
    /// commits it once its parent is in.
    async fn bring_layer(
        &self,
        job: &LayerJob,
        parent: Option<LayerFuture>,
        progress: &watch::Sender<State>,
    ) -> Result<Arc<Layer>, Error> {
        let id = short(&job.desc.digest);
        let blob = &job.blob;
        let mut attempt = 1;
        let turns = self.content.ingest_turns(blob);
        let mut source = 0;
        let (staging, unpacked) = loop {
            let writing = turns.take().await;
            let admitted = self
                .limits
                .downloads
                .admit_or(|| {
                    progress.send_replace(State::Waiting);
                })
                .await;
            let from = &job.sources[source];
            let result = self.fetch_layer(from, &job.desc, blob, progress).await;
            drop(admitted);
            drop(writing);
            match result {
                Ok(done) => {
                    if matches!(from.auth, RegistryAuth::Anonymous) && !from.identified {
                        self.content.public().mark(blob, from.oref.repository())?;
                    }
                    break done;
                }
                // A mirror that fails is skipped (once per layer); what it
                // wrote is resumed from the next source.
                Err(err) if from.mirror.is_some() => {
                    tracing::warn!(layer = %id, mirror = from.name(), "mirror failed, trying the next source: {err}");
                    source += 1;
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
                    None => return Err(crate::download::final_error(err)),
                },
            }
        };
        drop(turns);
        if unpacked.diff_id != job.diff_id {
            return Err(Error::InvalidArgument(format!(
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
            return Err(Error::Internal(format!(
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
        progress.send_replace(State::Complete);
        Ok(committed)
    }

    /// The retry policy in force (its attempts can change at runtime).
    fn retry(&self) -> Retry {
        Retry {
            attempts: self.limits.max_download_attempts(),
        }
    }

    /// Fetches a small JSON blob (a config) whole, digest checked.
    async fn fetch_small(
        &self,
        target: &Target,
        desc: &OciDescriptor,
        what: &str,
    ) -> Result<Vec<u8>, Error> {
        if desc.size as u64 > MAX_JSON_BLOB {
            return Err(Error::InvalidArgument(format!(
                "{what}: {} bytes is too large",
                desc.size
            )));
        }
        let expected: Digest = desc.digest.parse()?;
        self.first_answer(
            target,
            what,
            |_| true,
            &|e| registry::error(what, e),
            |source| {
                let desc = desc.clone();
                Box::pin(async move {
                    fetch::small_blob(source, &source.oref, &desc.digest, MAX_JSON_BLOB).await
                })
            },
            |data| {
                if Digest::sha256_of(&data) != expected {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: digest mismatch: the registry sent other bytes than {expected}"
                    )));
                }
                Ok(data)
            },
        )
        .await
    }

    /// Fetches the manifest at `digest`, or the one the target names (a
    /// mirror answers a tag only with the `resolve` capability). The
    /// registry's failures read as Docker's (`manifest for … not found: …`).
    async fn fetch_manifest(
        &self,
        target: &Target,
        digest: Option<&str>,
    ) -> Result<(Bytes, String), Error> {
        let what = format!("manifest for {}", target.shown);
        let by_tag = digest.is_none() && target.reference.digest().is_none();
        self.first_answer(
            target,
            &what,
            |source| source.resolves || !by_tag,
            &|e| registry::pull_error(&target.reference, e),
            |source| {
                let oref = match digest {
                    Some(digest) => source.at_digest(digest),
                    None => source.oref.clone(),
                };
                Box::pin(
                    async move { fetch::manifest(source, &oref, ACCEPTED, MAX_MANIFEST).await },
                )
            },
            Ok,
        )
        .await
    }

    /// Runs `call` against each mirror `asks` allows, once, and then
    /// against the registry itself with retries; each bounded in time (a
    /// registry that sends headers and then nothing is given up on). A
    /// mirror's failure, or an answer `check` refuses, is logged and the
    /// next source tried; `failed` says what the registry's failure means.
    async fn first_answer<T>(
        &self,
        target: &Target,
        what: &str,
        asks: impl Fn(&Source) -> bool,
        failed: &(dyn Fn(oci_client::errors::OciDistributionError) -> Error + Sync),
        call: impl for<'a> Fn(
            &'a Source,
        )
            -> BoxFuture<'a, Result<T, oci_client::errors::OciDistributionError>>,
        check: impl Fn(T) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (upstream, mirrors) = target.upstream_and_mirrors();
        for mirror in mirrors.iter().filter(|m| asks(m)) {
            let answer = within(what, async {
                call(mirror).await.map_err(|e| registry::error(what, e))
            })
            .await
            .and_then(&check);
            match answer {
                Ok(answer) => return Ok(answer),
                Err(err) => mirror_failed(mirror, &err),
            }
        }
        check(within(what, self.with_retries(failed, || call(upstream))).await?)
    }

    /// Runs a registry call, retrying what may pass with backoff; `failed`
    /// says what a failure means.
    async fn with_retries<T, F, Fut>(
        &self,
        failed: &(dyn Fn(oci_client::errors::OciDistributionError) -> Error + Sync),
        mut call: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, oci_client::errors::OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match call().await.map_err(failed) {
                Err(err) => match self.retry().after(attempt, &err) {
                    Some(delay) => {
                        tracing::warn!(attempt, "{err}; retrying in {delay:?}");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => return Err(err),
                },
                ok => return ok,
            }
        }
    }
}

/// A mirror could not serve: said, and the next source is tried.
fn mirror_failed(mirror: &Source, err: &Error) {
    tracing::warn!(
        mirror = mirror.name(),
        "mirror failed, trying the next source: {err}"
    );
}

/// Bounds a manifest or config fetch, retries included, by
/// [`MANIFEST_TIMEOUT`].
async fn within<T>(what: &str, fetch: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::time::timeout(MANIFEST_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(Error::DeadlineExceeded(format!(
                "{what}: the registry did not answer within {}s",
                MANIFEST_TIMEOUT.as_secs()
            )))
        })
}

/// Reads the fields that say what a manifest is, after its size and media
/// type checks.
fn probe_manifest(what: &str, bytes: &[u8]) -> Result<Probe, Error> {
    if bytes.len() > crate::manifest::MAX_MANIFEST {
        // Refused before parsing: a huge body is not worth decoding.
        check_manifest(what, bytes, &Probe::default())?;
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidArgument(format!("{what}: invalid manifest: {e}")))?;
    check_manifest(what, bytes, &probe)?;
    Ok(probe)
}

/// The 12 hex characters Docker shows for a digest.
pub(crate) fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

fn line(id: &str, status: String) -> PullImageProgress {
    PullImageProgress {
        id: id.to_string(),
        status,
        ..Default::default()
    }
}

/// Progress is best effort: a caller that went away cancels the pull
/// through the stream, not here.
async fn send(tx: &Progress, message: PullImageProgress) {
    let _ = tx.send(Ok(message)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_fetches_only_what_is_not_stored_and_counts_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let layers = LayerStore::open(dir.path()).unwrap();
        let diff_ids: Vec<Digest> = ["base", "app", "top"]
            .iter()
            .map(|n| Digest::sha256_of(n.as_bytes()))
            .collect();
        let chains = chain_ids(&diff_ids);
        let base = Layer {
            chain_id: chains[0].clone(),
            diff_id: diff_ids[0].clone(),
            parent: None,
            size: 1,
            blob: None,
            inodes: 1,
            tar_size: 0,
            gzip: None,
        };
        layers.commit(layers.stage().unwrap(), base).unwrap();
        let descs: Vec<OciDescriptor> = [100, 20, 3]
            .iter()
            .map(|size| OciDescriptor {
                size: *size,
                ..Default::default()
            })
            .collect();
        let plan = LayerPlan::new(&layers, &descs, &chains);
        assert_eq!(plan.fetch, [false, true, true]);
        assert_eq!(plan.totals, [0, 20, 3]);
        assert_eq!(plan.total(), 23);
    }
}
