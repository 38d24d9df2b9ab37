//! `imagectl history`: Docker's `docker history`.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tonic::transport::Channel;

use crate::cli::HistoryArgs;
use crate::output;

/// Prints an image's history as the docker CLI does.
pub async fn run(images: &mut ImagesClient<Channel>, args: HistoryArgs) -> anyhow::Result<()> {
    let items = images
        .image_history(ImageHistoryRequest {
            image: args.image,
            platform: None,
        })
        .await?
        .into_inner()
        .items;
    output::history(&items, &args.format, args.no_trunc, args.quiet, args.human)
}
