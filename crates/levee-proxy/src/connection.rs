//! One client connection: its protocol, its service, its idle bound and
//! its share of a graceful shutdown.
//!
//! The first bytes tell the protocol: the HTTP/2 preface goes to hyper's
//! HTTP/2 server; anything else is HTTP/1, served by levee's own
//! [`h1::server`], which reads each head through the gate (bounded by
//! `header_read_timeout` once its first byte arrived). `idle_timeout` is
//! levee's own: a connection with no request in flight for that long is
//! closed gracefully, on HTTP/1 and HTTP/2 alike.
//!
//! An HTTP/1 connection idle for [`PARK_AFTER`](crate::gate::PARK_AFTER)
//! parks: its service stack is dropped and it keeps only its socket. A
//! plain-TCP connection parks in its worker's [`Lot`] (its task ends; the
//! lot keeps its socket, peer and slot); a TLS one, or any when the lot
//! drains, parks in its task, with a peek at the socket:
//!
//! ```text
//! park ─┬─ plain TCP: in the Lot, no task ───┬─ bytes ─▶ h1::server: requests,
//!   ▲   └─ TLS: in its task, peek, no buffer ┘           their responses
//!   │                                                    │ idle for PARK_AFTER
//!   └──────────────── Ended::Parked(socket) ◀────────────┘
//! ```
//!
//! A connection that closes (`Connection: close`, an error, a refused
//! head) or is upgraded ends there. HTTP/2 keeps one hyper connection for
//! its life.
//!
//! A drain closes an idle connection at once. A request whose first bytes
//! arrived gets to finish its head (within `header_read_timeout`) and is
//! answered with `Connection: close`.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_rustls::server::TlsStream;
use tower::Service;
use tracing::trace;

use crate::activity::{ActivityGuard, ConnActivity, Upgrading};
use crate::body::{ClientBody, ProxyBody};
use crate::clock;
use crate::gate::Park;
use crate::h1::{self, Rewind};
use crate::headers::Scheme;
use crate::parking::Lot;
use crate::server::ConnSlot;
use crate::stack::{self, Stack};
use crate::state::Shared;
use crate::woken::PolledOnWake;

/// The hyper settings of one config version, for HTTP/2 (levee serves
/// HTTP/1 itself: [`h1::server`]).
pub(crate) struct Protocols {
    pub http2: http2::Builder<TokioExecutor>,
}

/// hyper's HTTP/2 server writes the heads: the request id goes into them
/// ([`stack::request_id::stamp`]).
type ConnService = stack::serve::Serve<
    tower::util::MapResponse<TrackActivity<Stack>, fn(Response<ProxyBody>) -> Response<ProxyBody>>,
>;

/// What every phase of one connection is served with.
pub(crate) struct Conn {
    pub protocols: Arc<Protocols>,
    pub shared: Arc<Shared>,
    pub worker: usize,
    pub peer: SocketAddr,
    pub scheme: Scheme,
    pub idle_timeout: Duration,
}

/// Where a connection's task starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// A new connection, from its first bytes.
    Accepted,
    /// Out of the [`Lot`], at its next request; `draining` if the server
    /// drains (that request is answered with `Connection: close`).
    Resumed { draining: bool },
}

