//! imagectl: Docker's image commands (`pull`, `images` / `image ls`,
//! `inspect` / `image inspect`, `history`, `tag`, `rmi`, `image prune`,
//! `events`, `info`, `system df`, `push`, `save`, `load`, `import`) over
//! the gateway's generated `imaged.v1` client, printing what the docker
//! CLI prints. Errors print as the docker CLI prints them and exit
//! non-zero.

mod archive;
mod cli;
mod commands;
mod connect;
mod credentials;
mod inspect;
mod local;
mod login;
mod output;
mod progress;
mod sign;
mod template;

use clap::Parser;
use imaged_api::v1::images_client::ImagesClient;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = cli::Cli::parse();
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

async fn run(cli: cli::Cli) -> anyhow::Result<()> {
    let action = cli.command.action();
    // Commands that need no gateway.
    match &action {
        cli::Action::Top(cli::Command::GenerateSigstoreKey(args)) => {
            return commands::generate_key::run(args);
        }
        cli::Action::Top(cli::Command::Sign(args)) => return commands::sign::run(args).await,
        _ => {}
    }
    let channel = connect::channel(
        &cli.host,
        cli.tls_ca.as_deref(),
        cli.tls_cert.as_deref().zip(cli.tls_key.as_deref()),
    )
    .await?;
    let images = ImagesClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    commands::run(images, channel, action).await
}
