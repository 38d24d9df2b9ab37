//! One handler a command: what each asks the gateway and how it prints
//! the answer.

use std::io::Write;

use imaged_api::v1::delete_item::Item;
use imaged_api::v1::events_client::EventsClient;
use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::cli::{Action, Command, PruneArgs, PullArgs, PushArgs, SystemCommand};
use crate::{archive, inspect, local, login, output, progress};

/// Runs what the command line asked for.
pub async fn run(
    mut images: ImagesClient<Channel>,
    channel: Channel,
    action: Action,
) -> anyhow::Result<()> {
    let command = match action {
        Action::Top(command) => command,
        Action::ImageInspect(args) => return inspect::run(&mut images, args, true).await,
        Action::Prune(args) => return prune(&mut images, args).await,
    };
    match command {
        Command::Pull(args) => pull(&mut images, args).await?,
        Command::Push(args) => push(&mut images, args).await?,
        Command::Images(args) => {
            let mut filters = args.filter;
            filters.extend(args.reference.map(|r| format!("reference={r}")));
            let list = images
                .list_images(ListImagesRequest {
                    filters,
                    all: args.all,
                    shared_size: false,
                })
                .await?
                .into_inner()
                .images;
            output::images(&list, &args.format, args.quiet, args.digests, args.no_trunc)?;
        }
        Command::Inspect(args) => inspect::run(&mut images, args, false).await?,
        Command::History(args) => {
            let items = images
                .image_history(ImageHistoryRequest {
                    image: args.image,
                    platform: None,
                })
                .await?
                .into_inner()
                .items;
            output::history(&items, &args.format, args.no_trunc, args.quiet, args.human)?;
        }
        Command::Tag(args) => {
            local::tag(&args.source, &args.target)?;
            images
                .tag_image(TagImageRequest {
                    source: args.source,
                    target: args.target,
                })
                .await?;
        }
        Command::Rmi(args) => {
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
        }
        Command::Events {
            filter,
            since,
            until,
            format,
        } => {
            let mut stream = EventsClient::new(channel)
                .subscribe(SubscribeRequest {
                    filters: filter,
                    since: since.unwrap_or_default(),
                    until: until.unwrap_or_default(),
                })
                .await?
                .into_inner();
            while let Some(event) = stream.next().await {
                output::event(&event?, &format)?;
            }
        }
        Command::Save(args) => {
            archive::save(&mut images, args.images, args.output.as_deref()).await?
        }
        Command::Load(args) => {
            archive::load(&mut images, args.input.as_deref(), args.quiet).await?
        }
        Command::Import(args) => {
            if let Some(reference) = &args.reference {
                local::named(reference)?;
            }
            let first = ImportImageRequest {
                reference: args.reference.unwrap_or_default(),
                platform: platform(args.platform.as_deref())?,
                // As the docker CLI, which streams the file: the path on
                // this machine never goes into the image.
                message: args.message.unwrap_or_else(|| "Imported from -".into()),
                changes: args.change,
                chunk: Vec::new(),
            };
            let id = archive::import(&mut images, &args.file, first).await?;
            println!("{id}");
        }
        Command::Login(args) => login::login(channel, args).await?,
        Command::Logout(args) => login::logout(args)?,
        Command::Info => {
            let info = images.system_info(SystemInfoRequest {}).await?.into_inner();
            output::info(&info);
        }
        Command::Health { service } => health(channel, service).await?,
        Command::System {
            command: SystemCommand::Df { verbose },
        } => {
            let usage = images
                .disk_usage(DiskUsageRequest::default())
                .await?
                .into_inner();
            output::disk_usage(&usage, verbose);
        }
        Command::Image { .. } => unreachable!("folded by Command::action"),
    }
    Ok(())
}

/// `docker pull`: the CLI's default-tag line, then the daemon's.
async fn pull(images: &mut ImagesClient<Channel>, args: PullArgs) -> anyhow::Result<()> {
    let parsed = local::named(&args.reference)?;
    if !args.all_tags && !args.quiet && local::default_tag(&parsed) {
        println!("Using default tag: latest");
    }
    let request = PullImageRequest {
        auth: credentials(&args.auth, &parsed)?,
        reference: args.reference,
        platform: platform(args.platform.as_deref())?,
        all_tags: args.all_tags,
    };
    let stream = images.pull_image(request).await?.into_inner();
    let last = progress::show_pull(stream, args.quiet).await?;
    println!("{}", last.reference);
    Ok(())
}

/// `docker push`: as the docker CLI 28, `latest` of a name without a tag,
/// every tag only with --all-tags.
async fn push(images: &mut ImagesClient<Channel>, args: PushArgs) -> anyhow::Result<()> {
    let parsed = local::named(&args.reference)?;
    let reference = if !args.all_tags && local::default_tag(&parsed) {
        println!("Using default tag: latest");
        format!("{}:latest", args.reference)
    } else {
        args.reference
    };
    let request = PushImageRequest {
        reference,
        platform: None,
        auth: credentials(&args.auth, &parsed)?,
        all_tags: args.all_tags,
    };
    let mut stream = images.push_image(request).await?.into_inner();
    let mut said = false;
    while let Some(message) = stream.next().await {
        // Past the first line, Docker's errors come in the stream.
        let message = message.map_err(|s| progress::in_stream(s, said))?;
        said = true;
        if message.id.is_empty() {
            println!("{}", message.status);
        } else if !progress::shows_progress(&message.status) {
            println!("{}: {}", message.id, message.status);
        }
    }
    Ok(())
}

/// The credentials a pull or push of `reference` sends: those given on
/// the command line, else those kept for its registry.
fn credentials(
    given: &crate::cli::AuthArgs,
    reference: &imaged_model::Reference,
) -> anyhow::Result<Option<RegistryAuth>> {
    match given.auth()? {
        Some(auth) => Ok(Some(auth)),
        None => login::kept_for(reference.domain()),
    }
}

/// `docker image prune`: asks first unless forced, as the docker CLI
/// does (a closed standard input answers no).
async fn prune(images: &mut ImagesClient<Channel>, args: PruneArgs) -> anyhow::Result<()> {
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

/// `rmi`'s lines, or `image prune`'s (the docker CLI writes those in
/// lower case).
fn print_deleted(items: &[DeleteItem], lower: bool) {
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

/// Asks a process's gRPC health service; exits 1 unless it is serving.
async fn health(channel: Channel, service: String) -> anyhow::Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        std::process::exit(1);
    }
    Ok(())
}

/// `--platform os/arch[/variant]`.
fn platform(text: Option<&str>) -> anyhow::Result<Option<Platform>> {
    let Some(text) = text else { return Ok(None) };
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [os, arch] => Ok(Some(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: String::new(),
        })),
        [os, arch, variant] => Ok(Some(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.to_string(),
        })),
        _ => anyhow::bail!("invalid platform {text:?}: use os/arch[/variant]"),
    }
}
