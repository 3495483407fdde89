//! The client listener: accept under `max_connections`, serve, drain.
//!
//! Connections beyond `max_connections` are not accepted: they wait in the
//! kernel's backlog, not in levee's memory. Shutdown stops accepting, asks
//! every connection to finish its in-flight requests, and waits for them up
//! to `shutdown_grace`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::connection;
use crate::state::Shared;

/// One worker's bound listener, ready to run.
pub struct ProxyServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    worker: usize,
    max_connections: usize,
}

/// Asks a running server to drain and stop.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shutdown: watch::Sender<bool>,
}

impl ServerHandle {
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

impl ProxyServer {
    /// `worker` indexes this worker's node pools; `max_connections` is its
    /// share of the server's limit.
    pub fn new(
        listener: TcpListener,
        shared: Arc<Shared>,
        worker: usize,
        max_connections: usize,
    ) -> Self {
        Self {
            listener,
            shared,
            worker,
            max_connections,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `handle.shutdown()`, then drains. Returns how many
    /// connections were still open when the grace period ended.
    pub async fn run(self, handle_rx: watch::Receiver<bool>) -> usize {
        let state = self.shared.state();
        let server_cfg = state.config.server.clone();
        drop(state);
        let builder = Arc::new(http_builder(
            server_cfg.header_read_timeout,
            server_cfg.max_header_bytes,
        ));
        let max = self.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let slots = Arc::new(Semaphore::new(max));
        let telemetry = Arc::clone(&self.shared.telemetry);
        let worker = self.worker;
        let mut stop = handle_rx.clone();
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                _ = stop.changed() => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            telemetry.connection_opened();
            let builder = Arc::clone(&builder);
            let shared = Arc::clone(&self.shared);
            let telemetry = Arc::clone(&telemetry);
            let shutdown = handle_rx.clone();
            let idle = server_cfg.idle_timeout;
            tokio::spawn(async move {
                connection::serve(builder, shared, worker, stream, peer, idle, shutdown).await;
                telemetry.connection_closed();
                drop(slot);
            });
        }
        drop(self.listener);
        let open = max - slots.available_permits();
        info!(worker, open_connections = open, grace = ?server_cfg.shutdown_grace, "draining");
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        let drained =
            tokio::time::timeout(server_cfg.shutdown_grace, slots.acquire_many(all)).await;
        match drained {
            Ok(_) => 0,
            Err(_) => max - slots.available_permits(),
        }
    }
}

/// Binds `addr` with `SO_REUSEPORT`, so every worker can have its own
/// listener (and accept queue) on the same address. Call it on the runtime
/// that will serve the listener.
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A shutdown handle and the receiver a server runs with.
pub fn shutdown_channel() -> (ServerHandle, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    (ServerHandle { shutdown: tx }, rx)
}

fn http_builder(
    header_read_timeout: Duration,
    max_header_bytes: usize,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper answers a head over its buffer with a bare 431; levee's own check
    // (with x-levee-error) runs below that, at max_header_bytes.
    let buf = (max_header_bytes * 2).max(8 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(buf)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buf).unwrap_or(u32::MAX));
    builder
}
