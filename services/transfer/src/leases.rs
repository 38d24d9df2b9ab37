//! Leases: the chains an operation in flight uses (a pull, load, import or
//! commit), held against removal until it ends, as containerd's
//! `core/leases` holds content. Garbage collection asks here before it
//! removes a layer ([`crate::gc`]); the operations take a [`Lease`] and
//! drop it when done. Container layers and MountImage leases are held by
//! [`crate::containers::Containers`], which GC also consults.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use imaged_model::Digest;

/// The lease table: how many operations hold each chain.
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<HashMap<Digest, usize>>,
}

/// Chains held until this is dropped.
#[must_use = "a lease holds its chains only while it lives"]
pub struct Lease<'a> {
    leases: &'a Leases,
    chains: Vec<Digest>,
}

impl Leases {
    /// An empty table.
    pub fn new() -> Self {
        Leases::default()
    }

    /// Holds `chains` against removal until the lease is dropped.
    pub fn lease(&self, chains: &[Digest]) -> Lease<'_> {
        let mut held = self.lock();
        for chain in chains {
            *held.entry(chain.clone()).or_default() += 1;
        }
        Lease {
            leases: self,
            chains: chains.to_vec(),
        }
    }

    /// Runs `remove` unless an operation holds `chain`. The table stays
    /// locked meanwhile, so an operation that leases the chain next sees
    /// it gone, and one that leased it first keeps it.
    pub fn unless_leased<T>(&self, chain: &Digest, remove: impl FnOnce() -> T) -> Option<T> {
        let held = self.lock();
        if held.contains_key(chain) {
            return None;
        }
        let removed = remove();
        drop(held);
        Some(removed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, usize>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut held = self.leases.lock();
        for chain in &self.chains {
            if let Some(n) = held.get_mut(chain) {
                *n -= 1;
                if *n == 0 {
                    held.remove(chain);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn a_chain_is_held_while_any_lease_on_it_lives() {
        let leases = Leases::new();
        let first = leases.lease(&[chain(1), chain(2)]);
        let second = leases.lease(&[chain(2)]);
        assert_eq!(leases.unless_leased(&chain(1), || "removed"), None);
        assert_eq!(
            leases.unless_leased(&chain(3), || "removed"),
            Some("removed")
        );
        drop(first);
        assert_eq!(
            leases.unless_leased(&chain(1), || "removed"),
            Some("removed")
        );
        assert_eq!(leases.unless_leased(&chain(2), || "removed"), None);
        drop(second);
        assert_eq!(
            leases.unless_leased(&chain(2), || "removed"),
            Some("removed")
        );
    }
}
