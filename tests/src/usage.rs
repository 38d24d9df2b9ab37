//! What a process has used so far, from `/proc`: CPU time and peak RSS,
//! for the benches' per-pull figures.

/// CPU seconds `pid` has used (user and system, all threads, and children
/// it has waited for), in clock ticks of 10 ms.
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// CPU seconds `pid` has used in user space and in the kernel (all
/// threads, and children it has waited for).
pub fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses): utime, stime, cutime and
    // cstime are the 12th to 15th fields.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (
        (field(11) + field(13)) / tick,
        (field(12) + field(14)) / tick,
    )
}

/// The CPU seconds of several processes together.
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    let (user, system) = cpu_split_of(pids);
    user + system
}

/// [`cpu_split`] of several processes together.
pub fn cpu_split_of(pids: &[u32]) -> (f64, f64) {
    pids.iter()
        .map(|p| cpu_split(*p))
        .fold((0.0, 0.0), |(u, s), (pu, ps)| (u + pu, s + ps))
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
