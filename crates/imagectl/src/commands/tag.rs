//! `imagectl tag`: Docker's `docker tag`.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tonic::transport::Channel;

use crate::cli::TagArgs;
use crate::local;

/// Tags an image, refusing a bad name before asking, as the CLI does.
pub async fn run(images: &mut ImagesClient<Channel>, args: TagArgs) -> anyhow::Result<()> {
    local::tag(&args.source, &args.target)?;
    images
        .tag_image(TagImageRequest {
            source: args.source,
            target: args.target,
        })
        .await?;
    Ok(())
}
