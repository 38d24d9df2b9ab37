//! Layers containerd asks for through imaged's proxy snapshotter (CRI's
//! remote snapshots): one layer of an image fetched by the pull's own
//! layer job, with the manifest it belongs to kept a while.

use super::*;

/// What a remote snapshot needs of its image: the layer descriptors and
/// the config's diff IDs, bottom first.
pub(super) struct RemotePlan {
    layers: Vec<OciDescriptor>,
    diff_ids: Vec<Digest>,
}

/// How many images' plans [`Puller::remote_layer`] keeps.
pub(super) const REMOTE_PLANS: usize = 64;

impl Puller {
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
        self.remote_trusted(image, manifest).await?;
        let reference = Reference::parse(image)?.with_digest(manifest.clone());
        let target = self.remote_target(reference.to_string())?;
        let plan = self.remote_plan(&target, manifest).await?;
        let i = plan
            .layers
            .iter()
            .position(|d| d.digest == blob.to_string())
            .ok_or_else(|| {
                Error::invalid_argument(format!("{image}: manifest {manifest} has no layer {blob}"))
            })?;
        let chains = chain_ids(&plan.diff_ids);
        if chains[i] != *chain {
            return Err(Error::invalid_argument(format!(
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
            let (done, _, _) = self.job(job, parent.take());
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
                Error::internal(format!(
                    "layer {chain} vanished while containerd asked for it"
                ))
            }),
        }
    }

    /// What a remote snapshot reads from: `reference`, anonymously (as
    /// containerd's own pull through its snapshotter labels gives it).
    fn remote_target(&self, reference: String) -> Result<Target, Error> {
        let order = PullOrder {
            reference,
            platform: None,
            auth: RegistryAuth::Anonymous,
            all_tags: false,
            namespace: None,
        };
        Target::new(&order, &self.registries)
    }

    /// Checks the signature policy (the global one: containerd says no
    /// pod) for a remote snapshot of `image` whose platform manifest is
    /// `manifest`. Signatures are of the top manifest the reference names
    /// (an index when there is one), so that is what is checked, and it
    /// must be `manifest` or list it.
    async fn remote_trusted(&self, image: &str, manifest: &Digest) -> Result<(), Error> {
        if !self.trust.enforcing() {
            return Ok(());
        }
        let key = (image.to_string(), manifest.clone());
        let trusted = || {
            self.remote_trusted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if trusted().contains(&key) {
            return Ok(());
        }
        let target = self.remote_target(image.to_string())?;
        let (bytes, top) = self.fetch_manifest(&target, None).await?;
        let top: Digest = top.parse()?;
        if top != *manifest {
            let what = format!("manifest for {}", target.shown);
            let listed = probe_manifest(&what, &bytes)?
                .manifests
                .iter()
                .flatten()
                .any(|entry| entry.digest == manifest.to_string());
            if !listed {
                return Err(Error::permission_denied(format!(
                    "{}manifest {manifest} is not one {image} names (it names {top})",
                    imaged_common::error::POLICY_REJECTED
                )));
            }
        }
        self.check_trust(&target, &top, None).await?;
        let mut trusted = trusted();
        if trusted.len() >= REMOTE_PLANS {
            trusted.clear();
        }
        trusted.insert(key);
        Ok(())
    }

    /// The layers and diff IDs of the image manifest `manifest`, fetched
    /// once and kept for the next layers containerd asks for.
    pub(super) async fn remote_plan(
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
            return Err(Error::invalid_argument(format!(
                "{}: {manifest} is an index, not an image manifest",
                target.shown
            )));
        }
        let (tx, _) = tokio::sync::mpsc::channel(1);
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
}
