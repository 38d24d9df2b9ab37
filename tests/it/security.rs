//! The public endpoint's safety: a TCP listener needs TLS (optionally with
//! client certificates) unless --insecure-tcp is given, with a warning;
//! the Unix socket takes a configurable group.

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::Duration;

use imaged_common::config::Service;
use imaged_e2e::{Imaged, bin_dir, free_port};

async fn imagectl(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(bin_dir().join("imagectl"))
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_tls_or_an_explicit_insecure_flag() {
    let imaged = Imaged::builder()
        .only(&[Service::Metadata, Service::Transfer, Service::Events])
        .start()
        .await
        .unwrap();
    let port = free_port();
    let listen = format!("--listen=tcp://127.0.0.1:{port}");

    let info = refused_unless_explicit(
        &imaged,
        &[listen],
        ("without TLS", "--insecure-tcp", "without TLS"),
        &["--host", &format!("tcp://127.0.0.1:{port}")],
    )
    .await;
    assert!(info.contains("Max Concurrent Downloads: 3"), "{info}");
}

/// Starts a gateway with `args`, which must refuse to start (exit 2,
/// saying `says.0`); then with the opt-out flag `says.1` as well, which
/// must answer `imagectl <client> info` and log the warning `says.2`.
/// Answers what `info` printed.
async fn refused_unless_explicit(
    imaged: &Imaged,
    args: &[String],
    says: (&str, &str, &str),
    client: &[&str],
) -> String {
    let (refusal, opt_out, warning) = says;
    let refused = imaged
        .command(Service::Gateway)
        .args(args)
        .output()
        .await
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(refusal), "{stderr}");

    let log = imaged.root().join("logs/explicit-gateway.log");
    let mut gateway = imaged
        .command(Service::Gateway)
        .args(args)
        .arg(opt_out)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut with_info = client.to_vec();
    with_info.push("info");
    let mut answered = None;
    for _ in 0..100 {
        let out = imagectl(&with_info).await;
        if out.status.success() {
            answered = Some(String::from_utf8(out.stdout).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    let info = answered.unwrap_or_else(|| panic!("the gateway {opt_out} never answered: {logged}"));
    assert!(logged.contains(warning), "no warning was logged: {logged}");
    gateway.kill().await.unwrap();
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_certificates_needs_an_explicit_flag() {
    let imaged = Imaged::builder()
        .only(&[Service::Metadata, Service::Transfer, Service::Events])
        .start()
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    imaged_e2e::certs::write(certs.path());
    let path = |name: &str| certs.path().join(name).display().to_string();
    let port = free_port();
    let tls = [
        format!("--listen=tcp://127.0.0.1:{port}"),
        format!("--tls-cert={}", path("server.pem")),
        format!("--tls-key={}", path("server.key")),
    ];
    let ca = path("ca.pem");
    refused_unless_explicit(
        &imaged,
        &tls,
        (
            "--tls-no-client-auth",
            "--tls-no-client-auth",
            "clients without a certificate",
        ),
        &[
            "--host",
            &format!("https://127.0.0.1:{port}"),
            "--tls-ca",
            &ca,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let imaged = Imaged::builder()
        .only(&[Service::Metadata, Service::Transfer, Service::Events])
        .start()
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    imaged_e2e::certs::write(certs.path());
    let path = |name: &str| certs.path().join(name).display().to_string();
    let port = free_port();
    let mut gateway = imaged
        .command(Service::Gateway)
        .arg(format!("--listen=tcp://127.0.0.1:{port}"))
        .arg(format!("--tls-cert={}", path("server.pem")))
        .arg(format!("--tls-key={}", path("server.key")))
        .arg(format!("--tls-client-ca={}", path("ca.pem")))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(imaged.root().join("logs/tls-gateway.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let host = format!("https://127.0.0.1:{port}");
    let (ca, cert, key) = (path("ca.pem"), path("client.pem"), path("client.key"));
    let with_cert = [
        "--host",
        &host,
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "info",
    ];
    let mut answered = false;
    for _ in 0..100 {
        if imagectl(&with_cert).await.status.success() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !answered {
        let out = imagectl(&with_cert).await;
        panic!(
            "the TLS gateway did not answer a client with a certificate: {}\ngateway: {:?} {}",
            String::from_utf8_lossy(&out.stderr),
            gateway.try_wait(),
            std::fs::read_to_string(imaged.root().join("logs/tls-gateway.log")).unwrap_or_default()
        );
    }

    let without = imagectl(&["--host", &host, "--tls-ca", &ca, "info"]).await;
    assert!(
        !without.status.success(),
        "a client without a certificate got in"
    );
    let plain = imagectl(&["--host", &format!("tcp://127.0.0.1:{port}"), "info"]).await;
    assert!(
        !plain.status.success(),
        "plaintext reached the TLS listener"
    );
    gateway.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_takes_the_configured_group() {
    let imaged = Imaged::builder()
        .arg(Service::Gateway, "--socket-group=daemon")
        .start()
        .await
        .unwrap();
    let meta = std::fs::metadata(imaged.socket(Service::Gateway)).unwrap();
    assert_eq!(meta.gid(), 1, "Debian's daemon group");
    assert_eq!(meta.mode() & 0o777, 0o660);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_starve_the_others() {
    use imaged_api::internal::v1::TransferInfoRequest;
    use imaged_api::internal::v1::transfer_client::TransferClient;
    use imaged_api::v1::SystemInfoRequest;
    use imaged_e2e::throttle::Throttle;
    use imaged_fixtures::{Compression, ImageBuilder, LayerBuilder, MediaTypes};

    let registry = imaged_e2e::TestRegistry::start().await.unwrap();
    let mut references = Vec::new();
    let throttle = Throttle::start(&registry.host, 64 * 1024).await.unwrap();
    for seed in 0..2 {
        let image = ImageBuilder::new(MediaTypes::Oci)
            .layer(
                LayerBuilder::new()
                    .dir("data")
                    .generated_files("data", 2, 64 * 1024, 40 + seed)
                    .build(Compression::Gzip)
                    .unwrap(),
            )
            .build()
            .unwrap();
        let repo = format!("fair/image{seed}:latest");
        registry.fixtures().push_image(&repo, &image).await.unwrap();
        references.push(format!("{}/{repo}", throttle.host));
    }
    let imaged = Imaged::builder()
        .arg(Service::Gateway, "--max-requests-per-client=1")
        .start()
        .await
        .unwrap();

    // One client (one connection) asks for two slow pulls at once: with a
    // limit of one request, they run one after the other.
    let greedy = k8s_cri::v1::image_service_client::ImageServiceClient::new(
        imaged.channel(Service::Gateway),
    );
    let pulls: Vec<_> = references
        .iter()
        .map(|reference| {
            let mut client = greedy.clone();
            let request = k8s_cri::v1::PullImageRequest {
                image: Some(k8s_cri::v1::ImageSpec {
                    image: reference.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            tokio::spawn(async move { client.pull_image(request).await })
        })
        .collect();

    // Meanwhile another client is answered at once, and the greedy one
    // never has two pulls downloading.
    let mut transfer = TransferClient::new(imaged.channel(Service::Transfer));
    let mut most = 0;
    let mut other_answered = false;
    while !pulls.iter().all(|p| p.is_finished()) {
        most = most.max(
            transfer
                .info(TransferInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .downloads_in_flight,
        );
        let started = std::time::Instant::now();
        imaged
            .images()
            .system_info(SystemInfoRequest {})
            .await
            .unwrap();
        other_answered |= started.elapsed() < Duration::from_millis(500);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for pull in pulls {
        pull.await.unwrap().unwrap();
    }
    assert_eq!(most, 1, "the greedy client's second request waited");
    assert!(other_answered, "another client was served meanwhile");
}

/// Starts `service` by hand with `args`, its log in `logs/<name>.log`.
fn spawn(imaged: &Imaged, service: Service, args: &[String], name: &str) -> tokio::process::Child {
    imaged
        .command(service)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(imaged.root().join(format!("logs/{name}.log"))).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_peers_dial_tls_with_a_client_certificate() {
    // imaged-metadata on TCP, TLS, client certificates required; the
    // gateway reaches it there, as on another host.
    let imaged = Imaged::builder()
        .only(&[Service::Transfer, Service::Events])
        .start()
        .await
        .unwrap();
    let certs = tempfile::tempdir().unwrap();
    imaged_e2e::certs::write(certs.path());
    let path = |name: &str| certs.path().join(name).display().to_string();
    let port = free_port();
    let mut metadata = spawn(
        &imaged,
        Service::Metadata,
        &[
            format!("--listen=tcp://127.0.0.1:{port}"),
            format!("--tls-cert={}", path("server.pem")),
            format!("--tls-key={}", path("server.key")),
            format!("--tls-client-ca={}", path("ca.pem")),
        ],
        "tls-metadata",
    );
    let gateway_with = |name: &str, identity: bool| {
        let mut args = vec![
            format!("--metadata-addr=tcp://127.0.0.1:{port}"),
            format!("--peer-tls-ca={}", path("ca.pem")),
        ];
        if identity {
            args.push(format!("--peer-tls-cert={}", path("client.pem")));
            args.push(format!("--peer-tls-key={}", path("client.key")));
        }
        args.push(format!(
            "--listen={}",
            imaged.root().join(format!("run/{name}.sock")).display()
        ));
        args.push(format!(
            "--docker-socket={}",
            imaged
                .root()
                .join(format!("run/{name}-docker.sock"))
                .display()
        ));
        spawn(&imaged, Service::Gateway, &args, name)
    };
    let list = |name: &str| {
        let host = format!(
            "unix://{}",
            imaged.root().join(format!("run/{name}.sock")).display()
        );
        async move { imagectl(&["--host", &host, "images"]).await }
    };

    let mut with = gateway_with("gateway-with-cert", true);
    let mut listed = None;
    for _ in 0..100 {
        let out = list("gateway-with-cert").await;
        if out.status.success() {
            listed = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = listed.unwrap_or_else(|| {
        let log = |name: &str| {
            std::fs::read_to_string(imaged.root().join(format!("logs/{name}.log"))).unwrap()
        };
        panic!(
            "the gateway never listed images through TLS metadata:\n{}\n{}",
            log("gateway-with-cert"),
            log("tls-metadata")
        )
    });
    assert!(String::from_utf8_lossy(&listed.stdout).contains("REPOSITORY"));

    // Without a client certificate the peer refuses it.
    let mut without = gateway_with("gateway-without-cert", false);
    // Up (its socket takes connections), then refused by metadata.
    let socket = imaged.root().join("run/gateway-without-cert.sock");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the second gateway never listened");
    let refused = list("gateway-without-cert").await;
    assert!(
        !refused.status.success(),
        "metadata served a peer without a certificate"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("metadata"), "{said}");
    for child in [&mut with, &mut without, &mut metadata] {
        child.kill().await.unwrap();
    }
}
