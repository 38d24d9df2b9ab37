//! One layer download attempt: registry → writer thread (the ingest,
//! hashed and resumable) → unpacker (decompressor → tar reader → files),
//! with the download on the async side, a bounded channel to the writer,
//! the handoff to the unpacker ([`super::handoff`]), and stall detection;
//! then one judgement of the attempt ([`judge`]).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use imaged_common::Error;
use imaged_model::Digest;
use oci_client::manifest::OciDescriptor;
use tokio::sync::{mpsc, watch};

use super::handoff::{self, Follower, Handoff};
use crate::archive::unpack::{self, Unpacked};
use crate::neighbours::fetcher::{Blob, TO_THE_END};
use crate::pull::{Puller, State, short};
use crate::registry::{self, Source};
use crate::store::content::Ingest;
use crate::store::layers::Staging;

impl Puller {
    /// One attempt: download (resuming an ingest when the registry allows
    /// ranges) while hashing and unpacking; from one source, or from
    /// several holders at once, by parts ([`super::split`]). With `ahead`
    /// (this node fetches the blob for the fleet) the download does not
    /// wait for the unpack.
    pub(crate) async fn fetch_layer(
        &self,
        from: &[Source],
        desc: &OciDescriptor,
        blob: &Digest,
        progress: &watch::Sender<State>,
        ahead: bool,
    ) -> Result<(Staging, Unpacked), Error> {
        let id = short(&desc.digest);
        let what = format!("layer {id}");
        if desc.size <= 0 {
            return Err(Error::invalid_argument(format!(
                "{what}: the manifest gives no size for it"
            )));
        }
        let total = desc.size as u64;
        let content = self.content.clone();
        let wanted = blob.clone();
        let mut ingest = tokio::task::spawn_blocking(move || content.ingest(&wanted))
            .await
            .map_err(Error::internal)??;
        if ingest.offset() >= total {
            ingest.reset()?;
        }
        // Always a ranged request, from 0 on a fresh ingest: a registry
        // that ignores ranges answers 200 with the whole blob, and the
        // ingest starts again. Each byte is hashed once, by the ingest
        // (which also knows about resumed bytes).
        let offset = ingest.offset();
        // The answer's status line is bounded like every later chunk: a
        // registry that accepts the request and never answers must not
        // hold a download slot past the stall timeout.
        let asked = match from {
            [source] => self.fetcher.blob(source, &desc.digest, offset..TO_THE_END),
            holders => {
                let body = super::split::body(
                    Arc::clone(&self.fetcher),
                    holders.to_vec(),
                    &desc.digest,
                    offset..total,
                    self.stall,
                );
                Box::pin(async move {
                    Ok(Blob {
                        partial: true,
                        body,
                    })
                })
            }
        };
        let Ok(answer) = tokio::time::timeout(self.stall, asked).await else {
            if offset == 0 {
                ingest.discard();
            }
            return Err(unanswered(&what, self.stall));
        };
        let mut body = match answer {
            Ok(Blob {
                partial: true,
                body,
            }) => {
                if offset > 0 {
                    tracing::info!(layer = %id, offset, "resuming layer download");
                }
                body
            }
            Ok(Blob { body, .. }) => {
                ingest.reset()?;
                body
            }
            Err(err) => {
                if offset == 0 {
                    ingest.discard(); // nothing was written: leave nothing
                }
                return Err(registry::error(&what, err));
            }
        };
        let offset = ingest.offset();

        // The download → a writer thread (ingest, hashed) → the unpacker,
        // which follows it from memory or, behind, from the ingest file
        // ([`super::handoff`]).
        let (chunks_tx, chunks_rx) = mpsc::channel::<Chunk>(16);
        let handoff = Handoff::new(offset, ahead);
        let file = ingest.reopen()?;
        let writing = {
            let handoff = Arc::clone(&handoff);
            tokio::task::spawn_blocking(move || handoff::write(&handoff, ingest, chunks_rx))
        };
        let layers = Arc::clone(&self.layers);
        let unpacking = tokio::task::spawn_blocking(move || {
            let mut reader = Follower::new(handoff, file);
            let staging = layers.stage()?;
            let unpacked = unpack::unpack(&mut reader, &staging.diff(), staging.budget()).and_then(
                |unpacked| {
                    io::copy(&mut reader, &mut io::sink()).map_err(unpack::classify)?;
                    Ok(unpacked)
                },
            );
            Ok::<_, Error>((staging, unpacked))
        });

        progress.send_replace(State::Downloading {
            current: offset,
            total,
        });
        let mut current = offset;
        let mut window_start = Instant::now();
        let mut window_bytes = 0u64;
        let mut last_report = Instant::now();
        let outcome = loop {
            match tokio::time::timeout(self.stall, body.next()).await {
                Err(_) => {
                    break Chunk::Failed(self.stalled(&id, current, total));
                }
                Ok(None) => break Chunk::End,
                Ok(Some(Err(err))) => {
                    break Chunk::Failed(Error::unavailable(format!(
                        "{what}: download interrupted: {err}"
                    )));
                }
                Ok(Some(Ok(bytes))) => {
                    current += bytes.len() as u64;
                    if current > total {
                        // Never read past the descriptor: a body that does
                        // not end is refused, not stored.
                        break Chunk::Failed(Error::invalid_argument(format!(
                            "{what}: the registry sent more than the {total} bytes the manifest declares"
                        )));
                    }
                    window_bytes += bytes.len() as u64;
                    if chunks_tx.send(Chunk::Data(bytes)).await.is_err() {
                        break Chunk::End; // unpacking failed; its error follows
                    }
                    if last_report.elapsed() >= Duration::from_millis(100) {
                        progress.send_replace(State::Downloading { current, total });
                        last_report = Instant::now();
                    }
                    if window_start.elapsed() >= self.stall {
                        let floor = self.min_rate * window_start.elapsed().as_secs();
                        if window_bytes < floor {
                            break Chunk::Failed(self.stalled(&id, current, total));
                        }
                        window_start = Instant::now();
                        window_bytes = 0;
                    }
                }
            }
        };
        let stalled = matches!(&outcome, Chunk::Failed(e) if e.is(tonic::Code::DeadlineExceeded));
        progress.send_replace(State::Downloading { current, total });
        let _ = chunks_tx.send(outcome).await;
        drop(chunks_tx);
        progress.send_replace(State::Verifying);
        let (ingest, failure) = writing.await.map_err(Error::internal)?;
        let unpacked = unpacking.await.map_err(Error::internal)?;
        let what = what.clone();
        let wanted = blob.clone();
        let result = tokio::task::spawn_blocking(move || {
            judge(ingest, failure, unpacked, offset, &what, &wanted)
        })
        .await
        .map_err(Error::internal)?;
        if result.is_ok() {
            progress.send_replace(State::DownloadComplete);
        } else if stalled {
            tracing::warn!(layer = %id, "layer download stalled");
        }
        result
    }

