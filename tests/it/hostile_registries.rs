//! Security, second round: what a hostile registry can cost a node,
//! against the four real processes and a real registry behind a front
//! that answers as a hostile one would. A blob request never answered
//! holds no download slot past the stall timeout; token answers and error
//! bodies that never end fail a pull or push at once with a short
//! message; a token realm is checked before anything is sent to it.

use std::time::{Duration, Instant};

use imaged_common::config::Service;
use imaged_e2e::front::{Answer, Front};
use imaged_e2e::usage::descriptors_and_rss;
use imaged_e2e::{Imaged, TestRegistry, client, one_layer_image as image_of};
use imaged_fixtures::{Image, LayerBuilder};
use tonic::Code;

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

/// A registry holding a one-file image as `reference`, a front before
/// it, and imaged trying each registry call once.
async fn behind_a_front(reference: &str) -> (TestRegistry, Image, Front, Imaged) {
    let registry = TestRegistry::start().await.unwrap();
    let image = image_of(LayerBuilder::new().file("f", reference.as_bytes()));
    registry
        .fixtures()
        .push_image(reference, &image)
        .await
        .unwrap();
    let front = Front::start(&registry.host).await.unwrap();
    let imaged = Imaged::builder()
        .arg(Service::Transfer, "--max-download-attempts=1")
        .start()
        .await
        .unwrap();
    (registry, image, front, imaged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_token_and_error_bodies_fail_the_pull_promptly_with_a_short_message() {
    let (_registry, image, front, imaged) = behind_a_front("flood/app:1").await;
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
    let (registry, _image, front, imaged) = behind_a_front("src/app:1").await;
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
