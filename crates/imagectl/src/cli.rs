//! The command line: Docker's image commands, their flags and the
//! `docker image …` forms of each, parsed by clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use imaged_api::v1::RegistryAuth;

/// The default gateway socket: where `make run` puts it.
const DEFAULT_HOST: &str = "unix://./data/run/gateway.sock";

#[derive(Parser, Debug)]
#[command(
    name = "imagectl",
    version,
    about = "Docker's image commands for imaged"
)]
pub struct Cli {
    /// The gateway: unix:///path/gateway.sock, tcp://IP:PORT (no TLS) or
    /// https://HOST:PORT.
    #[arg(long, short = 'H', env = "IMAGED_HOST", default_value = DEFAULT_HOST, global = true)]
    pub host: String,
    /// CA certificate (PEM) to trust for https:// hosts.
    #[arg(long, env = "IMAGED_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for https:// hosts that ask for one.
    #[arg(long, env = "IMAGED_TLS_CERT", global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "IMAGED_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Upload an image to a registry.
    Push(PushArgs),
    /// Make a sigstore key pair for `push --sign-by-sigstore-private-key`.
    GenerateSigstoreKey(GenerateKeyArgs),
    /// Sign an image already in a registry, where registries.d says.
    Sign(SignArgs),
    /// List images.
    Images(ListArgs),
    /// Show records (images) as JSON, or through --format.
    Inspect(InspectArgs),
    /// Show the history of an image.
    History(HistoryArgs),
    /// Create a tag TARGET that refers to SOURCE.
    Tag(TagArgs),
    /// Remove images.
    Rmi(RmiArgs),
    /// Image commands as Docker nests them under `image`.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Show image events, live or replayed.
    Events {
        /// key=value: type, event, image, label (others are ignored, as
        /// Docker ignores them). Repeatable.
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
    Save(SaveArgs),
    /// Load images from a tar archive (`docker load`).
    Load(LoadArgs),
    /// Make an image from a root filesystem tar (`docker import`).
    Import(ImportArgs),
    /// Log in to a registry: the credentials are checked, then kept where
    /// the docker CLI keeps them (config.json or its credential helper).
    Login(LoginArgs),
    /// Forget the credentials kept for a registry.
    Logout(LogoutArgs),
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
    /// Where this node's pulled layer bytes came from (the registry, its
    /// mirrors, fleet peers) and what it served to other nodes, since
    /// imaged-transfer started.
    Peers,
    /// Docker's `system` commands that concern images.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
}

/// `docker image …`: the same commands under their nested names.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// List images.
    #[command(alias = "list")]
    Ls(ListArgs),
    /// Show images' records.
    Inspect(InspectArgs),
    /// Remove unused images.
    Prune(PruneArgs),
    /// Remove images.
    #[command(alias = "remove")]
    Rm(RmiArgs),
    /// Create a tag TARGET that refers to SOURCE.
    Tag(TagArgs),
    /// Show the history of an image.
    History(HistoryArgs),
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Upload an image to a registry.
    Push(PushArgs),
    /// Write images to a tar archive.
    Save(SaveArgs),
    /// Load images from a tar archive.
    Load(LoadArgs),
    /// Make an image from a root filesystem tar.
    Import(ImportArgs),
}

/// What a command line asks for, with the `image …` forms folded into
/// the top-level ones (`image inspect` stays apart: it looks for images
/// only, `inspect` for any object).
pub enum Action {
    Top(Command),
    ImageInspect(InspectArgs),
    Prune(PruneArgs),
}

impl Command {
    pub fn action(self) -> Action {
        let Command::Image { command } = self else {
            return Action::Top(self);
        };
        Action::Top(match command {
            ImageCommand::Ls(args) => Command::Images(args),
            ImageCommand::Inspect(args) => return Action::ImageInspect(args),
            ImageCommand::Prune(args) => return Action::Prune(args),
            ImageCommand::Rm(args) => Command::Rmi(args),
            ImageCommand::Tag(args) => Command::Tag(args),
            ImageCommand::History(args) => Command::History(args),
            ImageCommand::Pull(args) => Command::Pull(args),
            ImageCommand::Push(args) => Command::Push(args),
            ImageCommand::Save(args) => Command::Save(args),
            ImageCommand::Load(args) => Command::Load(args),
            ImageCommand::Import(args) => Command::Import(args),
        })
    }
}

/// `docker pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    pub reference: String,
    /// Pull every tag of the repository.
    #[arg(long = "all-tags", short = 'a')]
    pub all_tags: bool,
    /// os/arch[/variant] to pick from a multi-platform image.
    #[arg(long)]
    pub platform: Option<String>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Print nothing but the image's reference.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `docker push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    pub reference: String,
    /// Push every tag of the repository.
    #[arg(long = "all-tags", short = 'a')]
    pub all_tags: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// How `push` and `sign` sign, as skopeo spells it.
