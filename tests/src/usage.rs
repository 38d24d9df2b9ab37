//! What processes have used: CPU time (from a cgroup made for them) and
//! peak RSS (from `/proc`), for the benches' per-pull figures.

use std::path::{Path, PathBuf};

/// Open descriptors and resident KiB of process `pid`.
pub fn descriptors_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
}

/// CPU time of a few processes, counted to the nanosecond by a cgroup made
/// for them: all their threads, those that have exited too.
///
/// `/proc/<pid>/stat` counts in clock ticks of 10 ms, each of user and
/// kernel time rounded down, so a 20 ms pull read from it is off by up to
/// 20 ms. The group is cgroup v1's `cpuacct` where it is mounted, else a
/// cgroup v2 group (whose `cpu.stat` every group has). The processes go
/// back to the groups they came from, and the group is removed, on drop.
pub struct CpuMeter {
    group: PathBuf,
    /// Each process and the group it was in.
    origins: Vec<(u32, PathBuf)>,
    version: CgroupVersion,
}

#[derive(Clone, Copy)]
enum CgroupVersion {
    V1,
    V2,
}

impl CpuMeter {
    /// Moves `pids` into a new group of their own. Fails (with the reason)
    /// where no cgroup hierarchy with CPU accounting is mounted or it is
    /// not writable (the benches run as root).
    pub fn new(pids: &[u32]) -> anyhow::Result<CpuMeter> {
        use anyhow::Context as _;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let v1 = Path::new("/sys/fs/cgroup/cpuacct");
        let v2 = Path::new("/sys/fs/cgroup");
        let (root, version) = if v1.join("cpuacct.usage_user").exists() {
            (v1, CgroupVersion::V1)
        } else if v2.join("cgroup.controllers").exists() {
            (v2, CgroupVersion::V2)
        } else {
            anyhow::bail!("no cgroup with CPU accounting: neither {v1:?} (v1) nor {v2:?} (v2)");
        };
        let name = format!(
            "imaged-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let group = root.join(name);
        std::fs::create_dir(&group).with_context(|| format!("mkdir {group:?}"))?;
        let mut meter = CpuMeter {
            group,
            origins: Vec::new(),
            version,
        };
        for &pid in pids {
            let origin = root.join(current_group(pid, version)?.trim_start_matches('/'));
            std::fs::write(meter.group.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("move {pid} into {:?}", meter.group))?;
            meter.origins.push((pid, origin));
        }
        Ok(meter)
    }

    /// CPU seconds used by the processes since they joined the meter, in
    /// user space and in the kernel. Their sum is exact; cgroup v1 splits
    /// it at the scheduler's tick (4 ms here).
    pub fn split(&self) -> (f64, f64) {
        let read = |file: &str| std::fs::read_to_string(self.group.join(file)).unwrap_or_default();
        match self.version {
            CgroupVersion::V1 => {
                // `cpuacct.usage` is counted at every switch; the split
                // between user and kernel only at the scheduler's tick.
                let ns = |file: &str| read(file).trim().parse::<f64>().unwrap_or(0.0) / 1e9;
                let kernel = ns("cpuacct.usage_sys");
                (ns("cpuacct.usage") - kernel, kernel)
            }
            CgroupVersion::V2 => {
                let stat = read("cpu.stat");
                let usec = |key: &str| {
                    stat.lines()
                        .find_map(|l| l.strip_prefix(key)?.trim().parse::<f64>().ok())
                        .unwrap_or(0.0)
                        / 1e6
                };
                (usec("user_usec "), usec("system_usec "))
            }
        }
    }

    /// User and kernel CPU seconds together.
    pub fn seconds(&self) -> f64 {
        let (user, kernel) = self.split();
        user + kernel
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        for (pid, origin) in &self.origins {
            // A process that has exited has left the group already.
            let _ = std::fs::write(origin.join("cgroup.procs"), pid.to_string());
        }
        let _ = std::fs::remove_dir(&self.group);
    }
}

/// The group `pid` is in, in the hierarchy of `version`, from
/// `/proc/<pid>/cgroup` (a path below that hierarchy's root).
fn current_group(pid: u32, version: CgroupVersion) -> anyhow::Result<String> {
    let lines = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    lines
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let ours = match version {
                CgroupVersion::V1 => controllers.split(',').any(|c| c == "cpuacct"),
                CgroupVersion::V2 => controllers.is_empty(),
            };
            ours.then(|| path.to_string())
        })
        .ok_or_else(|| anyhow::anyhow!("process {pid} is in no cgroup of the CPU hierarchy"))
}

/// The most resident memory `pid` has had (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The median of `values` (the upper one of an even count).
pub fn median<T: PartialOrd + Copy>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted[sorted.len() / 2]
}
