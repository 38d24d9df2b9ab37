//! imagectl: Docker's image commands (`pull`, `images` / `image ls`,
//! `inspect` / `image inspect`, `history`, `tag`, `rmi`, `image prune`,
//! `events`, `info`, `system df`, `push`, `save`, `load`, `import`) over
//! the gateway's generated `imaged.v1` client. Errors print the server's
//! message and exit non-zero.

mod archive;
mod connect;
mod inspect;
mod local;
mod output;
mod progress;
mod template;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use imaged_api::v1::delete_item::Item;
use imaged_api::v1::events_client::EventsClient;
use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::*;
use tokio_stream::StreamExt;

/// The default gateway socket: where `make run` puts it.
const DEFAULT_HOST: &str = "unix://./data/run/gateway.sock";

#[derive(Parser, Debug)]
#[command(
    name = "imagectl",
    version,
    about = "Docker's image commands for imaged"
)]
struct Cli {
    /// The gateway: unix:///path/gateway.sock, tcp://IP:PORT (no TLS) or
    /// https://HOST:PORT.
    #[arg(long, short = 'H', env = "IMAGED_HOST", default_value = DEFAULT_HOST, global = true)]
    host: String,
    /// CA certificate (PEM) to trust for https:// hosts.
    #[arg(long, env = "IMAGED_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for https:// hosts that ask for one.
    #[arg(long, env = "IMAGED_TLS_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "IMAGED_TLS_KEY", global = true)]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download an image from a registry.
    Pull {
        reference: String,
        /// Pull every tag of the repository.
        #[arg(long = "all-tags", short = 'a')]
        all_tags: bool,
        /// os/arch[/variant] to pick from a multi-platform image.
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        auth: AuthArgs,
        /// Print nothing but the image's digest.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Upload an image to a registry.
    Push {
        reference: String,
        /// Push every tag of the repository.
        #[arg(long = "all-tags", short = 'a')]
        all_tags: bool,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// List images.
    Images(ListArgs),
    /// Show images' records as JSON, or through --format.
    Inspect(InspectArgs),
    /// Show the history of an image.
    History {
        image: String,
        /// Don't truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Only show image IDs.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Create a tag TARGET that refers to SOURCE.
    Tag { source: String, target: String },
    /// Remove images.
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
        /// Remove even if referenced or used by a stopped container.
        #[arg(long, short)]
        force: bool,
        /// Do not delete untagged parents.
        #[arg(long)]
        no_prune: bool,
    },
    /// Image commands that Docker nests under `image`.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Show image events, live or replayed.
    Events {
        /// key=value: type, event, image, label. Repeatable.
        #[arg(long, short)]
        filter: Vec<String>,
        /// Show events since a timestamp or duration (10m).
        #[arg(long)]
        since: Option<String>,
        /// Stream events until this timestamp or duration.
        #[arg(long)]
        until: Option<String>,
        /// `text` (default), `json` (one JSON object a line) or a Go
        /// template (`{{.Action}} {{.Actor.ID}}`).
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Write images to a tar archive (`docker save`).
    Save {
        #[arg(required = true)]
        images: Vec<String>,
        /// Write to a file instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Load images from a tar archive (`docker load`).
    Load {
        /// Read from a file instead of standard input.
        #[arg(long, short)]
        input: Option<std::path::PathBuf>,
        /// Print only the final lines.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Make an image from a root filesystem tar (`docker import`).
    Import {
        /// The tar file, or `-` for standard input.
        file: String,
        /// name[:tag] for the new image.
        reference: Option<String>,
        /// A Dockerfile instruction to apply (CMD, ENV, LABEL, …). Repeatable.
        #[arg(long, short)]
        change: Vec<String>,
        /// The image comment.
        #[arg(long, short)]
        message: Option<String>,
        /// os/arch[/variant] of the image.
        #[arg(long)]
        platform: Option<String>,
    },
    /// Show the image service's state.
    Info,
    /// Ask a process's gRPC health service (any of the four sockets, with
    /// -H): exits 0 when it is SERVING, 1 otherwise. For liveness and
    /// readiness probes.
    Health {
        /// The service to ask about; empty: the process as a whole.
        #[arg(default_value = "")]
        service: String,
    },
    /// Docker's `system` commands that concern images.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
}

/// `docker images` / `docker image ls`.
#[derive(clap::Args, Debug)]
struct ListArgs {
    /// Only this repository, or REPOSITORY:TAG (a glob, as the filter).
    reference: Option<String>,
    /// Show intermediate images too.
    #[arg(long, short)]
    all: bool,
    /// Only show image IDs.
    #[arg(long, short)]
    quiet: bool,
    /// key=value, as `docker images --filter`. Repeatable.
    #[arg(long, short)]
    filter: Vec<String>,
    /// `table` (default), `json` (one object a line) or a Go template
    /// (`{{.Repository}}:{{.Tag}}`, `table {{.ID}}\t{{.Size}}`).
    #[arg(long, default_value = "table")]
    format: String,
    /// Show digests.
    #[arg(long)]
    digests: bool,
    /// Don't truncate IDs.
    #[arg(long)]
    no_trunc: bool,
}

/// `docker inspect` / `docker image inspect`.
#[derive(clap::Args, Debug)]
struct InspectArgs {
    #[arg(required = true)]
    images: Vec<String>,
    /// A Go template applied to each record (`{{.Id}}`,
    /// `{{index .RepoDigests 0}}`, `{{json .Config}}`).
    #[arg(long, short)]
    format: Option<String>,
}

#[derive(Subcommand, Debug)]
enum SystemCommand {
    /// Show the space images take.
    Df {
        /// Show each image.
        #[arg(long, short)]
        verbose: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// List images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show images' records.
    Inspect(InspectArgs),
    /// Remove unused images.
    Prune {
        /// Remove all unused images, not just dangling ones.
        #[arg(long, short)]
        all: bool,
        /// key=value: until, label, label!. Repeatable.
        #[arg(long)]
        filter: Vec<String>,
        /// Do not prompt for confirmation.
        #[arg(long, short)]
        force: bool,
    },
}

/// Registry credentials for pull and push.
#[derive(clap::Args, Debug)]
struct AuthArgs {
    /// Registry user name.
    #[arg(long, short)]
    username: Option<String>,
    /// Registry password (prefer IMAGECTL_PASSWORD or --password-stdin).
    #[arg(long, short, env = "IMAGECTL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl AuthArgs {
    fn auth(&self) -> anyhow::Result<Option<RegistryAuth>> {
        let mut password = self.password.clone();
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            password = Some(line.trim_end_matches(['\r', '\n']).to_string());
        }
        if self.username.is_none() && password.is_none() {
            return Ok(None);
        }
        Ok(Some(RegistryAuth {
            username: self.username.clone().unwrap_or_default(),
            password: password.unwrap_or_default(),
            ..Default::default()
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli).await {
        // As the docker CLI: the daemon's refusals carry its prefix; what
        // the CLI found itself, or what failed mid-stream, prints bare.
        match err.downcast_ref::<tonic::Status>() {
            Some(status) => eprintln!("Error response from daemon: {}", status.message()),
            None => eprintln!("{err:#}"),
        }
        std::process::exit(1);
    }
}

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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let channel = connect::channel(
        &cli.host,
        cli.tls_ca.as_deref(),
        cli.tls_cert.as_deref().zip(cli.tls_key.as_deref()),
    )
    .await?;
    let mut images = ImagesClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    match cli.command {
        Command::Pull {
            reference,
            all_tags,
            platform: p,
            auth,
            quiet,
        } => {
            let parsed = local::named(&reference)?;
            if !all_tags && !quiet && local::default_tag(&parsed) {
                println!("Using default tag: latest");
            }
            let request = PullImageRequest {
                reference,
                platform: platform(p.as_deref())?,
                auth: auth.auth()?,
                all_tags,
            };
            let stream = images.pull_image(request).await?.into_inner();
            let last = progress::show_pull(stream, quiet).await?;
            println!("{}", last.reference);
        }
        Command::Push {
            reference,
            all_tags,
            auth,
        } => {
            // The docker CLI 28 pushes `latest` of a name without a tag,
            // every tag only with --all-tags.
            let parsed = local::named(&reference)?;
            let reference = if !all_tags && local::default_tag(&parsed) {
                println!("Using default tag: latest");
                format!("{reference}:latest")
            } else {
                reference
            };
            let request = PushImageRequest {
                reference,
                platform: None,
                auth: auth.auth()?,
                all_tags,
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
        }
        Command::Images(args)
        | Command::Image {
            command: ImageCommand::Ls(args),
        } => {
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
        Command::Inspect(args) => inspect(&mut images, args, false).await?,
        Command::Image {
            command: ImageCommand::Inspect(args),
        } => inspect(&mut images, args, true).await?,
        Command::System {
            command: SystemCommand::Df { verbose },
        } => {
            let usage = images
                .disk_usage(DiskUsageRequest::default())
                .await?
                .into_inner();
            output::disk_usage(&usage, verbose);
        }
        Command::History {
            image,
            no_trunc,
            quiet,
        } => {
            let items = images
                .image_history(ImageHistoryRequest {
                    image,
                    platform: None,
                })
                .await?
                .into_inner()
                .items;
            output::history(&items, no_trunc, quiet);
        }
        Command::Tag { source, target } => {
            local::tag(&source, &target)?;
            images.tag_image(TagImageRequest { source, target }).await?;
        }
        Command::Rmi {
            images: names,
            force,
            no_prune,
        } => {
            let mut failed = None;
            for name in names {
                match images
                    .remove_image(RemoveImageRequest {
                        image: name,
                        force,
                        prune_children: Some(!no_prune),
                    })
                    .await
                {
                    Ok(answer) => print_deleted(&answer.into_inner().items),
                    Err(status) => {
                        eprintln!("Error response from daemon: {}", status.message());
                        failed = Some(status);
                    }
                }
            }
            if failed.is_some() {
                std::process::exit(1);
            }
        }
        Command::Image {
            command: ImageCommand::Prune { all, filter, force },
        } => {
            if !force && std::io::stdin().is_terminal() {
                let what = if all {
                    "all images without at least one container associated to them"
                } else {
                    "all dangling images"
                };
                eprint!(
                    "WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] "
                );
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Ok(());
                }
            }
            let mut filters = filter;
            if all {
                filters.push("dangling=false".into());
            }
            let answer = images
                .prune_images(PruneImagesRequest { filters })
                .await?
                .into_inner();
            if !answer.deleted.is_empty() {
                // The docker CLI's prune lines are lower case, unlike rmi's.
                println!("Deleted Images:");
                for item in &answer.deleted {
                    match &item.item {
                        Some(Item::Untagged(name)) => println!("untagged: {name}"),
                        Some(Item::Deleted(id)) => println!("deleted: {id}"),
                        None => {}
                    }
                }
                println!();
            }
            println!(
                "Total reclaimed space: {}",
                output::human_size_with_precision(answer.space_reclaimed as i64, 4)
            );
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
        Command::Save {
            images: names,
            output,
        } => {
            archive::save(&mut images, names, output.as_deref()).await?;
        }
        Command::Load { input, quiet } => {
            archive::load(&mut images, input.as_deref(), quiet).await?;
        }
        Command::Import {
            file,
            reference,
            change,
            message,
            platform: p,
        } => {
            if let Some(reference) = &reference {
                local::named(reference)?;
            }
            let first = ImportImageRequest {
                reference: reference.unwrap_or_default(),
                platform: platform(p.as_deref())?,
                // As the docker CLI, which streams the file: the path on
                // this machine never goes into the image.
                message: message.unwrap_or_else(|| "Imported from -".into()),
                changes: change,
                chunk: Vec::new(),
            };
            let id = archive::import(&mut images, &file, first).await?;
            println!("{id}");
        }
        Command::Info => {
            let info = images.system_info(SystemInfoRequest {}).await?.into_inner();
            output::info(&info);
        }
        Command::Health { service } => {
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
        }
    }
    Ok(())
}

/// `docker image inspect` (`image_only`) or `docker inspect`: the records
/// found, then an error line for each name not found, as the docker CLI
/// words them; exits 1 if any was missing.
async fn inspect(
    images: &mut ImagesClient<tonic::transport::Channel>,
    args: InspectArgs,
    image_only: bool,
) -> anyhow::Result<()> {
    let template = args
        .format
        .as_deref()
        .map(template::Template::parse)
        .transpose()?;
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for name in args.images {
        let request = InspectImageRequest {
            image: name.clone(),
            platform: None,
        };
        match images.inspect_image(request).await {
            Ok(record) => records.push(inspect::record(&record.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound && !image_only => {
                missing.push(format!("Error: No such object: {name}"))
            }
            Err(status) if status.code() == tonic::Code::NotFound => missing.push(format!(
                "Error response from daemon: no such image: {name}: {}",
                status.message()
            )),
            Err(status) => return Err(status.into()),
        }
    }
    match &template {
        Some(template) => {
            for record in &records {
                println!("{}", template.render(&record.to_value())?);
            }
        }
        None => inspect::print(&records)?,
    }
    if missing.is_empty() {
        return Ok(());
    }
    for line in &missing {
        eprintln!("{line}");
    }
    std::process::exit(1);
}

fn print_deleted(items: &[DeleteItem]) {
    for item in items {
        match &item.item {
            Some(Item::Untagged(name)) => println!("Untagged: {name}"),
            Some(Item::Deleted(id)) => println!("Deleted: {id}"),
            None => {}
        }
    }
}
