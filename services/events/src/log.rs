//! The persisted, bounded event log and the live fan-out.
//!
//! Events are stored in redb under `<root>/events/`, keyed by sequence
//! number, and trimmed to a maximum count and size. One writer thread
//! commits whatever batches have queued up in a single transaction (group
//! commit), then hands the new events to live subscribers through a
//! broadcast channel, so a subscriber never sees an event that is not
//! durable, and a slow subscriber never holds up a publisher.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use bytes::Bytes;
use imaged_api::v1::Event;
use imaged_common::Error;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Sequence number → encoded [`Event`].
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Producer → the last producer sequence number logged from it.
const SOURCES: TableDefinition<&str, u64> = TableDefinition::new("sources");

/// How many producers' positions are remembered for de-duplication.
const MAX_SOURCES: usize = 1024;
/// Most events one Publish call may carry.
pub const MAX_EVENTS_PER_PUBLISH: usize = 1024;
/// Most events committed (and so handed to subscribers at once) in one
/// transaction; the subscriber backlog must be well above this.
const MAX_EVENTS_PER_COMMIT: usize = 1024;

/// Bounds of the log and of a subscriber's backlog.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Most events kept in the log; the oldest go first.
    #[arg(long, env = "IMAGED_EVENTS_MAX_EVENTS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events: u64,
    /// Most bytes of events kept in the log; the oldest go first.
    #[arg(long, env = "IMAGED_EVENTS_MAX_BYTES", default_value_t = 64 << 20,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_bytes: u64,
    /// Events a live subscriber may fall behind before its stream ends
    /// with RESOURCE_EXHAUSTED (at least twice the largest commit, 1024).
    #[arg(long, env = "IMAGED_EVENTS_SUBSCRIBER_BACKLOG", default_value_t = 8192,
          value_parser = clap::value_parser!(u64).range(2048..=1_000_000))]
    pub subscriber_backlog: u64,
}

/// An event as committed: its sequence and time set, and its encoding
/// (what the log stores), made once and sent as it is to every
/// subscriber.
pub struct Logged {
    pub event: Event,
    pub encoded: Bytes,
}

/// One publish call waiting for its commit.
struct Append {
    source: String,
    first_source_sequence: u64,
    events: Vec<Event>,
    done: oneshot::Sender<Result<u64, Error>>,
}

/// Counters shared between the writer and readers.
#[derive(Default)]
struct Stats {
    count: AtomicU64,
    bytes: AtomicU64,
    /// Sequence of the newest durable event.
    last_sequence: AtomicU64,
}

/// The event log: append, read back, subscribe.
#[derive(Clone)]
pub struct EventLog {
    db: Arc<Database>,
    appends: mpsc::Sender<Append>,
    live: broadcast::Sender<Arc<Logged>>,
    stats: Arc<Stats>,
}

impl EventLog {
    /// Opens (or creates) the log in `dir` and starts its writer thread.
    pub fn open(dir: &Path, args: &LogArgs) -> anyhow::Result<Self> {
        let path = dir.join("events.redb");
        let db = Database::create(&path)
            .with_context(|| format!("cannot open event log {}", path.display()))?;
        let stats = Arc::new(Stats::default());
        {
            let txn = db.begin_write()?;
            txn.open_table(SOURCES)?;
            let table = txn.open_table(EVENTS)?;
            let mut count = 0;
            let mut bytes = 0;
            for entry in table.iter()? {
                let (_, value) = entry?;
                count += 1;
                bytes += value.value().len() as u64;
            }
            let last = table.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            drop(table);
            txn.commit()?;
            stats.count.store(count, Ordering::Relaxed);
            stats.bytes.store(bytes, Ordering::Relaxed);
            stats.last_sequence.store(last, Ordering::Relaxed);
        }
        let db = Arc::new(db);
        let (appends, queue) = mpsc::channel(1024);
        let (live, _) = broadcast::channel(args.subscriber_backlog as usize);
        let writer = Writer {
            db: db.clone(),
            queue,
            live: live.clone(),
            stats: stats.clone(),
            max_events: args.max_events,
            max_bytes: args.max_bytes,
        };
        std::thread::Builder::new()
            .name("event-log-writer".into())
            .spawn(move || writer.run())?;
        Ok(EventLog {
            db,
            appends,
            live,
            stats,
        })
    }

