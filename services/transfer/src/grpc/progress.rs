//! The engines' events in Docker's words: the progress lines `docker
//! pull` and `docker push` print, as the wire carries them.

use imaged_api::v1::{LayerSources, LoadImagesResponse, PullImageProgress, PushImageProgress};

use crate::load::events::LoadEvent;
use crate::pull::State;
use crate::pull::events::PullEvent;
use crate::pull::origin::ByOrigin;
use crate::push::events::{PushEvent, Step};

/// The line Docker prints for one pull event.
pub fn pull_line(event: PullEvent) -> PullImageProgress {
    match event {
        PullEvent::Started {
            tag_or_digest,
            path,
        } => line(&tag_or_digest, format!("Pulling from {path}")),
        PullEvent::PlatformMismatch {
            shown,
            found,
            wanted,
        } => line(
            "",
            format!(
                "WARNING: image with reference {shown} was found but its platform ({found}) does not match the specified platform ({wanted})"
            ),
        ),
        PullEvent::Layer { blob, state, bytes } => {
            let mut message = line(blob.short(), layer_status(&state));
            message.current = bytes.current as i64;
            message.total = bytes.total as i64;
            message.aggregate_current = bytes.all_current as i64;
            message.aggregate_total = bytes.all_total as i64;
            message
        }
        PullEvent::Recorded { digest } => line("", format!("Digest: {digest}")),
        PullEvent::Done(pulled) => {
            let mut last = line(
                "",
                format!(
                    "Status: {} for {}",
                    if pulled.updated {
                        "Downloaded newer image"
                    } else {
                        "Image is up to date"
                    },
                    pulled.shown
                ),
            );
            last.image_id = pulled.image_id;
            last.reference = pulled.shown;
            last.digest = pulled.digest;
            last.fetched_from = Some(layer_sources(pulled.from));
            last
        }
    }
}

/// Layer bytes by origin, as the API carries them (a pull's, or the
/// node's since it started).
pub fn layer_sources(from: ByOrigin) -> LayerSources {
    LayerSources {
        registry: from.registry as i64,
        mirrors: from.mirrors as i64,
        peers: from.peers as i64,
    }
}

/// A layer's state as Docker words it.
fn layer_status(state: &State) -> String {
    match state {
        State::Pending | State::Waiting => "Waiting".into(),
        State::Announced => "Pulling fs layer".into(),
        State::Downloading { .. } => "Downloading".into(),
        State::Retrying { seconds } => format!("Retrying in {seconds} seconds"),
        State::Verifying => "Verifying Checksum".into(),
        State::DownloadComplete => "Download complete".into(),
        State::Extracting => "Extracting".into(),
        State::Complete => "Pull complete".into(),
        State::AlreadyExists => "Already exists".into(),
    }
}

fn line(id: &str, status: String) -> PullImageProgress {
    PullImageProgress {
        id: id.to_string(),
        status,
        ..Default::default()
    }
}

/// The line Docker prints for one push event.
pub fn push_line(event: PushEvent) -> PushImageProgress {
    let line = |id: &str, status: String| PushImageProgress {
        id: id.to_string(),
        status,
        ..Default::default()
    };
    match event {
        PushEvent::Started { repository } => {
            line("", format!("The push refers to repository [{repository}]"))
        }
        PushEvent::Layer { diff_id, step } => {
            let id = diff_id.short();
            match step {
                Step::Preparing => line(id, "Preparing".into()),
                Step::Waiting => line(id, "Waiting".into()),
                Step::Pushing { current, total } => PushImageProgress {
                    current: current as i64,
                    total: total as i64,
                    ..line(id, "Pushing".into())
                },
                Step::Retrying { seconds } => line(id, format!("Retrying in {seconds} seconds")),
                Step::AlreadyExists => line(id, "Layer already exists".into()),
                Step::Mounted { from } => line(id, format!("Mounted from {from}")),
                Step::Pushed => line(id, "Pushed".into()),
            }
        }
        PushEvent::Pushed { tag, digest, size } => PushImageProgress {
            digest: digest.to_string(),
            size,
            tag: tag.clone(),
            ..line("", format!("{tag}: digest: {digest} size: {size}"))
        },
    }
}

/// The line `docker load` prints for one load event.
pub fn load_line(event: LoadEvent) -> LoadImagesResponse {
    let message = match event {
        LoadEvent::LoadingLayer { diff_id } => format!("Loading layer {}", diff_id.short()),
        LoadEvent::Renamed { tag, from_id } => format!(
            "The image {tag} already exists, renaming the old one with ID {from_id} to empty string"
        ),
        LoadEvent::Loaded { tag } => format!("Loaded image: {}", tag.familiar()),
        LoadEvent::LoadedId { id } => format!("Loaded image ID: {id}"),
    };
    LoadImagesResponse { message }
}
