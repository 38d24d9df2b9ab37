//! What a push says as it goes, in the engine's own terms; the gRPC
//! adapter (`crate::grpc::progress`) words it as Docker does.

use imaged_model::Digest;
use tokio::sync::mpsc;

/// One step of a push that its caller may show.
#[derive(Clone, Debug, PartialEq)]
pub enum PushEvent {
    /// The push of `repository` starts (said before the image is looked
    /// up, as Docker does).
    Started { repository: String },
    /// A layer (by its diffID) reached `step`.
    Layer { diff_id: Digest, step: Step },
    /// A tag's manifest is pushed: `digest`, `size` bytes.
    Pushed {
        tag: String,
        digest: Digest,
        size: i64,
    },
}

impl PushEvent {
    pub(crate) fn layer(diff_id: &Digest, step: Step) -> Self {
        PushEvent::Layer {
            diff_id: diff_id.clone(),
            step,
        }
    }
}

/// Where one layer's upload stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Preparing,
    /// The upload limit holds it back.
    Waiting,
    Pushing {
        current: u64,
        total: u64,
    },
    Retrying {
        seconds: u64,
    },
    /// The registry has it.
    AlreadyExists,
    /// Mounted from another repository of the registry.
    Mounted {
        from: String,
    },
    Pushed,
}

/// Where a push sends its events (best effort, as for a pull).
pub type Progress = mpsc::Sender<PushEvent>;

/// Sends `event` unless the caller has gone.
pub(crate) async fn say(tx: &Progress, event: PushEvent) {
    let _ = tx.send(event).await;
}
