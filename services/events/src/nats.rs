//! Fleet events: with `--nats-url`, every event of the log is also
//! published to a NATS JetStream stream, on the subject
//! `imaged.events.<node>`, so that one consumer reads the image events of
//! every node.
//!
//! The embedded log stays the source of truth and the buffer: a cursor
//! (the last sequence JetStream acknowledged, in `nats.cursor`, replaced
//! durably) says where publishing resumes, whether NATS was away or this
//! process restarted. Events go one at a time, each acknowledged before
//! the next, so they arrive in order; each carries `Nats-Msg-Id:
//! <node>/<sequence>`, so a resend after a lost acknowledgement is
//! dropped by JetStream's duplicate window: at least once, in order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use imaged_api::v1::Event;

use crate::log::EventLog;
use imaged_common::nats::{Credentials, redacted};

/// Where and as whom events are published.
#[derive(clap::Args, Clone, Debug)]
pub struct NatsArgs {
    /// Also publish every event to NATS JetStream at `--nats-url`, on the
    /// subject `imaged.events.<node>`.
    #[command(flatten)]
    pub connection: imaged_common::nats::NatsArgs,
    /// The JetStream stream, created when missing with the subjects
    /// `imaged.events.>`.
    #[arg(long, env = "IMAGED_NATS_STREAM", default_value = "IMAGED_EVENTS")]
    pub nats_stream: String,
}

/// Events read from the log per round.
const BATCH: usize = 256;
/// The longest wait between two tries while NATS is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Starts publishing when `--nats-url` is set; the task runs for the
/// life of the process.
pub fn start(log: EventLog, args: &NatsArgs, data_dir: &Path) -> anyhow::Result<()> {
    let Some(url) = args.connection.nats_url.clone() else {
        return Ok(());
    };
    let node = args.connection.node()?;
    let creds = args.connection.credentials()?;
    let publisher = Publisher {
        log,
        subject: format!("imaged.events.{node}"),
        node,
        stream: args.nats_stream.clone(),
        cursor_path: data_dir.join("nats.cursor"),
        creds,
    };
    tracing::info!(url = %redacted(&url), subject = %publisher.subject, "publishing events to NATS JetStream");
    tokio::spawn(publisher.run(url));
    Ok(())
}

struct Publisher {
    log: EventLog,
    node: String,
    subject: String,
    stream: String,
    cursor_path: PathBuf,
    creds: Option<Credentials>,
}

impl Publisher {
    async fn run(self, url: String) {
        let mut cursor = read_cursor(&self.cursor_path);
        let mut live = self.log.subscribe();
        let client = loop {
            match imaged_common::nats::connect(&url, self.creds.as_ref()).await {
                Ok(client) => break client,
                Err(err) => {
                    let url = redacted(&url);
                    tracing::warn!(%url, "cannot use NATS: {err}; trying again");
                    tokio::time::sleep(MAX_BACKOFF).await;
                }
            }
        };
        let jetstream = jetstream::new(client);
        let mut backoff = Backoff::default();
        while let Err(err) = jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec!["imaged.events.>".into()],
                ..Default::default()
            })
            .await
        {
            backoff
                .wait(&format!("cannot create stream {}: {err}", self.stream))
                .await;
        }
        loop {
            let last = self.log.last_sequence();
            if cursor >= last {
                // Caught up: wait for the next commit (or look again soon).
                let _ = tokio::time::timeout(Duration::from_secs(1), live.recv()).await;
                continue;
            }
            let events = {
                let log = self.log.clone();
                tokio::task::spawn_blocking(move || log.read(cursor, last, BATCH)).await
            };
            let events = match events {
                Ok(Ok(events)) => events,
                Ok(Err(err)) => {
                    tracing::error!("cannot read the event log for NATS: {err}");
                    tokio::time::sleep(MAX_BACKOFF).await;
                    continue;
                }
                Err(err) => {
                    tracing::error!("cannot read the event log for NATS: {err}");
                    return;
                }
            };
            if let Some(first) = events.first()
                && first.sequence > cursor + 1
            {
                tracing::warn!(
                    lost = first.sequence - cursor - 1,
                    "events left the log (its size limit) before NATS took them"
                );
            }
            for event in &events {
                let payload = message(&self.node, event);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "Nats-Msg-Id",
                    format!("{}/{}", self.node, event.sequence).as_str(),
                );
                loop {
                    let acked = async {
                        jetstream
                            .publish_with_headers(
                                self.subject.clone(),
                                headers.clone(),
                                payload.clone().into(),
                            )
                            .await?
                            .await
                            .map_err(anyhow::Error::from)
                    };
                    match acked.await {
                        Ok(_) => break,
                        Err(err) => {
                            backoff
                                .wait(&format!(
                                    "event {} not taken by NATS: {err}",
                                    event.sequence
                                ))
                                .await
                        }
                    }
                }
                backoff = Backoff::default();
                cursor = event.sequence;
            }
            if let Err(err) =
                imaged_common::durable::replace(&self.cursor_path, format!("{cursor}\n").as_bytes())
            {
                tracing::warn!("cannot record the NATS cursor: {err}");
            }
        }
    }
}

/// The last sequence NATS took, as recorded; 0 when never.
fn read_cursor(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// One event as its JSON message: Docker's, with the node and the
/// node's log sequence.
fn message(node: &str, event: &Event) -> Vec<u8> {
    let mut message = imaged_common::events::docker_message(event);
    message["node"] = node.into();
    message["sequence"] = event.sequence.into();
    message.to_string().into_bytes()
}

/// Waits between tries while NATS is away: 100 ms doubling to
/// [`MAX_BACKOFF`], said once per outage.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    async fn wait(&mut self, why: &str) {
        let delay = match self.next {
            None => {
                tracing::warn!("{why}; retrying while NATS is away");
                Duration::from_millis(100)
            }
            Some(delay) => delay,
        };
        tokio::time::sleep(delay).await;
        self.next = Some((delay * 2).min(MAX_BACKOFF));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_node_and_the_sequence() {
        let event = Event {
            sequence: 7,
            r#type: "image".into(),
            action: "tag".into(),
            time_nano: 1_700_000_000_123_456_789,
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_slice(&message("node-a", &event)).unwrap();
        assert_eq!(json["node"], "node-a");
        assert_eq!(json["sequence"], 7);
        assert_eq!(json["Action"], "tag");
        assert_eq!(json["time"], 1_700_000_000i64);
    }

    #[test]
    fn the_cursor_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nats.cursor");
        assert_eq!(read_cursor(&path), 0);
        imaged_common::durable::replace(&path, b"42\n").unwrap();
        assert_eq!(read_cursor(&path), 42);
    }
}
