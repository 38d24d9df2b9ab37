//! The foundation: four processes that start, talk and stop together.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use imaged_api::v1::{InspectImageRequest, SystemInfoRequest, TagImageRequest};
use imaged_common::config::Service;
use imaged_e2e::{Collector, Imaged, bin_dir};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// The full gRPC names each process serves besides health and reflection.
fn own_services(service: Service) -> &'static [&'static str] {
    match service {
        Service::Metadata => &["imaged.internal.v1.Metadata"],
        Service::Transfer => &["imaged.internal.v1.Transfer"],
        Service::Events => &["imaged.internal.v1.EventLog"],
        Service::Gateway => &[
            "imaged.v1.Events",
            "imaged.v1.Images",
            "imaged.v1.Layers",
            "imaged.v1.Registries",
            "runtime.v1.ImageService",
        ],
    }
}

async fn reflection_list(imaged: &Imaged, service: Service) -> Vec<String> {
    let mut client = ServerReflectionClient::new(imaged.channel(service));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn system_info_gathers_all_three_services() {
    let imaged = Imaged::start().await.unwrap();
    let info = imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.images, 0);
    assert_eq!(
        (
            info.max_concurrent_downloads,
            info.max_concurrent_uploads,
            info.max_download_attempts
        ),
        (3, 5, 5)
    );
    assert!(
        ["overlay2", "vfs"].contains(&info.storage_driver.as_str()),
        "{}",
        info.storage_driver
    );
    assert_eq!(info.layer_store_status[0].key, "Backing Filesystem");
    let log = info.event_log.expect("event log state");
    assert_eq!(log.subscribers, 0);
}

#[tokio::test]
async fn every_process_serves_health_and_reflection_on_a_0660_socket() {
    let imaged = Imaged::start().await.unwrap();
    for service in Service::ALL {
        let socket = imaged.socket(service);
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o660,
            "{}",
            socket.display()
        );

        let mut health = HealthClient::new(imaged.channel(service));
        for name in std::iter::once("").chain(own_services(service).iter().copied()) {
            let status = health
                .check(HealthCheckRequest {
                    service: name.to_string(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{service:?} {name:?}"
            );
        }
        let unknown = health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);

        let listed = reflection_list(&imaged, service).await;
        let mut expected = vec![
            "grpc.health.v1.Health".to_string(),
            "grpc.reflection.v1.ServerReflection".to_string(),
            "grpc.reflection.v1alpha.ServerReflection".to_string(),
        ];
        expected.extend(own_services(service).iter().map(|s| s.to_string()));
        expected.sort();
        assert_eq!(listed, expected, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_describes_the_public_api() {
    let imaged = Imaged::start().await.unwrap();
    let mut client = ServerReflectionClient::new(imaged.channel(Service::Gateway));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "imaged.v1.Images".to_string(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("no descriptor for imaged.v1.Images");
    };
    let all: Vec<u8> = files.file_descriptor_proto.concat();
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("SystemInfo"), "descriptor lacks SystemInfo");
    assert!(text.contains("imaged/v1/images.proto"));
}

#[tokio::test]
async fn one_trace_spans_all_four_processes() {
    let collector = Collector::start().await.unwrap();
    let mut imaged = Imaged::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
        .start()
        .await
        .unwrap();
    imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap();
    // Stopping flushes every process's exporter.
    imaged.terminate_all().await.unwrap();

    let spans = collector.spans();
    let root = spans
        .iter()
        .find(|s| s.service == "imaged-gateway" && s.name.contains("SystemInfo"))
        .unwrap_or_else(|| panic!("no gateway SystemInfo span in {spans:#?}"));
    let mut services: Vec<&str> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .map(|s| s.service.as_str())
        .collect();
    services.sort();
    services.dedup();
    assert_eq!(
        services,
        vec![
            "imaged-events",
            "imaged-gateway",
            "imaged-metadata",
            "imaged-transfer"
        ],
        "spans: {spans:#?}"
    );
}

#[tokio::test]
async fn a_peer_that_is_down_is_unavailable_by_name_and_comes_back() {
    let mut imaged = Imaged::start().await.unwrap();
    imaged.kill(Service::Events).await;
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        imaged.images().system_info(SystemInfoRequest {}),
    )
    .await
    .expect("SystemInfo hung while imaged-events was down")
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("imaged-events"), "{}", err.message());

    // The stale socket of the killed process is replaced on restart, and
    // the gateway reconnects on its own.
    assert!(imaged.socket(Service::Events).exists());
    imaged.start_service(Service::Events).await.unwrap();
    imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn processes_start_in_any_order() {
    let mut imaged = Imaged::builder()
        .only(&[Service::Gateway])
        .start()
        .await
        .unwrap();
    let err = imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    for service in [Service::Transfer, Service::Metadata, Service::Events] {
        imaged.start_service(service).await.unwrap();
    }
    let info = imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.max_concurrent_downloads, 3);
}

