//! The fleet's directory in NATS JetStream's key-value store
//! (`--peer-directory nats`), over the `--nats-url` the fleet's events
//! already use. One bucket (`--peer-bucket`, default `imaged-peers`):
//!
//! - `held.<hex>`: the nodes holding the blob whole, a JSON list of
//!   records, changed by compare-and-set so that no holder is lost;
//! - `claim.<hex>`: the node fetching the blob now, created atomically
//!   (`create` fails when the key exists), so one node of the fleet wins.
//!
//! Records carry the time they were written and are refreshed by the
//! heartbeat; the bucket's age limit removes what nobody refreshes. A
//! directory that cannot be reached answers `UNAVAILABLE` within
//! [`OP_TIMEOUT`], and is reached again on the next call.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use imaged_common::Error;
use imaged_common::nats::Credentials;
use imaged_model::Digest;
use tokio::sync::Mutex;

use super::directory::{Claimed, Directory, MAX_HOLDERS, Peer, Record};

/// How long one directory operation may take before the pull goes on
/// without it.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Attempts of a compare-and-set before giving up.
const CAS_ATTEMPTS: usize = 8;

/// The directory in a JetStream key-value bucket.
pub struct NatsDirectory {
    url: String,
    creds: Option<Credentials>,
    bucket: String,
    ttl: Duration,
    /// The connection, made once (async-nats reconnects it).
    client: tokio::sync::OnceCell<async_nats::Client>,
    /// The bucket, once reached; dropped on an error so the next call
    /// reaches it again (NATS restarted, the bucket was lost).
    store: Mutex<Option<kv::Store>>,
}

impl NatsDirectory {
    /// A directory at `url` in `bucket`; records older than `ttl` are not
    /// believed. Nothing is reached until the first call.
    pub fn new(url: String, creds: Option<Credentials>, bucket: String, ttl: Duration) -> Self {
        NatsDirectory {
            url,
            creds,
            bucket,
            ttl,
            client: tokio::sync::OnceCell::new(),
            store: Mutex::new(None),
        }
    }

    /// The bucket, created when missing.
    async fn store(&self) -> Result<kv::Store, Error> {
        let mut store = self.store.lock().await;
        if let Some(store) = store.as_ref() {
            return Ok(store.clone());
        }
        let client = self
            .client
            .get_or_try_init(|| imaged_common::nats::connect(&self.url, self.creds.as_ref()))
            .await
            .map_err(|e| unavailable(&e))?;
        let js = jetstream::new(client.clone());
        // The bucket's stream, made as async-nats's `create_key_value`
        // makes it: that call first reads the account's limits, which
        // async-nats 0.51 cannot parse from Debian's nats-server 2.9.
        js.get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{}", self.bucket),
            subjects: vec![format!("$KV.{}.>", self.bucket)],
            max_messages_per_subject: 1,
            // What nobody refreshes goes, well after it stopped being
            // believed.
            max_age: self.ttl * 3,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
        let bucket = js
            .get_key_value(&self.bucket)
            .await
            .map_err(|e| unavailable(&e))?;
        *store = Some(bucket.clone());
        Ok(bucket)
    }

    /// Runs `op` on the bucket within [`OP_TIMEOUT`]; a failure forgets
    /// the bucket, to be reached again.
    async fn with<T, F>(&self, op: impl FnOnce(kv::Store) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let answer = tokio::time::timeout(OP_TIMEOUT, async {
            let store = self.store().await?;
            op(store).await
        })
        .await
        .unwrap_or_else(|_| Err(Error::unavailable("the peer directory did not answer")));
        if answer
            .as_ref()
            .is_err_and(|e| e.is(tonic::Code::Unavailable))
        {
            *self.store.lock().await = None;
        }
        answer
    }
}

fn unavailable(err: &dyn std::fmt::Display) -> Error {
    Error::unavailable(format!("peer directory: {err}"))
}

fn held_key(blob: &Digest) -> String {
    format!("held.{}", blob.hex())
}

fn claim_key(blob: &Digest) -> String {
    format!("claim.{}", blob.hex())
}

