//! Security, second round: what `--serve-content` gives the network, and
//! what a crowd can cost it. A peer without credentials gets only what
//! this node fetched anonymously; a fleet peer with a certificate the
//! fleet's CA signed gets private blobs too; 2,000 idle connections leave
//! it serving.

use std::time::{Duration, Instant};

use imaged_common::config::Service;
use imaged_e2e::usage::descriptors_and_rss;
use imaged_e2e::{Imaged, TestRegistry, client, one_layer_image as image_of};
use imaged_fixtures::LayerBuilder;

/// `GET http://<address><path>` as a peer without credentials (one
/// request, then the connection closes): the status and the body's bytes,
/// or what went wrong.
async fn anonymous_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match exchange.await {
        Ok(answer) => answer,
        Err(err) => return format!("000 {err}"),
    };
    let Some(split) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return format!("000 no head in {} bytes", answer.len());
    };
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("000");
    format!("{status} {}", answer.len() - split - 4)
}

/// imaged serving its content on a free port of 127.0.0.1, once it
/// answers there.
async fn serving_content() -> (String, Imaged) {
    let address = format!("127.0.0.1:{}", imaged_e2e::free_port());
    let imaged = Imaged::builder()
        .arg(Service::Transfer, &format!("--serve-content={address}"))
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    while !anonymous_get(&address, "/v2/").await.starts_with("200") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve-content never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (address, imaged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_content_gives_an_anonymous_peer_only_what_was_pulled_anonymously() {
    const PASSWORD: &str = "peer-secret-pw";
    let open = TestRegistry::start().await.unwrap();
    let private = TestRegistry::start_with_auth("tenant", PASSWORD)
        .await
        .unwrap();
    let public_image = image_of(LayerBuilder::new().file("pub", b"public bytes"));
    let private_image = image_of(LayerBuilder::new().file("priv", b"private bytes"));
    let loaded_image = image_of(LayerBuilder::new().file("only-here", b"local bytes"));
    open.fixtures()
        .push_image("team/app:1", &public_image)
        .await
        .unwrap();
    private
        .fixtures_as("tenant", PASSWORD)
        .push_image("team/secret:1", &private_image)
        .await
        .unwrap();
    let (address, imaged) = serving_content().await;
    let reference = open.fixtures().reference("team/app:1");
    client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap();
    let request = imaged_api::v1::PullImageRequest {
        auth: Some(imaged_api::v1::RegistryAuth {
            username: "tenant".into(),
            password: PASSWORD.into(),
            ..Default::default()
        }),
        ..client::pull_request(&private.fixtures().reference("team/secret:1"))
    };
    client::pull(imaged.images(), request).await.unwrap();
    let archive = imaged_fixtures::archive::with_linked_layers(&[(&loaded_image, "local/only:1")]);
    client::load(imaged.images(), archive).await.unwrap();

    // What was pulled anonymously: served, under its own repository only.
    let blob = |repository: &str, digest: &str| format!("/v2/{repository}/blobs/{digest}");
    let layer = &public_image.layers[0];
    assert_eq!(
        anonymous_get(&address, &blob("team/app", &layer.digest)).await,
        format!("200 {}", layer.data.len())
    );
    let manifest = format!("/v2/team/app/manifests/{}", public_image.manifest.digest);
    assert!(anonymous_get(&address, &manifest).await.starts_with("200"));
    assert!(
        anonymous_get(&address, &blob("team/secret", &layer.digest))
            .await
            .starts_with("404")
    );

    // Pulled with credentials, or only here: a 404 under any name.
    let hidden = [
        private_image.layers[0].digest.clone(),
        private_image.config.digest.clone(),
        private_image.manifest.digest.clone(),
        loaded_image.layers[0].diff_id.clone(),
        loaded_image.config.digest.clone(),
    ];
    for digest in &hidden {
        for repository in ["team/secret", "team/app", "local/only"] {
            for kind in ["blobs", "manifests"] {
                let path = format!("/v2/{repository}/{kind}/{digest}");
                let answer = anonymous_get(&address, &path).await;
                assert!(answer.starts_with("404"), "{path}: {answer}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_content_survives_a_crowd_of_two_thousand_idle_connections() {
    let registry = TestRegistry::start().await.unwrap();
    let image = image_of(LayerBuilder::new().generated_files("d", 4, 64 << 10, 5));
    registry
        .fixtures()
        .push_image("crowd/app:1", &image)
        .await
        .unwrap();
    let (address, imaged) = serving_content().await;
    let reference = registry.fixtures().reference("crowd/app:1");
    client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap();
    let transfer = imaged.pid(Service::Transfer).unwrap();
    let (fds_before, rss_before) = descriptors_and_rss(transfer);

    // Two thousand connections that never send a byte.
    let mut crowd = Vec::new();
    for _ in 0..2000 {
        match tokio::net::TcpStream::connect(&address).await {
            Ok(stream) => crowd.push(stream),
            Err(err) => panic!("connection {} refused: {err}", crowd.len()),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A real fetch still gets its blob, and gRPC still answers.
    let layer = &image.layers[0];
    let path = format!("/v2/crowd/app/blobs/{}", layer.digest);
    let fetched = tokio::time::timeout(Duration::from_secs(15), anonymous_get(&address, &path))
        .await
        .expect("a fetch waited behind the crowd");
    assert_eq!(fetched, format!("200 {}", layer.data.len()));
    let listed = tokio::time::timeout(Duration::from_secs(15), client::list(imaged.images()))
        .await
        .expect("gRPC stopped answering");
    assert_eq!(listed.len(), 1);
    let (fds, rss) = descriptors_and_rss(transfer);
    assert!(
        fds < fds_before + 600,
        "transfer holds {fds} descriptors, {fds_before} before the crowd"
    );
    assert!(
        rss < rss_before + 64 * 1024,
        "transfer's RSS grew from {rss_before} to {rss} KiB"
    );
    drop(crowd);
}

/// `GET https://<address><path>` with curl, trusting the test CA in
/// `certs`, presenting its client certificate when `fleet`: the status
/// and the bytes received.
async fn tls_get(address: &str, path: &str, certs: &std::path::Path, fleet: bool) -> String {
    let file = |name: &str| certs.join(name).display().to_string();
    let mut curl = tokio::process::Command::new("curl");
    curl.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
    ])
    .args(["--cacert", &file("ca.pem")]);
    if fleet {
        curl.args(["--cert", &file("client.pem"), "--key", &file("client.key")]);
    }
    let out = curl
        .arg(format!("https://{address}{path}"))
        .output()
        .await
        .expect("curl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_peer_with_a_client_certificate_gets_private_blobs_and_no_one_else() {
    const PASSWORD: &str = "fleet-secret-pw";
    let private = TestRegistry::start_with_auth("tenant", PASSWORD)
        .await
        .unwrap();
    let image = image_of(LayerBuilder::new().generated_files("d", 2, 64 << 10, 77));
    private
        .fixtures_as("tenant", PASSWORD)
        .push_image("team/secret:1", &image)
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    imaged_e2e::certs::write(certs.path());
    let file = |name: &str| certs.path().join(name).display().to_string();
    let address = format!("127.0.0.1:{}", imaged_e2e::free_port());
    let node_a = Imaged::builder()
        .arg(Service::Transfer, &format!("--serve-content={address}"))
        .serve_content_tls(certs.path())
        .start()
        .await
        .unwrap();
    let reference = private.fixtures().reference("team/secret:1");
    let with_credentials = || imaged_api::v1::PullImageRequest {
        auth: Some(imaged_api::v1::RegistryAuth {
            username: "tenant".into(),
            password: PASSWORD.into(),
            ..Default::default()
        }),
        ..client::pull_request(&reference)
    };
    client::pull(node_a.images(), with_credentials())
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let answer = tls_get(&address, "/v2/", certs.path(), false).await;
        if answer.starts_with("200") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve-content never answered: {answer}\n{}",
            node_a.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Over TLS without a certificate: private is a 404; with the fleet's
    // certificate: served.
    let layer = &image.layers[0];
    let path = format!("/v2/team/secret/blobs/{}", layer.digest);
    let anonymous = tls_get(&address, &path, certs.path(), false).await;
    assert!(anonymous.starts_with("404"), "{anonymous}");
    let fleet = tls_get(&address, &path, certs.path(), true).await;
    assert_eq!(fleet, format!("200 {}", layer.data.len()));

    // Node B lists A as a mirror with the fleet's certificate (containerd's
    // `client` key) and pulls the same private image: its layer comes
    // from A, not from the registry.
    let hosts = tempfile::tempdir().unwrap();
    let dir = hosts.path().join(&private.host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"https://{address}\"]\n  capabilities = [\"pull\"]\n  ca = \"{}\"\n  client = [[\"{}\", \"{}\"]]\n",
            private.host,
            file("ca.pem"),
            file("client.pem"),
            file("client.key")
        ),
    )
    .unwrap();
    let node_b = Imaged::builder()
        .arg(
            Service::Transfer,
            &format!("--registry-config-dir={}", hosts.path().display()),
        )
        .start()
        .await
        .unwrap();
    let layer_gets = |registry: &TestRegistry| {
        registry
            .blob_gets()
            .iter()
            .filter(|path| path.contains(&layer.digest))
            .count()
    };
    let before = layer_gets(&private);
    client::pull(node_b.images(), with_credentials())
        .await
        .unwrap();
    assert_eq!(
        layer_gets(&private),
        before,
        "node B fetched the layer upstream"
    );
    // What B fetched from an authenticated peer is not public on B.
    let public = node_b.root().join("transfer/content/public");
    let marked = std::fs::read_dir(&public).map_or(0, |d| d.count());
    assert_eq!(marked, 0, "a private blob became public on node B");
}
