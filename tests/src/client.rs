//! Calls the tests make through the gateway often enough to share.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::{PullImageProgress, PullImageRequest};
use imaged_common::peer::PeerChannel;
use tokio_stream::StreamExt;

/// A pull of `reference` for the host platform, without credentials.
pub fn pull_request(reference: &str) -> PullImageRequest {
    PullImageRequest {
        reference: reference.to_string(),
        platform: None,
        auth: None,
    }
}

/// Runs a pull through the gateway and answers every progress message,
/// or the status the stream ended with. Owns its client, so it can be
/// spawned.
pub async fn pull(
    mut client: ImagesClient<PeerChannel>,
    request: PullImageRequest,
) -> Result<Vec<PullImageProgress>, tonic::Status> {
    let mut stream = client.pull_image(request).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.next().await {
        messages.push(message?);
    }
    Ok(messages)
}
