//! `docker pull`'s progress: on a terminal, a live bar per layer and an
//! aggregate line with speed and ETA; elsewhere, one plain line each time
//! a layer's state changes.

use std::collections::HashMap;
use std::io::IsTerminal;

use imaged_api::v1::PullImageProgress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_stream::{Stream, StreamExt};

/// Whether Docker sends this layer state with a progress bar: the docker
/// CLI prints such lines only on a terminal.
pub fn shows_progress(status: &str) -> bool {
    matches!(
        status,
        "Downloading" | "Extracting" | "Pushing" | "Loading layer"
    )
}

/// A stream's error as the docker CLI shows it: refused before the
/// first line, the daemon's answer (with its prefix); after, a line of
/// the stream (bare).
pub fn in_stream(status: tonic::Status, said: bool) -> anyhow::Error {
    if said {
        anyhow::anyhow!("{}", status.message())
    } else {
        status.into()
    }
}

/// Shows the pull's progress and answers its last message (with the image
/// ID, reference and digest).
pub async fn show_pull(
    mut stream: impl Stream<Item = Result<PullImageProgress, tonic::Status>> + Unpin,
    quiet: bool,
) -> anyhow::Result<PullImageProgress> {
    let live = !quiet && std::io::stdout().is_terminal();
    let bars = MultiProgress::with_draw_target(if live {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });
    let layer_style =
        ProgressStyle::with_template("{prefix}: {msg:<18} [{bar:30}] {bytes}/{total_bytes}")
            .expect("a valid template")
            .progress_chars("=> ");
    let total_style = ProgressStyle::with_template(
        "{prefix:<12} {msg:<6} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    let mut layers: HashMap<String, ProgressBar> = HashMap::new();
    let mut last_status: HashMap<String, String> = HashMap::new();
    let mut total: Option<ProgressBar> = None;
    let mut last = PullImageProgress::default();

    let mut said = false;
    while let Some(message) = stream.next().await {
        let message = message.map_err(|s| in_stream(s, said))?;
        said = true;
        if message.id.is_empty() {
            if !quiet && !message.status.is_empty() {
                if live {
                    bars.println(&message.status)?;
                } else {
                    println!("{}", message.status);
                }
            }
        } else if live {
            let bar = layers.entry(message.id.clone()).or_insert_with(|| {
                let bar = bars.insert_from_back(usize::from(total.is_some()), ProgressBar::new(0));
                bar.set_style(layer_style.clone());
                bar.set_prefix(message.id.clone());
                bar
            });
            if message.total > 0 {
                bar.set_length(message.total as u64);
                bar.set_position(message.current as u64);
            }
            bar.set_message(message.status.clone());
            if message.aggregate_total > 0 {
                let aggregate = total.get_or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new(message.aggregate_total as u64));
                    bar.set_style(total_style.clone());
                    bar.set_prefix("Total");
                    bar
                });
                aggregate.set_length(message.aggregate_total as u64);
                aggregate.set_position(message.aggregate_current as u64);
            }
        } else if !quiet
            && !shows_progress(&message.status)
            && last_status.get(&message.id) != Some(&message.status)
        {
            println!("{}: {}", message.id, message.status);
            last_status.insert(message.id.clone(), message.status.clone());
        }
        last = message;
    }
    for bar in layers.values() {
        bar.finish();
    }
    if let Some(total) = total {
        total.finish_with_message("done");
    }
    Ok(last)
}