    fn stalled(&self, id: &str, current: u64, total: u64) -> Error {
        Error::deadline_exceeded(format!(
            "layer {id} stalled: {current} of {total} bytes after no progress for {}s{}",
            self.stall.as_secs(),
            if self.min_rate > 0 {
                format!(" (minimum {} bytes/s)", self.min_rate)
            } else {
                String::new()
            }
        ))
    }
}

/// Words that say a registry never answered a request (see
/// [`unanswered`]).
const UNANSWERED: &str = "the registry sent no answer within";

/// A request the registry accepted and never answered within `stall`:
/// UNAVAILABLE, so that it is tried again (its slot freed meanwhile);
/// [`final_error`] makes the last one DEADLINE_EXCEEDED.
fn unanswered(what: &str, stall: Duration) -> Error {
    Error::unavailable(format!("{what}: {UNANSWERED} {}s", stall.as_secs()))
}

/// The error a layer download ends with once no try is left: one that
/// was never answered ran out of time.
pub(crate) fn final_error(err: Error) -> Error {
    if err.is(tonic::Code::Unavailable) && err.message().contains(UNANSWERED) {
        Error::deadline_exceeded(err.message())
    } else {
        err
    }
}

/// What the download side hands the writer.
pub(super) enum Chunk {
    Data(Bytes),
    End,
    Failed(Error),
}

/// The end of one attempt, once the download and the unpack are both
/// over: the download's failure first (the ingest kept, to resume,
/// unless the bytes were refused); then the digest, whatever the tar
/// reader made of the bytes (wrong bytes are a mismatch); then the
/// unpack's own answer. A layer unpacked from the right bytes commits the
/// blob and syncs the staged layer.
fn judge(
    ingest: Ingest,
    failure: Option<Error>,
    unpacked: Result<(Staging, Result<Unpacked, Error>), Error>,
    offset: u64,
    what: &str,
    wanted: &Digest,
) -> Result<(Staging, Unpacked), Error> {
    if let Some(failure) = failure {
        if failure.is(tonic::Code::InvalidArgument) {
            ingest.discard(); // a refusal: nothing to resume
        }
        return Err(failure);
    }
    if !ingest.matches() {
        ingest.discard();
        return Err(if offset > 0 {
            // What an earlier attempt left was not this blob (another
            // registry's bytes): start again from 0.
            Error::unavailable(format!(
                "{what}: digest mismatch after resuming at byte {offset}; fetching it again from the start"
            ))
        } else {
            Error::invalid_argument(format!(
                "{what}: digest mismatch: the registry sent other bytes than {wanted}"
            ))
        });
    }
    let (mut staging, unpacked) = match unpacked {
        Ok((staging, Ok(unpacked))) => (staging, unpacked),
        Ok((_, Err(err))) | Err(err) => {
            ingest.discard();
            return Err(err);
        }
    };
    ingest.commit()?;
    let syncing = Instant::now();
    staging.sync()?;
    // Where the layer's time went (`make bench` sums these for its pull
    // breakdown).
    let t = unpacked.timings;
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    tracing::info!(
        download_ms = ms(t.source),
        inflate_ms = ms(t.inflate),
        hash_ms = ms(t.hash),
        create_ms = ms(t.create),
        sync_ms = ms(syncing.elapsed()),
        entries = unpacked.entries,
        "{what} unpacked"
    );
    Ok((staging, unpacked))
}
