//! Registry mirrors from containerd's `hosts.toml`, against a real mirror:
//! Debian's docker-registry in pull-through proxy mode in front of the
//! upstream registry. Pulls go through the mirror (a mirror that is down
//! is skipped), a second node pulls from the mirror's cache without the
//! upstream serving a blob again, and pushes go to the upstream only.

use imaged_api::v1::{InspectImageRequest, TagImageRequest};
use imaged_common::config::Service;
use imaged_e2e::{Imaged, TestRegistry, client, free_port};

/// `DIR/<upstream>/hosts.toml` listing `mirrors` (`http://host:port`,
/// capabilities) in order.
fn hosts_dir(upstream: &str, mirrors: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut toml = format!("server = \"http://{upstream}\"\n");
    for (url, capabilities) in mirrors {
        toml.push_str(&format!(
            "\n[host.\"{url}\"]\n  capabilities = {capabilities}\n"
        ));
    }
    std::fs::create_dir_all(dir.path().join(upstream)).unwrap();
    std::fs::write(dir.path().join(upstream).join("hosts.toml"), toml).unwrap();
    dir
}

async fn node(config: &tempfile::TempDir) -> Imaged {
    Imaged::builder()
        .arg(
            Service::Transfer,
            &format!("--registry-config-dir={}", config.path().display()),
        )
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_go_through_the_mirrors_hosts_toml_lists_and_pushes_do_not() {
    let upstream = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&upstream.fixtures()).await.unwrap();
    let mirror = TestRegistry::start_mirror_of(&upstream.host).await.unwrap();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = hosts_dir(
        &upstream.host,
        &[
            (&dead, r#"["pull", "resolve"]"#),
            (&format!("http://{}", mirror.host), r#"["pull", "resolve"]"#),
        ],
    );
    let app = upstream.fixtures().reference("fixtures/app:1.0");
    let layers = catalog.app.layers.len();

    let first = node(&config).await;
    let before = upstream.blob_gets().len();
    client::pull(first.images(), client::pull_request(&app))
        .await
        .unwrap();
    // The layers and config came through the mirror, which fetched them
    // from the upstream (Distribution's proxy reads each blob there twice:
    // once to answer, once to fill its cache); the dead mirror was said
    // and skipped.
    let from_mirror = mirror.blob_gets();
    assert_eq!(from_mirror.len(), layers + 1, "{from_mirror:#?}");
    assert!(upstream.blob_gets().len() > before);
    assert!(first.logs().contains("mirror failed"), "{}", first.logs());
    let inspected = first
        .images()
        .inspect_image(InspectImageRequest {
            image: app.clone(),
            platform: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inspected.id, catalog.app.id());

    // A second node: the mirror's cache answers, the upstream serves no
    // blob again.
    let second = node(&config).await;
    let upstream_before = upstream.blob_gets().len();
    client::pull(second.images(), client::pull_request(&app))
        .await
        .unwrap();
    assert_eq!(upstream.blob_gets().len(), upstream_before);
    assert_eq!(mirror.blob_gets().len(), 2 * (layers + 1));

    // A push goes to the upstream, never to a mirror.
    let pushed = upstream.fixtures().reference("pushed/app:2");
    first
        .images()
        .tag_image(TagImageRequest {
            source: app.clone(),
            target: pushed.clone(),
        })
        .await
        .unwrap();
    client::push(first.images(), &pushed, false).await.unwrap();
    let (manifest, _) = upstream.manifest(&pushed).await;
    assert!(!manifest.is_empty());
    let writes: Vec<_> = mirror
        .requests()
        .into_iter()
        .filter(|(method, _, _)| method != "GET" && method != "HEAD")
        .collect();
    assert!(writes.is_empty(), "the mirror was written to: {writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_without_resolve_serves_digests_and_a_broken_file_changes_nothing() {
    let upstream = TestRegistry::start().await.unwrap();
    let catalog = imaged_fixtures::catalog().unwrap();
    catalog.push_all(&upstream.fixtures()).await.unwrap();
    let mirror = TestRegistry::start_mirror_of(&upstream.host).await.unwrap();
    let config = hosts_dir(
        &upstream.host,
        &[(&format!("http://{}", mirror.host), r#"["pull"]"#)],
    );
    let imaged = node(&config).await;
    let base = upstream.fixtures().reference("fixtures/base:latest");
    client::pull(imaged.images(), client::pull_request(&base))
        .await
        .unwrap();
    // The tag was resolved upstream; the blobs came from the mirror.
    assert!(mirror.gets("/manifests/latest").is_empty());
    assert!(!upstream.gets("/manifests/latest").is_empty());
    assert_eq!(mirror.blob_gets().len(), 2);

    // A file that does not parse: logged, and pulls go upstream.
    std::fs::write(
        config.path().join(&upstream.host).join("hosts.toml"),
        "[host.\"http://",
    )
    .unwrap();
    let app = upstream.fixtures().reference("fixtures/app:1.0");
    let mirrored = mirror.blob_gets().len();
    client::pull(imaged.images(), client::pull_request(&app))
        .await
        .unwrap();
    assert_eq!(mirror.blob_gets().len(), mirrored);
    assert!(imaged.logs().contains("registry mirrors not used"));
}
