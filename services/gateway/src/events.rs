//! The public `imaged.v1.Events` service: imaged-events' Subscribe,
//! relayed. The events pass as imaged-events encoded them (filters are
//! applied there), never decoded here. Dropping the client's stream
//! cancels the upstream one.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use imaged_api::v1::events_server::Events;
use imaged_api::v1::{Event, SubscribeRequest};
use imaged_common::deadline;
use imaged_common::pass::{Handler, Override, PassCodec, RelayCodec};
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::peers::Peers;

/// The upstream method the relay calls.
const UPSTREAM: &str = "/imaged.internal.v1.EventLog/Subscribe";

/// Events as imaged-events encoded them.
type Encoded = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// Subscribes to imaged-events for `request`: the encoded events.
async fn relay(peers: &Peers, request: Request<SubscribeRequest>) -> Result<Encoded, Status> {
    let (deadline, request) = deadline::split(request);
    let upstream = peers
        .events
        .call(|channel| {
            let request = request.clone();
            async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                grpc.server_streaming(
                    deadline::attach(request, deadline),
                    http::uri::PathAndQuery::from_static(UPSTREAM),
                    RelayCodec::<SubscribeRequest>::default(),
                )
                .await
            }
        })
        .await?;
    Ok(Box::pin(upstream))
}

/// Relays subscriptions to imaged-events. `serve` routes Subscribe to
/// [`with_event_relay`]'s handler; this typed path, for any other wiring,
/// decodes the same relay.
pub struct EventsService {
    peers: Peers,
}

impl EventsService {
    pub fn new(peers: Peers) -> Self {
        EventsService { peers }
    }
}

#[tonic::async_trait]
impl Events for EventsService {
    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

    /// Docker: `docker events` for images.
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let encoded = relay(&self.peers, request).await?;
        Ok(Response::new(Box::pin(encoded.map(|answer| {
            answer.and_then(|bytes| {
                Event::decode(bytes).map_err(|err| Status::internal(err.to_string()))
            })
        }))))
    }
}

/// Subscribe relayed as bytes.
struct Relay {
    peers: Peers,
}

impl tonic::server::ServerStreamingService<SubscribeRequest> for Relay {
    type Response = Bytes;
    type ResponseStream = Encoded;
    type Future = BoxFuture<'static, Result<Response<Encoded>, Status>>;

    fn call(&mut self, request: Request<SubscribeRequest>) -> Self::Future {
        let peers = self.peers.clone();
        Box::pin(async move { relay(&peers, request).await.map(Response::new) })
    }
}

/// The `imaged.v1.Events` server `inner` with Subscribe relayed as bytes.
pub fn with_event_relay<S>(inner: S, peers: Peers) -> Override<S> {
    let handler: Handler = Arc::new(move |request| {
        let relay = Relay {
            peers: peers.clone(),
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(PassCodec::<SubscribeRequest>::default());
            grpc.server_streaming(relay, request).await
        })
    });
    Override::new(inner, "/imaged.v1.Events/Subscribe", handler)
}
