//! `imagectl events`: Docker's `docker events` for images.

use imaged_api::v1::SubscribeRequest;
use imaged_api::v1::events_client::EventsClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::output;

/// Follows (or replays, with `until`) the events the filters let through.
pub async fn run(
    channel: Channel,
    filters: Vec<String>,
    since: Option<String>,
    until: Option<String>,
    format: String,
) -> anyhow::Result<()> {
    let mut stream = EventsClient::new(channel)
        .subscribe(SubscribeRequest {
            filters,
            since: since.unwrap_or_default(),
            until: until.unwrap_or_default(),
        })
        .await?
        .into_inner();
    while let Some(event) = stream.next().await {
        output::event(&event?, &format)?;
    }
    Ok(())
}
