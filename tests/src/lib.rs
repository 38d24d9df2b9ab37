//! The end-to-end harness: the four real imaged binaries on a temporary
//! root, a real `docker-registry` on a free 127.0.0.1 port, and an OTLP
//! collector to see traces. Everything started here is killed when its
//! handle is dropped, so a failing test leaves nothing running.

pub mod bench_fs;
pub mod certs;
pub mod client;
pub mod collector;
pub mod containerd;
pub mod docker_cli;
pub mod dockerd;
pub mod figures;
pub mod front;
pub mod latency;
pub mod nats;
pub mod oracle;
pub mod processes;
pub mod registry;
pub mod throttle;
pub mod unpacked;
pub mod usage;

pub use collector::Collector;
pub use processes::{Imaged, ImagedBuilder, bin_dir};
pub use registry::TestRegistry;

/// An OCI image of one gzip layer built from `layer`.
pub fn one_layer_image(layer: imaged_fixtures::LayerBuilder) -> imaged_fixtures::Image {
    imaged_fixtures::ImageBuilder::new(imaged_fixtures::MediaTypes::Oci)
        .layer(layer.build(imaged_fixtures::Compression::Gzip).unwrap())
        .build()
        .unwrap()
}

/// A containerd hosts directory (for `--registry-config-dir`) that lists
/// `peers` (`IP:PORT`, plain HTTP) as pull mirrors of `registry`, tried
/// in order before it: the static way nodes list each other.
pub fn peers_hosts_dir(registry: &str, peers: &[String]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut toml = format!("server = \"http://{registry}\"\n");
    for peer in peers {
        toml.push_str(&format!(
            "\n[host.\"http://{peer}\"]\n  capabilities = [\"pull\"]\n"
        ));
    }
    std::fs::create_dir_all(dir.path().join(registry)).expect("the registry's directory");
    std::fs::write(dir.path().join(registry).join("hosts.toml"), toml).expect("hosts.toml");
    dir
}

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Makes the child die with the test process even if it is killed, by
/// asking the kernel to SIGKILL the child when its parent goes.
pub fn die_with_parent(command: &mut tokio::process::Command) {
    // SAFETY: the closure only calls prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
