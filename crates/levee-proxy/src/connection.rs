//! One client connection: its service, its idle bound and its share of a
//! graceful shutdown.
//!
//! The client's bytes pass the [`Gate`] before hyper reads them. hyper
//! bounds the time to read a request head (`header_read_timeout`, which on
//! HTTP/1 also bounds the wait for the next request on a kept-alive
//! connection; the gate holds a head's bytes while hyper's timer runs).
//! `idle_timeout` is levee's own: a connection with no request in flight
//! for that long is closed gracefully, on HTTP/1 and HTTP/2 alike.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::UPGRADE;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tower::Service;
use tracing::trace;

use crate::activity::{ActivityGuard, ConnActivity, Upgrading};
use crate::body::ProxyBody;
use crate::gate::Gate;
use crate::headers::Scheme;
use crate::stack;
use crate::state::Shared;

/// Serves one connection until it closes, idles out, or shutdown drains it.
/// `stream` is any byte stream (plain TCP, or TLS after its handshake).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<I>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    worker: usize,
    stream: I,
    peer: SocketAddr,
    scheme: Scheme,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(ConnActivity::new());
    let gate = Gate::new(stream, Arc::clone(&shared), Arc::clone(&activity), peer);
    let service = stack::serve::Serve::new(TrackActivity {
        inner: stack::stack(shared, worker, peer, scheme),
        activity: Arc::clone(&activity),
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(gate), service);
    tokio::pin!(conn);
    let idle = sleep_until(Instant::now() + idle_timeout);
    tokio::pin!(idle);
    let changed = shutdown.changed();
    tokio::pin!(changed);
    let mut draining = false;
    // hyper is told to finish gracefully once draining and no head is
    // under way: hyper has not seen a head the gate holds, and would take
    // the connection for idle and close it. The gate bounds that head by
    // `header_read_timeout`; once hyper has it, its answer carries
    // `Connection: close`.
    let mut finishing = false;
    let res = poll_fn(|cx| loop {
        if !draining && idle.as_mut().poll(cx).is_ready() {
            match activity.idle_deadline(idle_timeout) {
                Some(at) if at <= Instant::now() => {
                    trace!(%peer, "closing idle client connection");
                    draining = true;
                }
                Some(at) => {
                    idle.as_mut().reset(at);
                    continue;
                }
                None => {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                    continue;
                }
            }
        }
        // A dropped sender means the server is gone: drain as well.
        if !draining && changed.as_mut().poll(cx).is_ready() {
            draining = true;
        }
        // Polled before deciding: the gate reads what the client sent.
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(res);
        }
        if draining && !finishing && !activity.receiving() {
            finishing = true;
            conn.as_mut().graceful_shutdown();
            continue;
        }
        return Poll::Pending;
    })
    .await;
    if let Err(e) = res {
        trace!(%peer, error = %e, "client connection ended with an error");
    }
    // An upgraded connection lives on as a tunnel: its task and slot stay
    // taken until the tunnel ends (at the latest when a drain's grace ends).
    activity.tunnels_closed().await;
}

/// The top of a connection's stack: marks the connection busy from a
/// request's arrival until its response body ends, and hands a request
/// that asks for an upgrade the connection's [`Upgrading`].
#[derive(Debug, Clone)]
pub struct TrackActivity<S> {
    inner: S,
    activity: Arc<ConnActivity>,
}

impl<S> Service<Request<Incoming>> for TrackActivity<S>
where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if req.headers().contains_key(UPGRADE) && req.version() < http::Version::HTTP_2 {
            req.extensions_mut()
                .insert(Upgrading::new(Arc::clone(&self.activity)));
        }
        TrackFuture {
            guard: Some(self.activity.begin()),
            fut: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// Hands the activity guard to the response body.
    pub struct TrackFuture<F> {
        #[pin]
        fut: F,
        guard: Option<ActivityGuard>,
    }
}

impl<F> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.fut.poll(cx))?;
        Poll::Ready(Ok(match this.guard.take() {
            Some(guard) => resp.map(|b| b.with_activity(guard)),
            None => resp,
        }))
    }
}
