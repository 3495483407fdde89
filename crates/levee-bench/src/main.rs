//! `levee-bench`: see the README's "Performance" section.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use levee_bench::{Kind, Options, Scenario};

/// levee, nginx and HAProxy in front of the same app nodes, one Markdown
/// table per scenario (stdout) and the raw figures as JSON.
#[derive(Debug, Parser)]
#[command(name = "levee-bench")]
struct Args {
    /// Scenarios, comma-separated: throughput, latency, idle, stuck-writes,
    /// bad-node, reload. Default: all.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Proxies, comma-separated: levee, nginx, haproxy. Default: all (a
    /// proxy that is not installed is skipped and said so).
    #[arg(long, value_delimiter = ',')]
    proxies: Vec<Kind>,
    /// Short runs that only show everything works (about a minute per proxy).
    #[arg(long)]
    quick: bool,
    /// Client connections of the throughput scenario, comma-separated
    /// (default 64,256).
    #[arg(long, value_delimiter = ',')]
    conns: Vec<usize>,
    /// Seconds per measurement (default 5; 1.5 with --quick). The latency,
    /// stuck-writes and bad-node scenarios run twice as long.
    #[arg(long)]
    duration: Option<f64>,
    /// Rounds of the throughput scenario (default 1): every target in turn
    /// in each round, and each figure the median of its rounds, so that a
    /// noisy spell of the machine does not land on one proxy's row.
    #[arg(long)]
    rounds: Option<usize>,
    /// Requests per second of the latency scenario (default 2000).
    #[arg(long)]
    rate: Option<f64>,
    /// Idle connections of the idle scenario (default 5000).
    #[arg(long)]
    idle_conns: Option<usize>,
    /// Reloads of the reload scenario (default 10).
    #[arg(long)]
    reloads: Option<usize>,
    /// The levee binary to measure.
    #[arg(long, default_value = "target/release/levee")]
    levee: PathBuf,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/levee-bench.json")]
    json: PathBuf,
    /// Do not pin proxies to CPU 0 and the load to CPU 1.
    #[arg(long)]
    no_pin: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut opts = if args.quick {
        Options::quick(args.levee.clone())
    } else {
        Options::full(args.levee.clone())
    };
    if !args.scenarios.is_empty() {
        opts.scenarios = args.scenarios.clone();
    }
    if !args.proxies.is_empty() {
        opts.proxies = args.proxies.clone();
    }
    if !args.conns.is_empty() {
        opts.conns = args.conns.iter().map(|&c| c.max(1)).collect();
    }
    if let Some(d) = args.duration {
        opts.duration = Duration::from_secs_f64(d.max(0.1));
    }
    if let Some(n) = args.rounds {
        opts.rounds = n.max(1);
    }
    if let Some(r) = args.rate {
        opts.rate = r.max(1.0);
    }
    if let Some(n) = args.idle_conns {
        opts.idle_conns = n;
    }
    if let Some(n) = args.reloads {
        opts.reloads = n;
    }
    opts.pin = !args.no_pin;
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    stop_proxies_on_signal();
    let report = match levee_bench::run(opts, command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("levee-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", report.markdown());
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("levee-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(&args.json, json) {
        eprintln!("levee-bench: writing {}: {e}", args.json.display());
        return ExitCode::FAILURE;
    }
    eprintln!("JSON: {}", args.json.display());
    ExitCode::SUCCESS
}

/// On `SIGINT` or `SIGTERM`, stops the proxies the harness started and
/// removes its work directory before exiting: the signal ends the process
/// without running their `Drop`, and a proxy left behind would answer on the
/// ports of the next run.
fn stop_proxies_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let code = tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            };
            eprintln!("levee-bench: stopped by a signal; stopping the proxies it started");
            levee_bench::procs::terminate_running();
            // `Bench`'s drop, which removes it, does not run on exit.
            let _ = std::fs::remove_dir_all(levee_bench::scenarios::work_dir());
            std::process::exit(code);
        });
    });
}
