//! A big layer read from several fleet peers at once (issue 31, item 3).
//!
//! The blob is cut into parts of [`PART`] bytes; each part is asked of one
//! holder by byte range (`Range: bytes=N-M`), the holders taken in turn,
//! two parts in flight per holder (at most [`MOST_HOLDERS`] of them). The
//! parts are handed on in order as one stream, so the download hashes,
//! stores and unpacks them as it would one source's bytes, and checks the
//! digest over the whole: a holder that lies costs the layer's time,
//! never its integrity. A holder that fails a part (an error, a wrong
//! status, a short answer, no bytes for the stall timeout) is dropped for
//! the rest of the blob and its part asked of the next; once every holder
//! failed the stream ends in an error, and the pull goes on from the
//! bytes received, at its next source.
//!
//! Memory: at most `2 × holders` parts, [`PART`] bytes each, whatever
//! the blob's size.

use std::collections::HashSet;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};

use crate::neighbours::fetcher::Fetcher;
use crate::registry::Source;

/// Bytes asked of a holder at once.
pub(super) const PART: u64 = 2 << 20;

/// Bytes handed on at once: a part in slices, so that what the download
/// queues stays small.
const SLICE: usize = 256 << 10;

/// Holders read from at once, at most: enough to outrun one peer's disk
/// or link, few enough that one pull does not take every peer's.
pub(super) const MOST_HOLDERS: usize = 4;

/// Parts in flight per holder: one arriving while the next is asked.
const PARTS_PER_HOLDER: usize = 2;

/// What the parts of one blob share: who to ask, and who failed.
struct Parts {
    fetcher: Arc<dyn Fetcher>,
    holders: Vec<Source>,
    digest: String,
    stall: Duration,
    /// Holders (indexes) dropped for this blob.
    failed: Mutex<HashSet<usize>>,
}

/// The bytes `range` of the blob `digest`, read from `holders` (the
/// caller picks at most [`MOST_HOLDERS`]) part by part, in order.
pub(super) fn body(
    fetcher: Arc<dyn Fetcher>,
    holders: Vec<Source>,
    digest: &str,
    range: Range<u64>,
    stall: Duration,
) -> BoxStream<'static, io::Result<Bytes>> {
    let ahead = holders.len() * PARTS_PER_HOLDER;
    let parts = Arc::new(Parts {
        fetcher,
        holders,
        digest: digest.to_string(),
        stall,
        failed: Mutex::new(HashSet::new()),
    });
    let cuts = (range.start..range.end)
        .step_by(PART as usize)
        .map(move |start| start..(start + PART).min(range.end));
    stream::iter(cuts.enumerate())
        .map(move |(i, part)| Arc::clone(&parts).part(i, part))
        .buffered(ahead.max(1))
        .flat_map(|part| {
            stream::iter(match part {
                Ok(bytes) => (0..bytes.len())
                    .step_by(SLICE)
                    .map(|at| Ok(bytes.slice(at..(at + SLICE).min(bytes.len()))))
                    .collect(),
                Err(err) => vec![Err(err)],
            })
        })
        .boxed()
}

impl Parts {
    /// Part `i` (the bytes `range`), from the holder whose turn it is, or
    /// the next that has not failed.
    async fn part(self: Arc<Self>, i: usize, range: Range<u64>) -> io::Result<Bytes> {
        let count = self.holders.len();
        for turn in 0..count {
            let holder = (i + turn) % count;
            if self.lock_failed().contains(&holder) {
                continue;
            }
            match self.ask(holder, range.clone()).await {
                Ok(bytes) => return Ok(bytes),
                Err(err) => {
                    let source = &self.holders[holder];
                    tracing::warn!(
                        peer = source.name(),
                        blob = %self.digest,
                        "a part of the blob failed; the peer is dropped for it: {err}"
                    );
                    self.lock_failed().insert(holder);
                }
            }
        }
        Err(io::Error::other(format!(
            "every peer failed bytes {}-{} of the blob",
            range.start, range.end
        )))
    }

