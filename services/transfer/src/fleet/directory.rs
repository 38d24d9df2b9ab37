//! The fleet's content directory as the pull engine sees it: which peers
//! hold a blob whole, and which one is fetching it now (its claim). The
//! real one is NATS JetStream's key-value store ([`super::nats`]); unit
//! tests use [`MemoryDirectory`].
//!
//! Every record carries the time it was written; a record older than the
//! directory's TTL is not believed (its node stopped refreshing it: it
//! died or left), and a claim that old may be taken over.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imaged_common::Error;
use imaged_model::Digest;
use serde::{Deserialize, Serialize};

/// A node that serves content to the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its `--node-name`.
    pub node: String,
    /// Its serve-content base URL (`http://host:port`).
    pub url: String,
}

/// A peer's record, with when it was last written (ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub peer: Peer,
    pub at: u64,
}

impl Record {
    /// `peer`'s record, written now.
    pub fn now(peer: &Peer) -> Record {
        Record {
            peer: peer.clone(),
            at: now_ms(),
        }
    }

    /// Whether it was written within `ttl`.
    pub fn fresh(&self, ttl: Duration) -> bool {
        now_ms().saturating_sub(self.at) <= ttl.as_millis() as u64
    }
}

/// Holders kept per blob, the newest: enough to spread readers, and a
/// bound on what one record costs whatever the fleet's size.
pub const MAX_HOLDERS: usize = 32;

/// Whether `url` is a peer URL this node will dial: `http(s)://` and a
/// host with an optional port, nothing else (no user, path or query). A
/// record is written by whoever reaches the directory; it must not steer
/// this node's requests anywhere but a registry API's root.
pub fn dialable(url: &str) -> bool {
    let Some(host) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// Milliseconds since the epoch (the fleet's clocks are assumed kept by
/// NTP; a TTL of seconds tolerates their drift).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Who fetches a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// This node: it fetches from upstream; the others read from it.
    Mine,
    /// Another node, fetching now.
    By(Peer),
}

/// The directory's operations. Each answers within a short bound; an
/// unreachable directory is `UNAVAILABLE`, and the pull goes on alone.
#[tonic::async_trait]
pub trait Directory: Send + Sync {
    /// The peers that hold `blob` whole (fresh records only).
    async fn holders(&self, blob: &Digest) -> Result<Vec<Peer>, Error>;
    /// Records (or refreshes) that `me` holds `blob` whole.
    async fn hold(&self, blob: &Digest, me: &Peer) -> Result<(), Error>;
    /// Claims the fetch of `blob` for `me`, atomically: one node of the
    /// fleet wins; a claim past the TTL is taken over.
    async fn claim(&self, blob: &Digest, me: &Peer) -> Result<Claimed, Error>;
    /// Refreshes `me`'s claim on `blob`; an error when it is no longer
    /// `me`'s.
    async fn renew(&self, blob: &Digest, me: &Peer) -> Result<(), Error>;
    /// Gives up `me`'s claim on `blob` (the blob is held, or the fetch
    /// failed).
    async fn release(&self, blob: &Digest, me: &Peer) -> Result<(), Error>;
}

/// A directory in memory, shared by the nodes of a unit test.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryDirectory {
    ttl: Duration,
    held: std::sync::Mutex<std::collections::HashMap<Digest, Vec<Record>>>,
    claims: std::sync::Mutex<std::collections::HashMap<Digest, Record>>,
}

#[cfg(test)]
impl MemoryDirectory {
    pub fn new(ttl: Duration) -> MemoryDirectory {
        MemoryDirectory {
            ttl,
            ..Default::default()
        }
    }
}

#[cfg(test)]
#[tonic::async_trait]
impl Directory for MemoryDirectory {
    async fn holders(&self, blob: &Digest) -> Result<Vec<Peer>, Error> {
        let held = self.held.lock().unwrap();
        Ok(held
            .get(blob)
            .into_iter()
            .flatten()
            .filter(|r| r.fresh(self.ttl))
            .map(|r| r.peer.clone())
            .collect())
    }

    async fn hold(&self, blob: &Digest, me: &Peer) -> Result<(), Error> {
        let mut held = self.held.lock().unwrap();
        let records = held.entry(blob.clone()).or_default();
        records.retain(|r| r.peer.node != me.node);
        records.push(Record::now(me));
        let extra = records.len().saturating_sub(MAX_HOLDERS);
        records.drain(..extra);
        Ok(())
    }

    async fn claim(&self, blob: &Digest, me: &Peer) -> Result<Claimed, Error> {
        let mut claims = self.claims.lock().unwrap();
        match claims.get(blob) {
            Some(r) if r.fresh(self.ttl) && r.peer.node != me.node => {
                Ok(Claimed::By(r.peer.clone()))
            }
            _ => {
                claims.insert(blob.clone(), Record::now(me));
                Ok(Claimed::Mine)
            }
        }
    }

    async fn renew(&self, blob: &Digest, me: &Peer) -> Result<(), Error> {
        let mut claims = self.claims.lock().unwrap();
        match claims.get_mut(blob) {
            Some(r) if r.peer.node == me.node => {
                *r = Record::now(me);
                Ok(())
            }
            _ => Err(Error::failed_precondition("the claim is not ours")),
        }
    }

    async fn release(&self, blob: &Digest, me: &Peer) -> Result<(), Error> {
        let mut claims = self.claims.lock().unwrap();
        if claims.get(blob).is_some_and(|r| r.peer.node == me.node) {
            claims.remove(blob);
        }
        Ok(())
    }
}
