//! `imagectl import`: Docker's `docker import`.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tonic::transport::Channel;

use super::platform;
use crate::cli::ImportArgs;
use crate::{archive, local};

/// Imports a root filesystem tar as a one-layer image; prints its ID.
pub async fn run(images: &mut ImagesClient<Channel>, args: ImportArgs) -> anyhow::Result<()> {
    if let Some(reference) = &args.reference {
        local::named(reference)?;
    }
    let first = ImportImageRequest {
        reference: args.reference.unwrap_or_default(),
        platform: platform(args.platform.as_deref())?,
        // As the docker CLI, which streams the file: the path on this
        // machine never goes into the image.
        message: args.message.unwrap_or_else(|| "Imported from -".into()),
        changes: args.change,
        chunk: Vec::new(),
    };
    let id = archive::import(images, &args.file, first).await?;
    println!("{id}");
    Ok(())
}
