//! `docker login` and `imagectl login` against a private (htpasswd)
//! registry on loopback: the docker CLI 28 through imaged's Engine API
//! (`POST /auth`), imagectl through `imaged.v1.Registries/Login`, both
//! keeping what they keep where the docker CLI keeps it, and pulls and
//! pushes then sending it. dockerd answers the same logins as the oracle.
//! Every server named is a loopback registry: nothing reaches Docker Hub.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use imaged_api::v1::SubscribeRequest;
use imaged_api::v1::events_client::EventsClient;
use imaged_common::config::Service;
use imaged_e2e::docker_cli::{DockerCli, run_with_input};
use imaged_e2e::dockerd::Dockerd;
use imaged_e2e::oracle::Ran;
use imaged_e2e::{Imaged, TestRegistry, bin_dir};
use imaged_fixtures::catalog;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-login-pw";

/// A private registry holding the catalog's app as `private/app:1` and
/// its base as `private/base:1`.
async fn private_registry() -> TestRegistry {
    let registry = TestRegistry::start_with_auth(USER, PASSWORD).await.unwrap();
    let catalog = catalog().unwrap();
    let fixtures = registry.fixtures_as(USER, PASSWORD);
    fixtures
        .push_image("private/app:1", &catalog.app)
        .await
        .unwrap();
    fixtures
        .push_image("private/base:1", &catalog.base)
        .await
        .unwrap();
    registry
}

/// The registry's `host:port`.
fn host(registry: &TestRegistry) -> String {
    registry
        .fixtures()
        .reference("x")
        .trim_end_matches("/x")
        .to_string()
}

/// `imagectl args…` against `imaged`, with `config` as its DOCKER_CONFIG
/// and `path` first on its PATH (credential helpers).
async fn imagectl(
    imaged: &Imaged,
    config: &Path,
    path: Option<&Path>,
    args: &[&str],
    input: Option<&[u8]>,
) -> Ran {
    let mut command = tokio::process::Command::new(bin_dir().join("imagectl"));
    command
        .arg("--host")
        .arg(format!(
            "unix://{}",
            imaged.socket(Service::Gateway).display()
        ))
        .args(args)
        .env("DOCKER_CONFIG", config);
    if let Some(path) = path {
        let inherited = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{inherited}", path.display()));
    }
    Ran::from(run_with_input(command, input).await.unwrap())
}

