//! imagectl, the command line, against the real processes and registry:
//! every command, its output and its exit status.

use std::process::Output;

use imaged_common::config::Service;
use imaged_e2e::{Imaged, TestRegistry, bin_dir};

struct Cli<'a> {
    imaged: &'a Imaged,
}

impl Cli<'_> {
    async fn run(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(bin_dir().join("imagectl"))
            .arg("--host")
            .arg(format!(
                "unix://{}",
                self.imaged.socket(Service::Gateway).display()
            ))
            .args(args)
            .output()
            .await
            .expect("run imagectl")
    }

    /// Runs and expects success; answers stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "imagectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; answers stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(out.status.code(), Some(1), "imagectl {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_end_to_end() {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let cli = Cli { imaged: &imaged };
    let since = chrono_now();

    let info = cli.ok(&["info"]).await;
    assert!(info.contains("Storage Driver: "), "{info}");
    assert!(info.contains("Max Concurrent Downloads: 3"), "{info}");

    // pull: a line per layer state, the digest, the reference.
    let app = registry.fixtures().reference("fixtures/app:1.0");
    let pulled = cli.ok(&["pull", &app]).await;
    let short = |digest: &str| digest["sha256:".len().."sha256:".len() + 12].to_string();
    for layer in &catalog.app.layers {
        assert!(
            pulled.contains(&format!("{}: Pull complete", short(&layer.digest))),
            "{pulled}"
        );
    }
    assert!(
        pulled.contains(&format!("Digest: {}", catalog.app.manifest.digest)),
        "{pulled}"
    );
    assert!(pulled.trim_end().ends_with(&app), "{pulled}");

    // On a terminal (util-linux `script` gives it one): live bars per
    // layer and a total line with speed and ETA.
    let zstd = registry.fixtures().reference("fixtures/zstd:latest");
    let command = format!(
        "{} --host unix://{} pull {zstd}",
        bin_dir().join("imagectl").display(),
        imaged.socket(Service::Gateway).display()
    );
    let tty = tokio::process::Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("COLUMNS", "160")
        .output()
        .await
        .expect("run script");
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{screen}");
    assert!(screen.contains("Total"), "no aggregate line: {screen}");
    assert!(screen.contains("ETA"), "no ETA: {screen}");
    for layer in &catalog.zstd.layers {
        assert!(
            screen.contains(&short(&layer.digest)),
            "no bar for a layer: {screen}"
        );
    }
    assert!(
        screen.contains(&format!("Digest: {}", catalog.zstd.manifest.digest)),
        "{screen}"
    );
    cli.ok(&["rmi", &zstd]).await;

    // images: table, ids, json, filter.
    let table = cli.ok(&["images"]).await;
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(
        table.contains("1.0") && table.contains(&short(catalog.app.id())),
        "{table}"
    );
    let quiet = cli.ok(&["images", "-q"]).await;
    assert_eq!(quiet.trim(), short(catalog.app.id()));
    // json: one object a line, in the docker CLI's shape.
    let lines = cli.ok(&["images", "--format", "json"]).await;
    let row: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(row["ID"], short(catalog.app.id()));
    assert_eq!(row["Tag"], "1.0");
    // A Go template, and a repository argument.
    let custom = cli
        .ok(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.ID}}",
            app.rsplit_once(':').unwrap().0,
        ])
        .await;
    assert_eq!(custom.trim(), format!("{app} {}", short(catalog.app.id())));
    let id = cli
        .ok(&[
            "image",
            "inspect",
            "-f",
            "{{.Id}} {{index .Config.Labels \"com.example.tier\"}}",
            &app,
        ])
        .await;
    assert_eq!(id.trim(), format!("{} web", catalog.app.id()));
    let df = cli.ok(&["system", "df"]).await;
    assert!(df.starts_with("TYPE") && df.contains("Images"), "{df}");
    // Where the pulled layers came from: the registry, nothing else.
    let peers = cli.ok(&["peers"]).await;
    let row = |what: &str| {
        peers
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} row: {peers}"))
            .trim_start_matches(what)
            .trim()
            .to_string()
    };
    assert_ne!(row("pulled from the registry"), "0B", "{peers}");
    assert_eq!(row("pulled from fleet peers"), "0B", "{peers}");
    assert_eq!(row("served to other nodes"), "0B", "{peers}");
    let none = cli
        .ok(&["images", "-q", "--filter", "reference=nothing*"])
        .await;
    assert!(none.trim().is_empty(), "{none}");
    let bad = cli.fails(&["images", "--filter", "color=red"]).await;
    assert!(bad.contains("invalid filter 'color'"), "{bad}");

    // inspect and history.
    let inspect: serde_json::Value =
        serde_json::from_str(&cli.ok(&["inspect", &app]).await).unwrap();
    assert_eq!(inspect[0]["Id"], catalog.app.id());
    assert_eq!(inspect[0]["Config"]["Cmd"][0], "/app/run");
    // The docker CLI's words: `inspect` looks for any object.
    let missing = cli.fails(&["inspect", "no/such:image"]).await;
    assert!(
        missing.contains("Error: No such object: no/such:image"),
        "{missing}"
    );
    let missing = cli.fails(&["image", "inspect", "no/such:image"]).await;
    assert!(
        missing.contains("No such image: no/such:image"),
        "{missing}"
    );
    let history = cli.ok(&["history", &app]).await;
    assert!(history.starts_with("IMAGE"), "{history}");
    assert_eq!(history.lines().count(), 5, "{history}");

    // tag, push, rmi.
    let target = registry.fixtures().reference("pushed/cli:v1");
    cli.ok(&["tag", &app, &target]).await;
    let pushed = cli.ok(&["push", &target]).await;
    assert!(pushed.contains("v1: digest: sha256:"), "{pushed}");
    let pushed_digest = pushed
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    // As Docker: the push gave the image `name@digest`, which goes with the
    // repository's last tag.
    let removed = cli.ok(&["rmi", &target]).await;
    let name = target.rsplit_once(':').unwrap().0;
    assert_eq!(
        removed.trim(),
        format!("Untagged: {target}\nUntagged: {name}@{pushed_digest}")
    );
    let err = cli.fails(&["rmi", "no/such:image"]).await;
    assert!(err.contains("No such image"), "{err}");
    let removed = cli.ok(&["rmi", &app]).await;
    assert!(
        removed.contains(&format!("Deleted: {}", catalog.app.id())),
        "{removed}"
    );

    // image prune: an image left dangling by a moved tag goes.
    let multi = registry.fixtures().reference("fixtures/multi:latest");
    cli.ok(&["pull", "-q", "--platform", "linux/arm64/v8", &multi])
        .await;
    cli.ok(&["pull", "-q", &multi]).await;
    let dangling = catalog.multi.images[1].id();
    let listed = cli
        .ok(&["images", "-q", "--no-trunc", "--filter", "dangling=true"])
        .await;
    assert_eq!(listed.trim(), dangling);
    let pruned = cli.ok(&["image", "prune", "-f"]).await;
    assert!(pruned.starts_with("Deleted Images:"), "{pruned}");
    assert!(pruned.contains(&format!("deleted: {dangling}")), "{pruned}");
    assert!(!pruned.contains("Total reclaimed space: 0B"), "{pruned}");

    // events: replay since the start, until now.
    let until = chrono_now();
    let events = cli
        .ok(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "event=pull",
        ])
        .await;
    assert_eq!(events.lines().count(), 4, "{events}");
    assert!(
        events.lines().all(|l| l.contains(" image pull ")),
        "{events}"
    );
    let json = cli
        .ok(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--format",
            "json",
            "--filter",
            "event=push",
        ])
        .await;
    let event: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(event["Actor"]["ID"], target);

    // A gateway that isn't there: a clear error, non-zero.
    let out = tokio::process::Command::new(bin_dir().join("imagectl"))
        .args(["--host", "unix:///nonexistent/gateway.sock", "info"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to the gateway"));
}

fn chrono_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_on_every_socket_for_probes() {
    let imaged = Imaged::start().await.unwrap();
    let health = |service: Service, args: &[&str]| {
        let socket = imaged.socket(service);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::process::Command::new(bin_dir().join("imagectl"))
                .arg("--host")
                .arg(format!("unix://{}", socket.display()))
                .arg("health")
                .args(&args)
                .output()
                .await
                .expect("run imagectl")
        }
    };
    for service in [
        Service::Metadata,
        Service::Transfer,
        Service::Events,
        Service::Gateway,
    ] {
        let out = health(service, &[]).await;
        assert!(out.status.success(), "{service:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    }
    let out = health(Service::Gateway, &["imaged.v1.Images"]).await;
    assert!(out.status.success(), "{out:?}");
    let out = health(Service::Gateway, &["no.such.Service"]).await;
    assert!(!out.status.success(), "{out:?}");
}
