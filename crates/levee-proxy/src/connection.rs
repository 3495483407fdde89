//! One client connection: its service, its idle bound and its share of a
//! graceful shutdown.
//!
//! hyper bounds the time to read a request head (`header_read_timeout`,
//! which on HTTP/1 also bounds the wait for the next request on a kept-alive
//! connection). `idle_timeout` is levee's own: a connection with no request in
//! flight for that long is closed gracefully, on HTTP/1 and HTTP/2 alike.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::trace;

use crate::forward;
use crate::state::Shared;

/// Requests in flight on one connection and when it last changed.
#[derive(Debug)]
pub struct ConnActivity {
    origin: Instant,
    in_flight: AtomicU32,
    last_change_us: AtomicU64,
}

impl ConnActivity {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_change_us: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let us = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_change_us.store(us, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ActivityGuard(Arc::clone(self))
    }

    /// When the connection becomes idle-expired, if nothing happens before.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_micros(self.last_change_us.load(Ordering::Relaxed));
        Some(self.origin + last + idle_timeout)
    }
}

/// A request's claim on its connection's activity.
#[derive(Debug)]
pub struct ActivityGuard(Arc<ConnActivity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Serves one connection until it closes, idles out, or shutdown drains it.
pub(crate) async fn serve(
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    worker: usize,
    stream: TcpStream,
    peer: SocketAddr,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(ConnActivity::new());
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let guard = activity.begin();
            let shared = Arc::clone(&shared);
            async move {
                let resp = forward::handle(shared, worker, req, peer).await;
                Ok::<_, Infallible>(resp.map(|b| b.with_activity(guard)))
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = false;
    let mut next_check = Instant::now() + idle_timeout;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    trace!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = sleep_until(next_check), if !draining => {
                match activity.idle_deadline(idle_timeout) {
                    Some(at) if at <= Instant::now() => {
                        trace!(%peer, "closing idle client connection");
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(at) => next_check = at,
                    None => next_check = Instant::now() + idle_timeout,
                }
            }
            changed = shutdown.changed(), if !draining => {
                // A dropped sender means the server is gone: drain as well.
                let _ = changed;
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
