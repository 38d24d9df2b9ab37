//! Blobs this node is fetching for the fleet right now (it holds their
//! claim), served to peers while they arrive: serve-content streams the
//! blob's ingest file as it grows, any byte range of it, until the
//! range's end is reached. A fetch that stalls or fails ends the stream early;
//! the peer checks the digest at the end, so a broken stream can cost it
//! time, never integrity.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use imaged_model::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// How often a reader looks for new bytes.
const POLL: Duration = Duration::from_millis(20);

/// Bytes read per chunk.
const CHUNK: usize = 256 << 10;

/// One blob being fetched.
#[derive(Debug)]
pub struct Flight {
    /// The blob's size (the manifest's).
    pub size: u64,
    /// The ingest file the download writes.
    pub path: PathBuf,
    /// Where the blob is once fetched and verified (the ingest, renamed).
    pub stored: PathBuf,
    /// The repository it is fetched from without credentials, if so: who
    /// may have it without a fleet certificate.
    pub public_in: Option<String>,
}

/// The blobs in flight, shared by the pull engine and serve-content.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<Digest, Arc<Flight>>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Arc<Flight>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `blob` is being fetched.
    pub fn start(&self, blob: &Digest, flight: Flight) {
        self.lock().insert(blob.clone(), Arc::new(flight));
    }

    /// The fetch of `blob` ended (held, or failed).
    pub fn end(&self, blob: &Digest) {
        self.lock().remove(blob);
    }

    /// `blob`'s flight, if it is being fetched.
    pub fn get(&self, blob: &Digest) -> Option<Arc<Flight>> {
        self.lock().get(blob).cloned()
    }

    /// The bytes `range` of `blob` (within its size), as they arrive; an
    /// error when nothing new comes for `stall`, or the fetch ended short.
    pub fn stream(
        &self,
        blob: &Digest,
        flight: Arc<Flight>,
        range: std::ops::Range<u64>,
        stall: Duration,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let reader = Reader {
            in_flight: self.clone(),
            blob: blob.clone(),
            end: range.end.min(flight.size),
            flight,
            file: None,
            at: range.start,
            grew: Instant::now(),
            stall,
            done: false,
            scratch: vec![0; CHUNK],
        };
        futures::stream::unfold(reader, |mut reader| async move {
            if reader.done || reader.at >= reader.end {
                return None;
            }
            let next = reader.next().await;
            // An error ends the stream.
            reader.done = next.is_err();
            Some((next, reader))
        })
    }
}

struct Reader {
    in_flight: InFlight,
    blob: Digest,
    flight: Arc<Flight>,
    file: Option<tokio::fs::File>,
    at: u64,
    /// Where the stream ends (the blob's size, or a range's end).
    end: u64,
    grew: Instant,
    stall: Duration,
    done: bool,
    /// Where reads land, one buffer for the stream's life.
    scratch: Vec<u8>,
}

impl Reader {
    /// The next bytes, waiting for them.
    async fn next(&mut self) -> std::io::Result<Bytes> {
        loop {
            if self.file.is_none() {
                // The ingest while it arrives, the blob once stored.
                for path in [&self.flight.path, &self.flight.stored] {
                    match tokio::fs::File::open(path).await {
                        Ok(mut file) => {
                            file.seek(std::io::SeekFrom::Start(self.at)).await?;
                            self.file = Some(file);
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if let Some(file) = self.file.as_mut() {
                let left = (self.end - self.at).min(CHUNK as u64) as usize;
                let n = file.read(&mut self.scratch[..left]).await?;
                if n > 0 {
                    self.at += n as u64;
                    self.grew = Instant::now();
                    // A chunk as large as what was read, not as the buffer.
                    return Ok(Bytes::copy_from_slice(&self.scratch[..n]));
                }
            }
            // Nothing new: the fetch goes on, or it ended short.
            let flying = self
                .in_flight
                .get(&self.blob)
                .is_some_and(|f| Arc::ptr_eq(&f, &self.flight));
            if !flying {
                return Err(std::io::Error::other("the fetch ended before the blob did"));
            }
            if self.grew.elapsed() > self.stall {
                return Err(std::io::Error::other("the fetch stalled"));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
