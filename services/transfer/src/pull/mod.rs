//! Docker's PullImage: resolve, pick the platform, fetch the config, then
//! stream every missing layer registry → hasher → decompressor → tar
//! reader → files, in parallel under the download limit, committing the
//! chain in order; finally record the image in imaged-metadata.
//!
//! A layer wanted by several pulls at once is fetched and unpacked once:
//! its job is shared, and it runs as long as one pull still waits on it.

pub(crate) mod download;
pub mod events;
pub(crate) mod share;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::neighbours::recorder::Record;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use futures::{StreamExt, stream};
use imaged_common::Error;
use imaged_model::digest::chain_ids;
use imaged_model::image_config::ImageConfig;
use imaged_model::{Digest, Platform, Reference};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::config::PullArgs;
use crate::limits::Limits;
use crate::neighbours::Registrar;
use crate::neighbours::registrar as containerd;
use crate::neighbours::{Fetcher, Recorder};
use crate::registry::manifest::{
    ACCEPTED, MANIFEST_TIMEOUT, MAX_JSON_BLOB, MAX_MANIFEST, Manifest, Probe, check_depth,
    check_manifest, check_media_type, choose_platform, schema1,
};
use crate::registry::{self, Registries, Retry, Source};
use crate::store::Stores;
use crate::store::content::ContentStore;
use crate::store::layers::{Layer, LayerStore};
use crate::store::leases::Leases;
use crate::trust::Trust;

/// The pull engine, shared by every pull of the process.
pub struct Puller {
    pub(crate) content: ContentStore,
    pub(crate) layers: Arc<LayerStore>,
    limits: Arc<Limits>,
    registries: Arc<Registries>,
    /// What reads the registries' bytes (HTTP, or a fake in unit tests).
    fetcher: Arc<dyn Fetcher>,
    metadata: Arc<dyn Recorder>,
    pub(crate) stall: Duration,
    pub(crate) min_rate: u64,
    jobs: Mutex<HashMap<Digest, Job>>,
    /// Chains pulls in flight hold (shared with load, import, commit and
    /// GC).
    pub(crate) leases: Arc<Leases>,
    /// The layers and diff IDs of manifests remote snapshots came from, by
    /// manifest digest: containerd asks layer by layer.
    remote_plans: Mutex<HashMap<Digest, Arc<RemotePlan>>>,
    /// (image, manifest) pairs of remote snapshots the signature policy
    /// accepted.
    remote_trusted: Mutex<std::collections::HashSet<(String, Digest)>>,
    /// The containerd every pulled image is registered in, if any.
    containerd: Option<Arc<dyn Registrar>>,
    /// The signature policy every pull is checked against.
    trust: Arc<Trust>,
    /// The fleet this node fetches with, if any (issue 31).
    fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// What to pull, as the caller asked for it.
#[derive(Clone, Debug)]
pub struct PullOrder {
    /// The reference as given (`busybox`, `host/repo@sha256:…`).
    pub reference: String,
    /// The platform asked for, if any (the host's fills its gaps).
    pub platform: Option<Platform>,
    /// The credentials for the registry (and its mirrors).
    pub auth: RegistryAuth,
    /// The Kubernetes namespace whose signature policy applies (a CRI
    /// pull's pod); `None`: the global policy.
    pub namespace: Option<String>,
    /// Every tag of the repository (`docker pull --all-tags`).
    pub all_tags: bool,
}

/// What a pull reads from: the order, resolved once.
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
    fn new(order: &PullOrder, registries: &Registries) -> Result<Self, Error> {
        let reference = Reference::parse(&order.reference)?;
        if reference.familiar_name() == "scratch" {
            return Err(Error::invalid_argument("'scratch' is a reserved name"));
        }
        let reference = if reference.digest().is_some() {
            reference
        } else {
            reference.with_default_tag()
        };
        let platform = order.platform.as_ref().map_or_else(
            || Platform::or_host("", "", ""),
            |p| Platform::or_host(&p.os, &p.architecture, &p.variant),
        );
        Ok(Target {
            sources: registries.sources(&reference, &order.auth),
            shown: reference.familiar(),
            reference,
            platform,
            platform_asked: order.platform.is_some(),
        })
    }

