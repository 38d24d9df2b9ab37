//! One file a command: what each asks the gateway and how it prints the
//! answer. `save` and `load` are in `crate::archive`, `inspect` in
//! `crate::inspect`, `login` and `logout` in `crate::login`.

use imaged_api::v1::images_client::ImagesClient;
use imaged_api::v1::{Platform, RegistryAuth};
use tonic::transport::Channel;

use crate::cli::{Action, Command, SystemCommand};
use crate::{archive, inspect, login};

mod events;
pub mod generate_key;
mod health;
mod history;
mod images;
mod import;
mod prune;
mod pull;
mod push;
mod rmi;
pub mod sign;
mod system;
mod tag;

/// Runs what the command line asked for.
pub async fn run(
    mut images: ImagesClient<Channel>,
    channel: Channel,
    action: Action,
) -> anyhow::Result<()> {
    let command = match action {
        Action::Top(command) => command,
        Action::ImageInspect(args) => return inspect::run(&mut images, args, true).await,
        Action::Prune(args) => return prune::run(&mut images, args).await,
    };
    match command {
        Command::Pull(args) => pull::run(&mut images, args).await,
        Command::Push(args) => push::run(&mut images, args).await,
        Command::GenerateSigstoreKey(args) => generate_key::run(&args),
        Command::Sign(args) => sign::run(&args).await,
        Command::Images(args) => images::run(&mut images, args).await,
        Command::Inspect(args) => inspect::run(&mut images, args, false).await,
        Command::History(args) => history::run(&mut images, args).await,
        Command::Tag(args) => tag::run(&mut images, args).await,
        Command::Rmi(args) => rmi::run(&mut images, args).await,
        Command::Events {
            filter,
            since,
            until,
            format,
        } => events::run(channel, filter, since, until, format).await,
        Command::Save(args) => {
            archive::save(&mut images, args.images, args.output.as_deref()).await
        }
        Command::Load(args) => archive::load(&mut images, args.input.as_deref(), args.quiet).await,
        Command::Import(args) => import::run(&mut images, args).await,
        Command::Login(args) => login::login(channel, args).await,
        Command::Logout(args) => login::logout(args),
        Command::Info => system::info(&mut images).await,
        Command::Health { service } => health::run(channel, service).await,
        Command::Peers => system::peers(&mut images).await,
        Command::System {
            command: SystemCommand::Df { verbose },
        } => system::df(&mut images, verbose).await,
        Command::Image { .. } => unreachable!("folded by Command::action"),
    }
}

/// The credentials a pull or push of `reference` sends: those given on
/// the command line, else those kept for its registry.
pub(crate) fn credentials(
    given: &crate::cli::AuthArgs,
    reference: &imaged_model::Reference,
) -> anyhow::Result<Option<RegistryAuth>> {
    match given.auth()? {
        Some(auth) => Ok(Some(auth)),
        None => login::kept_for(reference.domain()),
    }
}

/// `--platform os/arch[/variant]`.
pub(crate) fn platform(text: Option<&str>) -> anyhow::Result<Option<Platform>> {
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
