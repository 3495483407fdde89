//! One client connection: its service, its idle bound and its share of a
//! graceful shutdown.
//!
//! The client's bytes pass the [`Gate`] before hyper reads them. The gate
//! bounds the time to read a request head (`header_read_timeout`: it holds
//! a head's bytes until the head is whole, and hyper's timer runs only once
//! it has some). `idle_timeout` is levee's own: a connection with no
//! request in flight for that long is closed gracefully, on HTTP/1 and
//! HTTP/2 alike.
//!
//! hyper keeps a read and a write buffer (8 KiB each at least) for as long
//! as an HTTP/1 connection of its lives, so an HTTP/1 connection idle for
//! [`PARK_AFTER`](crate::gate::PARK_AFTER) parks instead, holding only its
//! socket, the gate's small state and its service, and gets a new hyper
//! connection when the client sends again:
//!
//! ```text
//! park (peek, no buffer) ──bytes──▶ hyper conn: requests, their responses
//!   ▲                                   │ idle: the gate ends hyper's stream,
//!   └──── Parts { io: gate, service } ◀─┘ hyper closes, no shutdown
//! ```
//!
//! A connection hyper closes itself (`Connection: close`, an error, a
//! refused head) or that is upgraded ends there. HTTP/2 keeps one hyper
//! connection for its life.
//!
//! A drain closes an idle connection at once. A request whose first bytes
//! arrived gets to finish its head (within `header_read_timeout`, which the
//! gate enforces) and is answered with `Connection: close`.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use http::header::UPGRADE;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tower::Service;
use tracing::trace;

use crate::activity::{ActivityGuard, ConnActivity, Upgrading};
use crate::body::ProxyBody;
use crate::gate::{Gate, Park, Protocol};
use crate::headers::Scheme;
use crate::stack::{self, Stack};
use crate::state::Shared;

/// The hyper settings of one config version, for both protocols.
pub(crate) struct Protocols {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
}

type ConnService = stack::serve::Serve<TrackActivity<Stack>>;

/// What every phase of one connection is served with.
struct Conn {
    protocols: Arc<Protocols>,
    shared: Arc<Shared>,
    worker: usize,
    peer: SocketAddr,
    scheme: Scheme,
    idle_timeout: Duration,
}

/// Serves one connection until it closes, idles out, or shutdown drains it.
/// `stream` is any byte stream (plain TCP, or TLS after its handshake).
///
/// Between requests the task is small: everything that serves requests
/// (the gate, the service, hyper's connection and buffers) lives in a box
/// that exists only while the connection is not parked. Not an `async fn`,
/// which would keep its arguments besides its locals.
#[allow(clippy::too_many_arguments)]
pub(crate) fn serve<I>(
    protocols: Arc<Protocols>,
    shared: Arc<Shared>,
    worker: usize,
    mut stream: I,
    peer: SocketAddr,
    scheme: Scheme,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static
where
    I: Park + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn {
        protocols,
        shared,
        worker,
        peer,
        scheme,
        idle_timeout,
    };
    async move {
        let mut first = true;
        let mut draining = false;
        loop {
            let served = Box::pin(serve_awake(
                &conn,
                stream,
                shutdown.clone(),
                first,
                draining,
            ))
            .await;
            let Some(parked) = served else {
                return;
            };
            stream = parked.stream;
            first = false;
            // Parked: a peek at the socket, no buffer.
            tokio::select! {
                next = poll_fn(|cx| stream.poll_parked(cx)) => {
                    if !matches!(next, Ok(true)) {
                        return;
                    }
                }
                () = sleep_until(parked.last_change + conn.idle_timeout) => {
                    trace!("closing idle client connection");
                    return;
                }
                // A dropped sender means the server is gone: drain as well.
                _ = shutdown.changed() => {
                    draining = true;
                    // Bytes the client sent before the drain get their answer.
                    let now = stream.poll_parked(&mut Context::from_waker(Waker::noop()));
                    if !matches!(now, Poll::Ready(Ok(true))) {
                        return;
                    }
                }
            }
        }
    }
}

/// A connection that parked, and when its last request began or ended.
struct Parked<I> {
    stream: I,
    last_change: Instant,
}

