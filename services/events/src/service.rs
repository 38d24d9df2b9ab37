//! The `imaged.v1.EventLog` gRPC service.

use imaged_api::v1::{EventLogInfoRequest, EventLogInfoResponse, event_log_server::EventLog};
use tonic::{Request, Response, Status};

/// Serves the event log contract. Publishing, the persisted log and
/// subscriptions come with the event log itself; until then the log is
/// empty and has no subscribers, and `Info` says so.
#[derive(Default)]
pub struct EventLogService {}

#[tonic::async_trait]
impl EventLog for EventLogService {
    async fn info(
        &self,
        _request: Request<EventLogInfoRequest>,
    ) -> Result<Response<EventLogInfoResponse>, Status> {
        Ok(Response::new(EventLogInfoResponse {
            events: 0,
            last_sequence: 0,
            subscribers: 0,
        }))
    }
}
