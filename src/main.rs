//! The `levee` binary: command line, runtimes, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use levee::Levee;
use levee_config::Config;
use tracing::{info, warn};

mod triggers;

/// jemalloc rather than the system allocator: it keeps size classes apart,
/// so the buffers of a burst of busy connections are not pinned by the small
/// long-lived allocations of idle ones, and its background thread returns
/// freed pages to the OS (`.cargo/config.toml` sets the delay). On the load
/// scripts it also cost less CPU per request than glibc's malloc.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "levee",
    version,
    about = "A reverse proxy that keeps a service answering when its app nodes misbehave"
)]
struct Cli {
    /// Config file to run (same as `levee run --config FILE`).
    #[arg(long, short, global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and print what it sets up.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start built-in app nodes (healthy, failing, stuck) behind levee, send
    /// traffic, print what clients saw each second and a verdict measured
    /// against stated thresholds; exits 1 if a fault was not contained.
    #[cfg(feature = "demo")]
    Demo {
        /// How long each scene sends traffic, e.g. "3s".
        #[arg(long, default_value = "3s", value_parser = humantime_duration)]
        duration: std::time::Duration,
        /// Run one scene only: stuck-writes, bad-node, pool-lost,
        /// weak-failover, flapping, balancing or reload.
        #[arg(long)]
        scene: Option<String>,
        /// Print the scenes and exit.
        #[arg(long)]
        list: bool,
    },
}

