//! What a load says as it goes, in the engine's own terms; the gRPC
//! adapter (`crate::grpc::progress`) words it as `docker load` does.

use imaged_model::{Digest, Platform, Reference};
use tokio::sync::mpsc;

/// How to load, as the caller asked.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// No per-layer lines (`docker load -q`).
    pub quiet: bool,
    /// Load only the images of this platform (the others are skipped).
    pub platform: Option<Platform>,
}

/// One step of a load that its caller may show.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadEvent {
    /// A layer not stored yet is being unpacked.
    LoadingLayer { diff_id: Digest },
    /// `tag` moved to the loaded image from the image `from_id`.
    Renamed { tag: String, from_id: String },
    /// An image was loaded under `tag`.
    Loaded { tag: Reference },
    /// An image was loaded without a tag.
    LoadedId { id: String },
}

/// Where a load sends its events (best effort).
pub type Progress = mpsc::Sender<LoadEvent>;

/// Sends `event` unless the caller has gone.
pub(crate) async fn say(tx: &Progress, event: LoadEvent) {
    let _ = tx.send(event).await;
}
