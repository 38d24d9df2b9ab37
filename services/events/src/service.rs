//! The `imaged.internal.v1.EventLog` gRPC service: publish, subscribe, info.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use imaged_api::internal::v1::event_log_server::EventLog as EventLogRpc;
use imaged_api::internal::v1::{EventLogInfoRequest, PublishRequest, PublishResponse};
use imaged_api::v1::{Event, EventLogInfoResponse, SubscribeRequest};
use imaged_common::Error;
use imaged_model::timestamp;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::filter::Subscription;
use crate::log::{EventLog, MAX_EVENTS_PER_PUBLISH};

/// Events read from the log per page while replaying.
const REPLAY_PAGE: usize = 1024;
/// Events buffered between a subscriber's task and its gRPC stream.
const STREAM_BUFFER: usize = 256;

/// Serves the event log.
pub struct EventLogService {
    log: EventLog,
    /// Events appended (duplicates a producer resent are counted too).
    published: opentelemetry::metrics::Counter<u64>,
}

impl EventLogService {
    pub fn new(log: EventLog) -> Self {
        let published = opentelemetry::global::meter("imaged-events")
            .u64_counter("imaged.events.published")
            .with_description("events published to the log")
            .build();
        EventLogService { log, published }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventLogRpc for EventLogService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let request = request.into_inner();
        if request.source.is_empty() {
            return Err(Error::InvalidArgument("publish needs a source".into()).into());
        }
        if request.events.len() > MAX_EVENTS_PER_PUBLISH {
            return Err(Error::InvalidArgument(format!(
                "at most {MAX_EVENTS_PER_PUBLISH} events per publish, got {}",
                request.events.len()
            ))
            .into());
        }
        if let Some(bad) = request
            .events
            .iter()
            .find(|e| e.r#type.is_empty() || e.action.is_empty())
        {
            return Err(
                Error::InvalidArgument(format!("event without type or action: {bad:?}")).into(),
            );
        }
        let count = request.events.len() as u64;
        let last_sequence = self
            .log
            .append(
                request.source,
                request.first_source_sequence,
                request.events,
            )
            .await?;
        self.published.add(count, &[]);
        Ok(Response::new(PublishResponse { last_sequence }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let subscription = Subscription::parse(request.get_ref(), chrono::Utc::now())?;
        // Subscribe to live events before reading the log, so nothing
        // committed in between is missed; sequence numbers drop repeats.
        let live = self.log.subscribe();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(feed(self.log.clone(), subscription, live, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn info(
        &self,
        _request: Request<EventLogInfoRequest>,
    ) -> Result<Response<EventLogInfoResponse>, Status> {
        Ok(Response::new(EventLogInfoResponse {
            events: self.log.count(),
            last_sequence: self.log.last_sequence(),
            subscribers: self.log.subscribers(),
            bytes: self.log.bytes(),
        }))
    }
}

/// Sends one subscriber its events: the replay from the log, then live
/// events, until `until`, a lag, or the subscriber going away.
async fn feed(
    log: EventLog,
    subscription: Subscription,
    mut live: broadcast::Receiver<Arc<Event>>,
    tx: mpsc::Sender<Result<Event, Status>>,
) {
    let mut sent_up_to = 0;
    if subscription.replays() {
        let up_to = log.last_sequence();
        let mut after = 0;
        loop {
            let page = {
                let log = log.clone();
                match tokio::task::spawn_blocking(move || log.read(after, up_to, REPLAY_PAGE)).await
                {
                    Ok(Ok(page)) => page,
                    Ok(Err(err)) => {
                        let _ = tx.send(Err(err.into())).await;
                        return;
                    }
                    Err(err) => {
                        let _ = tx.send(Err(Status::internal(err.to_string()))).await;
                        return;
                    }
                }
            };
            let Some(last) = page.last() else { break };
            after = last.sequence;
            for event in page {
                if subscription.in_window(&event)
                    && subscription.matches(&event)
                    && tx.send(Ok(event)).await.is_err()
                {
                    return;
                }
            }
        }
        sent_up_to = up_to;
    }

    let until_sleep = subscription.until.map(|until| {
        let wait = (until - timestamp::now_nanos()).clamp(0, u64::MAX as i128);
        Duration::from_nanos(wait as u64)
    });
    if until_sleep == Some(Duration::ZERO) {
        return;
    }
    let deadline = tokio::time::sleep(until_sleep.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline, if until_sleep.is_some() => return,
            () = tx.closed() => return,
            received = live.recv() => match received {
                Ok(event) => {
                    if event.sequence <= sent_up_to {
                        continue;
                    }
                    sent_up_to = event.sequence;
                    if subscription.in_window(&event) && subscription.matches(&event)
                        && tx.send(Ok((*event).clone())).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let missed = log.last_sequence().saturating_sub(sent_up_to);
                    let _ = tx
                        .send(Err(Status::resource_exhausted(format!(
                            "subscriber lagged by {missed} events"
                        ))))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
