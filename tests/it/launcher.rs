//! imaged-run, the launcher behind `make run`: starts the four together,
//! stops them together.

use std::process::Stdio;
use std::time::Duration;

use imaged_e2e::{bin_dir, die_with_parent};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The PIDs of `parent`'s children, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the parenthesised command name: state, ppid, ...
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == parent {
            pids.push(pid);
        }
    }
    pids
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its entry remains until it is reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'))
        .unwrap_or(false)
}

fn command_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Starts imaged-run on a fresh root and waits for its ready line.
async fn start_run(root: &std::path::Path) -> (Child, Vec<u32>) {
    let mut command = Command::new(bin_dir().join("imaged-run"));
    command
        .arg("--root")
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    let mut run = command.spawn().unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("imaged is ready") {
                return line;
            }
        }
        panic!("imaged-run ended without becoming ready");
    })
    .await
    .expect("imaged-run not ready in time");
    assert!(ready.contains("gateway.sock"), "{ready}");
    let children = children_of(run.id().unwrap());
    let mut names: Vec<String> = children.iter().map(|p| command_name(*p)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "imaged-events",
            "imaged-gateway",
            "imaged-metadata",
            "imaged-transfer"
        ]
    );
    (run, children)
}

async fn stderr_of(run: &mut Child) -> String {
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    stderr
}

#[tokio::test]
async fn sigterm_stops_all_four() {
    let root = tempfile::tempdir().unwrap();
    let (mut run, children) = start_run(root.path()).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("imaged-run did not stop")
        .unwrap();
    assert!(status.success(), "{status}: {}", stderr_of(&mut run).await);
    for pid in children {
        assert!(!alive(pid), "process {pid} still running");
    }
}

#[tokio::test]
async fn one_process_dying_stops_the_rest_and_fails() {
    let root = tempfile::tempdir().unwrap();
    let (mut run, children) = start_run(root.path()).await;
    let transfer = *children
        .iter()
        .find(|p| command_name(**p) == "imaged-transfer")
        .unwrap();
    // SAFETY: signalling a process we started.
    unsafe { libc::kill(transfer as i32, libc::SIGKILL) };
    let status = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("imaged-run did not stop")
        .unwrap();
    assert!(!status.success());
    let stderr = stderr_of(&mut run).await;
    assert!(
        stderr.contains("imaged-transfer died (killed by signal 9)"),
        "{stderr}"
    );
    for pid in children {
        assert!(!alive(pid), "process {pid} still running");
    }
}

#[tokio::test]
async fn a_process_that_cannot_start_fails_the_launch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let output = Command::new(bin_dir().join("imaged-run"))
        .arg("--root")
        .arg(file.join("root"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("died (exit status 2)"), "{stderr}");
    assert!(stderr.contains("is not usable"), "{stderr}");
}
