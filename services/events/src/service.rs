//! The `imaged.internal.v1.EventLog` gRPC service: publish, subscribe, info.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use imaged_api::internal::v1::event_log_server::{EventLog as EventLogRpc, EventLogServer};
use imaged_api::internal::v1::{EventLogInfoRequest, PublishRequest, PublishResponse};
use imaged_api::v1::{Event, EventLogInfoResponse, SubscribeRequest};
use imaged_common::Error;
use imaged_common::pass::{Handler, Override, PassCodec};
use imaged_model::timestamp;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::filter::Subscription;
use crate::log::{EventLog, Logged, MAX_EVENTS_PER_PUBLISH};

/// Events read from the log per page while replaying.
const REPLAY_PAGE: usize = 1024;
/// Replayed events buffered between a subscriber's replay task and its
/// answer stream.
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

/// A subscriber's events as encoded in the log.
type EncodedStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

#[tonic::async_trait]
impl EventLogRpc for EventLogService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let request = request.into_inner();
        if request.source.is_empty() {
            return Err(Error::invalid_argument("publish needs a source").into());
        }
        if request.events.len() > MAX_EVENTS_PER_PUBLISH {
            return Err(Error::invalid_argument(format!(
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
                Error::invalid_argument(format!("event without type or action: {bad:?}")).into(),
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

    /// The typed path, for any other wiring of the service: the same
    /// feed, decoded. `serve` routes Subscribe to [`Subscribe`], which
    /// sends the encoded events as they are.
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let encoded = start_feed(&self.log, request.get_ref())?;
        Ok(Response::new(Box::pin(encoded.map(|answer| {
            answer.and_then(|bytes| {
                Event::decode(bytes).map_err(|err| Status::internal(err.to_string()))
            })
        }))))
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

/// A subscriber's events, encoded, as the stream its answer is sent from:
/// the replay from the log, if it asks for one, then live events.
fn start_feed(log: &EventLog, request: &SubscribeRequest) -> Result<EncodedStream, Status> {
    let subscription = Arc::new(Subscription::parse(request, chrono::Utc::now())?);
    // Subscribe to live events before reading the log, so nothing
    // committed in between is missed; sequence numbers drop repeats.
    let live = log.subscribe();
    if !subscription.replays() {
        return Ok(Box::pin(live_events(log.clone(), subscription, live, 0)));
    }
    let up_to = log.last_sequence();
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(replay(log.clone(), Arc::clone(&subscription), up_to, tx));
    // An error ends the answer (tonic sends it as the status), so a failed
    // replay is not followed by live events.
    Ok(Box::pin(ReceiverStream::new(rx).chain(live_events(
        log.clone(),
        subscription,
        live,
        up_to,
    ))))
}

/// Sends one subscriber the events of the log up to `up_to`, encoded,
/// a page at a time, until the subscriber goes away.
async fn replay(
    log: EventLog,
    subscription: Arc<Subscription>,
    up_to: u64,
    tx: mpsc::Sender<Result<Bytes, Status>>,
) {
    let mut after = 0;
    loop {
        let page = {
            let log = log.clone();
            match tokio::task::spawn_blocking(move || log.read(after, up_to, REPLAY_PAGE)).await {
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
        let Some(last) = page.last() else { return };
        after = last.sequence;
        for event in page {
            if subscription.in_window(&event)
                && subscription.matches(&event)
                && tx.send(Ok(event.encode_to_vec().into())).await.is_err()
            {
                return;
            }
        }
    }
}

/// Live events after `sent_up_to` that `subscription` matches, as
/// encoded once for all subscribers, read from the broadcast as the
/// answer is sent (no task or queue of its own per subscriber): until
/// `until`, a lag (an error), or the subscriber going away, which drops
/// the stream.
fn live_events(
    log: EventLog,
    subscription: Arc<Subscription>,
    live: broadcast::Receiver<Arc<Logged>>,
    sent_up_to: u64,
) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    let deadline = subscription.until.map(|until| {
        let wait = (until - timestamp::now_nanos()).clamp(0, u64::MAX as i128);
        Box::pin(tokio::time::sleep(Duration::from_nanos(wait as u64)))
    });
    let state = Live {
        log,
        subscription,
        live,
        sent_up_to,
        deadline,
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        let item = state.next().await?;
        let go_on = item.is_ok();
        Some((item, go_on.then_some(state)))
    })
}

/// Where a subscriber's live stream is.
struct Live {
    log: EventLog,
    subscription: Arc<Subscription>,
    live: broadcast::Receiver<Arc<Logged>>,
    sent_up_to: u64,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Live {
    /// The next event to send, a lag, or `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            let received = match self.deadline.as_mut() {
                Some(deadline) => tokio::select! {
                    biased;
                    () = deadline.as_mut() => return None,
                    received = self.live.recv() => received,
                },
                None => self.live.recv().await,
            };
            match received {
                Ok(logged) => {
                    let event = &logged.event;
                    if event.sequence <= self.sent_up_to {
                        continue;
                    }
                    self.sent_up_to = event.sequence;
                    if self.subscription.in_window(event) && self.subscription.matches(event) {
                        return Some(Ok(logged.encoded.clone()));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let missed = self.log.last_sequence().saturating_sub(self.sent_up_to);
                    return Some(Err(Status::resource_exhausted(format!(
                        "subscriber lagged by {missed} events"
                    ))));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The one method served encoded.
const SUBSCRIBE: &str = "/imaged.internal.v1.EventLog/Subscribe";

/// Subscribe with the events sent as encoded at commit: no copy or
/// encoding per subscriber.
struct Subscribe {
    log: EventLog,
}

impl tonic::server::ServerStreamingService<SubscribeRequest> for Subscribe {
    type Response = Bytes;
    type ResponseStream = EncodedStream;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<SubscribeRequest>) -> Self::Future {
        let started = start_feed(&self.log, request.get_ref()).map(Response::new);
        Box::pin(async move { started })
    }
}

/// The `imaged.internal.v1.EventLog` server with Subscribe served by
/// [`Subscribe`], encoded events passed through.
pub fn server(log: EventLog) -> Override<EventLogServer<EventLogService>> {
    let server = EventLogServer::new(EventLogService::new(log.clone()));
    let handler: Handler = Arc::new(move |request| {
        let subscribe = Subscribe { log: log.clone() };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(PassCodec::<SubscribeRequest>::default());
            grpc.server_streaming(subscribe, request).await
        })
    });
    Override::new(server, SUBSCRIBE, handler)
}