#[tokio::test]
async fn sigterm_stops_a_process_cleanly_and_removes_its_socket() {
    let mut imaged = Imaged::start().await.unwrap();
    let status = imaged.terminate(Service::Metadata).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(!imaged.socket(Service::Metadata).exists());
}

#[tokio::test]
async fn a_socket_in_use_by_a_live_process_is_refused() {
    let imaged = Imaged::start().await.unwrap();
    // Another imaged-events, with its own root, told to listen on the
    // live process's socket.
    let other_root = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(bin_dir().join("imaged-events"))
        .arg(format!("--root={}", other_root.path().display()))
        .arg(format!(
            "--listen={}",
            imaged.socket(Service::Events).display()
        ))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by a live process"), "{stderr}");
    // A second process on the same root cannot take the stores.
    for service in [Service::Metadata, Service::Events] {
        let output = imaged.command(service).output().await.unwrap();
        assert!(!output.status.success(), "{service:?} started twice");
    }
    // The first one still serves.
    imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn limits_come_from_flags_environment_and_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    // One file for all four processes: transfer reads the top and its own
    // section, not the gateway's (a TCP listener without TLS would stop it).
    let config = dir.path().join("imaged.toml");
    std::fs::write(
        &config,
        "log = \"info\"\n[transfer]\nmax-concurrent-downloads = 7\nmax_concurrent_uploads = 2\nmax-download-attempts = 4\n[gateway]\nlisten = \"tcp://127.0.0.1:1\"\n",
    )
    .unwrap();
    let imaged = Imaged::builder()
        .arg(Service::Transfer, &format!("--config={}", config.display()))
        .arg(Service::Transfer, "--max-download-attempts=9")
        .env("IMAGED_MAX_CONCURRENT_UPLOADS", "6")
        .start()
        .await
        .unwrap();
    let info = imaged
        .images()
        .system_info(SystemInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    // File for downloads; environment beats the file; the flag beats both.
    assert_eq!(
        (
            info.max_concurrent_downloads,
            info.max_concurrent_uploads,
            info.max_download_attempts
        ),
        (7, 6, 9)
    );
}

async fn run_fails(args: &[&str], expect: &str) {
    let output = tokio::process::Command::new(bin_dir().join("imaged-transfer"))
        .args(args)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} started: {stderr}");
    assert!(stderr.contains(expect), "{args:?}: {stderr}");
}

#[tokio::test]
async fn bad_configuration_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root_arg = format!("--root={}", root.display());
    run_fails(
        &[&root_arg, "--max-concurrent-downloads=-1"],
        "invalid value '-1'",
    )
    .await;
    run_fails(
        &[&root_arg, "--max-download-attempts=0"],
        "invalid value '0'",
    )
    .await;
    run_fails(&[&root_arg, "--listen=http://x:1"], "unsupported address").await;

    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let bad_root = format!("--root={}", file.join("root").display());
    run_fails(&[&bad_root], "is not usable").await;

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "max-concurent-downloads = 3\n").unwrap();
    let config_arg = format!("--config={}", config.display());
    run_fails(
        &[&root_arg, &config_arg],
        "unknown option \"max-concurent-downloads\"",
    )
    .await;
    run_fails(
        &[&root_arg, "--config=/nonexistent/imaged.toml"],
        "cannot read config file",
    )
    .await;
}

