//! `levee-node`: one programmable app node, for the demo and docker-compose.
//!
//! ```text
//! levee-node --listen 127.0.0.1:9001 --name n1 --mode healthy
//! levee-node --name n2 --mode status:500:1.0:POST,PUT --control 127.0.0.1:9102
//! curl -X PUT --data stuck 127.0.0.1:9102/mode     # switch n2 while it runs
//! ```
//!
//! Runs until Ctrl-C (or SIGTERM). Logs with `RUST_LOG` (default `info`).
//! `--control` serves `GET /mode` and `PUT /mode` (the body a `--mode`
//! value) on a port of its own, out of reach of the traffic a proxy sends
//! the node (see [`ControlServer`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use levee_testkit::{AppNode, Behavior, ControlServer};
use tracing_subscriber::EnvFilter;

/// A programmable HTTP/1.1 app node for trying levee.
#[derive(Debug, Parser)]
#[command(name = "levee-node", version)]
struct Args {
    /// Address to listen on (keep it on loopback outside a container).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,

    /// Node name, sent back in the `x-node` header of every answer.
    #[arg(long, default_value = "node")]
    name: String,

    // Written as `help` rather than a doc comment: rustdoc would read the
    // brackets as links.
    #[arg(
        long,
        default_value = "healthy",
        help = "Behaviour: healthy[:BYTES], echo, status:CODE[:SHARE[:METHODS]], stuck, \
                slow:DURATION[:BYTES], loaded:BASE:PER_INFLIGHT[:BYTES], \
                drip:CHUNKS:BYTES:INTERVAL, reset-headers, \
                reset-body:TOTAL:AFTER or refuse"
    )]
    mode: Behavior,

    /// Serve the control interface here (GET /mode, PUT /mode with a mode
    /// as the body): a port of its own, never the node's.
    #[arg(long)]
    control: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    if args
        .control
        .is_some_and(|c| c.port() == args.listen.port() && c.port() != 0)
    {
        tracing::error!(listen = %args.listen, "--control must be another port than --listen");
        return ExitCode::FAILURE;
    }
    let node = match AppNode::start_on(args.listen, &args.name, args.mode.clone()).await {
        Ok(node) => Arc::new(node),
        Err(e) => {
            tracing::error!(listen = %args.listen, error = %e, "could not start the node");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        name = %node.name(),
        addr = %node.addr(),
        mode = %args.mode,
        "levee-node listening"
    );

    let control = match args.control {
        Some(addr) => match ControlServer::start(addr, Arc::clone(&node)).await {
            Ok(control) => {
                tracing::info!(addr = %control.addr(), "control interface: GET/PUT /mode");
                Some(control)
            }
            Err(e) => {
                tracing::error!(control = %addr, error = %e, "could not start the control interface");
                stop(node, None).await;
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };

    if let Err(e) = shutdown_signal().await {
        tracing::error!(error = %e, "could not wait for a shutdown signal");
        stop(node, control).await;
        return ExitCode::FAILURE;
    }
    tracing::info!(stats = ?node.stats(), "levee-node stopping");
    stop(node, control).await;
    ExitCode::SUCCESS
}

/// Stops the control interface, then the node (waiting for its
/// connections when nothing else holds it any more).
async fn stop(node: Arc<AppNode>, control: Option<ControlServer>) {
    if let Some(control) = control {
        control.stop().await;
    }
    if let Ok(node) = Arc::try_unwrap(node) {
        node.shutdown().await;
    }
}

/// Resolves on Ctrl-C, or on SIGTERM (what `docker stop` sends) on Unix.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            ctrl_c = tokio::signal::ctrl_c() => ctrl_c,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