#[derive(Args, Debug, Default)]
pub struct SigningArgs {
    /// Sign with this gpg key (simple signing, as skopeo's --sign-by),
    /// into the lookaside registries.d names.
    #[arg(long = "sign-by", value_name = "FINGERPRINT")]
    pub sign_by: Option<String>,
    /// Sign with this sigstore private key (as skopeo's
    /// --sign-by-sigstore-private-key), attached in the registry.
    #[arg(
        long = "sign-by-sigstore-private-key",
        value_name = "PATH",
        conflicts_with = "sign_by"
    )]
    pub sign_by_sigstore_private_key: Option<std::path::PathBuf>,
    /// The sigstore key's passphrase: the first line of this file (else
    /// asked on the terminal).
    #[arg(
        long = "sign-passphrase-file",
        value_name = "FILE",
        requires = "sign_by_sigstore_private_key"
    )]
    pub sign_passphrase_file: Option<std::path::PathBuf>,
    /// The registries.d directory saying where signatures go (default:
    /// /etc/containers/registries.d when it exists).
    #[arg(long = "registries-d", value_name = "DIR")]
    pub registries_d: Option<std::path::PathBuf>,
}

/// `imagectl sign`: sign an image already in a registry (as `cosign
/// sign`, or `skopeo copy --sign-by` onto itself).
#[derive(Args, Debug)]
pub struct SignArgs {
    /// host/repo:tag or host/repo@digest; the signature claims it.
    pub reference: String,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// `skopeo generate-sigstore-key`: a key pair for
/// `push --sign-by-sigstore-private-key`.
#[derive(Args, Debug)]
pub struct GenerateKeyArgs {
    /// Write PREFIX.private (sealed with the passphrase) and PREFIX.pub.
    #[arg(long = "output-prefix", value_name = "PREFIX")]
    pub output_prefix: std::path::PathBuf,
    /// The passphrase: the first line of this file (else asked on the
    /// terminal).
    #[arg(long = "passphrase-file", value_name = "FILE")]
    pub passphrase_file: Option<std::path::PathBuf>,
}

/// `docker images` / `docker image ls`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this repository, or REPOSITORY:TAG (a glob, as the filter).
    pub reference: Option<String>,
    /// Show intermediate images too.
    #[arg(long, short)]
    pub all: bool,
    /// Only show image IDs.
    #[arg(long, short)]
    pub quiet: bool,
    /// key=value, as `docker images --filter`. Repeatable.
    #[arg(long, short)]
    pub filter: Vec<String>,
    /// `table` (default), `json` (one object a line) or a Go template
    /// (`{{.Repository}}:{{.Tag}}`, `table {{.ID}}\t{{.Size}}`).
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Show digests.
    #[arg(long)]
    pub digests: bool,
    /// Don't truncate IDs.
    #[arg(long)]
    pub no_trunc: bool,
}

/// `docker inspect` / `docker image inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
    /// A Go template applied to each record (`{{.Id}}`,
    /// `{{index .RepoDigests 0}}`, `{{json .Config}}`).
    #[arg(long, short)]
    pub format: Option<String>,
}

/// `docker history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    pub image: String,
    /// Don't truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Only show image IDs.
    #[arg(long, short)]
    pub quiet: bool,
    /// Sizes and dates in human-readable form (`--human=false`: bytes
    /// and RFC 3339 times).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub human: bool,
    /// `table` (default), `json` or a Go template (`{{.ID}} {{.Size}}`).
    #[arg(long, default_value = "table")]
    pub format: String,
}

/// `docker tag`.
#[derive(Args, Debug)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
}

/// `docker rmi` / `docker image rm`.
#[derive(Args, Debug)]
pub struct RmiArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove even if referenced or used by a stopped container.
    #[arg(long, short)]
    pub force: bool,
    /// Do not delete untagged parents.
    #[arg(long)]
    pub no_prune: bool,
}

/// `docker image prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove all unused images, not just dangling ones.
    #[arg(long, short)]
    pub all: bool,
    /// key=value: until, label, label!. Repeatable.
    #[arg(long)]
    pub filter: Vec<String>,
    /// Do not prompt for confirmation.
    #[arg(long, short)]
    pub force: bool,
}

/// `docker save`.
#[derive(Args, Debug)]
pub struct SaveArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Write to a file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// `docker load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from a file instead of standard input.
    #[arg(long, short)]
    pub input: Option<PathBuf>,
    /// Print only the final lines.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `docker import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The tar file, or `-` for standard input.
    pub file: String,
    /// name[:tag] for the new image.
    pub reference: Option<String>,
    /// A Dockerfile instruction to apply (CMD, ENV, LABEL, …). Repeatable.
    #[arg(long, short)]
    pub change: Vec<String>,
    /// The image comment.
    #[arg(long, short)]
    pub message: Option<String>,
    /// os/arch[/variant] of the image.
    #[arg(long)]
    pub platform: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum SystemCommand {
    /// Show the space images take.
    Df {
        /// Show each image.
        #[arg(long, short)]
        verbose: bool,
    },
}

/// `docker login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The registry (`host[:port]`); Docker Hub when left out.
    pub server: Option<String>,
    /// Registry user name.
    #[arg(long, short)]
    pub username: Option<String>,
    /// Password (insecure on a command line: prefer --password-stdin).
    #[arg(long, short)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `docker logout`.
#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry (`host[:port]`); Docker Hub when left out.
    pub server: Option<String>,
}

/// Registry credentials for pull and push: when none is given, those
/// `login` kept for the registry are used.
#[derive(Args, Debug)]
pub struct AuthArgs {
    /// Registry user name.
    #[arg(long, short)]
    pub username: Option<String>,
    /// Registry password (prefer IMAGECTL_PASSWORD or --password-stdin).
    #[arg(long, short, env = "IMAGECTL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
}

impl AuthArgs {
    /// The credentials given, if any.
    pub fn auth(&self) -> anyhow::Result<Option<RegistryAuth>> {
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
