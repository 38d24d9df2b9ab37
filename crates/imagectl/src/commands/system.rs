//! `imagectl info` and `imagectl system df`: Docker's `docker info` (its
//! image part) and `docker system df`; and `imagectl peers`, where this
//! node's layer bytes came from.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tonic::transport::Channel;

use crate::output;

/// `info`.
pub async fn info(images: &mut ImagesClient<Channel>) -> anyhow::Result<()> {
    let info = images.system_info(SystemInfoRequest {}).await?.into_inner();
    output::info(&info);
    Ok(())
}

/// `system df [-v]`.
pub async fn df(images: &mut ImagesClient<Channel>, verbose: bool) -> anyhow::Result<()> {
    let usage = images
        .disk_usage(DiskUsageRequest::default())
        .await?
        .into_inner();
    output::disk_usage(&usage, verbose);
    Ok(())
}

/// `peers`.
pub async fn peers(images: &mut ImagesClient<Channel>) -> anyhow::Result<()> {
    let usage = images
        .disk_usage(DiskUsageRequest::default())
        .await?
        .into_inner();
    output::sources(&usage);
    Ok(())
}
