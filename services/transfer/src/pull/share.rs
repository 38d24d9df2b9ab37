//! Identical concurrent pulls share one operation: a second PullImage of
//! the same reference, platform, credentials and policy namespace joins
//! the running one,
//! gets the progress sent so far and then the rest, and the same result.
//! The operation runs as long as one caller still waits on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};
use imaged_common::Error;
use imaged_model::Reference;
use tokio::sync::{broadcast, mpsc};

use crate::pull::events::{Progress, PullEvent};
use crate::pull::{PullOrder, Puller};
use crate::registry;

type Done = Shared<BoxFuture<'static, Result<(), Error>>>;

/// What makes two pulls the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    reference: String,
    platform: String,
    credentials: [u8; 32],
    /// Pulls under different signature policies are never shared: each
    /// is checked against its own.
    namespace: Option<String>,
}

/// A running pull and what it has said so far.
struct Operation {
    done: WeakShared<BoxFuture<'static, Result<(), Error>>>,
    said: Arc<Mutex<Said>>,
}

/// Progress so far, and the channel the rest goes out on; one lock so a
/// joining caller misses nothing and sees nothing twice.
struct Said {
    log: Vec<PullEvent>,
    live: broadcast::Sender<PullEvent>,
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

    /// Runs the pull `order` asks for, or joins the identical one that
    /// runs already; sends its progress to `tx`. With `all_tags`, pulls
    /// each tag of the repository in turn, as Docker does: every tag's
    /// events but its end, then one end for the repository.
    pub async fn pull(&self, order: PullOrder, tx: Progress) -> Result<(), Error> {
        if !order.all_tags {
            return self.pull_one(order, tx).await;
        }
        let reference = Reference::parse(&order.reference)?;
        if reference.tag().is_some() || reference.digest().is_some() {
            return Err(Error::invalid_argument(
                "tag can't be used with --all-tags/-a",
            ));
        }
        let tags = self.puller.list_tags(&order).await?;
        let mut updated = false;
        let mut from = crate::pull::origin::ByOrigin::default();
        let mut last = None;
        for tag in tags {
            let one = PullOrder {
                reference: reference.with_tag(&tag)?.to_string(),
                all_tags: false,
                ..order.clone()
            };
            let (tag_tx, mut tag_rx) = tokio::sync::mpsc::channel(64);
            let pulling = self.pull_one(one, tag_tx);
            let forwarding = async {
                while let Some(event) = tag_rx.recv().await {
                    match event {
                        PullEvent::Done(pulled) => {
                            updated |= pulled.updated;
                            from.merge(pulled.from);
                            last = Some(pulled);
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
        let mut pulled = last.unwrap_or_default();
        pulled.updated = updated;
        pulled.from = from;
        pulled.shown = reference.familiar_name();
        let _ = tx.send(PullEvent::Done(pulled)).await;
        Ok(())
    }

    /// One pull, or the identical one in flight.
    async fn pull_one(&self, order: PullOrder, tx: Progress) -> Result<(), Error> {
        let key = key(&order)?;
        let (done, replay, mut live) = self.join_or_start(key, order);
        for event in replay {
            let _ = tx.send(event).await;
        }
        let mut done = done.fuse();
        loop {
            tokio::select! {
                biased;
                message = live.recv() => match message {
                    Ok(event) => { let _ = tx.send(event).await; }
                    // Progress is best effort; the result is not.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return done.await,
                },
                result = &mut done => {
                    while let Ok(event) = live.try_recv() {
                        let _ = tx.send(event).await;
                    }
                    return result;
                }
            }
        }
    }

    fn join_or_start(
        &self,
        key: Key,
        order: PullOrder,
    ) -> (Done, Vec<PullEvent>, broadcast::Receiver<PullEvent>) {
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
        let (op_tx, mut op_rx) = mpsc::channel::<PullEvent>(64);
        let puller = Arc::clone(&self.puller);
        let recorder = Arc::clone(&said);
        let registry_of_running = Arc::clone(&self.running);
        let own_key = key.clone();
        let done = async move {
            let record = async {
                while let Some(event) = op_rx.recv().await {
                    let mut said = recorder.lock().unwrap_or_else(|e| e.into_inner());
                    said.log.push(event.clone());
                    let _ = said.live.send(event);
                }
            };
            let (result, ()) = tokio::join!(puller.pull(order, op_tx), record);
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

fn key(order: &PullOrder) -> Result<Key, Error> {
    let reference = Reference::parse(&order.reference)?;
    let reference = if reference.digest().is_some() {
        reference
    } else {
        reference.with_default_tag()
    };
    let platform = order
        .platform
        .as_ref()
        .map(|p| p.normalize().to_string())
        .unwrap_or_default();
    Ok(Key {
        reference: reference.to_string(),
        platform,
        credentials: registry::credential_key(&order.auth),
        namespace: order.namespace.clone(),
    })
}
