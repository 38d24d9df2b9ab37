//! Docker's answers as the oracle. Each scenario runs against a private
//! dockerd (Debian's 20.10, driven by the machine's docker CLI) and against
//! imaged, with the same images from the same registry, and compares what a
//! user sees: outputs, inspect fields, sizes, and the manifests written to
//! the registry.
//!
//! Moby v28, which imaged follows (`shared/spec/moby-images-behavior.md`),
//! differs from dockerd 20.10 in a few known places. Each one a scenario
//! meets is in `imaged_e2e::oracle::V28` with its reason and is the only
//! difference let through; any other difference fails the test. The
//! imagectl-against-docker-CLI scenarios are in `differential_cli.rs`.
//!
//! Needs root and dockerd (`make test` installs Debian's docker.io); where
//! either is missing the tests fail, saying so.

use imaged_api::v1::*;
use imaged_e2e::client;
use imaged_e2e::dockerd::DockerCli;
use imaged_e2e::oracle::{both, same};

/// `<tag>: digest: <digest> size: <bytes>` from a push's output.
fn digest_line(output: &str) -> (String, i64) {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains(": digest: "))
        .unwrap_or_else(|| panic!("no digest line in {output}"));
    let mut words = line.split_whitespace();
    let digest = words.nth(2).unwrap().to_string();
    let size = words.nth(1).unwrap().parse().unwrap();
    (digest, size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_image_pushed_elsewhere_gets_dockers_very_manifest() {
    let b = both().await;
    let source = b.registry.fixtures().reference("fixtures/app:1.0");
    b.pull(&source).await;
    let docker_target = b.registry.fixtures().reference("diff/docker:v1");
    let imaged_target = b.registry.fixtures().reference("diff/imaged:v1");

    b.dockerd
        .ok(&["tag", &source, &docker_target])
        .await
        .unwrap();
    let pushed = b.dockerd.ok(&["push", &docker_target]).await.unwrap();
    let (docker_digest, docker_size) = digest_line(&pushed);

    b.imaged
        .images()
        .tag_image(TagImageRequest {
            source: source.clone(),
            target: imaged_target.clone(),
        })
        .await
        .unwrap();
    let messages = client::push(b.imaged.images(), &imaged_target, false)
        .await
        .unwrap();
    let last = messages.last().unwrap();

    // The same bytes in the registry, so the same digest and size.
    let (docker_manifest, docker_type) = b.registry.manifest(&docker_target).await;
    let (imaged_manifest, imaged_type) = b.registry.manifest(&imaged_target).await;
    same("pushed manifest media type", imaged_type, docker_type);
    same(
        "pushed manifest",
        String::from_utf8(imaged_manifest).unwrap(),
        String::from_utf8(docker_manifest).unwrap(),
    );
    same(
        "push digest line",
        (last.digest.as_str(), last.size),
        (docker_digest.as_str(), docker_size),
    );

    // Both images now carry repo@digest for what they pushed.
    let docker = b
        .dockerd
        .ok(&["image", "inspect", &docker_target])
        .await
        .unwrap();
    let docker: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&docker).unwrap()[0].clone();
    let docker_name = docker_target.rsplit_once(':').unwrap().0;
    assert!(
        docker["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == &format!("{docker_name}@{docker_digest}")),
        "{docker}"
    );
    let (_, imaged_after) = b.inspect(&source).await;
    let imaged_name = imaged_target.rsplit_once(':').unwrap().0;
    assert!(
        imaged_after
            .repo_digests
            .contains(&format!("{imaged_name}@{docker_digest}")),
        "{:?}",
        imaged_after.repo_digests
    );
    same(
        "image ID",
        imaged_after.id.as_str(),
        docker["Id"].as_str().unwrap(),
    );
}

/// `len` bytes of text-like content: words of a small vocabulary in a
/// fixed pseudo-random order, as compressible as source files are.
fn prose(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "image",
        "layer",
        "the",
        "of",
        "registry",
        "pull",
        "push",
        "and",
        "a",
        "digest",
        "manifest",
        "config",
        "to",
        "container",
        "node",
        "kubelet",
        "tar",
        "gzip",
        "in",
        "overlay",
        "whiteout",
        "is",
        "docker",
        "imaged",
        "snapshot",
        "lease",
        "blob",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(WORDS[(state % WORDS.len() as u64) as usize].as_bytes());
        out.push(if state.is_multiple_of(11) {
            b'\n'
        } else {
            b' '
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_layer_goes_up_compressed_as_docker_sends_it() {
    let b = both().await;
    let rootfs = imaged_fixtures::LayerBuilder::new()
        .dir("etc")
        .file("etc/motd", &prose(200_000))
        .symlink("etc/issue", "motd")
        .build(imaged_fixtures::Compression::None)
        .unwrap()
        .tar()
        .unwrap();
    let docker_target = b.registry.fixtures().reference("diff/docker-local:v1");
    let imaged_target = b.registry.fixtures().reference("diff/imaged-local:v1");
    let imported = b
        .dockerd
        .docker_with_input(&["import", "-", &docker_target], Some(&rootfs))
        .await
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    b.dockerd.ok(&["push", &docker_target]).await.unwrap();
    client::import(b.imaged.images(), &imaged_target, &rootfs)
        .await
        .unwrap();
    client::push(b.imaged.images(), &imaged_target, false)
        .await
        .unwrap();

    let layers_of = |body: &[u8]| -> (String, Vec<(String, u64)>) {
        let manifest: serde_json::Value = serde_json::from_slice(body).unwrap();
        let layers = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["mediaType"].as_str().unwrap().to_string(),
                    l["size"].as_u64().unwrap(),
                )
            })
            .collect();
        (
            manifest["config"]["mediaType"]
                .as_str()
                .unwrap()
                .to_string(),
            layers,
        )
    };
    let (docker_manifest, docker_type) = b.registry.manifest(&docker_target).await;
    let (imaged_manifest, imaged_type) = b.registry.manifest(&imaged_target).await;
    same("pushed manifest media type", imaged_type, docker_type);
    let (docker_config, docker_layers) = layers_of(&docker_manifest);
    let (imaged_config, imaged_layers) = layers_of(&imaged_manifest);
    same("pushed config media type", imaged_config, docker_config);
    same(
        "pushed layer count",
        imaged_layers.len(),
        docker_layers.len(),
    );
    let (docker_kind, docker_bytes) = &docker_layers[0];
    let (imaged_kind, imaged_bytes) = &imaged_layers[0];
    same("pushed layer media type", imaged_kind, docker_kind);
    // Go's gzip and zlib-rs make different bytes; imaged's must be no
    // bigger than Docker's but for a tenth.
    assert!(
        *imaged_bytes * 10 <= docker_bytes * 11 && *imaged_bytes * 3 < rootfs.len() as u64,
        "imaged pushed {imaged_bytes} bytes, Docker {docker_bytes}, of a {} byte tar",
        rootfs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_and_identities_match_dockers_after_a_pull() {
    let b = both().await;
    for repo in [
        "fixtures/base:latest",
        "fixtures/app:1.0",
        "fixtures/special:latest",
        "fixtures/docker:latest",
    ] {
        let reference = b.registry.fixtures().reference(repo);
        b.pull(&reference).await;
        let (docker, imaged) = b.inspect(&reference).await;
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        same(
            &format!("{repo}: Id"),
            imaged.id.as_str(),
            docker["Id"].as_str().unwrap(),
        );
        same(
            &format!("{repo}: Size"),
            imaged.size,
            docker["Size"].as_i64().unwrap(),
        );
        same(
            &format!("{repo}: RepoTags"),
            imaged.repo_tags,
            strings(&docker["RepoTags"]),
        );
        same(
            &format!("{repo}: RepoDigests"),
            imaged.repo_digests,
            strings(&docker["RepoDigests"]),
        );
        same(
            &format!("{repo}: RootFS.Layers"),
            imaged.root_fs.unwrap().layers,
            strings(&docker["RootFS"]["Layers"]),
        );
        same(
            &format!("{repo}: Created"),
            imaged.created.as_str(),
            docker["Created"].as_str().unwrap(),
        );

        let (imaged_rows, docker_rows) = b.history(&reference).await;
        same(&format!("{repo}: history"), imaged_rows, docker_rows);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_report_what_docker_reports() {
    let b = both().await;
    let tagged = b.registry.fixtures().reference("fixtures/docker:latest");
    let name = tagged.rsplit_once(':').unwrap().0.to_string();
    let by_digest = format!("{name}@{}", b.catalog.docker.manifest.digest);
    let base = b.registry.fixtures().reference("fixtures/base:latest");
    let base_digest = format!(
        "{}@{}",
        base.rsplit_once(':').unwrap().0,
        b.catalog.base.manifest.digest
    );
    // A new tag, the same tag again, a digest already known through the
    // tag, and a digest pull into a store without the image.
    for reference in [&tagged, &tagged, &by_digest, &base_digest] {
        let (docker, imaged) = b.pull_lines(reference).await;
        assert_eq!(docker.len(), 2, "{reference}: {docker:?}");
        same(&format!("pull lines of {reference}"), imaged, docker);
    }
}

/// (action, actor ID, attributes) of each image event in `[since, until]`,
/// as the docker CLI prints them with `--format '{{json .}}'`.
async fn docker_events(
    dockerd: &DockerCli,
    since: &str,
    until: &str,
) -> Vec<(String, String, serde_json::Value)> {
    let out = dockerd
        .ok(&[
            "events",
            "--since",
            since,
            "--until",
            until,
            "--filter",
            "type=image",
            "--format",
            "{{json .}}",
        ])
        .await
        .unwrap();
    out.lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).unwrap();
            // The legacy keys, which imagectl prints too.
            assert_eq!(e["status"], e["Action"], "{e}");
            assert_eq!(e["id"], e["Actor"]["ID"], "{e}");
            (
                e["Action"].as_str().unwrap().to_string(),
                e["Actor"]["ID"].as_str().unwrap().to_string(),
                e["Actor"]["Attributes"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_real_operations_match_dockers() {
    let b = both().await;
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    let since = chrono::Utc::now().timestamp().to_string();
    b.pull(&app).await;
    let docker_tag = "diff/tagged:1";
    b.dockerd.ok(&["tag", &app, docker_tag]).await.unwrap();
    b.dockerd.ok(&["rmi", docker_tag]).await.unwrap();
    b.imaged
        .images()
        .tag_image(TagImageRequest {
            source: app.clone(),
            target: docker_tag.into(),
        })
        .await
        .unwrap();
    b.imaged
        .images()
        .remove_image(RemoveImageRequest {
            image: docker_tag.into(),
            force: false,
            prune_children: None,
        })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let until = chrono::Utc::now().timestamp().to_string();

    let docker = docker_events(&b.dockerd.cli(), &since, &until).await;
    // The same events as the docker CLI prints them from imaged's Docker
    // Engine API.
    let imaged_cli = docker_events(&b.imaged.docker_cli(), &since, &until).await;
    same("docker events", imaged_cli, docker.clone());
    let mut stream = imaged_api::v1::events_client::EventsClient::new(
        b.imaged.channel(imaged_common::config::Service::Gateway),
    )
    .subscribe(SubscribeRequest {
        filters: vec!["type=image".into()],
        since: since.clone(),
        until: until.clone(),
    })
    .await
    .unwrap()
    .into_inner();
    let mut imaged = Vec::new();
    while let Some(event) = tokio_stream::StreamExt::next(&mut stream).await {
        let event = event.unwrap();
        let actor = event.actor.unwrap();
        let attributes: serde_json::Map<String, serde_json::Value> = actor
            .attributes
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        imaged.push((
            event.action,
            actor.id,
            serde_json::Value::Object(attributes),
        ));
    }
    let actions: Vec<&str> = docker.iter().map(|(a, _, _)| a.as_str()).collect();
    assert_eq!(actions, ["pull", "tag", "untag"], "{docker:?}");
    same("events", imaged, docker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmi_answers_dockers_lines_with_the_layers_it_frees() {
    let b = both().await;
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    let base = b.registry.fixtures().reference("fixtures/base:latest");
    b.pull(&base).await;
    b.pull(&app).await;
    // app shares its bottom layer with base: that one stays. Then base
    // goes with it.
    for reference in [&app, &base] {
        let docker: Vec<String> = b
            .dockerd
            .ok(&["rmi", reference])
            .await
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let imaged: Vec<String> = b
            .imaged
            .images()
            .remove_image(RemoveImageRequest {
                image: reference.clone(),
                force: false,
                prune_children: None,
            })
            .await
            .unwrap()
            .into_inner()
            .items
            .into_iter()
            .map(|item| match item.item {
                Some(delete_item::Item::Untagged(r)) => format!("Untagged: {r}"),
                Some(delete_item::Item::Deleted(id)) => format!("Deleted: {id}"),
                None => String::new(),
            })
            .collect();
        assert!(
            docker.iter().filter(|l| l.starts_with("Deleted: ")).count() >= 2,
            "{docker:?}"
        );
        same(&format!("rmi {reference}"), imaged, docker);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pulls_say_what_docker_says() {
    let b = both().await;
    let missing_tag = b.registry.fixtures().reference("fixtures/app:nope");
    let missing_repo = b.registry.fixtures().reference("no/such-repo:1");
    for reference in [missing_tag.as_str(), missing_repo.as_str(), "scratch"] {
        let docker = b.dockerd.docker(&["pull", reference]).await.unwrap();
        assert!(!docker.status.success(), "{reference}");
        let docker = String::from_utf8_lossy(&docker.stderr);
        let docker = docker
            .trim()
            .strip_prefix("Error response from daemon: ")
            .unwrap_or_else(|| panic!("{reference}: {docker}"))
            .to_string();
        let imaged = client::pull(b.imaged.images(), client::pull_request(reference))
            .await
            .unwrap_err();
        same(
            &format!("error pulling {reference}"),
            imaged.message().to_string(),
            docker,
        );
    }
    // Nothing was said before the error: no `Pulling from` line.
    let mut stream = b
        .imaged
        .images()
        .pull_image(client::pull_request(&missing_tag))
        .await
        .unwrap()
        .into_inner();
    let first = tokio_stream::StreamExt::next(&mut stream).await.unwrap();
    assert!(first.is_err(), "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_usage_matches_dockers() {
    let b = both().await;
    for repo in [
        "fixtures/base:latest",
        "fixtures/app:1.0",
        "fixtures/docker:latest",
    ] {
        b.pull(&b.registry.fixtures().reference(repo)).await;
    }
    // What `docker system df` reads: the Engine API's /system/df.
    let out = tokio::process::Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(b.dockerd.socket())
        .arg("http://localhost/v1.41/system/df")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let docker: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let imaged = b
        .imaged
        .images()
        .disk_usage(DiskUsageRequest::default())
        .await
        .unwrap()
        .into_inner();
    same(
        "df LayersSize",
        imaged.layers_size,
        docker["LayersSize"].as_i64().unwrap(),
    );
    let mut docker_images: Vec<(String, i64, i64, i64)> = docker["Images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["Id"].as_str().unwrap().to_string(),
                i["Size"].as_i64().unwrap(),
                i["SharedSize"].as_i64().unwrap(),
                i["Containers"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut imaged_images: Vec<(String, i64, i64, i64)> = imaged
        .images
        .iter()
        .map(|i| (i.id.clone(), i.size, i.shared_size, i.containers))
        .collect();
    docker_images.sort();
    imaged_images.sort();
    assert_eq!(docker_images.len(), 3);
    same("df Images", imaged_images, docker_images);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_inspect_prints_dockers_record() {
    let b = both().await;
    for repo in [
        "fixtures/app:1.0",
        "fixtures/docker:latest",
        "fixtures/base:latest",
    ] {
        let reference = b.registry.fixtures().reference(repo);
        b.pull(&reference).await;
        let docker: serde_json::Value = serde_json::from_str(
            &b.dockerd
                .ok(&["image", "inspect", &reference])
                .await
                .unwrap(),
        )
        .unwrap();
        let out = tokio::process::Command::new(imaged_e2e::bin_dir().join("imagectl"))
            .arg("--host")
            .arg(format!(
                "unix://{}",
                b.imaged
                    .socket(imaged_common::config::Service::Gateway)
                    .display()
            ))
            .args(["inspect", &reference])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let imaged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let (docker, imaged) = (&docker[0], &imaged[0]);
        for key in [
            "Id",
            "RepoTags",
            "RepoDigests",
            "Parent",
            "Comment",
            "Created",
            "DockerVersion",
            "Author",
            "Config",
            "Architecture",
            "Os",
            "Size",
            "RootFS",
        ] {
            same(
                &format!("{repo}: inspect {key}"),
                &imaged[key],
                &docker[key],
            );
        }
        // GraphDriver: the same driver and keys; the paths are each
        // daemon's own, and imaged's point at the image's files.
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v["GraphDriver"]["Data"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        same(
            &format!("{repo}: GraphDriver.Name"),
            &imaged["GraphDriver"]["Name"],
            &docker["GraphDriver"]["Name"],
        );
        same(
            &format!("{repo}: GraphDriver.Data keys"),
            keys(imaged),
            keys(docker),
        );
        let upper = imaged["GraphDriver"]["Data"]["UpperDir"].as_str().unwrap();
        assert!(std::path::Path::new(upper).is_dir(), "{upper}");
        for lower in imaged["GraphDriver"]["Data"]["LowerDir"]
            .as_str()
            .unwrap_or_default()
            .split(':')
            .filter(|l| !l.is_empty())
        {
            assert!(std::path::Path::new(lower).is_dir(), "{lower}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_with_linked_layers_loads_as_in_docker() {
    let b = both().await;
    let archive = imaged_fixtures::archive::with_linked_layers(&[
        (&b.catalog.base, "linked/base:1"),
        (&b.catalog.docker, "linked/docker:1"),
    ]);
    let (imaged_lines, docker_lines) = b.load(archive).await;
    same("load lines", imaged_lines, docker_lines);
    for tag in ["linked/base:1", "linked/docker:1"] {
        let (docker, imaged) = b.inspect(tag).await;
        same(
            &format!("{tag}: Id"),
            imaged.id.as_str(),
            docker["Id"].as_str().unwrap(),
        );
        same(
            &format!("{tag}: Size"),
            imaged.size,
            docker["Size"].as_i64().unwrap(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imagectl_images_lists_as_the_docker_cli_does() {
    let b = both().await;
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    b.pull(&app).await;
    // A second tag in another repository, and an image known only by
    // digest.
    b.dockerd.ok(&["tag", &app, "other/app:2"]).await.unwrap();
    b.imaged
        .images()
        .tag_image(TagImageRequest {
            source: app.clone(),
            target: "other/app:2".into(),
        })
        .await
        .unwrap();
    let base = b.registry.fixtures().reference("fixtures/base:latest");
    let base_by_digest = format!(
        "{}@{}",
        base.rsplit_once(':').unwrap().0,
        b.catalog.base.manifest.digest
    );
    b.pull(&base_by_digest).await;

    let imagectl = |args: Vec<String>| {
        let socket = b.imaged.socket(imaged_common::config::Service::Gateway);
        async move {
            let out = tokio::process::Command::new(imaged_e2e::bin_dir().join("imagectl"))
                .arg("--host")
                .arg(format!("unix://{}", socket.display()))
                .args(&args)
                .output()
                .await
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let sorted = |text: String| {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    for args in [
        vec![
            "images",
            "--format",
            "{{.Repository}}\\t{{.Tag}}\\t{{.ID}}\\t{{.Size}}",
        ],
        vec![
            "images",
            "--digests",
            "--format",
            "{{.Repository}}\\t{{.Tag}}\\t{{.Digest}}\\t{{.ID}}",
        ],
        vec!["images", "--format", "json"],
        vec!["images", "other/app"],
    ] {
        let docker = b.dockerd.ok(&args).await.unwrap();
        let imaged = imagectl(args.iter().map(|a| a.to_string()).collect()).await;
        if args.len() == 2 {
            // The default table: the same header, and the same cells.
            let cells = |t: &str| -> Vec<Vec<String>> {
                t.lines()
                    .map(|l| {
                        l.split("   ")
                            .map(|c| c.trim().to_string())
                            .filter(|c| !c.is_empty())
                            .collect()
                    })
                    .collect()
            };
            same(&format!("{args:?}"), cells(&imaged), cells(&docker));
        } else {
            same(&format!("{args:?}"), sorted(imaged), sorted(docker));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_all_tags_says_what_docker_says() {
    let b = both().await;
    for (tag, image) in [
        ("tags/app:1", &b.catalog.app),
        ("tags/app:2", &b.catalog.base),
        ("tags/app:3", &b.catalog.docker),
    ] {
        b.registry.fixtures().push_image(tag, image).await.unwrap();
    }
    let repository = b.registry.fixtures().reference("tags/app");
    let keep = |l: &str| {
        l.starts_with("Digest: ") || l.starts_with("Status: ") || l.contains(": Pulling from ")
    };
    let docker: Vec<String> = b
        .dockerd
        .ok(&["pull", "--all-tags", &repository])
        .await
        .unwrap()
        .lines()
        .filter(|l| keep(l))
        .map(str::to_string)
        .collect();
    let request = PullImageRequest {
        all_tags: true,
        ..client::pull_request(&repository)
    };
    let imaged: Vec<String> = client::pull(b.imaged.images(), request)
        .await
        .unwrap()
        .into_iter()
        .map(|m| {
            if m.id.is_empty() {
                m.status
            } else {
                format!("{}: {}", m.id, m.status)
            }
        })
        .filter(|l| keep(l))
        .collect();
    assert_eq!(docker.len(), 7, "{docker:?}");
    same("pull --all-tags lines", imaged, docker);
    let status = client::pull(
        b.imaged.images(),
        PullImageRequest {
            all_tags: true,
            ..client::pull_request(&format!("{repository}:1"))
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_archive_loads_with_dockers_ids() {
    let b = both().await;
    let archive = imaged_fixtures::archive::legacy(&b.catalog.app, "legacy/app:1");
    let (imaged_lines, docker_lines) = b.load(archive).await;
    same("legacy load lines", imaged_lines, docker_lines);
    let (docker, imaged) = b.inspect("legacy/app:1").await;
    same(
        "legacy: Id",
        imaged.id.as_str(),
        docker["Id"].as_str().unwrap(),
    );
    same(
        "legacy: Size",
        imaged.size,
        docker["Size"].as_i64().unwrap(),
    );
    same(
        "legacy: Parent",
        imaged.parent.is_empty(),
        docker["Parent"].as_str().unwrap().is_empty(),
    );
    let (imaged_history, docker_history) = b.history("legacy/app:1").await;
    same("legacy: history", imaged_history, docker_history);
}

/// The docker CLI's image commands, run the same against dockerd and
/// against imaged's Docker Engine API: what the user reads must be the
/// same, line for line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_cli_prints_the_same_against_both() {
    let b = both().await;
    let cli = b.imaged.docker_cli();
    let run = |args: Vec<String>| {
        let docker = b.dockerd.cli();
        let cli = cli.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let imaged = cli.docker(&args).await.unwrap();
            let docker = docker.docker(&args).await.unwrap();
            (imaged, docker)
        }
    };
    let ok = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let run = &run;
        async move {
            let (imaged, docker) = run(args.clone()).await;
            assert!(
                imaged.status.success(),
                "imaged: docker {args:?}: {imaged:?}"
            );
            assert!(
                docker.status.success(),
                "dockerd: docker {args:?}: {docker:?}"
            );
            (
                String::from_utf8_lossy(&imaged.stdout).into_owned(),
                String::from_utf8_lossy(&docker.stdout).into_owned(),
            )
        }
    };
    let app = b.registry.fixtures().reference("fixtures/app:1.0");
    let base = b.registry.fixtures().reference("fixtures/base:latest");

    // pull: the same layer lines, digest, status and final reference. A
    // layer's passing states (downloading, verifying, ...) depend on
    // timing in both, so only where each layer starts and ends counts.
    let settled = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| {
                ![
                    "Waiting",
                    "Verifying Checksum",
                    "Download complete",
                    "Downloading",
                    "Extracting",
                ]
                .iter()
                .any(|passing| {
                    l.split_once(": ")
                        .is_some_and(|(_, s)| s.starts_with(passing))
                })
            })
            .map(str::to_string)
            .collect()
    };
    let (imaged, docker) = ok(&["pull", &app]).await;
    same("docker pull output", settled(&imaged), settled(&docker));
    ok(&["pull", &base]).await;

    let (imaged, docker) = ok(&[
        "images",
        "--digests",
        "--no-trunc",
        "--format",
        "{{.Repository}} {{.Tag}} {{.Digest}} {{.ID}} {{.Size}}",
    ])
    .await;
    // Both fixtures were created at the same second: Docker's order of
    // ties is its sort's, unspecified.
    let sorted = |out: &str| {
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    same("docker images", sorted(&imaged), sorted(&docker));
    let (imaged, docker) = ok(&["images", "--format", "{{json .}}"]).await;
    same(
        "docker images --format json",
        sorted(&imaged),
        sorted(&docker),
    );
    let (imaged, docker) = ok(&["images", "-q", "--filter", "reference=*/fixtures/app"]).await;
    same("docker images --filter reference", imaged, docker);

    // inspect: the record's fields (Config as a whole differs by API
    // version: 1.41 fills every container field, 1.50 only the image's,
    // omitting empty ones). `.ID` is the CLI's typed field, so the
    // template reads the typed record, never the raw JSON map.
    let format = "{{.ID}} {{json .RepoTags}} {{json .RepoDigests}} {{.Parent}} {{.Comment}} \
        {{.Created}} {{.Author}} {{.Os}}/{{.Architecture}} {{.Size}} {{json .RootFS}} \
        {{json .Config.Cmd}} {{json .Config.Env}} {{json .Config.Labels}} {{.Config.User}}";
    for image in [&app, &base] {
        let (imaged, docker) = ok(&["image", "inspect", "--format", format, image]).await;
        same("docker image inspect", imaged, docker);
    }
    let (imaged, docker) = ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.CreatedBy}} {{.Size}} {{.Comment}}",
        &app,
    ])
    .await;
    same("docker history", imaged, docker);

    // pull --platform of an index: the same image for that platform.
    let multi = b.registry.fixtures().reference("fixtures/multi:latest");
    let (imaged, docker) = ok(&["pull", "--platform", "linux/arm64", &multi]).await;
    same("docker pull --platform", settled(&imaged), settled(&docker));
    let (imaged, docker) = ok(&[
        "image",
        "inspect",
        "--format",
        "{{.ID}} {{.Os}}/{{.Architecture}}/{{.Variant}} {{json .RepoDigests}}",
        &multi,
    ])
    .await;
    same("docker image inspect after pull --platform", imaged, docker);
    ok(&["rmi", &multi]).await;

    // push to a repository of each's own: the same manifest digest line.
    let pushed_imaged = b.registry.fixtures().reference("pushed-by-imaged/app:1");
    let pushed_docker = b.registry.fixtures().reference("pushed-by-docker/app:1");
    cli.ok(&["tag", &app, &pushed_imaged]).await.unwrap();
    b.dockerd.ok(&["tag", &app, &pushed_docker]).await.unwrap();
    let imaged = cli.ok(&["push", &pushed_imaged]).await.unwrap();
    let docker = b.dockerd.ok(&["push", &pushed_docker]).await.unwrap();
    same(
        "docker push digest line",
        imaged.lines().last().map(str::to_string),
        docker.lines().last().map(str::to_string),
    );
    cli.ok(&["rmi", &pushed_imaged]).await.unwrap();
    b.dockerd.ok(&["rmi", &pushed_docker]).await.unwrap();

    // tag and rmi: Docker's lines.
    ok(&["tag", &app, "myapp:v1"]).await;
    let (imaged, docker) = ok(&["rmi", "myapp:v1"]).await;
    same("docker rmi of a second tag", imaged, docker);
    let (imaged, docker) = run(vec!["rmi".into(), "myapp:v1".into()]).await;
    same(
        "docker rmi of a missing image",
        (
            imaged.status.code(),
            String::from_utf8_lossy(&imaged.stderr).into_owned(),
        ),
        (
            docker.status.code(),
            String::from_utf8_lossy(&docker.stderr).into_owned(),
        ),
    );

    // save | rmi | load.
    let saved_imaged = cli.docker(&["save", &app]).await.unwrap().stdout;
    let saved_docker = b.dockerd.docker(&["save", &app]).await.unwrap().stdout;
    let (imaged, docker) = ok(&["rmi", &app]).await;
    same("docker rmi of the last tag", imaged, docker);
    let imaged = cli
        .docker_with_input(&["load"], Some(&saved_imaged))
        .await
        .unwrap();
    let docker = b
        .dockerd
        .docker_with_input(&["load"], Some(&saved_docker))
        .await
        .unwrap();
    same(
        "docker load output",
        String::from_utf8_lossy(&imaged.stdout).into_owned(),
        String::from_utf8_lossy(&docker.stdout).into_owned(),
    );

    // import with changes and a message: the same config and layer.
    let rootfs = imaged_fixtures::LayerBuilder::new()
        .dir("bin")
        .file("bin/hello", b"hello\n")
        .build(imaged_fixtures::Compression::None)
        .unwrap();
    let import = [
        "import",
        "--change",
        "CMD [\"/bin/hello\"]",
        "--change",
        "ENV A=b",
        "--change",
        "WORKDIR /bin",
        "-m",
        "from a pipe",
        "-",
        "imported:1",
    ];
    let imaged = cli
        .docker_with_input(&import, Some(&rootfs.data))
        .await
        .unwrap();
    let docker = b
        .dockerd
        .docker_with_input(&import, Some(&rootfs.data))
        .await
        .unwrap();
    assert!(
        imaged.status.success() && docker.status.success(),
        "{imaged:?} {docker:?}"
    );
    let (imaged, docker) = ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Cmd}} {{json .Config.Env}} {{.Config.WorkingDir}} {{.Comment}} \
         {{.Os}}/{{.Architecture}} {{json .RootFS.Layers}} {{.Size}} {{json .RepoTags}}",
        "imported:1",
    ])
    .await;
    same("docker import", imaged, docker);
    ok(&["rmi", "imported:1"]).await;

    // system df: the images row.
    let (imaged, docker) = ok(&[
        "system",
        "df",
        "--format",
        "{{.Type}} {{.TotalCount}} {{.Active}} {{.Size}}",
    ])
    .await;
    let images_row = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("Images"))
            .map(str::to_string)
    };
    same("docker system df", images_row(&imaged), images_row(&docker));

    // prune -a: everything goes, and the same space is reclaimed.
    let (imaged, docker) = ok(&["image", "prune", "-a", "-f"]).await;
    let total = |out: &str| out.lines().last().map(str::to_string);
    let deleted = |out: &str| {
        sorted(out)
            .into_iter()
            .filter(|l| l.starts_with("deleted:") || l.starts_with("untagged:"))
            .collect::<Vec<_>>()
    };
    same(
        "docker image prune -a lines",
        deleted(&imaged),
        deleted(&docker),
    );
    same(
        "docker image prune -a total",
        total(&imaged),
        total(&docker),
    );
}
