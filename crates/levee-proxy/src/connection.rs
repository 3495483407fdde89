//! One client connection: its service, its idle bound and its share of a
//! graceful shutdown.
//!
//! hyper bounds the time to read a request head (`header_read_timeout`,
//! which on HTTP/1 also bounds the wait for the next request on a kept-alive
//! connection). `idle_timeout` is levee's own: a connection with no request in
//! flight for that long is closed gracefully, on HTTP/1 and HTTP/2 alike.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::trace;

use crate::activity::ConnActivity;
use crate::forward;
use crate::state::Shared;

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
