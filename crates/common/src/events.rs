//! The producer side of the event log: every imaged process that changes
//! images publishes through a [`Publisher`].
//!
//! Publishing never fails for imaged-events: events go into a bounded
//! in-memory queue and a background task delivers them in order, retrying
//! with backoff while imaged-events is down. Each event carries this
//! producer's name and a sequence number, so a batch re-sent after a lost
//! answer is logged once.
//!
//! An operation waits for its events to be logged before it returns
//! ([`ImageEvents::delivered`]), as dockerd logs an event before it answers:
//! `docker tag a b && docker events --until 0s` shows the tag. The wait is
//! bounded, and skipped while imaged-events cannot be reached, so a down
//! event log never holds an operation back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clients::EventLogClient;
use imaged_api::internal::v1::PublishRequest;
use imaged_api::v1::{Actor, Event};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::peer::Peer;

/// Events held while imaged-events is unreachable; beyond this the oldest
/// are dropped, with a warning saying how many.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Events sent in one Publish call.
const BATCH: usize = 500;

/// A queued event, its producer sequence number, and the trace context of
/// the call that produced it (its Publish joins that trace).
struct Queued {
    source_sequence: u64,
    event: Event,
    context: opentelemetry::Context,
}

/// The longest an operation waits for its events to be logged.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(2);

struct Inner {
    source: String,
    queue: Mutex<VecDeque<Queued>>,
    capacity: usize,
    next_sequence: AtomicU64,
    /// Every event numbered up to this one is logged (or was dropped).
    delivered_through: AtomicU64,
    /// The last delivery failed: imaged-events cannot be reached now.
    failing: std::sync::atomic::AtomicBool,
    dropped: AtomicU64,
    wake: Notify,
    drained: Notify,
}

/// Where an operation's image events go: imaged-events through a
/// [`Publisher`], or a [`MemoryEvents`] in unit tests.
#[tonic::async_trait]
pub trait ImageEvents: Send + Sync {
    /// Queues an image event: `action` on `actor_id`, attributes the
    /// image's labels and then `name` (so `name` wins, as in Docker).
    /// Answers its number.
    fn image(
        &self,
        action: &str,
        actor_id: &str,
        labels: &BTreeMap<String, String>,
        name: Option<&str>,
    ) -> u64;

    /// Waits (bounded) until the event numbered `sequence` is logged;
    /// answers whether it is.
    async fn delivered(&self, sequence: u64) -> bool;
}

#[tonic::async_trait]
impl ImageEvents for Publisher {
    /// Queues an image event: `action` on `actor_id`, attributes the
    /// image's labels and then `name` (so `name` wins, as in Docker).
    /// Answers its number, for [`ImageEvents::delivered`].
    fn image(
        &self,
        action: &str,
        actor_id: &str,
        labels: &BTreeMap<String, String>,
        name: Option<&str>,
    ) -> u64 {
        let mut attributes: std::collections::HashMap<String, String> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(name) = name {
            attributes.insert("name".into(), name.into());
        }
        self.publish(Event {
            sequence: 0,
            r#type: "image".into(),
            action: action.into(),
            actor: Some(Actor {
                id: actor_id.into(),
                attributes,
            }),
            scope: "local".into(),
            time_nano: now_nanos(),
            time: None,
        })
    }

    /// Waits until the event numbered `sequence` is in imaged-events' log;
    /// at most [`DELIVERY_WAIT`], and not at all while imaged-events
    /// cannot be reached. Answers whether it is logged.
    async fn delivered(&self, sequence: u64) -> bool {
        let wait = async {
            loop {
                let drained = self.inner.drained.notified();
                if self.inner.delivered_through.load(Ordering::Acquire) >= sequence {
                    return true;
                }
                if self.inner.failing.load(Ordering::Acquire) {
                    return false;
                }
                drained.await;
            }
        };
        tokio::time::timeout(DELIVERY_WAIT, wait)
            .await
            .unwrap_or(false)
    }
}

/// An image event as [`MemoryEvents`] keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptEvent {
    pub action: String,
    pub id: String,
    pub name: Option<String>,
}

/// Image events kept in memory, every one logged at once: the test double
/// of [`Publisher`].
#[derive(Default)]
pub struct MemoryEvents {
    kept: Mutex<Vec<KeptEvent>>,
}

impl MemoryEvents {
    /// The events so far, oldest first.
    pub fn kept(&self) -> Vec<KeptEvent> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[tonic::async_trait]
impl ImageEvents for MemoryEvents {
    fn image(
        &self,
        action: &str,
        actor_id: &str,
        _labels: &BTreeMap<String, String>,
        name: Option<&str>,
    ) -> u64 {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.push(KeptEvent {
            action: action.to_string(),
            id: actor_id.to_string(),
            name: name.map(str::to_string),
        });
        kept.len() as u64
    }

