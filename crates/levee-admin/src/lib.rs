//! levee-admin: `/healthz`, `/readyz`, `/status` and `/metrics` on an isolated
//! listener.
//!
//! The admin listener runs on its own OS thread with its own current-thread
//! tokio runtime, so a saturated or wedged data plane cannot delay it: the
//! monitoring path never shares a queue with the traffic it watches. It reads
//! only what the data plane publishes in `levee-telemetry` (atomics and an
//! `ArcSwap` snapshot) and must never reach into data-plane internals.

mod endpoints;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use levee_telemetry::Telemetry;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, warn};

pub use endpoints::Endpoints;

/// At most this many admin connections are served at once; more wait in the
/// kernel backlog, so a flood of scrapers cannot exhaust the admin thread.
const MAX_ADMIN_CONNECTIONS: usize = 64;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the admin thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running admin listener; dropping it does not stop it, `stop` does.
#[derive(Debug)]
pub struct AdminHandle {
    addr: SocketAddr,
    stale_after_ms: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies a reloaded `heartbeat_stale_after` to the running listener.
    pub fn set_heartbeat_stale_after(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.stale_after_ms.store(ms, Ordering::Relaxed);
    }

    /// Stops the listener and joins its thread.
    pub fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `addr` now (so a taken port is reported at startup) and serves the
/// endpoints on a dedicated thread.
pub fn spawn(
    addr: SocketAddr,
    telemetry: Arc<Telemetry>,
    heartbeat_stale_after: Duration,
) -> Result<AdminHandle, AdminError> {
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| AdminError::Bind { addr, source })?;
    let local = std_listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let (stop, stop_rx) = watch::channel(false);
    let endpoints = Arc::new(Endpoints::new(telemetry, heartbeat_stale_after));
    let stale_after_ms = endpoints.stale_after_setting();
    let thread = std::thread::Builder::new()
        .name("levee-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "admin runtime failed to start");
                    return;
                }
            };
            rt.block_on(serve(std_listener, endpoints, stop_rx));
        })
        .map_err(AdminError::Thread)?;
    Ok(AdminHandle {
        addr: local,
        stale_after_ms,
        stop,
        thread: Some(thread),
    })
}

async fn serve(
    std_listener: std::net::TcpListener,
    endpoints: Arc<Endpoints>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(std_listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "admin listener failed");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot { Ok(s) => s, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let endpoints = Arc::clone(&endpoints);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let endpoints = Arc::clone(&endpoints);
                async move { Ok::<_, std::convert::Infallible>(endpoints.answer(&req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
            drop(slot);
        });
    }
}
