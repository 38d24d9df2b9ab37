//! `imagectl images` (`image ls`): Docker's `docker images`.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tonic::transport::Channel;

use crate::cli::ListArgs;
use crate::output;

/// Lists the images as the docker CLI prints them.
pub async fn run(images: &mut ImagesClient<Channel>, args: ListArgs) -> anyhow::Result<()> {
    let mut filters = args.filter;
    filters.extend(args.reference.map(|r| format!("reference={r}")));
    let list = images
        .list_images(ListImagesRequest {
            filters,
            all: args.all,
            shared_size: false,
        })
        .await?
        .into_inner()
        .images;
    output::images(&list, &args.format, args.quiet, args.digests, args.no_trunc)
}
