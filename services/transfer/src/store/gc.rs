//! Garbage collection, with one owner: imaged-transfer. It keeps what
//! each image holds itself ([`crate::store::holds`], written before
//! imaged-metadata records the image); metadata only says which images
//! are gone ([`Gc::release_images`]; at start-up, which exist:
//! [`Gc::retain`]). This module removes the layers no image holds,
//! children before parents, never one that an operation in flight has
//! leased ([`crate::store::leases`]), a container stands on, or another
//! stored layer has as its parent, and then deletes the blobs no
//! remaining layer or image needs. It never asks metadata anything.
//! The gRPC service only calls it.

use std::collections::HashSet;
use std::sync::Arc;

use imaged_common::Error;
use imaged_model::Digest;

use crate::store::content::ContentStore;
use crate::store::layers::LayerStore;
use crate::store::leases::{Claim, Leases};

/// What garbage collection works on.
pub struct Gc {
    layers: Arc<LayerStore>,
    content: ContentStore,
    leases: Arc<Leases>,
}

impl Gc {
    pub fn new(layers: Arc<LayerStore>, content: ContentStore, leases: Arc<Leases>) -> Self {
        Gc {
            layers,
            content,
            leases,
        }
    }

    /// Removes what it may of `chains`; answers the chains removed.
    /// Repeats until nothing more goes, so a child and its parent released
    /// together both go whatever their order. What a named hold keeps
    /// (itself, or through a child) is deferred until the holds go
    /// ([`Gc::collect_deferred`]); what an operation in flight uses is not,
    /// as that operation's image will need it.
    pub async fn release(&self, chains: HashSet<Digest>) -> Result<Vec<String>, Error> {
        self.remove(chains, Claim::Unheld).await
    }