    /// The registry itself, and the mirrors to try before it.
    fn upstream_and_mirrors(&self) -> (&Source, &[Source]) {
        self.sources
            .split_last()
            .expect("the registry itself is always a source")
    }

    /// The tag, or the digest, Docker's first line names.
    /// What the `Pulling from` line starts with: the tag, or for a pull
    /// by digest the whole reference, as Docker prints them.
    fn tag_or_digest(&self) -> String {
        match self.reference.tag() {
            Some(tag) => tag.to_string(),
            None if self.reference.digest().is_some() => self.shown.clone(),
            None => String::new(),
        }
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
    /// Whether the config was found stored rather than fetched.
    stored: bool,
}

impl Puller {
    pub fn new(
        stores: Stores,
        limits: Arc<Limits>,
        registries: Arc<Registries>,
        fetcher: Arc<dyn Fetcher>,
        metadata: Arc<dyn Recorder>,
        args: &PullArgs,
    ) -> Self {
        let Stores {
            content,
            layers,
            leases,
        } = stores;
        Puller {
            content,
            layers,
            limits,
            registries,
            fetcher,
            metadata,
            stall: Duration::from_secs(args.stall_timeout_secs),
            min_rate: args.min_download_rate,
            jobs: Mutex::new(HashMap::new()),
            leases,
            remote_plans: Mutex::new(HashMap::new()),
            remote_trusted: Mutex::new(std::collections::HashSet::new()),
            containerd: None,
            trust: Arc::new(Trust::open()),
            fleet: None,
        }
    }

    /// Checks every pull against `trust` before it stores anything.
    pub fn with_trust(mut self, trust: Arc<Trust>) -> Self {
        self.trust = trust;
        self
    }

    /// Fetches layers with `fleet`: from peers that hold or fetch them,
    /// and for the fleet when nobody does.
    pub fn with_fleet(mut self, fleet: Option<Arc<crate::fleet::Fleet>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Registers every image it pulls in `containerd` too.
    pub fn with_containerd(mut self, containerd: Option<Arc<dyn Registrar>>) -> Self {
        self.containerd = containerd;
        self
    }

    /// Runs one pull, sending progress to `tx`. Its span names the image,
    /// the manifest digest and the bytes fetched, for a trace to show.
    #[tracing::instrument(
        name = "pull",
        skip_all,
        fields(
            image.reference = %order.reference,
            image.manifest_digest = tracing::field::Empty,
            image.bytes = tracing::field::Empty,
        )
    )]
    pub async fn pull(self: &Arc<Self>, order: PullOrder, tx: Progress) -> Result<(), Error> {
        let target = Target::new(&order, &self.registries)?;
        // As Docker: said once the manifest is there, so a missing tag or
        // repository fails before anything is printed.
        let mut resolved = self.resolve(&target).await?;
        // The policy decides on the manifest the registry (or a mirror)
        // answered, under the name the user asked for, before anything is
        // stored or said.
        self.check_trust(&target, &resolved.top_digest, order.namespace.as_deref())
            .await?;
        say(
            &tx,
            PullEvent::Started {
                tag_or_digest: target.tag_or_digest(),
                path: target.reference.path().to_string(),
            },
        )
        .await;
        let configured = self.read_config(&target, &mut resolved, &tx).await?;
        let chains = chain_ids(&configured.diff_ids);
        let _lease = self.leases.lease(&chains);
        let plan = LayerPlan::new(&self.layers, &resolved.manifest.layers, &chains);
        tracing::Span::current().record("image.bytes", plan.total());
        // As Docker: an image already here gets no layer work, nor lines.
        let from = if self.is_local(&configured, &plan).await {
            origin::ByOrigin::default()
        } else {
            self.bring_layers(&target, &resolved, &configured, &plan, &tx)
                .await?
        };
        self.record(&target, resolved, configured, &plan, from, &tx)
            .await
    }

