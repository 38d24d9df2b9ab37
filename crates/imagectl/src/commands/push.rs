//! `imagectl push`: Docker's `docker push`.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::credentials;
use crate::cli::PushArgs;
use crate::sign::Signer;
use crate::{local, progress};

/// `docker push`: as the docker CLI 28, `latest` of a name without a tag,
/// every tag only with --all-tags.
pub async fn run(images: &mut ImagesClient<Channel>, args: PushArgs) -> anyhow::Result<()> {
    let parsed = local::named(&args.reference)?;
    // Before anything is pushed: a registries.d that cannot be read
    // stops the push, not its signing.
    let signer = Signer::new(&args.signing)?;
    let reference = if !args.all_tags && local::default_tag(&parsed) {
        println!("Using default tag: latest");
        format!("{}:latest", args.reference)
    } else {
        args.reference
    };
    let auth = credentials(&args.auth, &parsed)?;
    let request = PushImageRequest {
        reference,
        platform: None,
        auth: auth.clone(),
        all_tags: args.all_tags,
    };
    let repository = parsed.clone();
    let mut stream = images.push_image(request).await?.into_inner();
    let mut said = false;
    while let Some(message) = stream.next().await {
        // Past the first line, Docker's errors come in the stream.
        let message = message.map_err(|s| progress::in_stream(s, said))?;
        said = true;
        if let Some(signer) = &signer
            && !message.digest.is_empty()
            && !message.tag.is_empty()
        {
            let pushed = repository.with_tag(&message.tag)?;
            let digest: imaged_model::Digest = message.digest.parse()?;
            let said = signer.sign(&pushed, &digest, auth.as_ref()).await?;
            println!("{said}");
        }
        if message.id.is_empty() {
            println!("{}", message.status);
        } else if !progress::shows_progress(&message.status) {
            println!("{}: {}", message.id, message.status);
        }
    }
    Ok(())
}
