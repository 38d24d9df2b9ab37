//! Security, second round, against the four real processes and a real
//! registry: what a hostile registry or a hostile layer can cost a node.
//! A registry that accepts a blob request and never answers must not hold
//! a download slot past the stall timeout; a GNU sparse layer with a 1 TiB
//! hole must cost what it stores, on pull, load and import.

use std::time::{Duration, Instant};

use imaged_common::config::Service;
use imaged_e2e::front::{Answer, Front};
use imaged_e2e::{Imaged, TestRegistry, client};
use imaged_fixtures::{Compression, Image, ImageBuilder, LayerBuilder, MediaTypes};
use tonic::Code;

const TIB: u64 = 1 << 40;

fn image_of(layer: LayerBuilder) -> Image {
    ImageBuilder::new(MediaTypes::Oci)
        .layer(layer.build(Compression::Gzip).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_a_registry_never_answers_hold_no_slot_past_the_stall_timeout() {
    let registry = TestRegistry::start().await.unwrap();
    let hostile: Vec<Image> = (0..3)
        .map(|n| image_of(LayerBuilder::new().generated_files("d", 2, 4096, 100 + n)))
        .collect();
    for (n, image) in hostile.iter().enumerate() {
        registry
            .fixtures()
            .push_image(&format!("never/app{n}:latest"), image)
            .await
            .unwrap();
    }
    let fine = image_of(LayerBuilder::new().generated_files("d", 2, 4096, 7));
    registry
        .fixtures()
        .push_image("fine/app:latest", &fine)
        .await
        .unwrap();
    let front = Front::start(&registry.host).await.unwrap();
    for image in &hostile {
        let path = format!("/blobs/{}", image.layers[0].digest);
        front.rule("GET", &path, Answer::Unanswered, usize::MAX);
    }
    // Three slots (the default), a 2 s stall timeout, two tries a layer.
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--stall-timeout-secs=2")
        .arg(Service::Transfer, "--max-download-attempts=2")
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let mut stuck = Vec::new();
    for n in 0..3 {
        let reference = format!("{}/never/app{n}:latest", front.host);
        let images = imaged.images();
        stuck.push(tokio::spawn(async move {
            client::pull(images, client::pull_request(&reference)).await
        }));
    }
    // Until all three hold a slot, waiting for an answer.
    while front
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("/blobs/"))
        .count()
        < 3
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            front.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reference = format!("{}/fine/app:latest", front.host);
    let pulled = tokio::time::timeout(
        Duration::from_secs(30),
        client::pull(imaged.images(), client::pull_request(&reference)),
    )
    .await
    .expect("the fourth pull waited behind layers that never answer")
    .unwrap();
    assert_eq!(pulled.last().unwrap().image_id, fine.id());
    for pulling in stuck {
        let err = tokio::time::timeout(Duration::from_secs(30), pulling)
            .await
            .expect("a never-answered layer held its pull past its tries")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
        assert!(err.message().contains("no answer within 2s"), "{err}");
    }
}

/// A layer holding one GNU sparse file of 1 TiB: data at each end and a
/// hole between, a few KiB of tar.
fn hole() -> LayerBuilder {
    let mut head = b"head".to_vec();
    head.resize(512, 0); // every block but the last fills its 512 bytes
    LayerBuilder::new().sparse_file("hole", &[(0, &head), (TIB - 4, b"tail")], TIB)
}

/// The apparent size of `/hole` in every stored layer of `imaged`.
fn stored_holes(imaged: &Imaged) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    let layers = imaged.root().join("transfer/layers");
    for entry in std::fs::read_dir(&layers).unwrap().flatten() {
        let path = entry.path().join("diff/hole");
        if let Ok(meta) = std::fs::metadata(&path) {
            found.push((
                meta.len(),
                std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
            ));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_tib_hole_costs_what_it_stores_on_pull_load_and_import() {
    let registry = TestRegistry::start().await.unwrap();
    let image = image_of(hole());
    registry
        .fixtures()
        .push_image("sparse/app:latest", &image)
        .await
        .unwrap();
    // A layer may be 2 TiB here; the hole alone is 1 TiB.
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--max-layer-size=2199023255552")
        .start()
        .await
        .unwrap();

    // Each operation read the hole as zeros before: 7 minutes a TiB.
    let reference = registry.fixtures().reference("sparse/app:latest");
    let started = Instant::now();
    client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap();
    let pull = started.elapsed();

    // Each operation has a layer of its own, so each unpacks one.
    let loaded = image_of(hole().file("loaded", b"x"));
    let archive = imaged_e2e::archive::with_linked_layers(&[(&loaded, "sparse/loaded:latest")]);
    let started = Instant::now();
    client::load(imaged.images(), archive).await.unwrap();
    let load = started.elapsed();

    // A file that ends in a hole: its map ends with an empty block there.
    let rootfs = hole().sparse_file("other", &[(0, &[7u8; 512]), (TIB / 2, b"")], TIB / 2);
    let tar = rootfs.build(Compression::None).unwrap().tar().unwrap();
    let started = Instant::now();
    client::import(imaged.images(), "sparse/imported:latest", &tar)
        .await
        .unwrap();
    let import = started.elapsed();

    for (what, took) in [("pull", pull), ("load", load), ("import", import)] {
        assert!(took < Duration::from_secs(20), "{what} took {took:?}");
    }
    let holes = stored_holes(&imaged);
    assert!(!holes.is_empty(), "no layer holds the hole");
    for (length, on_disk) in holes {
        assert_eq!(length, TIB);
        assert!(on_disk < 1 << 20, "{on_disk} bytes on disk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_past_the_layer_limit_is_refused_at_once() {
    let registry = TestRegistry::start().await.unwrap();
    let image = image_of(hole());
    registry
        .fixtures()
        .push_image("sparse/big:latest", &image)
        .await
        .unwrap();
    let imaged = Imaged::start().await.unwrap();
    let reference = registry.fixtures().reference("sparse/big:latest");
    let started = Instant::now();
    let err = client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(stored_holes(&imaged).is_empty());
}

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
    let address = format!("127.0.0.1:{}", imaged_e2e::free_port());
    let imaged = Imaged::builder()
        .arg(Service::Transfer, &format!("--serve-content={address}"))
        .start()
        .await
        .unwrap();
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
    let archive = imaged_e2e::archive::with_linked_layers(&[(&loaded_image, "local/only:1")]);
    client::load(imaged.images(), archive).await.unwrap();
    // Serving starts with the process; wait until it answers.
    let started = Instant::now();
    while !anonymous_get(&address, "/v2/").await.starts_with("200") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "serve-content never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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

/// Open descriptors and resident KiB of process `pid`.
fn descriptors_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
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
    let address = format!("127.0.0.1:{}", imaged_e2e::free_port());
    let imaged = Imaged::builder()
        .arg(Service::Transfer, &format!("--serve-content={address}"))
        .start()
        .await
        .unwrap();
    let reference = registry.fixtures().reference("crowd/app:1");
    client::pull(imaged.images(), client::pull_request(&reference))
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

/// Pulls `reference`, which must fail within seconds with `code`, a
/// message that says `says`, and no more than a few lines of it.
async fn refused_promptly(imaged: &Imaged, reference: &str, code: Code, says: &str) {
    let started = Instant::now();
    let err = client::pull(imaged.images(), client::pull_request(reference))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(err.code(), code, "{err}");
    assert!(err.message().contains(says), "{err}");
    let length = err.message().len();
    assert!(length < 600, "{length} bytes of message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_token_and_error_bodies_fail_the_pull_promptly_with_a_short_message() {
    let registry = TestRegistry::start().await.unwrap();
    let image = image_of(LayerBuilder::new().file("f", b"bytes"));
    registry
        .fixtures()
        .push_image("flood/app:1", &image)
        .await
        .unwrap();
    let front = Front::start(&registry.host).await.unwrap();
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--max-download-attempts=1")
        .start()
        .await
        .unwrap();
    let transfer = imaged.pid(Service::Transfer).unwrap();
    let (_, rss_before) = descriptors_and_rss(transfer);
    let reference = format!("{}/flood/app:1", front.host);
    let flood = |status: u16, headers: Vec<(String, String)>| Answer::Flood {
        status,
        headers,
        chunk: b"{\"token\":\"".repeat(6554),
    };

    // The manifest asks for a token; the realm (this registry, loopback,
    // plain HTTP: allowed) answers a body that never ends.
    let challenge = format!(
        "Bearer realm=\"http://{}/token\",service=\"flood\"",
        front.host
    );
    front.rule(
        "GET",
        "/manifests/1",
        Answer::Body {
            status: 401,
            headers: vec![("WWW-Authenticate".into(), challenge)],
            body: b"{}".to_vec(),
        },
        1,
    );
    front.rule("GET", "/token", flood(200, Vec::new()), 1);
    refused_promptly(&imaged, &reference, Code::Unauthenticated, "larger than").await;

    // A layer answered 500 with a body that never ends.
    let blob = format!("/blobs/{}", image.layers[0].digest);
    front.rule("GET", &blob, flood(500, Vec::new()), 1);
    refused_promptly(&imaged, &reference, Code::Unavailable, "500").await;

    let (_, rss) = descriptors_and_rss(transfer);
    assert!(
        rss < rss_before + 64 * 1024,
        "transfer's RSS grew from {rss_before} to {rss} KiB"
    );
    // Nothing of either is kept, and an honest pull still works.
    let pulled = client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap();
    assert_eq!(pulled.last().unwrap().image_id, image.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_larger_than_a_layer_may_be_is_refused_as_it_arrives() {
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--max-layer-size=1048576")
        .start()
        .await
        .unwrap();
    // 4 MiB of files: past the 1 MiB a layer may take here.
    let tar = LayerBuilder::new()
        .generated_files("d", 4, 1 << 20, 9)
        .build(Compression::None)
        .unwrap()
        .tar()
        .unwrap();
    let err = client::import(imaged.images(), "big/import:1", &tar)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(client::list(imaged.images()).await.is_empty());
    let staging = imaged.root().join("transfer/staging");
    if let Ok(entries) = std::fs::read_dir(&staging) {
        let left: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        assert!(left.is_empty(), "left in staging: {left:?}");
    }
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
        .arg(
            Service::Transfer,
            &format!("--serve-content-tls-cert={}", file("server.pem")),
        )
        .arg(
            Service::Transfer,
            &format!("--serve-content-tls-key={}", file("server.key")),
        )
        .arg(
            Service::Transfer,
            &format!("--serve-content-tls-client-ca={}", file("ca.pem")),
        )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_registry_whose_realm_is_plain_http_is_refused_before_the_realm_is_asked() {
    use imaged_common::http as side;
    let certs = tempfile::tempdir().unwrap();
    imaged_e2e::certs::write(certs.path());
    let read = |name: &str| std::fs::read(certs.path().join(name)).unwrap();
    // The realm: plain HTTP on loopback, counting who reaches it.
    let realm = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let realm_address = realm.local_addr().unwrap();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = std::sync::Arc::clone(&reached);
    let realm_task = tokio::spawn(async move {
        while let Ok(_connection) = realm.accept().await {
            counting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // The registry: TLS on loopback, asking every request for a token
    // from that realm.
    let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_address = registry.local_addr().unwrap();
    let challenge = format!("Bearer realm=\"http://{realm_address}/token\",service=\"evil\"");
    let service = tower::service_fn(move |_request: http::Request<side::Incoming>| {
        let challenge = challenge.clone();
        async move {
            let answer = http::Response::builder()
                .status(401)
                .header("WWW-Authenticate", challenge)
                .body(String::from("{}"))
                .unwrap();
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    let acceptor =
        side::tls_acceptor(&read("server.pem"), &read("server.key"), &read("ca.pem")).unwrap();
    let listener = side::Listener::Tls(registry, acceptor);
    let registry_task = tokio::spawn(side::serve(listener, service, side::Limits::default()));
    // imaged trusts the registry's CA through its hosts.toml.
    let hosts = tempfile::tempdir().unwrap();
    let host = registry_address.to_string();
    let dir = hosts.path().join(&host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  ca = \"{}\"\n",
            certs.path().join("ca.pem").display()
        ),
    )
    .unwrap();
    let imaged = Imaged::builder()
        .arg(
            Service::Transfer,
            &format!("--registry-config-dir={}", hosts.path().display()),
        )
        .arg(Service::Transfer, "--max-download-attempts=1")
        .start()
        .await
        .unwrap();
    let reference = format!("{host}/evil/app:1");
    let err = client::pull(imaged.images(), client::pull_request(&reference))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let logs = imaged.logs();
    assert!(
        logs.contains("is plain HTTP, but the registry is reached over TLS"),
        "{err}\n{logs}"
    );
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the realm was reached"
    );
    registry_task.abort();
    realm_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_gets_its_token_through_the_same_bounded_exchange() {
    let registry = TestRegistry::start().await.unwrap();
    let image = image_of(LayerBuilder::new().file("p", b"pushed"));
    registry
        .fixtures()
        .push_image("src/app:1", &image)
        .await
        .unwrap();
    let front = Front::start(&registry.host).await.unwrap();
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--max-download-attempts=1")
        .start()
        .await
        .unwrap();
    client::pull(
        imaged.images(),
        client::pull_request(&registry.fixtures().reference("src/app:1")),
    )
    .await
    .unwrap();
    let target = format!("{}/dst/app:1", front.host);
    imaged
        .images()
        .tag_image(imaged_api::v1::TagImageRequest {
            source: registry.fixtures().reference("src/app:1"),
            target: target.clone(),
        })
        .await
        .unwrap();
    let challenge = format!(
        "Bearer realm=\"http://{}/token\",service=\"reg\"",
        front.host
    );
    let ask_for_a_token = || Answer::Body {
        status: 401,
        headers: vec![("WWW-Authenticate".into(), challenge.clone())],
        body: b"{}".to_vec(),
    };

    // A realm that answers a token: the push carries it.
    front.rule("GET", "/v2/", ask_for_a_token(), 1);
    front.rule(
        "GET",
        "/token",
        Answer::Body {
            status: 200,
            headers: vec![],
            body: br#"{"token":"t0ken"}"#.to_vec(),
        },
        1,
    );
    client::push(imaged.images(), &target, false).await.unwrap();
    let asked = front.requests();
    let token_request = asked.iter().find(|r| r.contains("/token")).unwrap();
    assert!(
        token_request.contains("pull%2Cpush") || token_request.contains("pull,push"),
        "{token_request}"
    );

    // A realm whose answer never ends: the push fails at once, shortly.
    front.rule("GET", "/v2/", ask_for_a_token(), 1);
    front.rule(
        "GET",
        "/token",
        Answer::Flood {
            status: 200,
            headers: vec![],
            chunk: vec![b'x'; 64 * 1024],
        },
        1,
    );
    let started = Instant::now();
    let err = client::push(imaged.images(), &target, false)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.message().contains("larger than"), "{err}");
}
