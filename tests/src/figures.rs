//! `make bench`'s one table. Each bench binary measures its part and
//! records its figures here, each with its goal (a ratio against a
//! baseline measured in the same run, or an absolute bound); after the
//! last bench, `bench-table` prints every recorded figure in one table
//! and says which goals are met.
//!
//! Figures go to one JSON file per bench under `target/bench-figures`
//! (or `$IMAGED_BENCH_FIGURES`), which `make bench` empties first, so the
//! table is always of one run.

use std::path::PathBuf;

use serde_json::{Value, json};

/// What a figure measures, for printing.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    /// Seconds, printed as µs, ms or s.
    Seconds,
    /// Mebibytes.
    MiB,
    /// Events (or calls) per second.
    PerSecond,
    /// A share, 0 to 1, printed as a percentage.
    Share,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::MiB => "MiB",
            Unit::PerSecond => "/s",
            Unit::Share => "share",
        }
    }

    /// `value` in this unit, as the table shows it.
    pub fn show(self, value: f64) -> String {
        match self {
            Unit::Seconds if value < 0.001 => format!("{:.0} µs", value * 1e6),
            Unit::Seconds if value < 1.0 => format!("{:.2} ms", value * 1e3),
            Unit::Seconds => format!("{value:.2} s"),
            Unit::MiB => format!("{value:.1} MiB"),
            Unit::PerSecond => format!("{value:.0}/s"),
            Unit::Share => format!("{:.1}%", value * 100.0),
        }
    }

    fn parse(name: &str) -> Unit {
        match name {
            "MiB" => Unit::MiB,
            "/s" => Unit::PerSecond,
            "share" => Unit::Share,
            _ => Unit::Seconds,
        }
    }
}

/// The figures of one bench binary.
pub struct Figures {
    bench: &'static str,
    rows: Vec<Value>,
    /// The machine's CPU time when the bench began: see [`Figures::write`].
    began: Option<CpuTime>,
}

impl Figures {
    /// Starts the bench's figures. Make it when the bench begins: the CPU
    /// time the hypervisor took from here on is recorded with them.
    pub fn new(bench: &'static str) -> Figures {
        Figures {
            bench,
            rows: Vec::new(),
            began: CpuTime::now(),
        }
    }

    /// A figure compared with `baseline` (named `against`) measured in the
    /// same run; the goal is met when ours / baseline <= `max_ratio`.
    pub fn ratio(
        &mut self,
        figure: impl Into<String>,
        unit: Unit,
        ours: f64,
        against: &str,
        baseline: f64,
        max_ratio: f64,
    ) {
        self.rows.push(json!({
            "figure": figure.into(),
            "unit": unit.name(),
            "imaged": ours,
            "against": against,
            "baseline": baseline,
            "max_ratio": max_ratio,
        }));
    }

    /// A figure whose goal is an absolute bound: met when <= `max`.
    pub fn at_most(&mut self, figure: impl Into<String>, unit: Unit, ours: f64, max: f64) {
        self.rows.push(json!({
            "figure": figure.into(),
            "unit": unit.name(),
            "imaged": ours,
            "max": max,
        }));
    }

    /// A figure shown for what it tells, with no goal.
    pub fn info(&mut self, figure: impl Into<String>, unit: Unit, ours: f64) {
        self.rows.push(json!({
            "figure": figure.into(),
            "unit": unit.name(),
            "imaged": ours,
        }));
    }

    /// Writes the figures where `bench-table` reads them, with the share
    /// of CPU time the hypervisor gave to others since the bench began
    /// (steal). On a shared VM that share comes and goes: the same binaries
    /// delivered events at p99 4.9 ms with none stolen and 30.8 ms with
    /// 10-29% stolen, minutes apart.
    pub fn write(mut self) {
        if let Some(stolen) = self.began.and_then(|began| began.stolen_since()) {
            self.info(
                "CPU time stolen by the hypervisor during this bench",
                Unit::Share,
                stolen,
            );
        }
        let dir = directory();
        let file = dir.join(format!("{}.json", self.bench));
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            std::fs::write(
                &file,
                serde_json::to_vec_pretty(&self.rows).unwrap_or_default(),
            )
        });
        if let Err(err) = written {
            eprintln!("cannot record the figures in {}: {err}", file.display());
        }
    }
}

/// The machine's CPU time so far, in ticks, from `/proc/stat`.
#[derive(Clone, Copy)]
pub struct CpuTime {
    total: u64,
    /// Time a virtual CPU waited while the host ran something else.
    steal: u64,
}

impl CpuTime {
    /// Now; `None` where `/proc/stat` cannot be read.
    pub fn now() -> Option<CpuTime> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal (guest time is
        // counted in user already).
        let ticks: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|n| n.parse().ok())
            .collect();
        (ticks.len() == 8).then(|| CpuTime {
            total: ticks.iter().sum(),
            steal: ticks[7],
        })
    }

    /// The share of the CPU time since `self` that was stolen.
    pub fn stolen_since(self) -> Option<f64> {
        let now = CpuTime::now()?;
        let total = now.total.saturating_sub(self.total).max(1);
        Some(now.steal.saturating_sub(self.steal) as f64 / total as f64)
    }
}

/// Where the figures of a run are kept.
pub fn directory() -> PathBuf {
    std::env::var_os("IMAGED_BENCH_FIGURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/bench-figures"
            ))
        })
}

/// The table of every recorded figure, bench by bench in `order` (others
/// after), and how many goals were met of how many.
pub fn table(order: &[&str]) -> (String, usize, usize) {
    let mut files: Vec<(usize, String, PathBuf)> = std::fs::read_dir(directory())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let bench = path.file_stem()?.to_str()?.to_string();
            let rank = order
                .iter()
                .position(|b| *b == bench)
                .unwrap_or(order.len());
            Some((rank, bench, path))
        })
        .collect();
    files.sort();
    let mut out = format!(
        "{:<58} {:>11} {:>24} {:>7} {:>10} {:>4}\n",
        "figure", "imaged", "baseline", "ratio", "goal", "met"
    );
    let (mut met, mut goals) = (0, 0);
    for (_, bench, path) in files {
        let rows: Vec<Value> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        out.push_str(&format!("[{bench}]\n"));
        for row in rows {
            let figure = row["figure"].as_str().unwrap_or("?");
            let unit = Unit::parse(row["unit"].as_str().unwrap_or("s"));
            let ours = row["imaged"].as_f64().unwrap_or(f64::NAN);
            let (baseline, ratio, goal, ok) = if let Some(base) = row["baseline"].as_f64() {
                let max = row["max_ratio"].as_f64().unwrap_or(1.0);
                let ratio = ours / base;
                (
                    format!(
                        "{} {}",
                        row["against"].as_str().unwrap_or(""),
                        unit.show(base)
                    ),
                    format!("{ratio:.2}x"),
                    format!("<= {max:.2}x"),
                    Some(ratio <= max),
                )
            } else if let Some(max) = row["max"].as_f64() {
                (
                    String::new(),
                    String::new(),
                    format!("<= {}", unit.show(max)),
                    Some(ours <= max),
                )
            } else {
                (String::new(), String::new(), String::new(), None)
            };
            if let Some(ok) = ok {
                goals += 1;
                met += usize::from(ok);
            }
            out.push_str(&format!(
                "  {:<56} {:>11} {:>24} {:>7} {:>10} {:>4}\n",
                figure,
                unit.show(ours),
                baseline,
                ratio,
                goal,
                match ok {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None => "",
                }
            ));
        }
    }
    (out, met, goals)
}
