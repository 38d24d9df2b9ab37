//! `imagectl pull`: Docker's `docker pull`.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tonic::transport::Channel;

use super::{credentials, platform};
use crate::cli::PullArgs;
use crate::{local, progress};

/// `docker pull`: the CLI's default-tag line, then the daemon's.
pub async fn run(images: &mut ImagesClient<Channel>, args: PullArgs) -> anyhow::Result<()> {
    let parsed = local::named(&args.reference)?;
    if !args.all_tags && !args.quiet && local::default_tag(&parsed) {
        println!("Using default tag: latest");
    }
    let request = PullImageRequest {
        auth: credentials(&args.auth, &parsed)?,
        reference: args.reference,
        platform: platform(args.platform.as_deref())?,
        all_tags: args.all_tags,
        policy_namespace: String::new(),
    };
    let stream = images.pull_image(request).await?.into_inner();
    let last = progress::show_pull(stream, args.quiet).await?;
    println!("{}", last.reference);
    Ok(())
}
