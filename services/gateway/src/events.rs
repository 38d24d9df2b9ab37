//! The public `imaged.v1.Events` service: imaged-events' Subscribe,
//! relayed. Dropping the client's stream cancels the upstream one.

use std::pin::Pin;

use imaged_api::internal::v1::event_log_client::EventLogClient;
use imaged_api::v1::events_server::Events;
use imaged_api::v1::{Event, SubscribeRequest};
use imaged_common::deadline;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::peers::Peers;

/// Relays subscriptions to imaged-events.
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
        let (deadline, request) = deadline::split(request);
        let upstream = self
            .peers
            .events
            .call(|channel| {
                let request = request.clone();
                async move {
                    EventLogClient::new(channel)
                        .subscribe(deadline::attach(request, deadline))
                        .await
                }
            })
            .await?;
        Ok(Response::new(Box::pin(upstream)))
    }
}
