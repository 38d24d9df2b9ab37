//! `imagectl image prune`: Docker's `docker image prune`.

use std::io::Write;

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tonic::transport::Channel;

use super::rmi::print_deleted;
use crate::cli::PruneArgs;
use crate::output;

/// `docker image prune`: asks first unless forced, as the docker CLI
/// does (a closed standard input answers no).
pub async fn run(images: &mut ImagesClient<Channel>, args: PruneArgs) -> anyhow::Result<()> {
    if !args.force {
        let what = if args.all {
            "all images without at least one container associated to them"
        } else {
            "all dangling images"
        };
        print!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
            return Ok(());
        }
    }
    let mut filters = args.filter;
    if args.all {
        filters.push("dangling=false".into());
    }
    let answer = images
        .prune_images(PruneImagesRequest { filters })
        .await?
        .into_inner();
    if !answer.deleted.is_empty() {
        println!("Deleted Images:");
        print_deleted(&answer.deleted, true);
        println!();
    }
    println!(
        "Total reclaimed space: {}",
        output::human_size_with_precision(answer.space_reclaimed as i64, 4)
    );
    Ok(())
}
