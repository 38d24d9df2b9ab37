//! Calls the tests make through the gateway often enough to share.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::{
    ImageInspect, ImageSummary, ImportImageRequest, InspectImageRequest, ListImagesRequest,
    LoadImagesRequest, PullImageProgress, PullImageRequest, PushImageProgress, PushImageRequest,
};
use imaged_common::peer::PeerChannel;
use tokio_stream::StreamExt;

/// A pull of `reference` for the host platform, without credentials.
pub fn pull_request(reference: &str) -> PullImageRequest {
    PullImageRequest {
        reference: reference.to_string(),
        platform: None,
        auth: None,
        all_tags: false,
        policy_namespace: String::new(),
    }
}

/// InspectImage of `image` (a name, reference or ID) for any platform.
pub async fn inspect(
    client: &mut ImagesClient<PeerChannel>,
    image: &str,
) -> Result<ImageInspect, tonic::Status> {
    client
        .inspect_image(InspectImageRequest {
            image: image.into(),
            platform: None,
        })
        .await
        .map(tonic::Response::into_inner)
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

/// Runs a push through the gateway and answers every progress message, or
/// the status the stream ended with.
pub async fn push(
    mut client: ImagesClient<PeerChannel>,
    reference: &str,
    all_tags: bool,
) -> Result<Vec<PushImageProgress>, tonic::Status> {
    let request = PushImageRequest {
        reference: reference.to_string(),
        all_tags,
        ..Default::default()
    };
    let mut stream = client.push_image(request).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.next().await {
        messages.push(message?);
    }
    Ok(messages)
}

/// Imports `tar` (a rootfs tar, as `docker import`) as `reference`, in
/// 1 MiB chunks; answers the image ID.
pub async fn import(
    mut client: ImagesClient<PeerChannel>,
    reference: &str,
    tar: &[u8],
) -> Result<String, tonic::Status> {
    let chunks: Vec<ImportImageRequest> = tar
        .chunks(1 << 20)
        .enumerate()
        .map(|(i, chunk)| ImportImageRequest {
            reference: if i == 0 {
                reference.into()
            } else {
                String::new()
            },
            chunk: chunk.to_vec(),
            ..Default::default()
        })
        .collect();
    client
        .import_image(tokio_stream::iter(chunks))
        .await
        .map(|answer| answer.into_inner().id)
}

/// Loads `archive` (as `docker load`, quietly) in 256 KiB chunks;
/// answers the lines it printed.
pub async fn load(
    mut client: ImagesClient<PeerChannel>,
    archive: Vec<u8>,
) -> Result<Vec<String>, tonic::Status> {
    let chunks: Vec<LoadImagesRequest> = archive
        .chunks(256 * 1024)
        .map(|chunk| LoadImagesRequest {
            chunk: chunk.to_vec(),
            quiet: true,
            platform: None,
        })
        .collect();
    let mut answers = client
        .load_images(tokio_stream::iter(chunks))
        .await?
        .into_inner();
    let mut lines = Vec::new();
    while let Some(line) = answers.next().await {
        lines.push(line?.message);
    }
    Ok(lines)
}

/// Every image the gateway lists, unfiltered.
pub async fn list(mut client: ImagesClient<PeerChannel>) -> Vec<ImageSummary> {
    client
        .list_images(ListImagesRequest::default())
        .await
        .expect("ListImages answers")
        .into_inner()
        .images
}

/// Asserts that every blob under a transfer root's content store has the
/// digest it is named by.
pub fn assert_blobs_match_digests(transfer_dir: &std::path::Path) {
    use sha2::Digest as _;
    for entry in std::fs::read_dir(transfer_dir.join("content/blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let data = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&data)),
            entry.file_name().to_string_lossy(),
            "a stored blob does not match its digest"
        );
    }
}