    /// [`Gc::release`], taking each chain only as `claim` allows.
    async fn remove(&self, chains: HashSet<Digest>, claim: Claim) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        let mut freed_blobs = Vec::new();
        let mut pending: Vec<Digest> = chains.into_iter().collect();
        let mut kept_by_holds = HashSet::new();
        loop {
            let before = pending.len();
            let mut still = Vec::new();
            for chain in pending {
                if self.layers.children(&chain) > 0 {
                    kept_by_holds.insert(chain.clone());
                    still.push(chain);
                    continue;
                }
                let Some(detached) = self
                    .leases
                    .unless_leased(&chain, claim, || self.layers.detach(&chain))
                else {
                    if self.leases.named_holds(&chain) {
                        kept_by_holds.insert(chain.clone());
                    }
                    still.push(chain);
                    continue;
                };
                let gone = match detached? {
                    Some(detached) => Some(
                        tokio::task::spawn_blocking(move || detached.purge())
                            .await
                            .map_err(Error::internal)??,
                    ),
                    None => None,
                };
                if let Some(layer) = gone {
                    freed_blobs.extend(layer.blobs().cloned());
                    removed.push(chain.to_string());
                }
            }
            pending = still;
            if pending.len() == before || pending.is_empty() {
                break;
            }
        }
        for chain in pending {
            if kept_by_holds.contains(&chain) {
                self.leases.defer(chain);
            }
        }
        if !removed.is_empty() {
            tracing::info!(?claim, chains = ?removed, "layers removed");
        }
        // A blob goes with its last layer (two chains can share one).
        if !freed_blobs.is_empty() {
            let kept = self.layer_blobs();
            for blob in freed_blobs.iter().filter(|b| !kept.contains(b)) {
                self.content.delete(blob)?;
            }
        }
        Ok(removed)
    }

    /// Removes the deferred chains whose holds are gone and that no image
    /// holds: called when a container, a snapshot or a mount lets go of
    /// its layers. An operation that leases one meanwhile keeps it, even
    /// one that has let go again by now: its image holds it from before it
    /// is recorded.
    pub async fn collect_deferred(&self) -> Result<Vec<String>, Error> {
        let mut deferred = self.leases.deferred();
        if deferred.is_empty() {
            return Ok(Vec::new());
        }
        let in_use = self.held_by_images()?;
        self.leases.undefer(&in_use);
        deferred.retain(|c| !in_use.contains(c));
        self.remove(deferred, Claim::StillDeferred).await
    }

    /// The images imaged-metadata deleted: forgets what they held, deletes
    /// the manifests and configs only they needed (a blob a stored layer
    /// came from stays), and removes the layers no image holds any more.
    /// An image an operation is recording right now
    /// ([`Leases::lease_image`]) keeps everything: the decision that it is
    /// gone was made before it was stored again. Answers the chains
    /// removed and how many small blobs went.
    pub async fn release_images(&self, images: &[Digest]) -> Result<(Vec<String>, usize), Error> {
        if images.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let layer_blobs = self.layer_blobs();
        let (tops, deleted) = self.leases.unless_images_leased(images, |gone| {
            let (freed, tops) = self.content.disown(gone)?;
            let mut deleted = 0;
            for blob in freed.iter().filter(|b| !layer_blobs.contains(b)) {
                self.content.delete(blob)?;
                deleted += 1;
            }
            Ok::<_, Error>((tops, deleted))
        })?;
        let (stood_on, _) = self.stood_on(tops);
        let in_use = self.held_by_images()?;
        let unused = stood_on
            .into_iter()
            .filter(|c| !in_use.contains(c))
            .collect();
        Ok((self.release(unused).await?, deleted))
    }

    /// Makes the stores hold what the images imaged-metadata has need
    /// (start-up reconciliation, after a crash on either side): `images`
    /// are every image with its top chain. Each is recorded as holding its
    /// chain (an image recorded before chains were kept learns it here);
    /// every other image is forgotten; then the layers no image, container,
    /// snapshot or operation holds are removed. Answers (removed, missing):
    /// the chains removed, and the images' chains (or their parents) not
    /// stored.
    pub async fn retain(
        &self,
        images: &[(Digest, Option<Digest>)],
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        for (image, chain) in images {
            if chain.is_some() {
                self.content.hold(image, &[], chain.as_ref())?;
            }
        }
        let listed: HashSet<&Digest> = images.iter().map(|(i, _)| i).collect();
        let gone: Vec<Digest> = self
            .content
            .owners()?
            .into_iter()
            .filter(|i| !listed.contains(i))
            .collect();
        let (mut removed, forgotten) = self.release_images(&gone).await?;
        if forgotten > 0 {
            tracing::info!(
                count = forgotten,
                "removed manifests and configs no image needs"
            );
        }
        let (_, missing) = self.stood_on(images.iter().filter_map(|(_, c)| c.clone()));
        let mut held = self.held_by_images()?;
        let (by_leases, _) = self.stood_on(self.leases.held_chains());
        held.extend(by_leases);
        let orphans: HashSet<Digest> = self
            .layers
            .all()
            .iter()
            .map(|l| l.chain_id.clone())
            .filter(|c| !held.contains(c))
            .collect();
        removed.extend(self.release(orphans).await?);
        let mut missing = missing;
        missing.sort();
        missing.dedup();
        Ok((removed, missing))
    }

    /// Records `image` as holding `chains` (bottom first, all stored): an
    /// image imaged-metadata is about to create on stored layers. They are
    /// leased while it is written, so a collection running now keeps them.
    pub fn hold_image(&self, image: &Digest, chains: &[Digest]) -> Result<(), Error> {
        let _lease = self.leases.lease(chains);
        if let Some(missing) = chains.iter().find(|c| self.layers.get(c).is_none()) {
            return Err(Error::not_found(format!(
                "failed to get layer {missing}: layer does not exist"
            )));
        }
        self.content.hold(image, &[], chains.last())
    }

    /// Every chain some image stands on.
    fn held_by_images(&self) -> Result<HashSet<Digest>, Error> {
        Ok(self.stood_on(self.content.held_chains()?).0)
    }

    /// The blobs stored layers came from.
    fn layer_blobs(&self) -> HashSet<Digest> {
        self.layers
            .all()
            .iter()
            .flat_map(|l| l.blobs().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// The chains `tops` stand on (themselves and their parents), and the
    /// ones of those not stored.
    fn stood_on(&self, tops: impl IntoIterator<Item = Digest>) -> (HashSet<Digest>, Vec<String>) {
        let mut held = HashSet::new();
        let mut missing = Vec::new();
        for top in tops {
            let mut next = Some(top);
            while let Some(current) = next {
                if held.contains(&current) {
                    break; // the rest of this chain is walked already
                }
                match self.layers.get(&current) {
                    Some(layer) => {
                        next = layer.parent.clone();
                        held.insert(current);
                    }
                    None => {
                        missing.push(current.to_string());
                        next = None;
                    }
                }
            }
        }
        (held, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::records::Containers;
    use crate::store::layers::Layer;

    /// A store holding base ← app, base ← other, and an unrelated lone.
    struct Fixture {
        _dir: tempfile::TempDir,
        gc: Gc,
        layers: Arc<LayerStore>,
        leases: Arc<Leases>,
        containers: Containers,
        content: ContentStore,
        base: Digest,
        app: Digest,
        other: Digest,
        lone: Digest,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let layers = Arc::new(LayerStore::open(dir.path()).unwrap());
        let content = ContentStore::open(&dir.path().join("content")).unwrap();
        let leases = Arc::new(Leases::new());
        let containers = Containers::open(
            dir.path(),
            Arc::new(crate::storage::overlay::Overlay),
            Arc::clone(&layers),
            Arc::clone(&leases),
        )
        .unwrap();
        let add = |name: &str, parent: Option<&Digest>| {
            let diff_id = Digest::sha256_of(name.as_bytes());
            let chain_id = match parent {
                None => diff_id.clone(),
                Some(p) => Digest::sha256_of(format!("{p} {diff_id}").as_bytes()),
            };
            let blob = Digest::sha256_of(format!("blob of {name}").as_bytes());
            content
                .write(&blob, format!("blob of {name}").as_bytes())
                .unwrap();
            let layer = Layer {
                chain_id: chain_id.clone(),
                diff_id,
                parent: parent.cloned(),
                size: 1,
                blob: Some(blob),
                inodes: 1,
                tar_size: 0,
                gzip: None,
            };
            layers.commit(layers.stage().unwrap(), layer).unwrap();
            chain_id
        };
        let base = add("base", None);
        let app = add("app", Some(&base));
        let other = add("other", Some(&base));
        let lone = add("lone", None);
        let gc = Gc::new(Arc::clone(&layers), content.clone(), Arc::clone(&leases));
        Fixture {
            _dir: dir,
            gc,
            layers,
            leases,
            containers,
            content,
            base,
            app,
            other,
            lone,
        }
    }

    fn set(chains: &[&Digest]) -> HashSet<Digest> {
        chains.iter().map(|c| (*c).clone()).collect()
    }

    #[tokio::test]
    async fn release_removes_children_before_parents_and_their_blobs() {
        let f = fixture();
        // Parent listed before its child: both go.
        let removed = f.gc.release(set(&[&f.base, &f.other])).await.unwrap();
        assert_eq!(removed, [f.other.to_string()], "base still carries app");
        let removed = f.gc.release(set(&[&f.base, &f.app])).await.unwrap();
        assert_eq!(removed.len(), 2);
        assert!(f.layers.get(&f.base).is_none() && f.layers.get(&f.app).is_none());
        assert_eq!(
            f.content.list().unwrap().len(),
            1,
            "only lone's blob is left"
        );
    }

    #[tokio::test]
    async fn a_leased_chain_and_what_it_stands_on_stay() {
        let f = fixture();
        let lease = f.leases.lease(std::slice::from_ref(&f.app));
        let removed =
            f.gc.release(set(&[&f.app, &f.base, &f.other]))
                .await
                .unwrap();
        assert_eq!(removed, [f.other.to_string()]);
        drop(lease);
        let removed = f.gc.release(set(&[&f.app, &f.base])).await.unwrap();
        assert_eq!(removed.len(), 2);
    }

    #[tokio::test]
    async fn what_a_hold_kept_goes_once_the_hold_does_unless_an_operation_needs_it() {
        let f = fixture();
        f.leases.hold("snapshot/x".into(), f.app.clone());
        let removed = f.gc.release(set(&[&f.app, &f.base])).await.unwrap();
        assert!(removed.is_empty());
        assert!(
            f.gc.collect_deferred().await.unwrap().is_empty(),
            "still held"
        );
        f.leases.release("snapshot/x");
        let removed = f.gc.collect_deferred().await.unwrap();
        assert_eq!(removed, [f.app.to_string()], "base still carries other");

        // An operation that uses a deferred chain makes it needed again.
        f.leases.hold("container/c".into(), f.other.clone());
        f.gc.release(set(&[&f.other])).await.unwrap();
        drop(f.leases.lease(std::slice::from_ref(&f.other)));
        f.leases.release("container/c");
        assert!(f.gc.collect_deferred().await.unwrap().is_empty());
        assert!(f.layers.get(&f.other).is_some());
    }

    #[tokio::test]
    async fn a_deferred_chain_an_operation_used_while_it_was_collected_stays() {
        let f = fixture();
        f.leases.hold("snapshot/x".into(), f.app.clone());
        f.gc.release(set(&[&f.app])).await.unwrap();
        f.leases.release("snapshot/x");
        // collect_deferred reads the deferred chains and the images'
        // holds, and no image holds app yet...
        let asked = f.leases.deferred();
        assert_eq!(asked, set(&[&f.app]));
        // ...a load leases app, records its image and lets go...
        drop(f.leases.lease(std::slice::from_ref(&f.app)));
        // ...and then the removal comes.
        let removed = f.gc.remove(asked, Claim::StillDeferred).await.unwrap();
        assert!(removed.is_empty(), "the load's image stands on app");
        assert!(f.layers.get(&f.app).is_some());
    }

    #[tokio::test]
    async fn an_images_layers_go_with_the_last_image_that_stands_on_them() {
        let f = fixture();
        let (a, b) = (Digest::sha256_of(b"image a"), Digest::sha256_of(b"image b"));
        f.content.hold(&a, &[], Some(&f.app)).unwrap();
        f.content.hold(&b, &[], Some(&f.other)).unwrap();
        let (removed, _) = f.gc.release_images(std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(removed, [f.app.to_string()], "b stands on base");
        // An image being recorded right now keeps what it holds.
        let recording = f.leases.lease_image(&b);
        let (removed, _) = f.gc.release_images(std::slice::from_ref(&b)).await.unwrap();
        assert!(removed.is_empty());
        drop(recording);
        let (mut removed, _) = f.gc.release_images(std::slice::from_ref(&b)).await.unwrap();
        removed.sort();
        let mut expected = vec![f.other.to_string(), f.base.to_string()];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(f.layers.get(&f.lone).is_some(), "no image named lone");
    }

    #[tokio::test]
    async fn a_deferred_chain_an_image_holds_is_not_collected() {
        let f = fixture();
        f.leases.hold("container/c".into(), f.app.clone());
        f.gc.release(set(&[&f.app])).await.unwrap();
        // An image is created on app meanwhile (a commit, CreateImage).
        f.gc.hold_image(
            &Digest::sha256_of(b"image"),
            &[f.base.clone(), f.app.clone()],
        )
        .unwrap();
        f.leases.release("container/c");
        assert!(f.gc.collect_deferred().await.unwrap().is_empty());
        assert!(f.layers.get(&f.app).is_some());
    }

    #[tokio::test]
    async fn retain_keeps_what_images_stand_on_and_names_what_is_missing() {
        let f = fixture();
        let gone = Digest::sha256_of(b"never stored");
        let images = [
            (Digest::sha256_of(b"image a"), Some(f.app.clone())),
            (Digest::sha256_of(b"image b"), Some(gone.clone())),
            (Digest::sha256_of(b"no layers"), None),
        ];
        let (removed, missing) = f.gc.retain(&images).await.unwrap();
        let mut removed = removed;
        removed.sort();
        let mut expected = vec![f.other.to_string(), f.lone.to_string()];
        expected.sort();
        assert_eq!(removed, expected);
        assert_eq!(missing, [gone.to_string()]);
        assert!(f.layers.get(&f.app).is_some() && f.layers.get(&f.base).is_some());
    }

    #[tokio::test]
    async fn a_container_holds_its_image_layers_across_a_restart_until_released() {
        let f = fixture();
        f.containers
            .create("c1", "app-image", Some(f.app.clone()), "")
            .unwrap();
        let removed = f.gc.release(set(&[&f.app, &f.base])).await.unwrap();
        assert!(removed.is_empty(), "the container stands on app and base");

        // A restart: a new table, filled again from the records on disk.
        let leases = Arc::new(Leases::new());
        let containers = Containers::open(
            f._dir.path(),
            Arc::new(crate::storage::overlay::Overlay),
            Arc::clone(&f.layers),
            Arc::clone(&leases),
        )
        .unwrap();
        let gc = Gc::new(
            Arc::clone(&f.layers),
            f.content.clone(),
            Arc::clone(&leases),
        );
        let (removed, _) = gc.retain(&[]).await.unwrap();
        let mut removed = removed;
        removed.sort();
        let mut expected = vec![f.other.to_string(), f.lone.to_string()];
        expected.sort();
        assert_eq!(removed, expected, "app and base stay for the container");

        containers.release("c1").unwrap();
        let removed = gc.release(set(&[&f.app, &f.base])).await.unwrap();
        assert_eq!(removed.len(), 2);
    }

    #[tokio::test]
    async fn manifests_and_configs_go_with_the_last_image_that_needs_them() {
        let f = fixture();
        let blob = |name: &str| {
            let d = Digest::sha256_of(name.as_bytes());
            f.content.write(&d, name.as_bytes()).unwrap();
            d
        };
        let (index, manifest, config_a, config_b) = (
            blob("index"),
            blob("manifest"),
            blob("config a"),
            blob("config b"),
        );
        let (image_a, image_b) = (config_a.clone(), config_b.clone());
        f.content
            .hold(
                &image_a,
                &[index.clone(), manifest.clone(), config_a.clone()],
                None,
            )
            .unwrap();
        f.content
            .hold(&image_b, &[index.clone(), config_b.clone()], Some(&f.lone))
            .unwrap();
        let before = f.content.list().unwrap().len();

        let (_, deleted) =
            f.gc.release_images(std::slice::from_ref(&image_a))
                .await
                .unwrap();
        assert_eq!(deleted, 2);
        assert!(f.content.contains(&index), "image b still needs the index");
        assert!(!f.content.contains(&manifest) && !f.content.contains(&config_a));
        // At start-up, metadata holds no image any more: b's go too, and
        // every layer with its blob.
        let (removed, _) = f.gc.retain(&[]).await.unwrap();
        assert_eq!(removed.len(), 4);
        assert_eq!(f.content.list().unwrap().len(), before - 4 - 4);
        assert!(f.content.owners().unwrap().is_empty());
    }
}
