//! imagectl against the docker CLI: the same command line run as
//! `imagectl …` against imaged and as `docker …` against a private
//! dockerd 20.10, what the user reads compared byte for byte (tables,
//! records, progress lines, errors and exit codes). Where Moby v28 parts
//! from 20.10, `imaged_e2e::oracle::V28` says so with the reason.
//!
//! Needs root and dockerd (`make test` installs Debian's docker.io); where
//! either is missing the tests fail, saying so.

use imaged_api::v1::TagImageRequest;
use imaged_e2e::oracle::{Both, Ran, V28, both, same};

/// A one-layer root filesystem tar of `len` bytes of file content.
fn rootfs(len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    imaged_fixtures::LayerBuilder::new()
        .dir("bin")
        .file("bin/data", &data)
        .build(imaged_fixtures::Compression::None)
        .unwrap()
        .data
}

/// Asserts that both ran to the same end and printed the same.
#[track_caller]
fn same_run(what: &str, imaged: &Ran, docker: &Ran) {
    same(what, imaged, docker);
}

/// Both succeeded: (imaged's, Docker's) standard output.
async fn ok(b: &Both, args: &[&str]) -> (String, String) {
    let (imaged, docker) = b.run_both(args, None).await;
    assert_eq!(imaged.code, Some(0), "imagectl {args:?}: {imaged:?}");
    assert_eq!(docker.code, Some(0), "docker {args:?}: {docker:?}");
    (imaged.stdout, docker.stdout)
}

