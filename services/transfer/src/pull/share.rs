//! Identical concurrent pulls share one operation: a second PullImage of
//! the same reference, platform and credentials joins the running one,
//! gets the progress sent so far and then the rest, and the same result.
//! The operation runs as long as one caller still waits on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use imaged_api::v1::{PullImageProgress, PullImageRequest};
use imaged_common::Error;
use imaged_model::{Platform, Reference};
use tokio::sync::{broadcast, mpsc};

use crate::pull::{Progress, Puller};
use crate::registry;

type Done = Shared<BoxFuture<'static, Result<(), Error>>>;

/// What makes two pulls the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    reference: String,
    platform: String,
    credentials: [u8; 32],
}

/// A running pull and what it has said so far.
struct Operation {
    done: WeakShared<BoxFuture<'static, Result<(), Error>>>,
    said: Arc<Mutex<Said>>,
}

/// Progress so far, and the channel the rest goes out on; one lock so a
/// joining caller misses nothing and sees nothing twice.
struct Said {
    log: Vec<PullImageProgress>,
    live: broadcast::Sender<PullImageProgress>,
}

/// The pulls in flight, by what they pull.
pub struct PullShare {
    puller: Arc<Puller>,
    running: Arc<Mutex<HashMap<Key, Operation>>>,
}

impl PullShare {
    pub fn new(puller: Arc<Puller>) -> Self {
        PullShare {
            puller,
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs the pull `request` asks for, or joins the identical one that
    /// runs already; sends its progress to `tx`. With `all_tags`, pulls
    /// each tag of the repository in turn, as Docker does: every tag's
    /// lines but its Status, then one Status for the repository.
    pub async fn pull(&self, request: PullImageRequest, tx: Progress) -> Result<(), Error> {
        if !request.all_tags {
            return self.pull_one(request, tx).await;
        }
        let reference = Reference::parse(&request.reference)?;
        if reference.tag().is_some() || reference.digest().is_some() {
            return Err(Error::InvalidArgument(
                "tag can't be used with --all-tags/-a".into(),
            ));
        }
        let tags = self.puller.list_tags(&request).await?;
        let mut updated = false;
        let mut last = None;
        for tag in tags {
            let one = PullImageRequest {
                reference: reference.with_tag(&tag)?.to_string(),
                all_tags: false,
                ..request.clone()
            };
            let (tag_tx, mut tag_rx) = tokio::sync::mpsc::channel(64);
            let pulling = self.pull_one(one, tag_tx);
            let forwarding = async {
                while let Some(message) = tag_rx.recv().await {
                    match message {
                        Ok(m) if m.status.starts_with("Status: ") => {
                            updated |= m.status.starts_with("Status: Downloaded newer image");
                            last = Some(m);
                        }
                        other => {
                            let _ = tx.send(other).await;
                        }
                    }
                }
            };
            let (result, ()) = tokio::join!(pulling, forwarding);
            result?;
        }
        let shown = reference.familiar_name();
        let mut status = last.unwrap_or_default();
        status.status = format!(
            "Status: {} for {shown}",
            if updated {
                "Downloaded newer image"
            } else {
                "Image is up to date"
            }
        );
        status.reference = shown;
        let _ = tx.send(Ok(status)).await;
        Ok(())
    }

    /// One pull, or the identical one in flight.
    async fn pull_one(&self, request: PullImageRequest, tx: Progress) -> Result<(), Error> {
        let key = key(&request)?;
        let (done, replay, mut live) = self.join_or_start(key, request);
        for message in replay {
            let _ = tx.send(Ok(message)).await;
        }
        let mut done = done.fuse();
        loop {
            tokio::select! {
                biased;
                message = live.recv() => match message {
                    Ok(message) => { let _ = tx.send(Ok(message)).await; }
                    // Progress is best effort; the result is not.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return done.await,
                },
                result = &mut done => {
                    while let Ok(message) = live.try_recv() {
                        let _ = tx.send(Ok(message)).await;
                    }
                    return result;
                }
            }
        }
    }

    fn join_or_start(
        &self,
        key: Key,
        request: PullImageRequest,
    ) -> (
        Done,
        Vec<PullImageProgress>,
        broadcast::Receiver<PullImageProgress>,
    ) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(operation) = running.get(&key)
            && let Some(done) = operation.done.upgrade()
        {
            let said = operation.said.lock().unwrap_or_else(|e| e.into_inner());
            tracing::info!(reference = %key.reference, "joining an identical pull in flight");
            return (done, said.log.clone(), said.live.subscribe());
        }
        let (live, receiver) = broadcast::channel(1024);
        let said = Arc::new(Mutex::new(Said {
            log: Vec::new(),
            live,
        }));
        let (op_tx, mut op_rx) = mpsc::channel::<Result<PullImageProgress, tonic::Status>>(64);
        let puller = Arc::clone(&self.puller);
        let recorder = Arc::clone(&said);
        let registry_of_running = Arc::clone(&self.running);
        let own_key = key.clone();
        let done = async move {
            let record = async {
                while let Some(Ok(message)) = op_rx.recv().await {
                    let mut said = recorder.lock().unwrap_or_else(|e| e.into_inner());
                    said.log.push(message.clone());
                    let _ = said.live.send(message);
                }
            };
            let (result, ()) = tokio::join!(puller.pull(request, op_tx), record);
            registry_of_running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&own_key);
            result
        }
        .boxed()
        .shared();
        running.insert(
            key,
            Operation {
                done: done.downgrade().expect("a fresh shared future upgrades"),
                said,
            },
        );
        (done, Vec::new(), receiver)
    }
}

fn key(request: &PullImageRequest) -> Result<Key, Error> {
    let reference = Reference::parse(&request.reference)?;
    let reference = if reference.digest().is_some() {
        reference
    } else {
        reference.with_default_tag()
    };
    let platform = request
        .platform
        .as_ref()
        .map(|p| {
            Platform::new(&p.os, &p.architecture, &p.variant)
                .normalize()
                .to_string()
        })
        .unwrap_or_default();
    Ok(Key {
        reference: reference.to_string(),
        platform,
        credentials: registry::credential_key(&registry::auth(request.auth.as_ref())),
    })
}
