//! What a pull says as it goes, in the engine's own terms. The gRPC
//! adapter (`crate::grpc::progress`) words it as Docker does; the engine
//! knows nothing of either.

use imaged_model::Digest;
use tokio::sync::mpsc;

use super::State;

/// One step of a pull that its caller may show.
#[derive(Clone, Debug, PartialEq)]
pub enum PullEvent {
    /// The manifest was found: the pull of `path` (the repository path)
    /// under `tag_or_digest` starts.
    Started { tag_or_digest: String, path: String },
    /// The image found runs on `found`, not on the platform asked for;
    /// it is pulled anyway, as Docker does.
    PlatformMismatch {
        shown: String,
        found: String,
        wanted: String,
    },
    /// A layer (by its compressed blob) reached `state`.
    Layer {
        blob: Digest,
        state: State,
        bytes: Bytes,
    },
    /// The image is recorded, pulled by `digest` (the index's when there
    /// was one).
    Recorded { digest: String },
    /// The pull is over (for `--all-tags`, once for the repository).
    Done(Pulled),
}

/// How far a layer, and the whole pull, has got, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bytes {
    pub current: u64,
    pub total: u64,
    pub all_current: u64,
    pub all_total: u64,
}

/// How a finished pull ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pulled {
    /// The digest it was pulled by (of the last tag, for `--all-tags`).
    pub digest: String,
    /// Whether the reference moved to a different image (or a new one).
    pub updated: bool,
    pub image_id: String,
    /// The reference as Docker shows it (`busybox:latest`).
    pub shown: String,
    /// Where its layer bytes came from (layers already stored count
    /// nowhere).
    pub from: super::origin::ByOrigin,
}

/// Where a pull sends its events. Sending is best effort: a caller that
/// went away cancels the pull by dropping its stream, not here.
pub type Progress = mpsc::Sender<PullEvent>;

/// Sends `event` unless the caller has gone.
pub(crate) async fn say(tx: &Progress, event: PullEvent) {
    let _ = tx.send(event).await;
}