/// Serves one connection until it closes, idles out, or shutdown drains it.
/// `stream` is any byte stream (plain TCP, or TLS after its handshake);
/// `slot` is its place under `max_connections`, held until it closes.
///
/// An idle connection parks in `lot` if it can (its task ends), else in
/// its task: then the task is small, as everything that serves requests
/// (the service stack, the HTTP/1 connection's state) lives in a box that
/// exists only while the connection is not parked. Not an `async fn`,
/// which would keep its arguments besides its locals.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<I>(
    conn: Conn,
    mut stream: I,
    mut shutdown: watch::Receiver<bool>,
    mut slot: ConnSlot,
    lot: Option<Arc<Lot>>,
    start: Start,
) -> impl Future<Output = ()> + Send + 'static
where
    I: Park + IntoLot + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A request reads the clock at several points of each event it meets
    // in this task: one reading per poll serves them all.
    clock::OneReading::new(async move {
        let (mut first, mut draining) = match start {
            Start::Accepted => (true, false),
            Start::Resumed { draining } => (false, draining),
        };
        if !first {
            // Out of the lot, the socket is new to tokio: wait until tokio
            // sees the client's bytes, or the first read would find
            // none and a drain would take the connection for idle.
            if !matches!(poll_fn(|cx| stream.poll_parked(cx)).await, Ok(true)) {
                return;
            }
        }
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
            let deadline = parked.last_change + conn.idle_timeout;
            if let Some(lot) = &lot {
                match stream.into_lot(lot, conn.peer, slot, deadline) {
                    Ok(()) => return,
                    Err((back, back_slot)) => {
                        stream = back;
                        slot = back_slot;
                    }
                }
            }
            // Parked in the task: a peek at the socket, no buffer.
            tokio::select! {
                next = poll_fn(|cx| stream.poll_parked(cx)) => {
                    if !matches!(next, Ok(true)) {
                        return;
                    }
                }
                () = sleep_until(deadline) => {
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
    })
}

/// A client stream an idle connection can leave in the [`Lot`].
pub(crate) trait IntoLot: Sized {
    /// Hands the connection to `lot`, or gives it back with its slot.
    fn into_lot(
        self,
        lot: &Lot,
        peer: SocketAddr,
        slot: ConnSlot,
        deadline: Instant,
    ) -> Result<(), (Self, ConnSlot)>;
}

impl IntoLot for TcpStream {
    fn into_lot(
        self,
        lot: &Lot,
        peer: SocketAddr,
        slot: ConnSlot,
        deadline: Instant,
    ) -> Result<(), (Self, ConnSlot)> {
        lot.park(self, peer, slot, deadline)
            .map_err(|r| (r.stream, r.slot))
    }
}

impl IntoLot for TlsStream<TcpStream> {
    /// rustls's state cannot be dropped between requests: a TLS
    /// connection parks in its task.
    fn into_lot(
        self,
        _lot: &Lot,
        _peer: SocketAddr,
        slot: ConnSlot,
        _deadline: Instant,
    ) -> Result<(), (Self, ConnSlot)> {
        Err((self, slot))
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
    mut stream: I,
    shutdown: watch::Receiver<bool>,
    first: bool,
    mut draining: bool,
) -> Option<Parked<I>>
where
    I: Park + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let activity = Arc::new(ConnActivity::new());
    let mut service = TrackActivity {
        inner: stack::stack(Arc::clone(&conn.shared), conn.worker, peer, conn.scheme),
        activity: Arc::clone(&activity),
    };
    // Looked at twice a request: polled again only once it was woken.
    let closing = PolledOnWake::new(closing(Arc::clone(&activity), conn.idle_timeout, shutdown));
    tokio::pin!(closing);
    let (protocol, read) = if first {
        let head_timeout = conn.shared.state().config.server.header_read_timeout;
        let mut read = BytesMut::new();
        let protocol = sniff(
            &mut stream,
            &mut read,
            closing.as_mut(),
            &mut draining,
            head_timeout,
        )
        .await?;
        (protocol, read)
    } else {
        (Protocol::Http1, BytesMut::new())
    };
    match protocol {
        Protocol::Http1 => {
            let env = h1::server::Env {
                shared: &conn.shared,
                activity: &activity,
                peer,
            };
            let ended = h1::server::serve(
                stream,
                read,
                &mut service,
                closing.as_mut(),
                &mut draining,
                !first,
                env,
            )
            .await;
            match ended {
                h1::server::Ended::Closed => return None,
                h1::server::Ended::Parked(stream) => {
                    return (!draining).then(|| Parked {
                        stream,
                        last_change: activity.last_change(),
                    })
                }
                h1::server::Ended::Upgraded => {}
            }
        }
        Protocol::Http2 => {
            let io = TokioIo::new(Rewind::new(stream, read.freeze()));
            let hyper_conn = conn.protocols.http2.serve_connection(
                io,
                stack::serve::Serve::new(tower::util::MapResponse::new(
                    service,
                    stack::request_id::stamp as fn(_) -> _,
                )),
            );
            tokio::pin!(hyper_conn);
            let res = drive(closing.as_mut(), &mut draining, hyper_conn).await;
            if let Err(e) = res {
                trace!(%peer, error = %e, "client connection ended with an error");
            }
        }
    }
    // An upgraded connection lives on as a tunnel: its task and slot stay
    // taken until the tunnel ends (at the latest when a drain's grace ends).
    activity.tunnels_closed().await;
    None
}

/// The protocol a client speaks, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// The prior-knowledge preface (also what HTTP/2 over TLS sends).
    Http2,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes into `read` until they tell the protocol. `None`:
/// the connection ended first (closed, idled out or drained before a
/// byte, or its first bytes took longer than `header_read_timeout`).
async fn sniff<I: AsyncRead + Unpin>(
    stream: &mut I,
    read: &mut BytesMut,
    mut closing: Pin<&mut impl Future<Output = ()>>,
    draining: &mut bool,
    head_timeout: Duration,
) -> Option<Protocol> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| loop {
        let n = read.len().min(H2_PREFACE.len());
        if read[..n] != H2_PREFACE[..n] {
            return Poll::Ready(Some(Protocol::Http1));
        }
        if n == H2_PREFACE.len() {
            return Poll::Ready(Some(Protocol::Http2));
        }
        if !*draining && closing.as_mut().poll(cx).is_ready() {
            *draining = true;
        }
        if !read.is_empty() {
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(head_timeout)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        if read.capacity() - read.len() < 1024 {
            read.reserve(4096);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, read) {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
            Poll::Ready(Ok(_)) => {}
            // What the client sent before a drain is read first; with
            // nothing sent, the drain closes the connection.
            Poll::Pending if read.is_empty() && *draining => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// Drives hyper's HTTP/2 connection to its end, finishing it gracefully
/// once `closing` resolves (then `draining` is set, and `closing` not
/// polled again).
async fn drive<C>(
    mut closing: Pin<&mut impl Future<Output = ()>>,
    draining: &mut bool,
    mut conn: Pin<&mut C>,
) -> hyper::Result<()>
where
    C: Graceful,
{
    let mut finishing = false;
    poll_fn(|cx| loop {
        if !*draining && closing.as_mut().poll(cx).is_ready() {
            *draining = true;
        }
        if let Poll::Ready(res) = conn.as_mut().poll(cx) {
            return Poll::Ready(res);
        }
        if *draining && !finishing {
            finishing = true;
            conn.as_mut().graceful_shutdown();
            continue;
        }
        return Poll::Pending;
    })
    .await
}

/// hyper's HTTP/2 connection, which can be asked to finish gracefully.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I> Graceful for http2::Connection<TokioIo<Rewind<I>>, ConnService, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
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
        // In order: no random draw for the branch to poll first.
        tokio::select! {
            biased;
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
///
/// Such a request is one levee's HTTP/1 server can upgrade: it carries the
/// server's [`h1::server::OnUpgrade`], put there for a head with an
/// `Upgrade` header. An empty extension map says so at once, where a
/// header lookup hashes the name.
#[derive(Debug, Clone)]
pub struct TrackActivity<S> {
    inner: S,
    activity: Arc<ConnActivity>,
}

impl<S> Service<Request<ClientBody>> for TrackActivity<S>
where
    S: Service<Request<ClientBody>, Response = Response<ProxyBody>, Error = Infallible>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ClientBody>) -> Self::Future {
        if req.extensions().get::<h1::server::OnUpgrade>().is_some() {
            req.extensions_mut()
                .insert(Upgrading::new(Arc::clone(&self.activity)));
        }
        TrackFuture {
            guard: Some(self.activity.begin()),
            fut: self.inner.call(req),
        }
    }
}

/// HTTP/2 requests, as hyper reads them.
impl<S> Service<Request<Incoming>> for TrackActivity<S>
where
    S: Service<Request<ClientBody>, Response = Response<ProxyBody>, Error = Infallible>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.call(req.map(ClientBody::H2))
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
        // The response is marked where it is, not moved out and back; a
        // poll with none yet is not moved at all (it is as large as one).
        let mut poll = this.fut.poll(cx);
        let Poll::Ready(Ok(resp)) = &mut poll else {
            return Poll::Pending;
        };
        if let Some(guard) = this.guard.take() {
            resp.body_mut().track(guard);
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use levee_telemetry::{Telemetry, Topology};
    use tokio::net::{TcpListener, TcpStream};

    /// Parked in its task (a TLS connection, or when the lot drains), a
    /// connection's task holds its socket and little else: the service and
    /// the HTTP/1 connection are boxed while it is awake.
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
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let conn = Conn {
            protocols,
            shared: Arc::clone(&shared),
            worker: 0,
            peer,
            scheme: Scheme::Http,
            idle_timeout: Duration::from_secs(60),
        };
        let lot = Arc::new(Lot::new(Arc::clone(&shared), 0).unwrap());
        let slot = ConnSlot::new(permit, Arc::clone(&shared.telemetry));
        let task = serve(conn, stream, rx, slot, Some(lot), Start::Accepted);
        let size = std::mem::size_of_val(&task);
        assert!(size < 512, "{size} bytes");
    }
}
