//! The one server bootstrap all four processes use.
//!
//! [`serve`] adds `grpc.health.v1` health and gRPC reflection (v1 and
//! v1alpha) to a process's own services, binds its Unix socket (mode 0660,
//! replacing a stale socket from a crashed run) or TCP address, serves
//! until SIGTERM or SIGINT, and then drains in-flight calls for a bounded
//! time.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::config::{CommonArgs, Service, ServiceConfig};
use crate::endpoint::Endpoint;
use crate::{telemetry, warm};

/// How long in-flight calls may run after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves `routes` (the process's own gRPC services, whose full names are
/// `services`) plus health and reflection, until SIGTERM or SIGINT.
pub async fn serve(
    config: &ServiceConfig,
    routes: Routes,
    services: &[&str],
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in services {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }

    // Reflection lists only what this process serves, though the
    // descriptor set holds every imaged contract.
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(imaged_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .include_reflection_service(false)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for name in services {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let mut routes = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    routes = routes.prepare();
    let mut builder = tonic::transport::Server::builder();
    if let Some(limit) = config.max_requests_per_client {
        builder = builder.concurrency_limit_per_connection(limit);
    }
    if let Some(tls) = &config.tls {
        let mut tls_config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
        match &tls.client_ca {
            Some(ca) => {
                tls_config = tls_config.client_ca_root(tonic::transport::Certificate::from_pem(ca))
            }
            None => tracing::warn!(
                listen = %config.listen,
                "serving TLS to clients without a certificate (--tls-no-client-auth): anyone who can reach the port can use it"
            ),
        }
        builder = builder
            .tls_config(tls_config)
            .context("invalid --tls-cert or --tls-key")?;
    } else if matches!(config.listen, Endpoint::Tcp(_)) {
        tracing::warn!(
            listen = %config.listen,
            "serving TCP without TLS (--insecure-tcp): anyone who can reach the port can use it"
        );
    }
    let router = builder
        .layer(crate::rpc_trace::RpcTraceLayer::server())
        .add_routes(routes);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let process = config.service.process();
    let signalled = async move {
        let signal = shutdown_signal().await;
        tracing::info!(%signal, "shutting down");
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(());
    };
    let stopped = async {
        let _ = stop_rx.await;
    };

    let serving = async {
        match &config.listen {
            Endpoint::Unix(path) => {
                let listener = bind_unix(path, config.socket_gid)?;
                tracing::info!(listen = %config.listen, "{process} serving");
                let result = router
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopped)
                    .await;
                let _ = std::fs::remove_file(path);
                result?;
            }
            Endpoint::Tcp(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                tracing::info!(listen = %config.listen, "{process} serving");
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopped)
                    .await?;
            }
        }
        anyhow::Ok(())
    };

    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => return result,
        () = signalled => {}
    }
    // The signal arrived: give in-flight calls a bounded time to finish.
    match tokio::time::timeout(DRAIN_TIMEOUT, serving).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                "in-flight calls still running after {DRAIN_TIMEOUT:?}; stopping anyway"
            );
            if let Endpoint::Unix(path) = &config.listen {
                let _ = std::fs::remove_file(path);
            }
            Ok(())
        }
    }
}

/// Binds a Unix socket at `path` with mode 0660, owned by group `gid`
/// when given (`--socket-group`). A socket file left by a crashed process
/// is replaced; one a live process still answers on is an error, as is
/// any other file at that path.
pub fn bind_unix(path: &Path, gid: Option<u32>) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "socket {} is in use by a live process; stop it or choose another --listen",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot inspect {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    Ok(listener)
}

/// Resolves on SIGTERM or SIGINT and names which one arrived.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process can only be killed; never
        // resolve so that serving goes on.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// The largest message the processes send each other: a valid image
/// config with many labels or history entries can pass gRPC's default of
/// 4 MiB, and internal calls carry configs whole.
pub const INTERNAL_MESSAGE_LIMIT: usize = 64 << 20;

/// Runs a process's `main`: makes its heap and code ready ([`warm`]),
/// checks its root (a bad one is reported and exits with status 2), sets
/// up telemetry inside a tokio runtime, runs `body`, and turns an error
/// from it into a message and exit status 1.
pub fn run_main<F, Fut>(service: Service, common: &CommonArgs, body: F) -> !
where
    F: FnOnce(ServiceConfig) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let process = service.process();
    // Transfer's pulls use about 5 MiB of buffers; the others answer
    // with far less.
    warm::prepare(match service {
        Service::Transfer => 8 << 20,
        _ => 2 << 20,
    });
    // Both rustls back ends are linked (tonic's TLS uses ring, the registry
    // client aws-lc-rs); TLS servers and clients of ours use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = match common.resolve(service) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{process}: error: {err:#}");
            std::process::exit(2);
        }
    };
    let runtime = match warm::runtime() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{process}: error: cannot start the runtime: {err}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let _telemetry = telemetry::init(process, &config.log)?;
        let _metrics = crate::metrics::init(process, config.metrics_listen.as_ref())?;
        let result = body(config).await;
        if let Err(err) = &result {
            tracing::error!("{err:#}");
        }
        result
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("{process}: error: {err:#}");
            std::process::exit(1);
        }
    }
}