#[cfg(feature = "demo")]
fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "demo")]
    if let Some(Command::Demo { list: true, .. }) = &cli.command {
        for (name, title) in levee::demo::scenes() {
            println!("{name:<14} {title}");
        }
        return ExitCode::SUCCESS;
    }
    // `run` sets up its log from the config it loads.
    let run_config = match (&cli.command, &cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => Some(config.clone()),
        _ => None,
    };
    if run_config.is_none() {
        #[cfg(feature = "demo")]
        let demo = matches!(cli.command, Some(Command::Demo { .. }));
        #[cfg(not(feature = "demo"))]
        let demo = false;
        if let Err(e) = init_logging(demo) {
            eprintln!("levee: cannot set up logging: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let result = match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run(config),
        (Some(Command::Check { config }), _) => return check(&config),
        #[cfg(feature = "demo")]
        (
            Some(Command::Demo {
                duration, scene, ..
            }),
            _,
        ) => runtime().and_then(|rt| rt.block_on(levee::demo::run(duration, scene.as_deref()))),
        (None, None) => {
            eprintln!("levee: say what to do: `levee run --config FILE`, `levee check --config FILE` or `levee demo` (see --help)");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("levee: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// levee's own log outside `run` (which follows `[log]`): to stderr, with
/// colours only on a terminal; for the demo, to a file (its path printed)
/// so the story on the terminal stays readable.
fn init_logging(demo: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if demo {
        let path = std::env::temp_dir().join(format!("levee-demo-{}.log", std::process::id()));
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot create the demo's log file {}", path.display()))?;
        println!("levee's own log for this demo: {}", path.display());
        builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    }
    Ok(())
}

fn check(path: &std::path::Path) -> ExitCode {
    match levee_config::load(path) {
        Ok(config) => {
            print!("{}", summary(&config));
            for warning in resolve_names(&config) {
                eprintln!("{}: warning: {warning}", config.origin);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves the config's node names as `levee run` would, and says which
/// did not resolve. Warnings, not errors: a config may be checked before
/// its nodes exist (a new deployment, a service not scaled up yet), and
/// levee serves such a name as soon as it resolves.
fn resolve_names(config: &Config) -> Vec<String> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return vec![format!("node names not resolved: {e}")],
    };
    let answers = runtime.block_on(levee_proxy::dns::resolve(
        levee_proxy::dns::names(config),
        &levee_proxy::dns::SystemResolver,
    ));
    answers
        .into_iter()
        .filter_map(|a| match a.result {
            Ok(addrs) => {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                println!("node {} resolves to {}", a.node, addrs.join(", "));
                None
            }
            Err(e) => Some(format!(
                "node {} does not resolve ({e}); levee will serve it once it does",
                a.node
            )),
        })
        .collect()
}

/// What `levee check` prints for a good config.
fn summary(c: &Config) -> String {
    let mut out = format!("{}: ok (version {})\n", c.origin, c.version);
    out += &format!(
        "listener {} (max {} connections), admin {}\n",
        c.server.listen, c.server.max_connections, c.admin.listen
    );
    if let Some(tls) = &c.server.tls {
        let certs: Vec<String> = tls
            .certificates
            .iter()
            .map(|t| match t.server_names.is_empty() {
                true => t.cert.display().to_string(),
                false => format!("{} ({})", t.cert.display(), t.server_names.join(", ")),
            })
            .collect();
        out += &format!(
            "tls listener {}: {} certificates [{}]\n",
            tls.listen,
            certs.len(),
            certs.join("; ")
        );
    }
    for b in &c.backends {
        let nodes: Vec<String> = b.nodes.iter().map(ToString::to_string).collect();
        let tls = match &b.tls {
            None => "",
            Some(t) if t.insecure_skip_verify => ", tls WITHOUT certificate verification",
            Some(_) => ", tls",
        };
        out += &format!(
            "backend {}: {} nodes [{}], timeout {:?}, max_in_flight {}, max_queue {}, {}{tls}\n",
            b.name,
            b.nodes.len(),
            nodes.join(", "),
            b.timeout,
            b.max_in_flight,
            b.max_queue,
            b.protocol.as_str(),
        );
    }
    for r in &c.routes {
        let methods = r
            .methods
            .as_ref()
            .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "any".into());
        out += &format!(
            "route {}: {}{} {} -> {}, timeout {:?}{}\n",
            r.name,
            r.host.as_deref().unwrap_or(""),
            r.path_prefix,
            methods,
            r.backend,
            r.timeout,
            r.max_in_flight
                .map(|m| format!(", max_in_flight {m}"))
                .unwrap_or_default()
        );
    }
    out
}

/// The demo's runtime: it drives the demo's clients and app nodes.
#[cfg(feature = "demo")]
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("levee-demo")
        .build()
        .context("cannot start the demo runtime")
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    // A config error is printed as is: it already names file, line and key.
    let config = levee_config::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let log_level = levee::logging::init(&config.log).context("cannot set up logging")?;
    // The data plane runs on its own worker threads; this runtime only
    // starts levee, waits for signals and file changes, and reloads.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    signals.block_on(async {
        // Before anything else: SIGHUP's default action is to terminate.
        let mut triggers = triggers::watch(&path, RELOAD_DEBOUNCE)?;
        let mut rotate = Rotation::listen()?;
        let mut levee = Levee::start(config).await?;
        levee.control_log_level(log_level);
        let stop = wait_for_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                Some(trigger) = triggers.next() => {
                    info!(?trigger, file = %path.display(), "reloading the config");
                    // A refused reload is logged, counted and shown on
                    // /status by `reload_file`; levee keeps serving.
                    let _ = levee.reload_file(&path).await;
                }
                () = rotate.next() => levee.reopen_access_log(),
            }
        }
        info!("shutting down: no new connections, in-flight requests may finish");
        let left = levee.shutdown().await;
        if left > 0 {
            warn!(
                connections = left,
                "grace period over; cutting remaining connections"
            );
        }
        Ok(())
    })
}

/// How long the config file must stay quiet before a change is reloaded.
const RELOAD_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(200);

/// `SIGUSR1` asks for the access log file to be reopened (log rotation).
struct Rotation {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Rotation {
    /// Listens from now on: `SIGUSR1`'s default action is to terminate.
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .context("cannot listen for SIGUSR1")?,
        })
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