/// The config file's `auths` entry for `server`.
fn auths_entry(config: &Path, server: &str) -> Option<serde_json::Value> {
    let text = std::fs::read(config.join("config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&text).ok()?;
    value["auths"].get(server).cloned()
}

/// Asserts that `secret` appears in no process log and no event.
async fn never_logged(imaged: &Imaged, secret: &str) {
    assert!(!imaged.logs().contains(secret), "a log holds the password");
    let mut events = EventsClient::new(imaged.channel(Service::Gateway))
        .subscribe(SubscribeRequest {
            filters: vec![],
            since: "0".into(),
            // A second ahead: the events of this very second are in.
            until: (chrono::Utc::now().timestamp() + 1).to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Some(event) = tokio_stream::StreamExt::next(&mut events).await {
        let text = format!("{:?}", event.unwrap());
        assert!(
            !text.contains(secret),
            "an event holds the password: {text}"
        );
        seen += 1;
    }
    assert!(seen > 0, "the pulls made no events to look at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_cli_logs_in_through_imaged_as_through_dockerd() {
    let registry = private_registry().await;
    let server = host(&registry);
    let imaged = Imaged::start().await.unwrap();
    let dockerd = Dockerd::start().await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let cli = DockerCli::new(
        imaged
            .socket(Service::Gateway)
            .with_file_name("docker.sock"),
        config.path().to_path_buf(),
    );
    let oracle = dockerd.cli();
    let login = |password: &str| format!("{password}\n").into_bytes();
    let args = ["login", server.as_str(), "-u", USER, "--password-stdin"];

    // A wrong password: Docker's 401 and words, nothing kept.
    let wrong = login("wrong");
    let imaged_said = Ran::from(cli.docker_with_input(&args, Some(&wrong)).await.unwrap());
    let docker_said = Ran::from(oracle.docker_with_input(&args, Some(&wrong)).await.unwrap());
    assert_eq!(docker_said.code, Some(1), "{docker_said:?}");
    assert_eq!(
        docker_said.stderr.trim(),
        format!(
            "Error response from daemon: login attempt to http://{server}/v2/ failed with status: 401 Unauthorized"
        )
    );
    assert_eq!(imaged_said, docker_said);
    assert_eq!(auths_entry(config.path(), &server), None);

    // The right one: "Login Succeeded", kept by the CLI (mode 0600).
    let right = login(PASSWORD);
    let imaged_said = Ran::from(cli.docker_with_input(&args, Some(&right)).await.unwrap());
    let docker_said = Ran::from(oracle.docker_with_input(&args, Some(&right)).await.unwrap());
    assert_eq!(docker_said.stdout, "Login Succeeded\n", "{docker_said:?}");
    assert_eq!(
        (&imaged_said.stdout, imaged_said.code),
        (&docker_said.stdout, docker_said.code)
    );
    assert!(auths_entry(config.path(), &server).is_some());
    let mode = std::fs::metadata(config.path().join("config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Then a private pull and a push with no hand-written config.
    let app = format!("{server}/private/app:1");
    let pulled = cli.ok(&["pull", &app]).await.unwrap();
    assert!(
        pulled.contains("Status: Downloaded newer image"),
        "{pulled}"
    );
    let pushed = format!("{server}/private/pushed:1");
    cli.ok(&["tag", &app, &pushed]).await.unwrap();
    let said = cli.ok(&["push", &pushed]).await.unwrap();
    assert!(said.contains("1: digest: sha256:"), "{said}");
    never_logged(&imaged, PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_logs_in_then_pulls_and_pushes_with_no_credentials_given() {
    let registry = private_registry().await;
    let server = host(&registry);
    let imaged = Imaged::start().await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>, input: Option<Vec<u8>>| {
        let imaged = &imaged;
        let config = config.path().to_path_buf();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            imagectl(imaged, &config, None, &args, input.as_deref()).await
        }
    };
    let app = format!("{server}/private/app:1");
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // Nothing kept yet: the registry refuses an anonymous pull.
    let refused = run(args(&["pull", &app]), None).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");

    let wrong = run(args(&["login", &server, "-u", USER, "-p", "wrong"]), None).await;
    assert_eq!(wrong.code, Some(1));
    assert_eq!(
        wrong.stderr,
        format!(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n\
             Error response from daemon: login attempt to http://{server}/v2/ failed with status: 401 Unauthorized\n"
        )
    );
    let login = args(&["login", &server, "-u", USER, "--password-stdin"]);
    let ok = run(login, Some(format!("{PASSWORD}\n").into_bytes())).await;
    assert_eq!(
        (ok.code, ok.stdout.as_str()),
        (Some(0), "Login Succeeded\n"),
        "{ok:?}"
    );
    assert!(ok.stderr.contains("stored unencrypted"), "{ok:?}");
    let entry = auths_entry(config.path(), &server).unwrap();
    assert!(
        entry["auth"].as_str().is_some_and(|a| !a.is_empty()),
        "{entry}"
    );

    // Logging in again uses what is kept.
    let again = run(args(&["login", &server]), None).await;
    assert_eq!(again.stdout, "Login Succeeded\n", "{again:?}");

    // pull, pull -a and push, with no -u.
    let pulled = run(args(&["pull", &app]), None).await;
    assert_eq!(pulled.code, Some(0), "{pulled:?}");
    let all = run(
        args(&["pull", "-a", &format!("{server}/private/base")]),
        None,
    )
    .await;
    assert_eq!(all.code, Some(0), "{all:?}");
    let pushed = format!("{server}/private/pushed:1");
    run(args(&["tag", &app, &pushed]), None).await;
    let push = run(args(&["push", &pushed]), None).await;
    assert_eq!(push.code, Some(0), "{push:?}");

    // logout forgets; the next pull is anonymous again, and refused.
    let out = run(args(&["logout", &server]), None).await;
    assert_eq!(
        out.stdout,
        format!("Removing login credentials for {server}\n")
    );
    assert_eq!(auths_entry(config.path(), &server), None);
    let refused = run(args(&["pull", &format!("{server}/private/base:1")]), None).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    never_logged(&imaged, PASSWORD).await;
}

/// A credential helper in bash: `store` keeps its input in `store.json`
/// beside it, `get` answers it, `erase` removes it, as
/// docker-credential-helpers do.
fn helper(dir: &Path, name: &str, body: &str) {
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, format!("#!/bin/bash\nset -e\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_helper_keeps_what_login_stores() {
    let registry = private_registry().await;
    let server = host(&registry);
    let imaged = Imaged::start().await.unwrap();
    let config = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let kept = bin.path().join("store.json");
    helper(
        bin.path(),
        "test",
        &format!(
            r#"case "$1" in
  store) cat > {kept} ;;
  get) server=$(cat); if [ -f {kept} ]; then cat {kept}; else echo "credentials not found in native keychain"; exit 1; fi ;;
  erase) rm -f {kept} ;;
esac"#,
            kept = kept.display()
        ),
    );
    helper(
        bin.path(),
        "broken",
        "echo 'the keychain is locked' >&2\nexit 1",
    );
    std::fs::write(
        config.path().join("config.json"),
        r#"{"credsStore": "test"}"#,
    )
    .unwrap();
    let run = |args: &[&str], input: Option<&[u8]>| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let input = input.map(<[u8]>::to_vec);
        let (imaged, config, bin) = (&imaged, config.path(), bin.path());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            imagectl(imaged, config, Some(bin), &args, input.as_deref()).await
        }
    };

    let login = ["login", server.as_str(), "-u", USER, "--password-stdin"];
    let ok = run(&login, Some(format!("{PASSWORD}\n").as_bytes())).await;
    assert_eq!(ok.stdout, "Login Succeeded\n", "{ok:?}");
    assert!(!ok.stderr.contains("unencrypted"), "{ok:?}");
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(stored["ServerURL"], server.as_str());
    assert_eq!(stored["Username"], USER);
    assert_eq!(stored["Secret"], PASSWORD);
    // The file names the server and keeps no secret of it.
    assert_eq!(
        auths_entry(config.path(), &server),
        Some(serde_json::json!({}))
    );

    let app = format!("{server}/private/app:1");
    let pulled = run(&["pull", &app], None).await;
    assert_eq!(pulled.code, Some(0), "{pulled:?}");

    // A helper that fails says so: no anonymous pull instead.
    std::fs::write(
        config.path().join("config.json"),
        format!(r#"{{"credsStore": "test", "credHelpers": {{"{server}": "broken"}}}}"#),
    )
    .unwrap();
    let before = registry.requests().len();
    let failed = run(&["pull", &format!("{server}/private/base:1")], None).await;
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(
        failed.stderr.contains("the keychain is locked"),
        "{failed:?}"
    );
    assert_eq!(registry.requests().len(), before, "the registry was asked");

    // logout erases it from the helper.
    std::fs::write(
        config.path().join("config.json"),
        r#"{"credsStore": "test"}"#,
    )
    .unwrap();
    let out = run(&["logout", &server], None).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!kept.exists());
    never_logged(&imaged, PASSWORD).await;
}
