//! The Docker Engine API on imaged's `run/docker.sock`, driven by clients
//! nobody here wrote: the docker CLI (28.x, installed on the machine) and
//! docker-py (PyPI `docker`, which `make test` installs). Every image
//! command of the CLI runs against the four real processes and a real
//! registry; what it prints is checked against what imaged's own gRPC API
//! says about the same images.

use std::time::{SystemTime, UNIX_EPOCH};

use imaged_api::v1::*;
use imaged_e2e::docker_cli::DockerCli;
use imaged_e2e::{Imaged, TestRegistry};
use imaged_fixtures::{Catalog, catalog};
use imaged_fixtures::{Compression, LayerBuilder};

/// imaged and a registry holding the fixture catalog.
struct Setup {
    imaged: Imaged,
    registry: TestRegistry,
    cli: DockerCli,
    _catalog: Catalog,
}

async fn setup() -> Setup {
    let registry = TestRegistry::start().await.unwrap();
    let catalog = catalog().unwrap();
    catalog.push_all(&registry.fixtures()).await.unwrap();
    let imaged = Imaged::start().await.unwrap();
    let cli = imaged.docker_cli();
    Setup {
        imaged,
        registry,
        cli,
        _catalog: catalog,
    }
}

impl Setup {
    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host)
    }

    /// Runs the CLI, which must succeed; answers its standard output.
    async fn ok(&self, args: &[&str]) -> String {
        match self.cli.ok(args).await {
            Ok(out) => out,
            Err(err) => panic!("{err:#}\n--- imaged logs ---\n{}", self.imaged.logs()),
        }
    }

    /// Runs the CLI, which must fail; answers its standard error.
    async fn fails(&self, args: &[&str]) -> String {
        let output = self.cli.docker(args).await.unwrap();
        assert!(
            !output.status.success(),
            "docker {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// `docker save image | docker rmi image | docker load`, through
    /// pipes; answers the saved archive and load's output.
    async fn save_remove_load(&self, image: &str) -> (Vec<u8>, String) {
        let saved = self.cli.docker(&["save", image]).await.unwrap();
        assert!(saved.status.success(), "{:?}", saved.stderr);
        self.ok(&["rmi", image]).await;
        let loaded = self
            .cli
            .docker_with_input(&["load"], Some(&saved.stdout))
            .await
            .unwrap();
        assert!(loaded.status.success(), "{loaded:?}");
        let said = String::from_utf8_lossy(&loaded.stdout).into_owned();
        (saved.stdout, said)
    }

    async fn inspect(&self, image: &str) -> ImageInspect {
        self.imaged
            .images()
            .inspect_image(InspectImageRequest {
                image: image.to_string(),
                platform: None,
            })
            .await
            .unwrap()
            .into_inner()
    }
}

fn now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_negotiates_and_refuses_what_is_not_images() {
    let s = setup().await;
    assert_eq!(
        s.ok(&["version", "--format", "{{.Server.APIVersion}}"])
            .await
            .trim(),
        "1.50"
    );
    // An older client is served at its own version.
    let old = s
        .cli
        .docker(&["version", "--format", "{{.Client.APIVersion}}"])
        .await
        .unwrap();
    assert!(old.status.success());
    let mut older = tokio::process::Command::new("docker");
    older
        .args(["images", "-q"])
        .env("DOCKER_HOST", s.cli.host())
        .env("DOCKER_API_VERSION", "1.41");
    assert!(older.output().await.unwrap().status.success());
    older.env("DOCKER_API_VERSION", "1.40");
    let refused = older.output().await.unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("too old"),
        "{refused:?}"
    );

    let info = s
        .ok(&["info", "--format", "{{.Images}} {{.Driver}} {{.OSType}}"])
        .await;
    assert_eq!(info.trim(), "0 overlay2 linux");
    // The whole `docker info` renders.
    s.ok(&["info"]).await;

    let ps = s.fails(&["ps"]).await;
    assert!(ps.contains("imaged serves images only"), "{ps}");
    let volumes = s.fails(&["volume", "ls"]).await;
    assert!(volumes.contains("imaged serves images only"), "{volumes}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_pulls_lists_inspects_tags_and_removes() {
    let s = setup().await;
    let since = now();
    let app = s.reference("fixtures/app:1.0");

    let pulled = s.ok(&["pull", &app]).await;
    assert!(pulled.contains("Pull complete"), "{pulled}");
    assert!(pulled.contains("Digest: sha256:"), "{pulled}");
    assert!(
        pulled.contains(&format!("Status: Downloaded newer image for {app}")),
        "{pulled}"
    );
    assert_eq!(pulled.lines().last(), Some(app.as_str()), "{pulled}");
    // On a terminal the CLI draws its own bars from the progress details.
    let many = s.reference("fixtures/many-layers:latest");
    let on_tty = tokio::process::Command::new("script")
        .args([
            "-qec",
            &format!("stty cols 200; docker pull {many}"),
            "/dev/null",
        ])
        .env("DOCKER_HOST", s.cli.host())
        .env("DOCKER_CONFIG", s.imaged.root().join("docker-config"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let drawn = String::from_utf8_lossy(&on_tty.stdout);
    assert!(on_tty.status.success(), "{on_tty:?}");
    assert!(drawn.contains(">]"), "no progress bar drawn: {drawn}");
    s.ok(&["rmi", &many]).await;
    let record = s.inspect(&app).await;

    // `docker images`, with digests, JSON rows and filters.
    let rows = s
        .ok(&[
            "images",
            "--digests",
            "--no-trunc",
            "--format",
            "{{json .}}",
        ])
        .await;
    let rows: Vec<serde_json::Value> = rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["ID"], record.id);
    assert_eq!(rows[0]["Repository"], s.reference("fixtures/app"));
    assert_eq!(rows[0]["Tag"], "1.0");
    let digest = record.repo_digests[0].split_once('@').unwrap().1;
    assert_eq!(rows[0]["Digest"], digest);
    let filtered = s
        .ok(&["images", "-q", "--filter", "reference=*/fixtures/base*"])
        .await;
    assert_eq!(filtered.trim(), "");
    let filtered = s.ok(&["images", "-q", "--filter", "dangling=false"]).await;
    assert_eq!(filtered.trim(), &record.id[7..19]);

    // `docker image inspect`, through --format.
    let inspected = s
        .ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}|{{json .RepoTags}}|{{json .Config.Labels}}|{{.Os}}/{{.Architecture}}|{{.Size}}|{{json .RootFS.Layers}}",
            &app,
        ])
        .await;
    let root_fs = record.root_fs.clone().unwrap();
    let labels: serde_json::Value = serde_json::from_slice::<serde_json::Value>(
        &record.config_json,
    )
    .unwrap()["config"]["Labels"]
        .clone();
    assert_eq!(
        inspected.trim(),
        format!(
            "{}|{}|{}|{}/{}|{}|{}",
            record.id,
            serde_json::to_string(&record.repo_tags).unwrap(),
            serde_json::to_string(&labels).unwrap(),
            record.os,
            record.architecture,
            record.size,
            serde_json::to_string(&root_fs.layers).unwrap(),
        )
    );
    // The raw record parses as Docker's.
    let raw: serde_json::Value =
        serde_json::from_str(&s.ok(&["image", "inspect", &app]).await).unwrap();
    assert_eq!(raw[0]["Metadata"]["LastTagTime"], record.last_tag_time);

    // `docker history`: a row per step, newest first, as imaged's.
    let history = s
        .ok(&[
            "history",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Size}}",
            &app,
        ])
        .await;
    let steps = s
        .imaged
        .images()
        .image_history(ImageHistoryRequest {
            image: app.clone(),
            platform: None,
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(history.lines().count(), steps.len(), "{history}");
    assert!(history.lines().next().unwrap().starts_with(&record.id));

    // tag, then rmi of each name: Docker's lines.
    s.ok(&["tag", &app, "myapp:v1"]).await;
    assert_eq!(s.inspect("myapp:v1").await.id, record.id);
    let untagged = s.ok(&["rmi", "myapp:v1"]).await;
    assert_eq!(untagged.trim(), "Untagged: myapp:v1");
    let missing = s.fails(&["rmi", "myapp:v1"]).await;
    assert!(
        missing.contains("Error response from daemon: No such image: myapp:v1"),
        "{missing}"
    );
    let removed = s.ok(&["rmi", &app]).await;
    assert!(removed.contains(&format!("Untagged: {app}")), "{removed}");
    assert!(
        removed.contains(&format!("Deleted: {}", record.id)),
        "{removed}"
    );
    assert_eq!(s.ok(&["images", "-q"]).await.trim(), "");

    // The events those operations sent, as `docker events` prints them.
    let until = now();
    let events = s
        .ok(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--format",
            "{{.Type}} {{.Action}} {{.Actor.ID}}",
        ])
        .await;
    let events: Vec<&str> = events.lines().collect();
    for expected in [
        format!("image pull {app}"),
        format!("image tag {}", record.id),
        format!("image untag {}", record.id),
        format!("image delete {}", record.id),
    ] {
        assert!(
            events.contains(&expected.as_str()),
            "{expected} in {events:?}"
        );
    }
    let filtered = s
        .ok(&[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "event=tag",
            "--format",
            "{{.Action}}",
        ])
        .await;
    assert_eq!(filtered.trim(), "tag");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_pulls_platforms_and_all_tags() {
    let s = setup().await;
    let multi = s.reference("fixtures/multi:latest");
    s.ok(&["pull", "--platform", "linux/arm64", &multi]).await;
    assert_eq!(
        s.ok(&["image", "inspect", "--format", "{{.Architecture}}", &multi])
            .await
            .trim(),
        "arm64"
    );
    // An unknown tag: Docker's error, exit 1, nothing recorded.
    let unknown = s.fails(&["pull", &s.reference("fixtures/base:nope")]).await;
    assert!(unknown.contains("Error response from daemon"), "{unknown}");

    // -a: every tag of the repository.
    let base = s.reference("fixtures/base");
    let tagged = s.reference("fixtures/base:second");
    s.ok(&["pull", &format!("{base}:latest")]).await;
    s.ok(&["tag", &format!("{base}:latest"), &tagged]).await;
    s.ok(&["push", &tagged]).await;
    s.ok(&["rmi", &format!("{base}:latest"), &tagged]).await;
    let all = s.ok(&["pull", "-a", &base]).await;
    assert!(
        all.contains(&format!("Downloaded newer image for {base}")),
        "{all}"
    );
    let tags = s.ok(&["images", &base, "--format", "{{.Tag}}"]).await;
    let mut tags: Vec<&str> = tags.lines().collect();
    tags.sort();
    assert_eq!(tags, ["latest", "second"]);

    // prune -a removes what no container uses: everything here.
    let pruned = s.ok(&["image", "prune", "-a", "-f"]).await;
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert!(pruned.contains("deleted: sha256:"), "{pruned}");
    assert_eq!(s.ok(&["images", "-q"]).await.trim(), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_saves_loads_imports_pushes_and_counts() {
    let s = setup().await;
    let app = s.reference("fixtures/app:1.0");
    s.ok(&["pull", &app]).await;
    let id = s.inspect(&app).await.id;

    // save | load, through pipes.
    let (saved, loaded) = s.save_remove_load(&app).await;
    assert!(saved.len() > 1024);
    assert_eq!(loaded.trim(), format!("Loaded image: {app}"));
    assert_eq!(s.inspect(&app).await.id, id);
    let quiet = s
        .cli
        .docker_with_input(&["load", "-q"], Some(&saved))
        .await
        .unwrap();
    assert!(quiet.status.success(), "{quiet:?}");
    // A broken archive: Docker's error, exit 1.
    let broken = s
        .cli
        .docker_with_input(&["load"], Some(b"not a tar at all"))
        .await
        .unwrap();
    assert!(!broken.status.success(), "{broken:?}");

    // import with --change and a message.
    let rootfs = LayerBuilder::new()
        .dir("bin")
        .file("bin/hello", b"hello\n")
        .build(Compression::None)
        .unwrap();
    let imported = s
        .cli
        .docker_with_input(
            &[
                "import",
                "--change",
                "CMD [\"/bin/hello\"]",
                "--change",
                "ENV A=b",
                "-m",
                "from a pipe",
                "-",
                "imported:1",
            ],
            Some(&rootfs.data),
        )
        .await
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    let imported_id = String::from_utf8_lossy(&imported.stdout).trim().to_string();
    let record = s.inspect("imported:1").await;
    assert_eq!(imported_id, record.id);
    assert_eq!(
        s.ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Cmd}} {{.Comment}}",
            "imported:1"
        ])
        .await
        .trim(),
        "[\"/bin/hello\"] from a pipe"
    );

    // push to another repository: Docker's lines, and the registry has it.
    let pushed = s.reference("pushed/imported:v2");
    s.ok(&["tag", "imported:1", &pushed]).await;
    let out = s.ok(&["push", &pushed]).await;
    assert!(
        out.contains(&format!(
            "The push refers to repository [{}]",
            s.reference("pushed/imported")
        )),
        "{out}"
    );
    assert!(out.contains("v2: digest: sha256:"), "{out}");
    let (manifest, _) = s.registry.manifest(&pushed).await;
    assert!(!manifest.is_empty());
    let missing = s.fails(&["push", &s.reference("nothing/here:1")]).await;
    assert!(missing.contains("does not exist locally"), "{missing}");

    // system df: the images part.
    let df = s
        .ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"])
        .await;
    assert!(df.lines().any(|l| l == "Images 2"), "{df}");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_py_drives_imaged() {
    let s = setup().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/docker_py_client.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&s.registry.host)
        .env("DOCKER_HOST", s.cli.host())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "docker-py failed: {}\n{}\n--- imaged logs ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        s.imaged.logs()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("docker-py: all checks passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_sends_its_stored_credentials() {
    use base64::Engine;
    const PASSWORD: &str = "docker-cli-Pa55";
    let registry = TestRegistry::start_with_auth("tester", PASSWORD)
        .await
        .unwrap();
    let catalog = catalog().unwrap();
    registry
        .fixtures_as("tester", PASSWORD)
        .push_image("private/base:latest", &catalog.base)
        .await
        .unwrap();
    let imaged = Imaged::start().await.unwrap();
    let cli = imaged.docker_cli();
    let private = format!("{}/private/base:latest", registry.host);

    let refused = cli.docker(&["pull", &private]).await.unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    let refused = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.contains("Error response from daemon"), "{refused}");
    assert!(!refused.contains(PASSWORD));

    // What `docker login` stores; the CLI sends it as X-Registry-Auth.
    let config = imaged.root().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("tester:{PASSWORD}"));
    std::fs::write(
        config.join("config.json"),
        serde_json::json!({ "auths": { registry.host.clone(): { "auth": auth } } }).to_string(),
    )
    .unwrap();
    cli.ok(&["pull", &private]).await.unwrap();
    let pushed = format!("{}/private/pushed:1", registry.host);
    cli.ok(&["tag", &private, &pushed]).await.unwrap();
    let out = cli.ok(&["push", &pushed]).await.unwrap();
    assert!(out.contains("1: digest: sha256:"), "{out}");
    assert!(!imaged.logs().contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn archives_larger_than_any_buffer_stream_through() {
    let s = setup().await;
    // 4 layers of 8 MiB: a save of 32 MiB and more, loaded back.
    let image = imaged_fixtures::generated_image(4, 8, 1 << 20, 7).unwrap();
    s.registry
        .fixtures()
        .push_image("big/app:1", &image)
        .await
        .unwrap();
    let big = s.reference("big/app:1");
    s.ok(&["pull", &big]).await;
    let (saved, _) = s.save_remove_load(&big).await;
    assert!(saved.len() > 32 << 20, "{}", saved.len());
    assert_eq!(s.inspect(&big).await.id, image.id());
    // And an import of a 16 MiB root filesystem.
    let rootfs = imaged_fixtures::LayerBuilder::new()
        .dir("data")
        .generated_files("data", 16, 1 << 20, 3)
        .build(Compression::None)
        .unwrap();
    let imported = s
        .cli
        .docker_with_input(&["import", "-", "bigroot:1"], Some(&rootfs.data))
        .await
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    assert_eq!(
        s.inspect("bigroot:1").await.root_fs.unwrap().layers.len(),
        1
    );
}
