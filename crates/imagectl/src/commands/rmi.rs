//! `imagectl rmi`: Docker's `docker rmi`, and the lines it prints (which
//! `image prune` shares).

use imaged_api::v1::delete_item::Item;
use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tonic::transport::Channel;

use crate::cli::RmiArgs;

/// Removes each image named; a failure is said and the rest go on, and
/// the command then exits 1, as the docker CLI does.
pub async fn run(images: &mut ImagesClient<Channel>, args: RmiArgs) -> anyhow::Result<()> {
    let mut failed = false;
    for name in args.images {
        let request = RemoveImageRequest {
            image: name,
            force: args.force,
            prune_children: Some(!args.no_prune),
        };
        match images.remove_image(request).await {
            Ok(answer) => print_deleted(&answer.into_inner().items, false),
            Err(status) => {
                eprintln!("Error response from daemon: {}", status.message());
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// `rmi`'s lines, or `image prune`'s (the docker CLI writes those in
/// lower case).
pub fn print_deleted(items: &[DeleteItem], lower: bool) {
    let (untagged, deleted) = if lower {
        ("untagged", "deleted")
    } else {
        ("Untagged", "Deleted")
    };
    for item in items {
        match &item.item {
            Some(Item::Untagged(name)) => println!("{untagged}: {name}"),
            Some(Item::Deleted(id)) => println!("{deleted}: {id}"),
            None => {}
        }
    }
}