    /// Appends `events` from `source` and waits until they are durable.
    /// Returns the log sequence of the newest event.
    pub async fn append(
        &self,
        source: String,
        first_source_sequence: u64,
        events: Vec<Event>,
    ) -> Result<u64, Error> {
        let (done, answer) = oneshot::channel();
        self.appends
            .send(Append {
                source,
                first_source_sequence,
                events,
                done,
            })
            .await
            .map_err(|_| Error::unavailable("the event log is shutting down"))?;
        answer
            .await
            .map_err(|_| Error::internal("the event log writer stopped"))?
    }

    /// A receiver of every event committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Logged>> {
        self.live.subscribe()
    }

    /// Live subscribers.
    pub fn subscribers(&self) -> u64 {
        self.live.receiver_count() as u64
    }

    pub fn count(&self) -> u64 {
        self.stats.count.load(Ordering::Acquire)
    }

    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Acquire)
    }

    /// Sequence of the newest durable event (0 when none).
    pub fn last_sequence(&self) -> u64 {
        self.stats.last_sequence.load(Ordering::Acquire)
    }

    /// Up to `limit` logged events with sequence in `(after, up_to]`, oldest
    /// first. Readers page through the log with this, so a replay holds
    /// only one page in memory.
    pub fn read(&self, after: u64, up_to: u64, limit: usize) -> Result<Vec<Event>, Error> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(Error::internal)?;
        let table = txn.open_table(EVENTS).map_err(Error::internal)?;
        let mut out = Vec::new();
        for entry in table.range(after + 1..=up_to).map_err(Error::internal)? {
            let (_, value) = entry.map_err(Error::internal)?;
            let event = Event::decode(value.value()).map_err(Error::internal)?;
            out.push(with_time(event));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }
}

/// The event with its `time` set from `time_nano`, the instant producers
/// give (events logged before `time` existed get it when read).
fn with_time(mut event: Event) -> Event {
    if event.time.is_none() {
        event.time = Some(imaged_api::timestamp(event.time_nano.into()));
    }
    event
}

