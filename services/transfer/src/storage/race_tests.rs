//! A container process racing the reads of its upper directory: it swaps
//! a directory of its own with a symlink to the host's files, over and
//! over, while commit, `Changes` and `LayerSize` read it. Nothing of the
//! host may come out.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{CWD, RenameFlags, renameat_with};

use super::overlay::Overlay;
use super::vfs::Vfs;
use super::{LayerDir, StorageDriver};

const SECRET: &[u8] = b"HOST-SECRET-0123456789";
/// The host's files are this long: a size that counts one is no count of
/// the container's own files (35 bytes, twice when the racer moved a
/// directory from one name to the other during the walk).
const HOST_FILE: usize = 1 << 20;
const ROUNDS: usize = 200;

/// A container's layer directory with `diff/x/own`, a host directory with
/// a secret, and a process that keeps exchanging `diff/x` with the
/// symlink `diff/l -> <host>` (and so `x` is sometimes that symlink).
struct Race {
    top: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    racer: Option<std::thread::JoinHandle<u64>>,
}

impl Race {
    fn start() -> Race {
        let top = tempfile::tempdir().unwrap();
        let own = top.path().join("container");
        let upper = own.join("diff");
        let host = top.path().join("host");
        fs::create_dir_all(upper.join("x/sub")).unwrap();
        fs::create_dir_all(own.join("work")).unwrap();
        fs::write(upper.join("x/own"), b"container bytes").unwrap();
        fs::write(upper.join("x/sub/more"), b"more container bytes").unwrap();
        fs::create_dir_all(host.join("sub")).unwrap();
        let secret = SECRET.repeat(HOST_FILE / SECRET.len() + 1);
        fs::write(host.join("shadow"), &secret).unwrap();
        fs::write(host.join("own"), &secret).unwrap();
        fs::write(host.join("sub/more"), &secret).unwrap();
        std::os::unix::fs::symlink(&host, upper.join("l")).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let racer = std::thread::spawn(move || {
            let (x, l) = (upper.join("x"), upper.join("l"));
            let mut swaps = 0;
            while !stopping.load(Ordering::Relaxed) {
                renameat_with(CWD, &x, CWD, &l, RenameFlags::EXCHANGE).unwrap();
                swaps += 1;
            }
            swaps
        });
        Race {
            top,
            stop,
            racer: Some(racer),
        }
    }

    fn own(&self) -> PathBuf {
        self.top.path().join("container")
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.racer.take().unwrap().join().unwrap()
    }
}

impl Drop for Race {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every file under `dir` (read by path: the output is ours) and whether
/// any holds the secret or is named for a host file.
fn leaked(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if entry.file_name() == OsStr::new("shadow") {
                found.push(entry.path().display().to_string());
            }
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                let data = fs::read(entry.path()).unwrap();
                if data.windows(SECRET.len()).any(|w| w == SECRET) {
                    found.push(entry.path().display().to_string());
                }
            }
        }
    }
    found
}

fn race(driver: &dyn StorageDriver) {
    let race = Race::start();
    let own = race.own();
    let layer = LayerDir {
        own: &own,
        lowers: &[],
    };
    let mut leaks = Vec::new();
    let mut host_sizes = 0;
    for round in 0..ROUNDS {
        let out = tempfile::tempdir().unwrap();
        // A commit may fail when an entry vanishes under it (ABORTED is
        // fine); it must never read the host.
        let _ = driver.diff_into(&layer, out.path());
        leaks.extend(
            leaked(out.path())
                .into_iter()
                .map(|p| format!("{round}: {p}")),
        );
        if let Ok(changes) = driver.changes(&layer) {
            leaks.extend(
                changes
                    .keys()
                    .filter(|path| path.ends_with("/shadow"))
                    .map(|p| format!("{round}: changes list {p}")),
            );
        }
        if let Ok(size) = driver.size(&layer)
            && size >= HOST_FILE as u64
        {
            host_sizes += 1;
        }
    }
    let swaps = race.finish();
    assert!(
        swaps > ROUNDS as u64,
        "the racer swapped only {swaps} times"
    );
    assert!(leaks.is_empty(), "host bytes read: {leaks:#?}");
    assert_eq!(host_sizes, 0, "LayerSize counted host files");
}

#[test]
fn a_racing_container_gets_no_host_byte_into_an_overlay_commit() {
    race(&Overlay);
}

#[test]
fn a_racing_container_gets_no_host_byte_into_a_vfs_commit() {
    race(&Vfs);
}