    /// The bytes `range` from holder `holder`: exactly that many, each
    /// chunk within the stall timeout.
    async fn ask(&self, holder: usize, range: Range<u64>) -> io::Result<Bytes> {
        let source = &self.holders[holder];
        let len = (range.end - range.start) as usize;
        let asked = self.fetcher.blob(source, &self.digest, range.clone());
        let answer = tokio::time::timeout(self.stall, asked)
            .await
            .map_err(|_| io::Error::other("no answer within the stall timeout"))?
            .map_err(io::Error::other)?;
        // A whole blob for a part from its start is usable; from further
        // on it is not.
        if !answer.partial && range.start > 0 {
            return Err(io::Error::other("the peer ignored the range asked"));
        }
        let mut body = answer.body;
        let mut bytes = BytesMut::with_capacity(len);
        while bytes.len() < len {
            let next = tokio::time::timeout(self.stall, body.try_next())
                .await
                .map_err(|_| io::Error::other("stalled"))??;
            let Some(chunk) = next else {
                return Err(io::Error::other(format!(
                    "the answer ended after {} of {len} bytes",
                    bytes.len()
                )));
            };
            let take = chunk.len().min(len - bytes.len());
            bytes.extend_from_slice(&chunk[..take]);
        }
        Ok(bytes.freeze())
    }

    fn lock_failed(&self) -> std::sync::MutexGuard<'_, HashSet<usize>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neighbours::fakes::FakeRegistry;
    use crate::registry::Registries;
    use crate::registry::mirrors::MirrorConfig;

    /// A blob of `len` bytes in a fake registry, and three holders of it.
    fn holders(len: usize) -> (Arc<FakeRegistry>, Vec<u8>, String, Vec<Source>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let image = imaged_fixtures::ImageBuilder::new(imaged_fixtures::MediaTypes::Oci)
            .layer(
                imaged_fixtures::Layer::from_tar(data.clone(), imaged_fixtures::Compression::None)
                    .unwrap(),
            )
            .build()
            .unwrap();
        let registry = Arc::new(FakeRegistry::default());
        registry.push("app", "1", &image);
        let digest = image.layers[0].digest.clone();
        let registries = Registries::new(Vec::new(), MirrorConfig::default());
        let upstream: oci_client::Reference = "registry.test/app:1".parse().unwrap();
        let peers = ["a", "b", "c"]
            .iter()
            .map(|p| registries.peer(&upstream, &format!("http://{p}:5000"), &Default::default()))
            .collect();
        (registry, data, digest, peers)
    }

    async fn read(body: BoxStream<'static, io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let chunks: Vec<Bytes> = body.try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test]
    async fn a_blob_is_read_in_order_from_every_holder() {
        let len = 5 * PART as usize + 123;
        let (registry, data, digest, peers) = holders(len);
        let fetcher: Arc<dyn Fetcher> = registry.clone();
        let stall = Duration::from_secs(5);
        let stream = super::body(
            fetcher.clone(),
            peers.clone(),
            &digest,
            0..len as u64,
            stall,
        );
        assert!(read(stream).await.unwrap() == data);
        for peer in &peers {
            assert_eq!(registry.served(peer.name(), &digest), 2, "{}", peer.name());
        }
        // From an offset: the bytes after it.
        let stream = super::body(fetcher, peers, &digest, 1000..len as u64, stall);
        assert!(read(stream).await.unwrap() == data[1000..]);
    }

    #[tokio::test]
    async fn a_holder_that_fails_is_dropped_and_the_others_cover_its_parts() {
        let len = 4 * PART as usize;
        let (registry, data, digest, peers) = holders(len);
        registry.take_down(peers[1].name());
        let fetcher: Arc<dyn Fetcher> = registry.clone();
        let stream = super::body(
            fetcher.clone(),
            peers.clone(),
            &digest,
            0..len as u64,
            Duration::from_secs(5),
        );
        assert!(read(stream).await.unwrap() == data);
        assert_eq!(registry.served(peers[1].name(), &digest), 0);

        // Every holder down: the stream ends in an error.
        registry.take_down(peers[0].name());
        registry.take_down(peers[2].name());
        let stream = super::body(
            fetcher,
            peers,
            &digest,
            0..len as u64,
            Duration::from_secs(5),
        );
        assert!(read(stream).await.is_err());
    }
}