    async fn delivered(&self, _sequence: u64) -> bool {
        true
    }
}

/// Publishes events to imaged-events; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// Starts delivering to `peer` (imaged-events) as `process`, holding at
    /// most `capacity` undelivered events.
    pub fn start(peer: Peer, process: &str, capacity: usize) -> Self {
        // A new name each run: a restarted producer starts its numbers over.
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let inner = Arc::new(Inner {
            source: format!("{process}/{run:x}-{}", std::process::id()),
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            next_sequence: AtomicU64::new(1),
            delivered_through: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            wake: Notify::new(),
            drained: Notify::new(),
        });
        tokio::spawn(deliver(peer, inner.clone()));
        Publisher { inner }
    }

    /// Queues any event; answers its number.
    pub fn publish(&self, event: Event) -> u64 {
        let mut queue = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
        let source_sequence = self.inner.next_sequence.fetch_add(1, Ordering::Relaxed);
        if queue.len() >= self.inner.capacity {
            queue.pop_front();
            let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                dropped,
                "imaged-events unreachable and the event queue is full: dropped the oldest event"
            );
        }
        queue.push_back(Queued {
            source_sequence,
            event,
            context: tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current()),
        });
        drop(queue);
        self.inner.wake.notify_one();
        source_sequence
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        self.inner.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Waits until every queued event is delivered or `timeout` passes;
    /// returns whether the queue is empty. Called before shutting down.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let drained = self.inner.drained.notified();
                if self.pending() == 0 {
                    return;
                }
                drained.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

async fn deliver(peer: Peer, inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let wake = inner.wake.notified();
        let (first, events, contexts) = {
            let queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            match queue.front() {
                None => (0, Vec::new(), Vec::new()),
                Some(front) => (
                    front.source_sequence,
                    queue.iter().take(BATCH).map(|q| q.event.clone()).collect(),
                    queue
                        .iter()
                        .take(BATCH)
                        .map(|q| q.context.clone())
                        .collect(),
                ),
            }
        };
        if events.is_empty() {
            inner.drained.notify_waiters();
            wake.await;
            continue;
        }
        let count = events.len();
        let request = PublishRequest {
            source: inner.source.clone(),
            first_source_sequence: first,
            events,
        };
        let sent = peer
            .rpc(|mut client: EventLogClient| {
                let request = request.clone();
                async move { client.publish(request).await }
            })
            .instrument(publish_span(&contexts))
            .await;
        match sent {
            Ok(_) => {
                backoff = Duration::from_millis(100);
                inner.failing.store(false, Ordering::Release);
                inner
                    .delivered_through
                    .fetch_max(first + count as u64 - 1, Ordering::AcqRel);
                let mut queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
                // Only what was sent: newer events may have been queued, and
                // older ones may have been dropped for space meanwhile.
                while queue
                    .front()
                    .is_some_and(|q| q.source_sequence < first + count as u64)
                {
                    queue.pop_front();
                }
                drop(queue);
                inner.drained.notify_waiters();
            }
            Err(status) => {
                inner.failing.store(true, Ordering::Release);
                inner.drained.notify_waiters();
                tracing::warn!(
                    "cannot deliver events, retrying in {backoff:?}: {}",
                    status.message()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The span a batch is published in: a child of the first event's call,
/// linked to the calls of the others, so each request's trace shows the
/// Publish of its events.
fn publish_span(contexts: &[opentelemetry::Context]) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!("publish events", events = contexts.len());
    if let Some(first) = contexts.first() {
        let _ = span.set_parent(first.clone());
        let mut linked = std::collections::HashSet::new();
        linked.insert(first.span().span_context().span_id());
        for context in &contexts[1..] {
            let other = context.span().span_context().clone();
            if other.is_valid() && linked.insert(other.span_id()) {
                span.add_link(other);
            }
        }
    }
    span
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// An event as Docker's Engine API streams it (`events.Message`, with the
/// legacy `status`, `id` and `from` that API 1.50 still sends for
/// images): what `GET /events` answers and what NATS carries.
pub fn docker_message(event: &Event) -> serde_json::Value {
    let actor = event.actor.clone().unwrap_or_default();
    let mut message = serde_json::json!({
        "status": event.action,
        "id": actor.id,
        "Type": event.r#type,
        "Action": event.action,
        "Actor": { "ID": actor.id, "Attributes": actor.attributes },
        "scope": event.scope,
        "time": event.time_nano / 1_000_000_000,
        "timeNano": event.time_nano,
    });
    if let Some(from) = actor.attributes.get("image") {
        message["from"] = serde_json::Value::String(from.clone());
    }
    message
}