/// The header (unless `-q` asked for IDs only), then the rows sorted:
/// images created the same second come in an order dockerd leaves to its
/// map, and the CLI orders an image's repositories as a Go map iterates.
fn rows_sorted(args: &[&str], text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let first = usize::from(!args.contains(&"-q") && !lines.is_empty());
    lines[first..].sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_tables_match_the_docker_cli_byte_for_byte() {
    let b = both().await;
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    b.pull(&app).await;
    for tag in ["other/app:2", "other/app:3"] {
        b.dockerd.ok(&["tag", &app, tag]).await.unwrap();
        b.imaged
            .images()
            .tag_image(TagImageRequest {
                source: app.clone(),
                target: tag.into(),
            })
            .await
            .unwrap();
    }
    // One image under three tags: padded as Docker's tabwriter pads, one
    // ID a row for -q.
    for args in [
        vec!["images"],
        vec!["images", "-q"],
        vec!["images", "-q", "--no-trunc"],
        vec!["images", "--digests"],
        vec!["images", "other/app"],
    ] {
        let (imaged, docker) = ok(&b, &args).await;
        same(
            &format!("imagectl {args:?}"),
            rows_sorted(&args, &imaged),
            rows_sorted(&args, &docker),
        );
    }
    for args in [
        vec!["history", &app],
        vec!["history", "--no-trunc", &app],
        vec!["history", "-q", &app],
        vec!["images", "--format", "{{.Size}} {{.VirtualSize}}"],
    ] {
        let (imaged, docker) = ok(&b, &args).await;
        same(&format!("imagectl {args:?}"), imaged, docker);
    }
    let (imaged, _) = ok(&b, &["images", "-q"]).await;
    assert_eq!(imaged.lines().count(), 3, "{imaged}");

    // More images: the same table, rows of equal times in any order.
    for repo in ["fixtures/base:latest", "fixtures/docker:latest"] {
        b.pull(&b.registry.fixtures().reference(repo)).await;
    }
    for args in [vec!["images"], vec!["images", "-q"], vec!["system", "df"]] {
        let (imaged, docker) = ok(&b, &args).await;
        same(
            &format!("imagectl {args:?}"),
            rows_sorted(&args, &imaged),
            rows_sorted(&args, &docker),
        );
    }
    // The docker CLI against imaged's Engine API: a row each, too.
    let cli = b.imaged.docker_cli();
    let imaged = cli.ok(&["images", "-q"]).await.unwrap();
    let (_, docker) = ok(&b, &["images", "-q"]).await;
    same(
        "docker images -q",
        rows_sorted(&["-q"], &imaged),
        rows_sorted(&["-q"], &docker),
    );

    // Sizes past three digits: VirtualSize and df keep four, as Docker.
    let tar = rootfs(20_043);
    for (args, input) in [
        (vec!["import", "-", "sized:1"], Some(tar.as_slice())),
        (
            vec!["images", "sized", "--format", "{{.Size}} {{.VirtualSize}}"],
            None,
        ),
    ] {
        let (imaged, docker) = b.run_both(&args, input).await;
        if args[0] == "images" {
            assert_eq!(docker.stdout, "20kB 20.04kB\n");
            same_run("sizes", &imaged, &docker);
        }
    }
}

/// `docker image inspect`'s text with what v28 no longer prints taken out
/// (the [`V28`] fields) and each daemon's own paths and times blanked.
fn comparable_inspect(text: &str) -> Vec<String> {
    let gone: Vec<&str> = V28
        .iter()
        .filter_map(|(what, _)| what.strip_prefix("inspect: "))
        .collect();
    let mut out = Vec::new();
    let mut skipping: Option<String> = None;
    for line in text.lines() {
        if let Some(end) = &skipping {
            if line.starts_with(end.as_str()) && line.trim_start().starts_with('}') {
                skipping = None;
            }
            continue;
        }
        let trimmed = line.trim_start();
        let key = trimmed
            .strip_prefix('"')
            .and_then(|k| k.split_once('"'))
            .map(|(k, _)| k);
        if let Some(key) = key
            && line.len() - trimmed.len() == 8
            && gone.contains(&key)
        {
            if trimmed.ends_with('{') {
                skipping = Some(" ".repeat(8));
            }
            continue;
        }
        match key {
            Some(k @ ("LowerDir" | "MergedDir" | "UpperDir" | "WorkDir" | "LastTagTime")) => {
                out.push(format!("{}\"{k}\": …", &line[..line.len() - trimmed.len()]))
            }
            _ => out.push(line.to_string()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_inspect_prints_dockers_text() {
    let b = both().await;
    for repo in ["fixtures/app:1.0", "fixtures/base:latest"] {
        let reference = b.registry.fixtures().reference(repo);
        b.pull(&reference).await;
        let (imaged, docker) = ok(&b, &["image", "inspect", &reference]).await;
        // Four spaces, Docker's field order, no empty Variant.
        assert!(imaged.starts_with("[\n    {\n        \"Id\": "), "{imaged}");
        assert!(!imaged.contains("\"Variant\""), "{imaged}");
        same(
            &format!("{repo}: inspect text"),
            comparable_inspect(&imaged),
            comparable_inspect(&docker),
        );
    }
    // Missing images: Docker's words, stdout and exit code.
    let base = b.registry.fixtures().reference("fixtures/base:latest");
    for args in [
        vec!["image", "inspect", "nope"],
        vec!["inspect", "nope"],
        vec!["image", "inspect", "nope", &base],
    ] {
        let (imaged, docker) = b.run_both(&args, None).await;
        same(
            &format!("imagectl {args:?}: stderr and exit"),
            (&imaged.stderr, imaged.code),
            (&docker.stderr, docker.code),
        );
        same(
            &format!("imagectl {args:?}: stdout"),
            comparable_inspect(&imaged.stdout),
            comparable_inspect(&docker.stdout),
        );
    }
}

/// `docker pull`'s lines without those whose passing depends on timing.
fn settled(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| {
            !l.split_once(": ").is_some_and(|(_, s)| {
                [
                    "Waiting",
                    "Verifying Checksum",
                    "Download complete",
                    "Downloading",
                ]
                .iter()
                .any(|passing| s.starts_with(passing))
            })
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_pull_and_push_print_dockers_lines() {
    let b = both().await;
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    let (imaged, docker) = ok(&b, &["pull", &app]).await;
    same("first pull", settled(&imaged), settled(&docker));
    // Every layer downloaded says so, whatever the timing.
    let layers: Vec<&str> = imaged
        .lines()
        .filter_map(|l| l.strip_suffix(": Pulling fs layer"))
        .collect();
    assert_eq!(layers.len(), 3, "{imaged}");
    for layer in layers {
        assert!(
            imaged.contains(&format!("{layer}: Download complete")),
            "{imaged}"
        );
    }
    // Already here: no layer work at all. By digest: the full reference
    // heads the lines. No tag: the CLI's default-tag line first.
    let name = app.rsplit_once(':').unwrap().0;
    let by_digest = format!("{name}@{}", b.catalog.app.manifest.digest);
    let untagged = b.registry.fixtures().reference("fixtures/docker");
    for args in [
        vec!["pull", app.as_str()],
        vec!["pull", by_digest.as_str()],
        vec!["pull", "-q", app.as_str()],
    ] {
        let (imaged, docker) = ok(&b, &args).await;
        same(&format!("imagectl {args:?}"), imaged, docker);
    }
    let (imaged, docker) = ok(&b, &["pull", &untagged]).await;
    same("pull without a tag", settled(&imaged), settled(&docker));
    assert!(
        imaged.starts_with("Using default tag: latest\n"),
        "{imaged}"
    );

    // Push: a local layer goes up once, then is mounted into the next
    // repository; no "Waiting" under the upload limit.
    let tar = rootfs(300_000);
    let mut lines = Vec::new();
    for who in ["imaged", "docker"] {
        let mut said = Vec::new();
        for repo in ["a", "b"] {
            let target = b
                .registry
                .fixtures()
                .reference(&format!("mnt-{who}/{repo}:1"));
            let import = ["import", "-", target.as_str()];
            let push = ["push", target.as_str()];
            let ran = match who {
                "imaged" => {
                    b.imagectl(&import, Some(&tar)).await;
                    b.imagectl(&push, None).await
                }
                _ => {
                    b.dockerd
                        .docker_with_input(&import, Some(&tar))
                        .await
                        .unwrap();
                    Ran::from(b.dockerd.docker(&push).await.unwrap())
                }
            };
            assert_eq!(ran.code, Some(0), "{who} push: {ran:?}");
            // The digest line names each's own config: left out.
            let text = ran.stdout.replace(&format!("mnt-{who}/"), "mnt-x/");
            said.extend(
                text.lines()
                    .filter(|l| !l.contains(": digest: "))
                    .map(str::to_string),
            );
        }
        lines.push(said);
    }
    assert!(
        lines[1]
            .iter()
            .any(|l| l.ends_with(": Mounted from mnt-x/a")),
        "{:?}",
        lines[1]
    );
    same("push lines", &lines[0], &lines[1]);
    // Several layers: "Preparing" from the top layer down, as Docker.
    let mut preparing = Vec::new();
    for who in ["imaged", "docker"] {
        let target = b
            .registry
            .fixtures()
            .reference(&format!("prep-{who}/app:1"));
        let ran = match who {
            "imaged" => {
                b.imagectl(&["tag", &app, &target], None).await;
                b.imagectl(&["push", &target], None).await
            }
            _ => {
                b.dockerd.ok(&["tag", &app, &target]).await.unwrap();
                Ran::from(b.dockerd.docker(&["push", &target]).await.unwrap())
            }
        };
        let lines: Vec<String> = ran
            .stdout
            .lines()
            .filter(|l| l.ends_with(": Preparing"))
            .map(str::to_string)
            .collect();
        preparing.push(lines);
    }
    assert_eq!(preparing[1].len(), 3, "{preparing:?}");
    same("push Preparing order", &preparing[0], &preparing[1]);
    let missing = b.registry.fixtures().reference("nope:1");
    let (imaged, docker) = b.run_both(&["push", &missing], None).await;
    same_run("push of a missing image", &imaged, &docker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_errors_read_as_the_docker_cli_prints_them() {
    let b = both().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rootfs.tar");
    std::fs::write(&file, rootfs(1000)).unwrap();
    let file = file.to_str().unwrap();
    let digest = format!("x@sha256:{}", "0".repeat(64));
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    b.pull(&app).await;
    let cases: Vec<(Vec<&str>, Option<&[u8]>)> = vec![
        (vec!["save", "nope:1"], None),
        (vec!["save", "nope"], None),
        (vec!["load"], Some(b"garbage")),
        (vec!["load"], Some(b"")),
        (vec!["load", "-i", "/nonexistent/archive.tar"], None),
        (vec!["import", "/nonexistent/rootfs.tar"], None),
        (vec!["import", "--change", "RUN make", file, "x:1"], None),
        (vec!["import", file, &digest], None),
        (vec!["import", file, "UPPER"], None),
        (vec!["pull", "UPPER"], None),
        (vec!["pull", "a@sha256:1234"], None),
        (vec!["tag", &app, &digest], None),
        (vec!["rmi", "nope"], None),
        (vec!["history", "nope"], None),
    ];
    // Each daemon unpacks a load under its own directory.
    let open = regex_free_path;
    for (args, input) in cases {
        let (imaged, docker) = b.run_both(&args, input).await;
        assert_ne!(docker.code, Some(0), "{args:?}: {docker:?}");
        same(
            &format!("imagectl {args:?}"),
            (imaged.code, open(&imaged.stdout), open(&imaged.stderr)),
            (docker.code, open(&docker.stdout), open(&docker.stderr)),
        );
    }

    // An unknown events filter key filters nothing: the stream still
    // ends, with the events it would have had.
    // From the next whole second: the pulls above stay out of the window
    // in both, whichever second they fell in.
    let now = chrono::Utc::now();
    let since = (now.timestamp() + 1).to_string();
    let to_next_second = 1_050 - u64::from(now.timestamp_subsec_millis());
    tokio::time::sleep(std::time::Duration::from_millis(to_next_second)).await;
    b.dockerd.ok(&["tag", &app, "ev/app:1"]).await.unwrap();
    b.imagectl(&["tag", &app, "ev/app:1"], None).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let until = chrono::Utc::now().timestamp().to_string();
    let events = [
        "events",
        "--filter",
        "foo=bar",
        "--since",
        &since,
        "--until",
        &until,
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.ID}} {{.Actor.Attributes.name}}",
    ];
    let (imaged, docker) = b.run_both(&events, None).await;
    assert!(docker.stdout.contains("image tag "), "{docker:?}");
    same_run("events with an unknown filter key", &imaged, &docker);
}

/// `open <dir>/repositories: …` with the daemon's own directory left out.
fn regex_free_path(text: &str) -> String {
    text.lines()
        .map(
            |l| match (l.strip_prefix("open /"), l.find("/repositories:")) {
                (Some(_), Some(at)) => format!("open …{}", &l[at..]),
                _ => l.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_import_load_and_prune_say_what_docker_says() {
    let b = both().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rootfs.tar");
    std::fs::write(&file, rootfs(20_043)).unwrap();
    let file = file.to_str().unwrap();

    // import FILE: the CLI streams it, so the comment is "Imported from -"
    // and no local path goes into the image; the daemon names itself.
    ok(&b, &["import", file, "imp:1"]).await;
    let (imaged, docker) = ok(&b, &["image", "inspect", "-f", "{{.Comment}}", "imp:1"]).await;
    assert_eq!(docker, "Imported from -\n");
    same("import comment", imaged, docker);
    let (imaged, docker) = ok(
        &b,
        &["image", "inspect", "-f", "{{.DockerVersion}}", "imp:1"],
    )
    .await;
    assert!(
        !docker.trim().is_empty() && imaged.trim().starts_with("imaged-"),
        "{imaged:?}"
    );
    // The docker CLI against imaged's Engine API.
    let cli = b.imaged.docker_cli();
    cli.ok(&["import", file, "imp:2"]).await.unwrap();
    let comment = cli
        .ok(&["image", "inspect", "-f", "{{.Comment}}", "imp:2"])
        .await
        .unwrap();
    same(
        "docker import comment",
        comment,
        "Imported from -\n".to_string(),
    );

    // load from a pipe: only the final lines, as Docker prints them.
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    b.pull(&app).await;
    let archive = b.dockerd.docker(&["save", &app]).await.unwrap().stdout;
    ok(&b, &["rmi", &app]).await;
    let (imaged, docker) = b.run_both(&["load"], Some(&archive)).await;
    same_run("load lines", &imaged, &docker);
    let saved = dir.path().join("app.tar");
    std::fs::write(&saved, &archive).unwrap();
    ok(&b, &["rmi", &app]).await;
    let (imaged, docker) = ok(&b, &["load", "-i", saved.to_str().unwrap()]).await;
    same("load -i lines", imaged, docker);

    // prune -a: Docker's lower-case lines and its four-digit total.
    ok(&b, &["rmi", "imp:1"]).await;
    cli.ok(&["rmi", "imp:2"]).await.unwrap();
    ok(&b, &["import", file, "imp:3"]).await;
    let (imaged_id, docker_id) = ok(&b, &["image", "inspect", "-f", "{{.Id}}", "imp:3"]).await;
    let (imaged, docker) = ok(&b, &["image", "prune", "-a", "-f"]).await;
    // imp:3's ID is each daemon's own (it holds the import time).
    let shape = |out: &str, id: &str| -> Vec<String> {
        let mut lines: Vec<String> = out
            .replace(id.trim(), "<imp:3>")
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    assert!(docker.contains("untagged: imp:3"), "{docker}");
    same(
        "prune -a lines",
        shape(&imaged, &imaged_id),
        shape(&docker, &docker_id),
    );
    same(
        "prune -a total",
        imaged.lines().last(),
        docker.lines().last(),
    );
}

/// An operation's event is logged before the operation returns, as in
/// dockerd: right after `docker tag` returns, the Engine API's events up
/// to that instant hold the tag, against both daemons (the docker CLI's
/// own `--until 0s` rounds to the second, so the instant is asked through
/// the API); and imagectl's events up to it, after `imagectl tag`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operations_event_is_logged_before_it_returns() {
    let b = both().await;
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    b.pull(&app).await;
    let since = (chrono::Utc::now().timestamp() - 60).to_string();
    let now = || {
        let t = chrono::Utc::now();
        format!("{}.{:09}", t.timestamp(), t.timestamp_subsec_nanos())
    };
    let imaged_cli = b.imaged.docker_cli();
    let oracle = b.dockerd.cli();
    for round in 0..5 {
        let tag = format!("now/tagged:{round}");
        for (who, cli, socket) in [
            ("dockerd", &oracle, b.dockerd.socket()),
            (
                "imaged",
                &imaged_cli,
                b.imaged.root().join("run/docker.sock"),
            ),
        ] {
            cli.ok(&["tag", &app, &tag]).await.unwrap();
            let until = now();
            let out = tokio::process::Command::new("curl")
                .args(["-sf", "--unix-socket"])
                .arg(&socket)
                .arg(format!(
                    "http://localhost/events?since={since}&until={until}"
                ))
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{who}: {out:?}");
            let logged = String::from_utf8_lossy(&out.stdout);
            let tagged = logged.lines().any(|line| {
                let e: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                e["Action"] == "tag" && e["Actor"]["Attributes"]["name"] == tag.as_str()
            });
            assert!(tagged, "{who}, round {round}: no tag {tag} in {logged}");
        }
        // Through the API itself, with nothing between the two calls.
        let tag = format!("now/grpc:{round}");
        b.imaged
            .images()
            .tag_image(TagImageRequest {
                source: app.clone(),
                target: tag.clone(),
            })
            .await
            .unwrap();
        let mut stream = imaged_api::v1::events_client::EventsClient::new(
            b.imaged.channel(imaged_common::config::Service::Gateway),
        )
        .subscribe(imaged_api::v1::SubscribeRequest {
            filters: vec![],
            since: since.clone(),
            until: now(),
        })
        .await
        .unwrap()
        .into_inner();
        let mut tagged = false;
        while let Some(event) = tokio_stream::StreamExt::next(&mut stream).await {
            let event = event.unwrap();
            let name = event
                .actor
                .unwrap_or_default()
                .attributes
                .get("name")
                .cloned();
            tagged |= event.action == "tag" && name.as_deref() == Some(tag.as_str());
        }
        assert!(tagged, "gRPC, round {round}: no tag {tag}");
        let tag = format!("now/imagectl:{round}");
        b.imagectl(&["tag", &app, &tag], None).await;
        let until = now();
        let events = [
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--format",
            "{{.Action}} {{.Actor.Attributes.name}}",
        ];
        let logged = b.imagectl(&events, None).await;
        assert!(
            logged.stdout.lines().any(|l| l == format!("tag {tag}")),
            "imagectl, round {round}: {logged:?}"
        );
    }
}
