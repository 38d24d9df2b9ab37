//! Leases: what holds a layer chain against removal, in one table, as
//! containerd's `core/leases` holds content. Two kinds live here:
//! - an operation in flight (a pull, load, import or commit) takes a
//!   [`Lease`] on the chains it uses and drops it when done;
//! - a named hold lasts until it is released by name: a container's
//!   read-write layer (`container/<id>`, taken again at start-up from the
//!   records on disk), a containerd snapshot (`snapshot/<name>`, likewise)
//!   and a MountImage lease (`mount/<lease id>`).
//!
//! An operation that records an image also leases the image itself
//! ([`ImageLease`]): its manifests and config, written before imaged-metadata
//! has the image, are not forgotten meanwhile by a reconciliation or a
//! removal that was decided before the image existed.
//!
//! Garbage collection ([`crate::store::gc`]) asks only this table before it
//! removes a layer or forgets an image's blobs.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use imaged_model::Digest;

/// The lease table.
#[derive(Debug, Default)]
pub struct Leases {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// How many operations in flight hold each chain.
    operations: HashMap<Digest, usize>,
    /// Named holds: hold name → the chain held.
    named: HashMap<String, Digest>,
    /// Chains no image needs any more that a named hold (or a child kept
    /// by one) kept from GC: collected once the holds go.
    deferred: HashSet<Digest>,
    /// How many operations in flight are recording each image (by ID).
    images: HashMap<Digest, usize>,
}

impl Table {
    fn holds(&self, chain: &Digest) -> bool {
        self.operations.contains_key(chain) || self.named_holds(chain)
    }

    fn named_holds(&self, chain: &Digest) -> bool {
        self.named.values().any(|c| c == chain)
    }
}

/// What a removal asks of the table before it takes a chain, by how it
/// decided that no image needs the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Decided by imaged-metadata behind the gate its PutImage also
    /// takes (a release, a reconciliation): an image recorded since waits
    /// for the removal, and its operation's lease keeps its chains. Nothing
    /// may hold the chain now.
    Unheld,
    /// Decided here, from the deferred chains, by asking imaged-metadata
    /// without that gate: an operation may have leased the chain, recorded
    /// its image and let go since it asked. Nothing may hold the chain now,
    /// and it must still be deferred (a lease undefers it).
    StillDeferred,
}

/// Chains held until this is dropped.
#[must_use = "a lease holds its chains only while it lives"]
pub struct Lease<'a> {
    leases: &'a Leases,
    chains: Vec<Digest>,
}

/// An image's manifests and config held while an operation records it.
#[must_use = "an image lease holds the image only while it lives"]
pub struct ImageLease<'a> {
    leases: &'a Leases,
    image: Digest,
}

/// The name of a container's hold on its image.
pub fn container_hold(container_id: &str) -> String {
    format!("container/{container_id}")
}

/// The name of a containerd snapshot's hold on the layer it stands on.
pub fn snapshot_hold(name: &str) -> String {
    format!("snapshot/{name}")
}

/// The name of a MountImage lease's hold.
pub fn mount_hold(lease_id: &str) -> String {
    format!("mount/{lease_id}")
}

impl Leases {
    /// An empty table.
    pub fn new() -> Self {
        Leases::default()
    }

    /// Holds `chains` against removal until the lease is dropped.
    /// An operation that uses a chain makes it needed again (its image
    /// will say so when it is freed next): it is no longer deferred.
    pub fn lease(&self, chains: &[Digest]) -> Lease<'_> {
        let mut table = self.lock();
        for chain in chains {
            *table.operations.entry(chain.clone()).or_default() += 1;
            table.deferred.remove(chain);
        }
        Lease {
            leases: self,
            chains: chains.to_vec(),
        }
    }

    /// Holds the blobs image `image` owns until the lease is dropped: take
    /// it before writing them, keep it until imaged-metadata has the image.
    pub fn lease_image(&self, image: &Digest) -> ImageLease<'_> {
        *self.lock().images.entry(image.clone()).or_default() += 1;
        ImageLease {
            leases: self,
            image: image.clone(),
        }
    }

    /// Runs `forget` on those of `images` that no operation is recording,
    /// with the table locked, so that an operation that leases one next
    /// writes its blobs after they are forgotten, not before.
    pub fn unless_images_leased<T>(
        &self,
        images: &[Digest],
        forget: impl FnOnce(&[Digest]) -> T,
    ) -> T {
        let table = self.lock();
        let unleased: Vec<Digest> = images
            .iter()
            .filter(|image| !table.images.contains_key(image))
            .cloned()
            .collect();
        let forgotten = forget(&unleased);
        drop(table);
        forgotten
    }

    /// Holds `chain` under `name` until [`Leases::release`]; a second hold
    /// of the same name replaces the first.
    pub fn hold(&self, name: String, chain: Digest) {
        self.lock().named.insert(name, chain);
    }

    /// Ends the hold `name`; answers the chain it held, if any.
    pub fn release(&self, name: &str) -> Option<Digest> {
        self.lock().named.remove(name)
    }

    /// Whether a named hold (a container, a snapshot, a mount) holds
    /// `chain` itself.
    pub fn named_holds(&self, chain: &Digest) -> bool {
        self.lock().named_holds(chain)
    }

    /// Remembers that no image needs `chain` though a hold kept it.
    pub fn defer(&self, chain: Digest) {
        self.lock().deferred.insert(chain);
    }

    /// The deferred chains now. They stay deferred until a removal with
    /// [`Claim::StillDeferred`] takes them, an operation leases them or
    /// [`Leases::undefer`] says an image needs them.
    pub fn deferred(&self) -> HashSet<Digest> {
        self.lock().deferred.clone()
    }

    /// `chains` are needed by an image again: no longer deferred (the
    /// image releases them when it goes).
    pub fn undefer<'c>(&self, chains: impl IntoIterator<Item = &'c Digest>) {
        let mut table = self.lock();
        for chain in chains {
            table.deferred.remove(chain);
        }
    }

    /// Every chain held now, by operations and named holds alike (the
    /// tops: what they stand on is held through them).
    pub fn held_chains(&self) -> HashSet<Digest> {
        let table = self.lock();
        table
            .operations
            .keys()
            .chain(table.named.values())
            .cloned()
            .collect()
    }

    /// Runs `remove` unless something holds `chain`, or, for
    /// [`Claim::StillDeferred`], unless it is no longer deferred. The table
    /// stays locked meanwhile, so an operation that leases the chain next
    /// sees it gone, and one that leased it first keeps it.
    pub fn unless_leased<T>(
        &self,
        chain: &Digest,
        claim: Claim,
        remove: impl FnOnce() -> T,
    ) -> Option<T> {
        let mut table = self.lock();
        if table.holds(chain) {
            return None;
        }
        // A chain removed is no longer deferred, whoever removes it.
        let was_deferred = table.deferred.remove(chain);
        if claim == Claim::StillDeferred && !was_deferred {
            return None;
        }
        let removed = remove();
        drop(table);
        Some(removed)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut table = self.leases.lock();
        for chain in &self.chains {
            let_go(&mut table.operations, chain);
        }
    }
}