    /// Whether the image `configured` describes is already a local image
    /// with every layer stored.
    async fn is_local(&self, configured: &Configured, plan: &LayerPlan) -> bool {
        if !configured.stored || plan.fetch.iter().any(|f| *f) {
            return false;
        }
        let id = Digest::sha256_of(&configured.config).to_string();
        self.metadata.image(&id, None).await.is_ok()
    }

    /// The tags the registry lists for the repository `order` names, in
    /// its order (`docker pull --all-tags`).
    pub async fn list_tags(&self, order: &PullOrder) -> Result<Vec<String>, Error> {
        let target = Target::new(order, &self.registries)?;
        let what = format!("tags of {}", target.reference.familiar_name());
        let (upstream, _) = target.upstream_and_mirrors();
        let listed = within(
            &what,
            self.with_retries(&|e| registry::pull_error(&target.reference, e), || {
                self.fetcher.tags(upstream)
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
                    return Err(Error::invalid_argument(format!(
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
            .map_err(|e| Error::invalid_argument(format!("{what}: invalid manifest: {e}")))?;
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
        let stored = self.content.read(&config_digest).ok();
        let was_stored = stored.is_some();
        let config = match stored {
            Some(bytes) => bytes,
            None => {
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
            .map_err(|e| Error::invalid_argument(format!("config of {shown}: {e}")))?;
        let image_platform = image_config.platform.clone();
        let platform = &target.platform;
        if !image_platform.os.is_empty() && !image_platform.os.eq_ignore_ascii_case(&platform.os) {
            return Err(Error::invalid_argument(format!(
                "image operating system \"{}\" cannot be used on this platform",
                image_platform.os
            )));
        }
        if target.platform_asked && !platform.runs_with_fallback(&image_platform) {
            // Docker pulls it anyway and says so.
            say(
                tx,
                PullEvent::PlatformMismatch {
                    shown: shown.clone(),
                    found: image_platform.normalize().to_string(),
                    wanted: platform.to_string(),
                },
            )
            .await;
        }
        let diff_ids = image_config.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::invalid_argument(format!(
                "{shown}: the manifest has {} layers but the config {} diff IDs",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        Ok(Configured {
            config,
            diff_ids,
            stored: was_stored,
        })
    }

    /// Step 4: the manifests and config stored, and the image recorded in
    /// metadata (tag moved, repo digest added, the pull event sent).
    async fn record(
        &self,
        target: &Target,
        resolved: Resolved,
        configured: Configured,
        plan: &LayerPlan,
        from: origin::ByOrigin,
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
        self.content
            .hold(&config_digest, &small, plan.chains.last())?;
        // The registry holds every layer in this repository (its manifest
        // names them): a push there elsewhere can mount them from here.
        for layer in &resolved.manifest.layers {
            if let Ok(blob) = layer.digest.parse::<Digest>() {
                self.content
                    .known_at()
                    .mark(&blob, &target.reference.name())?;
            }
        }
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
        let put = Record {
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
        let recorded = self.metadata.record(put).await?;
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
        say(
            tx,
            PullEvent::Recorded {
                digest: top_digest.to_string(),
            },
        )
        .await;
        say(
            tx,
            PullEvent::Done(Pulled {
                digest: top_digest.to_string(),
                updated: recorded.updated,
                image_id: recorded.id,
                shown,
                from,
            }),
        )
        .await;
        Ok(())
    }
}

/// The 12 hex characters Docker shows for a digest.
pub(crate) fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

mod attachments;
mod handoff;
mod layers;
pub(crate) mod origin;
mod peers;
mod remote;
mod said;
mod sources;
mod split;
mod state;

use events::{Progress, PullEvent, Pulled, say};
use layers::{Job, LayerFuture, LayerJob, LayerPlan};
use remote::RemotePlan;
use sources::{probe_manifest, within};
pub use state::State;
#[cfg(test)]
pub(crate) mod tests;
