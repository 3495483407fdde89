//! `levee-node`: one programmable app node, for the demo and docker-compose.
//!
//! ```text
//! levee-node --listen 127.0.0.1:9001 --name n1 --mode healthy
//! levee-node --name n2 --mode status:500:1.0:POST,PUT
//! ```
//!
//! Runs until Ctrl-C (or SIGTERM). Logs with `RUST_LOG` (default `info`).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use levee_testkit::{AppNode, Behavior};
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let node = match AppNode::start_on(args.listen, &args.name, args.mode.clone()).await {
        Ok(node) => node,
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

    if let Err(e) = shutdown_signal().await {
        tracing::error!(error = %e, "could not wait for a shutdown signal");
        node.shutdown().await;
        return ExitCode::FAILURE;
    }
    tracing::info!(stats = ?node.stats(), "levee-node stopping");
    node.shutdown().await;
    ExitCode::SUCCESS
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
