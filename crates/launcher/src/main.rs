//! imaged-run: starts the four imaged processes on one root, waits until
//! each answers its health check, and stops them together.
//!
//! SIGTERM or SIGINT stops all four (SIGKILL after a grace period). If one
//! of them dies, the others are stopped and imaged-run exits non-zero,
//! saying which one died and how.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use imaged_common::config::Service;
use imaged_common::endpoint::Endpoint;
use imaged_common::peer::Peer;
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// imaged-run: run imaged-events, imaged-metadata, imaged-transfer and
/// imaged-gateway together on one root.
#[derive(Parser, Debug)]
#[command(name = "imaged-run", version)]
struct Args {
    /// Data directory for all four processes.
    #[arg(long, env = "IMAGED_ROOT", default_value = "./data")]
    root: PathBuf,
    /// Directory holding the imaged-* binaries. Default: imaged-run's own.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Seconds the processes get to stop after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 4)]
    stop_timeout: u64,
    /// Seconds to wait for every process to answer its health check.
    #[arg(long, default_value_t = 60)]
    start_timeout: u64,
    /// Serve the four processes' metrics, labelled by process, in the
    /// Prometheus text format at `/metrics` on this address
    /// (`tcp://IP:PORT` or a socket path). Each process serves its own on
    /// `<root>/run/<name>-metrics.sock`, which this page joins.
    #[arg(long, env = "IMAGED_METRICS_LISTEN")]
    metrics_listen: Option<Endpoint>,
}

/// One running imaged process.
struct Process {
    service: Service,
    child: Child,
}

fn main() {
    let args = Args::parse();
    // Stop with our parent (`make run`): a SIGTERM to make reaches us this way.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let code = runtime.block_on(async {
        match run(args).await {
            Ok(code) => code,
            Err(err) => {
                eprintln!("imaged-run: error: {err:#}");
                1
            }
        }
    });
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let root = std::path::absolute(&args.root)?;
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("imaged-run has no directory")?
            .to_path_buf(),
    };
    let stop_timeout = Duration::from_secs(args.stop_timeout);

    let metrics = args.metrics_listen.is_some();
    let mut processes = Vec::new();
    for service in Service::ALL {
        match spawn(&bin_dir, service, &root, metrics) {
            Ok(child) => processes.push(Process { service, child }),
            Err(err) => {
                stop_all(&mut processes, stop_timeout).await;
                return Err(err);
            }
        }
    }

    if let Some(listen) = &args.metrics_listen {
        let sockets: Vec<PathBuf> = Service::ALL
            .iter()
            .map(|s| metrics_socket(&root, *s))
            .collect();
        imaged_common::metrics::serve_page(listen, move || {
            let sockets = sockets.clone();
            async move {
                let pages = futures::future::join_all(
                    sockets
                        .iter()
                        .map(|s| imaged_common::metrics::fetch_page(s)),
                )
                .await;
                let pages: Vec<String> = pages.into_iter().filter_map(Result::ok).collect();
                imaged_common::metrics::merge(&pages)
            }
        })?;
        eprintln!("imaged-run: metrics on {listen}/metrics");
    }

    let mut signal = std::pin::pin!(imaged_common::server::shutdown_signal());
    let ready = wait_ready(&root, Duration::from_secs(args.start_timeout));
    tokio::select! {
        result = ready => match result {
            Ok(()) => {
                let gateway = Service::Gateway.default_socket(&root).display().to_string();
                let docker = root.join("run").join("docker.sock").display().to_string();
                // Whoever reads our stdout may be gone; that must not stop imaged.
                let _ = writeln!(
                    std::io::stdout(),
                    "imaged is ready; the gateway listens on unix://{gateway}\n\
                     try: grpcurl -plaintext -unix {gateway} imaged.v1.Images/SystemInfo\n\
                     the docker CLI: DOCKER_HOST=unix://{docker} docker images"
                );
            }
            Err(err) => {
                eprintln!("imaged-run: {err:#}; stopping");
                stop_all(&mut processes, stop_timeout).await;
                return Ok(1);
            }
        },
        (index, status) = first_exit(&mut processes) => {
            return Ok(died(&mut processes, index, status, stop_timeout).await);
        }
        signal = &mut signal => {
            eprintln!("imaged-run: {signal} received; stopping");
            return Ok(stop_all(&mut processes, stop_timeout).await);
        }
    }

    tokio::select! {
        (index, status) = first_exit(&mut processes) => {
            Ok(died(&mut processes, index, status, stop_timeout).await)
        }
        signal = &mut signal => {
            eprintln!("imaged-run: {signal} received; stopping");
            Ok(stop_all(&mut processes, stop_timeout).await)
        }
    }
}

/// Where `service` serves its own metrics under imaged-run.
fn metrics_socket(root: &Path, service: Service) -> PathBuf {
    root.join("run")
        .join(format!("{}-metrics.sock", service.short()))
}

fn spawn(bin_dir: &Path, service: Service, root: &Path, metrics: bool) -> anyhow::Result<Child> {
    let binary = bin_dir.join(service.process());
    let mut command = Command::new(&binary);
    command.arg("--root").arg(root).kill_on_drop(true);
    // One address cannot serve four processes: each gets its own socket.
    command.env_remove("IMAGED_METRICS_LISTEN");
    if metrics {
        command
            .arg("--metrics-listen")
            .arg(metrics_socket(root, service));
    }
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

/// Waits until every process answers SERVING on its socket.
async fn wait_ready(root: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    for service in Service::ALL {
        let peer = Peer::new(service, Endpoint::Unix(service.default_socket(root)))?;
        loop {
            let answer = HealthClient::new(peer.channel())
                .check(HealthCheckRequest::default())
                .await;
            if answer.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not become ready within {timeout:?}",
                    service.process()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Resolves when the first process exits, with its index and status.
async fn first_exit(processes: &mut [Process]) -> (usize, std::io::Result<ExitStatus>) {
    let waits = processes.iter_mut().map(|p| Box::pin(p.child.wait()));
    let (status, index, _) = futures::future::select_all(waits).await;
    (index, status)
}

/// Reports a process that died on its own, stops the rest, and returns the
/// exit code for imaged-run (always non-zero).
async fn died(
    processes: &mut Vec<Process>,
    index: usize,
    status: std::io::Result<ExitStatus>,
    stop_timeout: Duration,
) -> i32 {
    let process = processes.remove(index);
    let how = match status {
        Ok(status) => describe(status),
        Err(err) => format!("could not be waited for: {err}"),
    };
    eprintln!(
        "imaged-run: {} died ({how}); stopping the others",
        process.service.process()
    );
    stop_all(processes, stop_timeout).await;
    1
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Sends SIGTERM to every process, waits up to `timeout`, then SIGKILLs
/// what is left. Returns 0 when every process exited cleanly.
async fn stop_all(processes: &mut [Process], timeout: Duration) -> i32 {
    for process in processes.iter() {
        if let Some(pid) = process.child.id() {
            // SAFETY: sending a signal to our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut code = 0;
    for process in processes.iter_mut() {
        let name = process.service.process();
        let status = match tokio::time::timeout_at(deadline, process.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                eprintln!("imaged-run: {name} did not stop within {timeout:?}; killing it");
                let _ = process.child.kill().await;
                process.child.wait().await
            }
        };
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => {
                eprintln!("imaged-run: {name} stopped with {}", describe(status));
                code = 1;
            }
            Err(err) => {
                eprintln!("imaged-run: {name}: {err}");
                code = 1;
            }
        }
    }
    code
}