/// The contracts work for other languages: a Python client generated from
/// `proto/` with grpcio-tools talks to the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_proto_works() {
    let imaged = Imaged::start().await.unwrap();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .arg(manifest.join("python/imaged_client.py"))
        .arg(manifest.join("../proto"))
        .arg(imaged.socket(Service::Gateway))
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "python client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One PullImage is one trace tree across the four processes: the
/// gateway's server span, its client span, transfer's server span and the
/// pull's own span (reference, digest, bytes), metadata's PutImage and the
/// events' Publish, all in the trace, each with the RPC conventions; the
/// PullImage server span lasts as long as the pull. A TagImage's Publish
/// joins its trace too, and a NOT_FOUND is an error span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_and_a_tag_are_each_one_trace_tree() {
    let registry = imaged_e2e::TestRegistry::start().await.unwrap();
    let image = imaged_fixtures::ImageBuilder::new(imaged_fixtures::MediaTypes::Oci)
        .layer(
            imaged_fixtures::LayerBuilder::new()
                .generated_files("data", 4, 64 * 1024, 3)
                .build(imaged_fixtures::Compression::Gzip)
                .unwrap(),
        )
        .build()
        .unwrap();
    registry
        .fixtures()
        .push_image("traced/app:1", &image)
        .await
        .unwrap();
    let collector = Collector::start().await.unwrap();
    let mut imaged = Imaged::builder()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
        .start()
        .await
        .unwrap();
    let reference = registry.fixtures().reference("traced/app:1");
    imaged_e2e::client::pull(
        imaged.images(),
        imaged_e2e::client::pull_request(&reference),
    )
    .await
    .unwrap();
    imaged
        .images()
        .tag_image(TagImageRequest {
            source: reference.clone(),
            target: "traced/app:tagged".into(),
        })
        .await
        .unwrap();
    let missing = imaged
        .images()
        .inspect_image(InspectImageRequest {
            image: "traced/missing:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // Events are published after the answers; let them go, then stopping
    // flushes every process's exporter.
    tokio::time::sleep(Duration::from_millis(500)).await;
    imaged.terminate_all().await.unwrap();
    let spans = collector.spans();
    let find = |service: &str, name: &str, trace: Option<&str>| {
        spans
            .iter()
            .find(|s| {
                s.service == service && s.name == name && trace.is_none_or(|t| s.trace_id == t)
            })
            .unwrap_or_else(|| panic!("no {service} span {name}: {spans:#?}"))
    };

    let root = find("imaged-gateway", "imaged.v1.Images/PullImage", None);
    assert_eq!(root.parent_span_id, "", "the PullImage span is the root");
    assert_eq!(root.kind, 2, "server");
    assert_eq!(root.attr("rpc.system"), Some("grpc"));
    assert_eq!(root.attr("rpc.service"), Some("imaged.v1.Images"));
    assert_eq!(root.attr("rpc.method"), Some("PullImage"));
    assert_eq!(root.attr("rpc.grpc.status_code"), Some("0"));
    let trace = Some(root.trace_id.as_str());
    let client = find("imaged-gateway", "imaged.internal.v1.Transfer/Pull", trace);
    assert_eq!(client.kind, 3, "client");
    assert_eq!(client.parent_span_id, root.span_id);
    let server = find("imaged-transfer", "imaged.internal.v1.Transfer/Pull", trace);
    assert_eq!(server.parent_span_id, client.span_id);
    let pull = find("imaged-transfer", "pull", trace);
    assert_eq!(pull.attr("image.reference"), Some(reference.as_str()));
    assert!(
        pull.attr("image.manifest_digest")
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert!(pull.attr("image.bytes").is_some_and(|b| b != "0"));
    find(
        "imaged-metadata",
        "imaged.internal.v1.Metadata/PutImage",
        trace,
    );
    find(
        "imaged-events",
        "imaged.internal.v1.EventLog/Publish",
        trace,
    );
    assert!(
        root.end_nanos >= pull.end_nanos,
        "the PullImage server span ended before the pull did"
    );

    let tag = find("imaged-gateway", "imaged.v1.Images/TagImage", None);
    find(
        "imaged-events",
        "imaged.internal.v1.EventLog/Publish",
        Some(&tag.trace_id),
    );

    let inspect = find("imaged-gateway", "imaged.v1.Images/InspectImage", None);
    assert_eq!(inspect.attr("rpc.grpc.status_code"), Some("5"));
    assert_eq!(inspect.status, 2, "a NOT_FOUND is an error span");
}