/// Serves a connection from its first bytes (or, after a park, from the
/// next request's) until it closes or parks again.
async fn serve_awake<I>(
    conn: &Conn,
    stream: I,
    shutdown: watch::Receiver<bool>,
    first: bool,
    mut draining: bool,
) -> Option<Parked<I>>
where
    I: Park + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let activity = Arc::new(ConnActivity::new());
    let mut gate = Gate::new(
        stream,
        Arc::clone(&conn.shared),
        Arc::clone(&activity),
        peer,
    )
    .park_when_idle();
    let service = stack::serve::Serve::new(TrackActivity {
        inner: stack::stack(Arc::clone(&conn.shared), conn.worker, peer, conn.scheme),
        activity: Arc::clone(&activity),
    });
    let closing = closing(Arc::clone(&activity), conn.idle_timeout, shutdown);
    tokio::pin!(closing);
    let protocol = if !first {
        gate.resume();
        Ok(Protocol::Http1)
    } else {
        tokio::select! {
            protocol = poll_fn(|cx| gate.poll_protocol(cx)) => protocol,
            () = closing.as_mut() => {
                draining = true;
                // What the client already sent is read; a head under way
                // may finish.
                let now = gate.poll_protocol(&mut Context::from_waker(Waker::noop()));
                match now {
                    Poll::Ready(protocol) => protocol,
                    Poll::Pending if gate.receiving() => {
                        poll_fn(|cx| gate.poll_protocol(cx)).await
                    }
                    Poll::Pending => return None,
                }
            }
        }
    };
    match protocol {
        Ok(Protocol::Http1) => {
            let mut hyper_conn = conn
                .protocols
                .http1
                .serve_connection(TokioIo::new(gate), service)
                .with_upgrades();
            let res = drive(
                closing.as_mut(),
                &mut draining,
                &activity,
                Pin::new(&mut hyper_conn),
            )
            .await;
            if let Err(e) = res {
                trace!(%peer, error = %e, "client connection ended with an error");
                return None;
            }
            // None: upgraded, the tunnel has the socket.
            if let Some(parts) = hyper_conn.into_parts() {
                let gate = parts.io.into_inner();
                // hyper reads only what the gate validated: none of it is
                // left unread when the gate parks.
                if draining || !gate.parked() || !parts.read_buf.is_empty() {
                    return None;
                }
                return Some(Parked {
                    stream: gate.into_io(),
                    last_change: activity.last_change(),
                });
            }
        }
        Ok(Protocol::Http2) => {
            let hyper_conn = conn
                .protocols
                .http2
                .serve_connection(TokioIo::new(gate), service);
            tokio::pin!(hyper_conn);
            let res = drive(closing.as_mut(), &mut draining, &activity, hyper_conn).await;
            if let Err(e) = res {
                trace!(%peer, error = %e, "client connection ended with an error");
            }
        }
        Err(e) => {
            trace!(%peer, error = %e, "client connection ended before its first request");
            return None;
        }
    }
    // An upgraded connection lives on as a tunnel: its task and slot stay
    // taken until the tunnel ends (at the latest when a drain's grace ends).
    activity.tunnels_closed().await;
    None
}

/// A hyper connection that can be asked to finish gracefully.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I> Graceful for http1::UpgradeableConnection<TokioIo<Gate<I>>, ConnService>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I> Graceful for http2::Connection<TokioIo<Gate<I>>, ConnService, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Drives a hyper connection to its end, finishing it gracefully once
/// `closing` resolves (then `draining` is set, and `closing` not polled
/// again). While the gate holds a head under way, hyper would take the
/// connection for idle and close it: the graceful finish waits until hyper
/// has the head (or the gate's `header_read_timeout` ends it).
async fn drive<C: Graceful + ?Sized>(
    mut closing: Pin<&mut impl Future<Output = ()>>,
    draining: &mut bool,
    activity: &ConnActivity,
    mut conn: Pin<&mut C>,
) -> hyper::Result<()> {
    let mut finishing = false;
    poll_fn(|cx| loop {
        if !*draining && closing.as_mut().poll(cx).is_ready() {
            *draining = true;
        }
        // Polled before deciding: the gate reads what the client sent.
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(res);
        }
        if *draining && !finishing && !activity.receiving() {
            finishing = true;
            conn.as_mut().graceful_shutdown();
            continue;
        }
        return Poll::Pending;
    })
    .await
}

/// Resolves once the connection has had no request in flight for
/// `idle_timeout`, or the server drains. One per connection, kept across
/// its requests: its timer and its place among the shutdown signal's
/// waiters are not made anew for each.
async fn closing(
    activity: Arc<ConnActivity>,
    idle_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let check = sleep_until(Instant::now() + idle_timeout);
    tokio::pin!(check);
    loop {
        tokio::select! {
            () = check.as_mut() => match activity.idle_deadline(idle_timeout) {
                Some(at) if at <= Instant::now() => {
                    trace!("closing idle client connection");
                    return;
                }
                Some(at) => check.as_mut().reset(at),
                None => check.as_mut().reset(Instant::now() + idle_timeout),
            },
            // A dropped sender means the server is gone: drain as well.
            _ = shutdown.changed() => return,
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use levee_telemetry::{Telemetry, Topology};
    use tokio::net::{TcpListener, TcpStream};

    /// Parked, a connection's task holds its socket and little else: the
    /// gate, the service and hyper's connection (with its buffers) are
    /// boxed while it is awake.
    #[tokio::test]
    async fn a_connection_task_carries_no_hyper_state_inline() {
        let state = crate::stack::testing::state(
            "[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:1\"]\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
        );
        let shared = Arc::new(Shared::new(state, Telemetry::new(Topology::default(), 1)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let protocols = Arc::new(crate::server::protocols(&shared.state().config.server));
        let (_tx, rx) = watch::channel(false);
        let task = serve(
            protocols,
            Arc::clone(&shared),
            0,
            stream,
            peer,
            Scheme::Http,
            Duration::from_secs(60),
            rx,
        );
        let size = std::mem::size_of_val(&task);
        let hyper_conn = std::mem::size_of::<
            http1::UpgradeableConnection<TokioIo<Gate<TcpStream>>, ConnService>,
        >();
        assert!(size < 512, "{size} bytes, hyper's connection {hyper_conn}");
    }
}