/// The live value of `key` and its revision; `None` when absent or
/// deleted.
async fn live(store: &kv::Store, key: &str) -> Result<Option<(Bytes, u64)>, Error> {
    match store.entry(key).await.map_err(|e| unavailable(&e))? {
        Some(entry) if entry.operation == kv::Operation::Put => {
            Ok(Some((entry.value, entry.revision)))
        }
        _ => Ok(None),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[tonic::async_trait]
impl Directory for NatsDirectory {
    async fn holders(&self, blob: &Digest) -> Result<Vec<Peer>, Error> {
        let ttl = self.ttl;
        self.with(|store| async move {
            let Some((value, _)) = live(&store, &held_key(blob)).await? else {
                return Ok(Vec::new());
            };
            let records: Vec<Record> = serde_json::from_slice(&value).unwrap_or_default();
            Ok(records
                .into_iter()
                .filter(|r| r.fresh(ttl))
                .map(|r| r.peer)
                .collect())
        })
        .await
    }

    async fn hold(&self, blob: &Digest, me: &Peer) -> Result<(), Error> {
        let ttl = self.ttl;
        self.with(|store| async move {
            let key = held_key(blob);
            for _ in 0..CAS_ATTEMPTS {
                let found = live(&store, &key).await?;
                let mut records: Vec<Record> = found
                    .as_ref()
                    .and_then(|(value, _)| serde_json::from_slice(value).ok())
                    .unwrap_or_default();
                records.retain(|r| r.peer.node != me.node && r.fresh(ttl));
                records.push(Record::now(me));
                let extra = records.len().saturating_sub(MAX_HOLDERS);
                records.drain(..extra);
                let written = match found {
                    Some((_, revision)) => {
                        store.update(&key, encode(&records), revision).await.is_ok()
                    }
                    None => store.create(&key, encode(&records)).await.is_ok(),
                };
                if written {
                    return Ok(());
                }
            }
            Err(Error::aborted(format!("{key}: too many writers at once")))
        })
        .await
    }

    async fn claim(&self, blob: &Digest, me: &Peer) -> Result<Claimed, Error> {
        let ttl = self.ttl;
        self.with(|store| async move {
            let key = claim_key(blob);
            for _ in 0..CAS_ATTEMPTS {
                if store.create(&key, encode(&Record::now(me))).await.is_ok() {
                    return Ok(Claimed::Mine);
                }
                let Some((value, revision)) = live(&store, &key).await? else {
                    continue; // released in between: try again
                };
                let holder: Option<Record> = serde_json::from_slice(&value).ok();
                match holder {
                    Some(r) if r.fresh(ttl) && r.peer.node != me.node => {
                        return Ok(Claimed::By(r.peer));
                    }
                    // Ours from before a restart, stale, or unreadable:
                    // taken over, if nobody was faster.
                    _ => {
                        if store
                            .update(&key, encode(&Record::now(me)), revision)
                            .await
                            .is_ok()
                        {
                            return Ok(Claimed::Mine);
                        }
                    }
                }
            }
            Err(Error::aborted(format!("{key}: too many claimants at once")))
        })
        .await
    }

    async fn renew(&self, blob: &Digest, me: &Peer) -> Result<(), Error> {
        self.with(|store| async move {
            let key = claim_key(blob);
            let Some((value, revision)) = live(&store, &key).await? else {
                return Err(Error::failed_precondition(format!("{key}: no claim")));
            };
            let holder: Option<Record> = serde_json::from_slice(&value).ok();
            if holder.is_none_or(|r| r.peer.node != me.node) {
                return Err(Error::failed_precondition(format!("{key}: not ours")));
            }
            store
                .update(&key, encode(&Record::now(me)), revision)
                .await
                .map(|_| ())
                .map_err(|e| Error::failed_precondition(format!("{key}: {e}")))
        })
        .await
    }

    async fn release(&self, blob: &Digest, me: &Peer) -> Result<(), Error> {
        self.with(|store| async move {
            let key = claim_key(blob);
            if let Some((value, revision)) = live(&store, &key).await? {
                let holder: Option<Record> = serde_json::from_slice(&value).ok();
                if holder.is_some_and(|r| r.peer.node == me.node) {
                    let _ = store.delete_expect_revision(&key, Some(revision)).await;
                }
            }
            Ok(())
        })
        .await
    }
}
