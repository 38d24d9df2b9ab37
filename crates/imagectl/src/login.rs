//! `docker login` and `docker logout`: the credentials are checked by
//! imaged (`imaged.v1.Registries/Login`, which asks the registry and
//! keeps nothing), then kept where the docker CLI keeps them
//! ([`crate::credentials`]), so pulls and pushes of either find them.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use imaged_api::v1::registries_client::RegistriesClient;
use imaged_api::v1::{LoginRequest, RegistryAuth};
use tonic::transport::Channel;

use crate::cli::{LoginArgs, LogoutArgs};
use crate::credentials::{self, Credentials, Store};

/// `imagectl login [SERVER]`.
pub async fn login(channel: Channel, args: LoginArgs) -> anyhow::Result<()> {
    if args.password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        if args.password_stdin {
            bail!("--password and --password-stdin are mutually exclusive");
        }
    }
    if args.password_stdin && args.username.is_none() {
        bail!("Must provide --username with --password-stdin");
    }
    let server = key(args.server.as_deref());
    let mut store = Store::open()?;
    let mut registries = RegistriesClient::new(channel);

    // No credentials given: those kept are tried first, as the docker
    // CLI does.
    if args.username.is_none()
        && args.password.is_none()
        && let Some(kept) = store.get(&server)?
    {
        let who = match &kept {
            Credentials::Password { username, .. } => format!(" [Username: {username}]"),
            Credentials::IdentityToken(_) => String::new(),
        };
        eprintln!(
            "Authenticating with existing credentials...{who}\n\n Info -> To login with a different account, run 'docker logout' followed by 'docker login'\n\n"
        );
        let checked = registries
            .login(LoginRequest {
                server: server.clone(),
                auth: Some(wire(&kept)),
            })
            .await;
        if checked.is_ok() {
            println!("Login Succeeded");
            return Ok(());
        }
    }

    let username = match args.username {
        Some(username) => username,
        None => prompt("Username: ", false)?,
    };
    let password = match (args.password, args.password_stdin) {
        (Some(password), _) => password,
        (None, true) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
        (None, false) => prompt("Password: ", true)?,
    };
    if username.is_empty() {
        bail!("Error: Non-null Username Required");
    }
    if password.is_empty() {
        bail!("Error: Password Required");
    }
    let given = Credentials::Password { username, password };
    let answer = registries
        .login(LoginRequest {
            server: server.clone(),
            auth: Some(wire(&given)),
        })
        .await?
        .into_inner();
    // A refresh token is kept instead of the password when one was given.
    let kept = if answer.identity_token.is_empty() {
        given
    } else {
        Credentials::IdentityToken(answer.identity_token)
    };
    store.store(&server, &kept)?;
    if store.in_file(&server) {
        eprintln!(
            "\nWARNING! Your credentials are stored unencrypted in '{}'.\nConfigure a credential helper to remove this warning. See\nhttps://docs.docker.com/go/credential-store/\n",
            store.path().display()
        );
    }
    println!("{}", answer.status);
    Ok(())
}

/// `imagectl logout [SERVER]`.
pub fn logout(args: LogoutArgs) -> anyhow::Result<()> {
    let server = key(args.server.as_deref());
    let mut store = Store::open()?;
    // The docker CLI 28 says so whether or not any were kept.
    println!("Removing login credentials for {server}");
    store.erase(&server)?;
    Ok(())
}

/// The credentials kept for the registry `domain` a reference names, for
/// a pull or push given none: `None` when nothing is kept; an error when
/// the helper that keeps them fails (never a silent anonymous pull).
pub fn kept_for(domain: &str) -> anyhow::Result<Option<RegistryAuth>> {
    let store = Store::open()?;
    Ok(store
        .get(&credentials::server_key(domain))?
        .map(|c| wire(&c)))
}

/// Credentials as the API takes them.
fn wire(credentials: &Credentials) -> RegistryAuth {
    match credentials {
        Credentials::Password { username, password } => RegistryAuth {
            username: username.clone(),
            password: password.clone(),
            ..Default::default()
        },
        Credentials::IdentityToken(token) => RegistryAuth {
            identity_token: token.clone(),
            ..Default::default()
        },
    }
}

/// The key a server's credentials are kept under: Docker Hub's for none
/// or for its index; else the host, without scheme or path.
fn key(server: Option<&str>) -> String {
    let server = server.unwrap_or(credentials::DOCKER_HUB).trim();
    credentials::server_key(imaged_model::reference::server_hostname(server))
}

/// Asks on the terminal; the password without echo. Refused without a
/// terminal, as the docker CLI refuses.
pub(crate) fn prompt(question: &str, secret: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("Error: Cannot perform an interactive login from a non TTY device");
    }
    print!("{question}");
    std::io::stdout().flush()?;
    let _quiet = secret.then(NoEcho::new).flatten();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if secret {
        println!();
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The terminal's echo turned off while it lives. Written here because
/// the one crate for it (rpassword) is not among the project's
/// dependencies, and it is a dozen lines of termios.
struct NoEcho(libc::termios);

impl NoEcho {
    fn new() -> Option<NoEcho> {
        // SAFETY: tcgetattr/tcsetattr on standard input with a termios
        // this function owns; failures leave the terminal as it was.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut term) != 0 {
                return None;
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &term) != 0 {
                return None;
            }
            Some(NoEcho(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        // SAFETY: restores the termios saved from the same descriptor.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}