/// The single writer: batches appends into transactions.
struct Writer {
    db: Arc<Database>,
    queue: mpsc::Receiver<Append>,
    live: broadcast::Sender<Arc<Logged>>,
    stats: Arc<Stats>,
    max_events: u64,
    max_bytes: u64,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.queue.blocking_recv() {
            let mut events = first.events.len();
            let mut batch = vec![first];
            while events < MAX_EVENTS_PER_COMMIT {
                match self.queue.try_recv() {
                    Ok(next) => {
                        events += next.events.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            match self.commit(&mut batch) {
                Ok(appended) => {
                    let last = self.stats.last_sequence.load(Ordering::Acquire);
                    for logged in appended {
                        // No receivers is fine: nobody is listening live.
                        let _ = self.live.send(Arc::new(logged));
                    }
                    for append in batch {
                        let _ = append.done.send(Ok(last));
                    }
                }
                Err(err) => {
                    tracing::error!("event log commit failed: {err}");
                    for append in batch {
                        let _ = append.done.send(Err(Error::internal(format!(
                            "event log commit failed: {err}"
                        ))));
                    }
                }
            }
        }
    }

    /// Writes a batch in one transaction; returns the events appended (with
    /// their sequence numbers) once the transaction is durable.
    fn commit(&self, batch: &mut [Append]) -> Result<Vec<Logged>, Error> {
        let txn = self.db.begin_write().map_err(Error::internal)?;
        let mut appended = Vec::new();
        let mut count = self.stats.count.load(Ordering::Acquire);
        let mut bytes = self.stats.bytes.load(Ordering::Acquire);
        let mut next = self.stats.last_sequence.load(Ordering::Acquire) + 1;
        {
            let mut events = txn.open_table(EVENTS).map_err(Error::internal)?;
            let mut sources = txn.open_table(SOURCES).map_err(Error::internal)?;
            let mut positions: HashMap<String, u64> = HashMap::new();
            for append in batch.iter_mut() {
                let known = match positions.get(&append.source) {
                    Some(p) => *p,
                    None => sources
                        .get(append.source.as_str())
                        .map_err(Error::internal)?
                        .map(|v| v.value())
                        .unwrap_or(0),
                };
                let mut position = known;
                for (i, event) in std::mem::take(&mut append.events).into_iter().enumerate() {
                    let source_sequence = append.first_source_sequence + i as u64;
                    if source_sequence <= known {
                        continue;
                    }
                    position = source_sequence;
                    let mut event = with_time(event);
                    event.sequence = next;
                    next += 1;
                    let encoded = Bytes::from(event.encode_to_vec());
                    count += 1;
                    bytes += encoded.len() as u64;
                    events
                        .insert(event.sequence, encoded.as_ref())
                        .map_err(Error::internal)?;
                    appended.push(Logged { event, encoded });
                }
                positions.insert(append.source.clone(), position);
            }
            for (source, position) in &positions {
                sources
                    .insert(source.as_str(), *position)
                    .map_err(Error::internal)?;
            }
            while count > self.max_events || bytes > self.max_bytes {
                let Some((_, value)) = events.pop_first().map_err(Error::internal)? else {
                    break;
                };
                count -= 1;
                bytes -= value.value().len() as u64;
            }
            // Forget the producers seen least recently once there are too many.
            let known_sources = sources.len().map_err(Error::internal)? as usize;
            if known_sources > MAX_SOURCES {
                let mut all: Vec<(String, u64)> = sources
                    .iter()
                    .map_err(Error::internal)?
                    .filter_map(Result::ok)
                    .map(|(k, v)| (k.value().to_string(), v.value()))
                    .collect();
                all.sort_by_key(|(_, v)| *v);
                for (source, _) in all.iter().take(known_sources - MAX_SOURCES) {
                    sources.remove(source.as_str()).map_err(Error::internal)?;
                }
            }
        }
        txn.commit().map_err(|e| match e {
            redb::CommitError::Storage(redb::StorageError::Io(io)) => Error::from(io),
            other => Error::internal(other),
        })?;
        self.stats.count.store(count, Ordering::Release);
        self.stats.bytes.store(bytes, Ordering::Release);
        self.stats.last_sequence.store(next - 1, Ordering::Release);
        Ok(appended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imaged_api::v1::Actor;

    fn args(max_events: u64) -> LogArgs {
        LogArgs {
            max_events,
            max_bytes: 1 << 20,
            subscriber_backlog: 2048,
        }
    }

    fn event(action: &str) -> Event {
        Event {
            r#type: "image".into(),
            action: action.into(),
            actor: Some(Actor {
                id: "sha256:abc".into(),
                attributes: Default::default(),
            }),
            scope: "local".into(),
            time_nano: 1_700_000_000_123_456_789,
            time: None,
            sequence: 0,
        }
    }

    #[tokio::test]
    async fn appends_in_order_skips_repeats_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EventLog::open(dir.path(), &args(100)).unwrap();
            let mut live = log.subscribe();
            let last = log
                .append("p/1".into(), 1, vec![event("tag"), event("untag")])
                .await
                .unwrap();
            assert_eq!(last, 2);
            // The same batch again (a lost answer, retried) adds nothing;
            // the batch after it continues the sequence.
            log.append("p/1".into(), 1, vec![event("tag"), event("untag")])
                .await
                .unwrap();
            log.append("p/1".into(), 3, vec![event("delete")])
                .await
                .unwrap();
            assert_eq!(log.last_sequence(), 3);
            let tagged = live.recv().await.unwrap();
            assert_eq!(tagged.event.action, "tag");
            assert_eq!(Event::decode(tagged.encoded.clone()).unwrap(), tagged.event);
            assert_eq!(live.recv().await.unwrap().event.action, "untag");
            assert_eq!(live.recv().await.unwrap().event.sequence, 3);
        }
        // The writer thread lets go of the database shortly after the last handle.
        let log = loop {
            match EventLog::open(dir.path(), &args(100)) {
                Ok(log) => break log,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let events = log.read(0, log.last_sequence(), 100).unwrap();
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["tag", "untag", "delete"]);
        assert_eq!(log.count(), 3);
        let time = events[0].time.unwrap();
        assert_eq!(
            (time.seconds, time.nanos),
            (1_700_000_000, 123_456_789),
            "time says the instant of time_nano"
        );
    }

    #[tokio::test]
    async fn trims_the_oldest_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), &args(5)).unwrap();
        for i in 0..12u64 {
            log.append("p".into(), i + 1, vec![event("tag")])
                .await
                .unwrap();
        }
        assert_eq!(log.count(), 5);
        let events = log.read(0, log.last_sequence(), 100).unwrap();
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, [8, 9, 10, 11, 12]);
        // Paging reads only what was asked.
        assert_eq!(log.read(8, 12, 2).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_receiver_that_does_not_read_lags() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(
            dir.path(),
            &LogArgs {
                max_events: 100_000,
                max_bytes: 1 << 30,
                subscriber_backlog: 2048,
            },
        )
        .unwrap();
        let mut rx = log.subscribe();
        for i in 0..10u64 {
            let events = (0..500)
                .map(|_| Event {
                    r#type: "image".into(),
                    action: "tag".into(),
                    ..Default::default()
                })
                .collect();
            log.append("s".into(), i * 500 + 1, events).await.unwrap();
        }
        assert!(matches!(
            rx.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
        ));
    }
}
