//! levee-bench: levee, nginx and HAProxy in front of the same app nodes,
//! driven by the same load generator in one run, one Markdown table per
//! scenario plus JSON. See the README's "Performance" section.
//!
//! Layout: `load` generates HTTP/1.1 load and records latencies in HDR
//! histograms, `proxies` renders each proxy's config and runs it, `procs`
//! reads CPU time and memory from /proc, `scenarios` runs the six scenarios,
//! `table` and `summary` format what they measured.

pub mod load;
pub mod procs;
pub mod proxies;
pub mod scenarios;
pub mod summary;
pub mod table;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use proxies::Kind;
pub use scenarios::Scenario;
use table::Table;

/// What to run and for how long.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenarios: Vec<Scenario>,
    /// Proxies to measure; one that is not installed is skipped and said so.
    pub proxies: Vec<Kind>,
    /// The levee binary (a release build for figures worth quoting).
    pub levee: PathBuf,
    /// Client connections of the throughput scenario, one row each.
    pub conns: Vec<usize>,
    /// Length of each measurement.
    pub duration: Duration,
    /// Closed-loop traffic before each throughput measurement.
    pub warmup: Duration,
    /// Throughput measurements per row, every target in turn in each
    /// round; the table shows their medians.
    pub rounds: usize,
    /// Requests per second of the fixed-rate latency scenario.
    pub rate: f64,
    /// Idle keep-alive connections opened in the idle scenario.
    pub idle_conns: usize,
    /// Reloads in the reload scenario, and the time between two.
    pub reloads: usize,
    pub reload_every: Duration,
    /// Proxies on CPU 0, nodes and load generator on CPU 1 (when there are two).
    pub pin: bool,
    /// Progress lines on stderr.
    pub progress: bool,
}

impl Options {
    /// The defaults: every scenario, about 8 minutes with all three proxies.
    pub fn full(levee: PathBuf) -> Options {
        Options {
            scenarios: Scenario::ALL.to_vec(),
            proxies: Kind::ALL.to_vec(),
            levee,
            conns: vec![64, 256],
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            rounds: 1,
            rate: 2000.0,
            idle_conns: 5000,
            reloads: 10,
            reload_every: Duration::from_secs(1),
            pin: true,
            progress: true,
        }
    }

    /// `--quick`: every scenario in well under a minute per proxy; the
    /// figures only show that everything works.
    pub fn quick(levee: PathBuf) -> Options {
        Options {
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(300),
            rate: 500.0,
            idle_conns: 500,
            reloads: 3,
            reload_every: Duration::from_millis(500),
            ..Options::full(levee)
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub command: String,
    /// Proxies not measured, and why.
    pub skipped: Vec<String>,
    pub tables: Vec<Table>,
    /// Raw figures per scenario (counts, µs), for scripts.
    pub results: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## levee-bench, {}\n\nMachine: {}\nCommand: `{}`\n",
            self.date, self.machine, self.command
        );
        for s in &self.skipped {
            out.push_str(&format!("Skipped: {s}\n"));
        }
        for t in &self.tables {
            out.push('\n');
            out.push_str(&t.markdown());
        }
        out
    }
}

/// CPU model, cores, memory and kernel, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} CPUs, {mem_gib:.1} GiB, Linux {}",
        kernel.trim()
    )
}

/// Runs the selected scenarios and returns what they measured.
pub fn run(opts: Options, command: String) -> anyhow::Result<Report> {
    let machine = machine();
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut bench = scenarios::Bench::new(opts)?;
    let mut tables = Vec::new();
    let mut results = serde_json::Map::new();
    for scenario in bench.opts.scenarios.clone() {
        let (table, raw) = bench.run(scenario)?;
        if bench.opts.progress {
            eprintln!("\n{}", table.markdown());
        }
        tables.push(table);
        results.insert(scenario.name().to_owned(), raw);
    }
    Ok(Report {
        date,
        machine,
        command,
        skipped: bench.skipped.clone(),
        tables,
        results,
    })
}