/// One lease of `what` fewer in `counts`; none left, it is no longer held.
fn let_go(counts: &mut HashMap<Digest, usize>, what: &Digest) {
    if let Some(n) = counts.get_mut(what) {
        *n -= 1;
        if *n == 0 {
            counts.remove(what);
        }
    }
}

impl Drop for ImageLease<'_> {
    fn drop(&mut self) {
        let_go(&mut self.leases.lock().images, &self.image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_being_recorded_is_not_forgotten() {
        let leases = Leases::new();
        let (a, b) = (chain(1), chain(2));
        let first = leases.lease_image(&a);
        let second = leases.lease_image(&a);
        let forgotten = |leases: &Leases| {
            leases.unless_images_leased(&[a.clone(), b.clone()], <[Digest]>::to_vec)
        };
        assert_eq!(forgotten(&leases), std::slice::from_ref(&b));
        drop(first);
        assert_eq!(
            forgotten(&leases),
            std::slice::from_ref(&b),
            "one recording still runs"
        );
        drop(second);
        assert_eq!(forgotten(&leases), [a, b]);
    }

    fn chain(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    /// Whether a removal decided behind imaged-metadata's gate takes
    /// chain `n`.
    fn removed(leases: &Leases, n: u8) -> Option<&'static str> {
        leases.unless_leased(&chain(n), Claim::Unheld, || "removed")
    }

    #[test]
    fn a_deferred_chain_leased_since_is_not_claimed_as_still_deferred() {
        let leases = Leases::new();
        let claim = |n: u8| leases.unless_leased(&chain(n), Claim::StillDeferred, || "removed");
        leases.defer(chain(1));
        leases.defer(chain(2));
        assert_eq!(
            leases.deferred(),
            [chain(1), chain(2)].into_iter().collect()
        );
        // An operation uses chain 2 and lets go: its image needs it now.
        drop(leases.lease(&[chain(2)]));
        assert_eq!(claim(2), None);
        assert_eq!(claim(1), Some("removed"));
        assert_eq!(claim(1), None, "claimed once");
        assert_eq!(claim(3), None, "never deferred");
        leases.defer(chain(4));
        leases.undefer([&chain(4)]);
        leases.defer(chain(5));
        assert_eq!(removed(&leases, 5), Some("removed"));
        assert!(
            leases.deferred().is_empty(),
            "removed, so no longer deferred"
        );
    }

    #[test]
    fn a_chain_is_held_while_any_lease_on_it_lives() {
        let leases = Leases::new();
        let first = leases.lease(&[chain(1), chain(2)]);
        let second = leases.lease(&[chain(2)]);
        assert_eq!(removed(&leases, 1), None);
        assert_eq!(removed(&leases, 3), Some("removed"));
        drop(first);
        assert_eq!(removed(&leases, 1), Some("removed"));
        assert_eq!(removed(&leases, 2), None);
        drop(second);
        assert_eq!(removed(&leases, 2), Some("removed"));
    }

    #[test]
    fn a_named_hold_lasts_until_released_by_name() {
        let leases = Leases::new();
        leases.hold(container_hold("c1"), chain(1));
        leases.hold(mount_hold("m1"), chain(1));
        let op = leases.lease(&[chain(2)]);
        assert_eq!(
            leases.held_chains(),
            [chain(1), chain(2)].into_iter().collect()
        );
        assert_eq!(leases.release(&container_hold("c1")), Some(chain(1)));
        assert_eq!(removed(&leases, 1), None, "the mount still holds it");
        assert_eq!(leases.release(&mount_hold("m1")), Some(chain(1)));
        assert_eq!(leases.release(&mount_hold("m1")), None);
        assert_eq!(removed(&leases, 1), Some("removed"));
        drop(op);
        assert!(leases.held_chains().is_empty());
    }
}
