//! Metrics as an operator reads them: imaged-run serves the four
//! processes' metrics on one address, labelled by process, in the
//! Prometheus text format, parsed here by Python's `prometheus_client`.
//! The pull counters move with a pull, downloads show in flight during
//! it, CRI calls are timed by method, events and store sizes are there.

use std::process::Stdio;
use std::time::{Duration, Instant};

use imaged_api::v1::images_client::ImagesClient;
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::Peer;
use imaged_e2e::throttle::Throttle;
use imaged_e2e::{TestRegistry, bin_dir, client, die_with_parent, free_port};
use imaged_fixtures::{Compression, ImageBuilder, LayerBuilder, MediaTypes};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// One sample: name, labels, value.
type Sample = (String, serde_json::Map<String, serde_json::Value>, f64);

/// The page at `addr`, parsed by prometheus_client.
async fn scrape(addr: &str) -> Vec<Sample> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, page) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(" 200 "), "{head}");
    let mut parser = Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .await
        .unwrap();
    let out = parser.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the page: {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<(String, serde_json::Map<String, serde_json::Value>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    parsed
}

/// The sum of the samples named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(|x| x.as_str()) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaged_run_serves_every_process_metrics_and_they_move_with_a_pull() {
    let registry = TestRegistry::start().await.unwrap();
    let mut builder = ImageBuilder::new(MediaTypes::Oci);
    for i in 0..2 {
        builder = builder.layer(
            LayerBuilder::new()
                .generated_files("data", 4, 128 * 1024, 70 + i)
                .build(Compression::Gzip)
                .unwrap(),
        );
    }
    let image = builder.build().unwrap();
    registry
        .fixtures()
        .push_image("metrics/app:1", &image)
        .await
        .unwrap();
    let throttle = Throttle::start(&registry.host, 256 * 1024).await.unwrap();

    let root = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(bin_dir().join("imaged-run"));
    command
        .arg("--root")
        .arg(root.path())
        .arg("--metrics-listen")
        .arg(format!("tcp://{addr}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let mut run = command.spawn().unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("imaged is ready") {
                return;
            }
        }
        panic!("imaged-run ended without becoming ready");
    })
    .await
    .expect("imaged-run not ready in time");
    let gateway = Peer::new(
        Service::Gateway,
        Endpoint::Unix(root.path().join("run/gateway.sock")),
    )
    .unwrap();

    let before = scrape(&addr).await;
    let mut processes: Vec<&str> = before
        .iter()
        .filter_map(|(_, l, _)| l.get("process")?.as_str())
        .collect();
    processes.sort();
    processes.dedup();
    assert_eq!(
        processes,
        [
            "imaged-events",
            "imaged-gateway",
            "imaged-metadata",
            "imaged-transfer"
        ]
    );
    assert_eq!(
        value(&before, "imaged_pulls_total", &[("outcome", "ok")]),
        0.0
    );

    let reference = format!("{}/metrics/app:1", throttle.host);
    let pulling = tokio::spawn(client::pull(
        ImagesClient::new(gateway.channel()),
        client::pull_request(&reference),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let during = scrape(&addr).await;
        if value(&during, "imaged_downloads_in_flight", &[]) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no download showed in flight");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pulling.await.unwrap().unwrap();

    let mut cri = k8s_cri::v1::image_service_client::ImageServiceClient::new(gateway.channel());
    cri.image_status(k8s_cri::v1::ImageStatusRequest {
        image: Some(k8s_cri::v1::ImageSpec {
            image: reference.clone(),
            ..Default::default()
        }),
        verbose: false,
    })
    .await
    .unwrap();
    // Events reach imaged-events shortly after the pull's answer.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let after = scrape(&addr).await;
    let transfer = ("process", "imaged-transfer");
    assert_eq!(
        value(&after, "imaged_pulls_total", &[transfer, ("outcome", "ok")]),
        1.0
    );
    assert!(value(&after, "imaged_pull_bytes_total", &[transfer]) > 200_000.0);
    assert_eq!(
        value(
            &after,
            "imaged_pull_duration_count",
            &[transfer, ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "imaged_downloads_in_flight", &[transfer]),
        0.0
    );
    assert!(value(&after, "imaged_layers_bytes", &[transfer]) > 0.0);
    assert!(value(&after, "imaged_content_bytes", &[transfer]) > 0.0);
    assert!(
        value(
            &after,
            "rpc_server_duration_count",
            &[
                ("process", "imaged-gateway"),
                ("rpc_service", "runtime.v1.ImageService"),
                ("rpc_method", "ImageStatus"),
            ]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "imaged_events_published_total",
            &[("process", "imaged-events")]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "imaged_events_log_events",
            &[("process", "imaged-events")]
        ) >= 1.0
    );
    run.kill().await.unwrap();
}
