//! Keep-alive connections to one node, for one data-plane worker.
//!
//! Each worker runs its own current-thread runtime and has its own pool per
//! node ([`crate::nodes::Node::pool`]), so a request, its node connection and
//! that connection's task all live on one core; the pool's lock is only ever
//! taken by that worker (and its reaper, on the same runtime): it is never
//! contended.
//!
//! HTTP/1 ([`crate::h1`], levee's own client): idle connections are a
//! stack (the most recently used is reused first, so a quiet period lets
//! the others expire). A connection is out of the pool while it carries a
//! request, and its response body hands it back when it ends cleanly (the
//! node allowing another request). A pooled connection the node closed, or
//! sent anything unasked on, is dropped when it is next taken or reaped.
//! Nothing is spawned per request.
//!
//! HTTP/2: one connection per node and worker, shared by every request
//! (within the node's `SETTINGS_MAX_CONCURRENT_STREAMS`, which hyper
//! respects by queueing streams), replaced when it closes. Requests that
//! arrive while it is being made wait for that one connection attempt and
//! share its outcome.
//!
//! Connections idle longer than `pool_idle_timeout` are closed by a reaper
//! task that runs only while the pool holds connections.
//!
//! A request is never sent twice on levee's own account: retries belong to
//! the retry layer. The one exception is a request that never left levee:
//! when a reused connection turns out to be closed before the request was
//! written (the node closed it while idle), the request goes once on a new
//! connection to the same node. No byte reached the node, so this is a new
//! checkout rather than a retry. When a *new* connection does the same
//! ([`PoolError::NotSent`]), the node is to blame, and the request is still
//! safe to send anywhere, whatever its method.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tracing::debug;

use crate::body::RequestBody;
use crate::clock;
use crate::h1::{self, HeadError, SendError};
use crate::headers::Forwarded;
use crate::node_io::{ConnectError, NodeConnector, NodeStream};

/// How a pool keeps its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Idle HTTP/1 connections kept for reuse at most; 0: a new connection
    /// per request.
    pub max_idle: usize,
    /// Speak HTTP/2 to the node (h2 by ALPN over TLS, h2c otherwise).
    pub http2: bool,
}

/// Why a call through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made: nothing reached the node.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The HTTP/2 handshake on a new connection failed: no request reached
    /// the node.
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// A new connection closed before the request was written: nothing
    /// reached the node.
    #[error("the node closed a new connection before the request was sent: {0}")]
    NotSent(#[source] NodeError),
    /// The request was (perhaps partly) sent, and no response came.
    #[error(transparent)]
    Send(NodeError),
    /// The response framed its body two ways; its connection is closed.
    #[error("the response has both Transfer-Encoding and Content-Length")]
    Framing,
    /// The HTTP/2 connection attempt this request waited for failed.
    #[error(transparent)]
    Shared(Arc<PoolError>),
}

/// An exchange with a node failed, by levee's HTTP/1 client or hyper's
/// HTTP/2 one.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    H1(h1::Error),
    #[error(transparent)]
    H2(hyper::Error),
}

/// A node's response body.
#[derive(Debug)]
pub enum NodeBody {
    H1(h1::Body<NodeStream, Checkin>),
    H2(Incoming),
}

impl NodeBody {
    /// An HTTP/1 response's field lines, which its map does not hold
    /// ([`h1::Fields`]); hyper's HTTP/2 responses have theirs in the map.
    pub fn take_fields(&mut self) -> Option<h1::Fields> {
        match self {
            NodeBody::H1(b) => b.take_fields(),
            NodeBody::H2(_) => None,
        }
    }
}

impl From<Incoming> for NodeBody {
    fn from(body: Incoming) -> Self {
        NodeBody::H2(body)
    }
}

impl Body for NodeBody {
    type Data = Bytes;
    type Error = NodeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, NodeError>>> {
        match self.get_mut() {
            NodeBody::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(NodeError::H1))),
            NodeBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(NodeError::H2))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            NodeBody::H1(b) => b.is_end_stream(),
            NodeBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            NodeBody::H1(b) => b.size_hint(),
            NodeBody::H2(b) => b.size_hint(),
        }
    }
}

/// The upgraded connection of a node's `101`, in its response's extensions.
pub type NodeUpgrade = h1::Upgrade<NodeStream>;

/// A node's response headers, or why there are none. An HTTP/1 exchange
/// on a pooled connection is not boxed; a new connection's connect and
/// hyper's HTTP/2 exchange are.
#[derive(Debug)]
pub struct ResponseFuture {
    inner: Arc<Inner>,
    state: State,
    /// Written by each HTTP/1 try of the request (a pooled connection that
    /// turns out closed sends it again on a new one).
    forwarded: Option<Forwarded>,
    head_back: bool,
}

type Connect = Pin<Box<dyn Future<Output = Result<NodeStream, ConnectError>> + Send>>;
type H2Send = Pin<Box<dyn Future<Output = Result<Response<NodeBody>, PoolError>> + Send>>;

enum State {
    /// On a pooled connection: a request it turns out closed on before
    /// any byte was written comes back, and goes on a new one.
    Reused(h1::Sending<NodeStream, Checkin>),
    Connecting(Connect, Option<Box<Request<RequestBody>>>),
    New(h1::Sending<NodeStream, Checkin>),
    H2(H2Send),
    Done,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Reused(_) => "Reused",
            State::Connecting(..) => "Connecting",
            State::New(_) => "New",
            State::H2(_) => "H2",
            State::Done => "Done",
        })
    }
}

impl State {
    fn connect(inner: &Arc<Inner>, req: Box<Request<RequestBody>>) -> Self {
        let pool = Arc::clone(inner);
        let connect = Box::pin(async move { pool.connector.connect().await });
        State::Connecting(connect, Some(req))
    }
}

impl ResponseFuture {
    /// As [`Future::poll`], and the request head back too when asked for
    /// and the HTTP/1 client gives it back (see
    /// [`h1::Sending::poll_exchange`]), as does a new connection that failed
    /// before the request was written. hyper's HTTP/2 client keeps it.
    pub fn poll_exchange(&mut self, cx: &mut Context<'_>) -> Poll<Exchanged> {
        loop {
            match &mut self.state {
                State::Reused(send) => match ready!(send.poll_exchange(cx)) {
                    (Err(SendError::Unsent(req, e)), _) => {
                        debug!(error = %e, "pooled node connection closed before use; sending on a new one");
                        self.state = State::connect(&self.inner, req);
                    }
                    (result, head) => {
                        self.state = State::Done;
                        let result = result.map(|r| r.map(NodeBody::H1)).map_err(sent);
                        return Poll::Ready((result, head));
                    }
                },
                State::Connecting(connect, req) => {
                    let io = match ready!(connect.as_mut().poll(cx)) {
                        Ok(io) => io,
                        Err(e) => {
                            let head = req.take().filter(|_| self.head_back);
                            let head = head.map(|req| Box::new(req.into_parts().0));
                            self.state = State::Done;
                            return Poll::Ready((Err(PoolError::Connect(e)), head));
                        }
                    };
                    let Some(req) = req.take() else {
                        self.state = State::Done;
                        return Poll::Ready((Err(spent()), None));
                    };
                    let checkin = Checkin(Arc::downgrade(&self.inner));
                    let send = h1::send(h1::Conn::new(io), *req, self.forwarded.as_ref(), checkin);
                    self.state = State::New(send.head_back(self.head_back));
                }
                State::New(send) => {
                    let (result, head) = ready!(send.poll_exchange(cx));
                    self.state = State::Done;
                    return Poll::Ready(match result {
                        Ok(resp) => (Ok(resp.map(NodeBody::H1)), head),
                        Err(SendError::Unsent(req, e)) => (
                            Err(PoolError::NotSent(NodeError::H1(e))),
                            Some(req)
                                .filter(|_| self.head_back)
                                .map(|req| Box::new(req.into_parts().0)),
                        ),
                        Err(e) => (Err(sent(e)), head),
                    });
                }
                State::H2(send) => {
                    let result = ready!(send.as_mut().poll(cx));
                    self.state = State::Done;
                    return Poll::Ready((result, None));
                }
                State::Done => return Poll::Ready((Err(spent()), None)),
            }
        }
    }
}

/// What [`ResponseFuture::poll_exchange`] gives: the response or why there
/// is none, and the request head.
pub type Exchanged = (
    Result<Response<NodeBody>, PoolError>,
    Option<Box<http::request::Parts>>,
);

impl Future for ResponseFuture {
    type Output = Result<Response<NodeBody>, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_exchange(cx).map(|(result, _)| result)
    }
}

/// The keep-alive connections of one node for one worker.
#[derive(Debug, Clone)]
pub struct NodePool {
    inner: Arc<Inner>,
}

/// In declared order: what every request reads (the config, the lock,
/// then the idle connections' [`Conns`]) in the two cache lines the
/// `Arc`'s counts, which it also touches, begin; the connector, used only
/// to open a connection, last.
#[derive(Debug)]
#[repr(C)]
struct Inner {
    config: PoolConfig,
    conns: Mutex<Conns>,
    connector: NodeConnector,
}

/// The idle HTTP/1 connections are `idle` then `last`, the most recently
/// used last. In declared order: what taking and giving back a connection
/// read, the HTTP/2 connection last.
#[derive(Debug, Default)]
#[repr(C)]
struct Conns {
    /// The most recently used, beside the lock: with many nodes a pool
    /// mostly holds one, and a request then takes it without reading
    /// another allocation (each a cache miss on a cold node).
    last: Option<Idle>,
    /// Whether a reaper task is running for this pool.
    reaping: bool,
    idle: Vec<Idle>,
    /// The shared HTTP/2 connection.
    h2: H2,
}

impl Conns {
    fn idle_count(&self) -> usize {
        self.idle.len() + usize::from(self.last.is_some())
    }
}

/// An HTTP/2 connection attempt that every request arriving meanwhile waits on.
type Connecting =
    Shared<BoxFuture<'static, Result<http2::SendRequest<RequestBody>, Arc<PoolError>>>>;

#[derive(Default)]
enum H2 {
    #[default]
    None,
    Connecting(Connecting),
    /// Open, and when a request last took it.
    Open(http2::SendRequest<RequestBody>, Instant),
}

impl std::fmt::Debug for H2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            H2::None => "None",
            H2::Connecting(_) => "Connecting",
            H2::Open(..) => "Open",
        })
    }
}

#[derive(Debug)]
struct Idle {
    conn: Box<h1::Conn<NodeStream>>,
    since: Instant,
}

/// Takes an HTTP/1 connection back into its pool when its response body
/// ends; holds the pool weakly, so a body outliving a replaced pool does
/// not keep it alive.
#[derive(Debug)]
pub struct Checkin(Weak<Inner>);

impl h1::Reuse<NodeStream> for Checkin {
    fn reuse(self, conn: Box<h1::Conn<NodeStream>>) {
        if let Some(pool) = self.0.upgrade() {
            pool.checkin(conn);
        }
    }
}

impl NodePool {
    pub fn new(connector: NodeConnector, config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                connector,
                config,
                conns: Mutex::new(Conns::default()),
            }),
        }
    }

    /// Sends `req` over a pooled connection, or a new one, and waits for
    /// the response headers. Its URI is as the node takes it: origin form
    /// for HTTP/1, absolute with the node's authority for HTTP/2
    /// ([`crate::stack::balance`] aims it).
    /// `forwarded`: its `X-Forwarded-*` lines when its headers lack them.
    /// With `head_back`, an HTTP/1 exchange gives the request head back
    /// ([`ResponseFuture::poll_exchange`]).
    pub fn send(
        &self,
        mut req: Request<RequestBody>,
        forwarded: Option<Forwarded>,
        head_back: bool,
    ) -> ResponseFuture {
        let inner = Arc::clone(&self.inner);
        let state = if inner.config.http2 {
            if let Some(f) = &forwarded {
                f.apply(req.headers_mut());
            }
            State::H2(Box::pin(Arc::clone(&inner).send_h2(req)))
        } else if let Some(conn) = inner.checkout_h1() {
            let checkin = Checkin(Arc::downgrade(&inner));
            State::Reused(h1::send(conn, req, forwarded.as_ref(), checkin).head_back(head_back))
        } else {
            State::connect(&inner, Box::new(req))
        };
        ResponseFuture {
            inner,
            state,
            forwarded,
            head_back,
        }
    }

    /// HTTP/1 connections idle in the pool now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.inner.lock().idle_count()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn send_h2(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<NodeBody>, PoolError> {
        let connecting = match self.shared_h2() {
            Ok(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(NodeBody::H2)),
                Err(e) => {
                    req = unsent(e)?;
                    self.replace_h2()
                }
            },
            Err(connecting) => connecting,
        };
        let mut sender = connecting.await.map_err(PoolError::Shared)?;
        let resp = sender.try_send_request(req).await.map_err(not_sent)?;
        Ok(resp.map(NodeBody::H2))
    }

    /// The most recently used idle connection still open; closed ones are
    /// dropped on the way. Expired ones are the reaper's: it wakes when the
    /// oldest expires, and the most recent is the last to.
    fn checkout_h1(&self) -> Option<Box<h1::Conn<NodeStream>>> {
        let mut conns = self.lock();
        while let Some(mut idle) = conns.last.take().or_else(|| conns.idle.pop()) {
            if is_open(&mut idle.conn) {
                return Some(idle.conn);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, conn: Box<h1::Conn<NodeStream>>) {
        let mut conns = self.lock();
        if conns.idle_count() >= self.config.max_idle {
            return;
        }
        let idle = Idle {
            conn,
            since: clock::now(),
        };
        if let Some(older) = conns.last.replace(idle) {
            conns.idle.push(older);
        }
        self.start_reaper(&mut conns);
    }

    /// The shared HTTP/2 connection while it is open, else the attempt
    /// to make it (started here if none is under way).
    fn shared_h2(self: &Arc<Self>) -> Result<http2::SendRequest<RequestBody>, Connecting> {
        let mut conns = self.lock();
        match &mut conns.h2 {
            H2::Open(sender, used) if !sender.is_closed() => {
                *used = Instant::now();
                Ok(sender.clone())
            }
            H2::Connecting(connecting) => Err(connecting.clone()),
            _ => Err(self.start_h2(&mut conns)),
        }
    }

    /// A new attempt, after the open connection turned out closed (unless
    /// another request started one already).
    fn replace_h2(self: &Arc<Self>) -> Connecting {
        let mut conns = self.lock();
        match &conns.h2 {
            H2::Connecting(connecting) => connecting.clone(),
            H2::Open(sender, _) if !sender.is_closed() => {
                // Another request replaced it already; use that one.
                let sender = sender.clone();
                async move { Ok(sender) }.boxed().shared()
            }
            _ => self.start_h2(&mut conns),
        }
    }

    /// Starts the attempt; it holds the pool weakly, so an attempt nobody
    /// waits for any more does not keep a replaced pool alive.
    fn start_h2(self: &Arc<Self>, conns: &mut Conns) -> Connecting {
        let connector = self.connector.clone();
        let pool = Arc::downgrade(self);
        let connecting = async move {
            let made = connect_h2(&connector).await;
            if let Some(pool) = pool.upgrade() {
                let mut conns = pool.lock();
                match &made {
                    Ok(sender) => {
                        conns.h2 = H2::Open(sender.clone(), Instant::now());
                        pool.start_reaper(&mut conns);
                    }
                    Err(_) => conns.h2 = H2::None,
                }
            }
            made.map_err(Arc::new)
        }
        .boxed()
        .shared();
        conns.h2 = H2::Connecting(connecting.clone());
        connecting
    }

    /// Starts the reaper on this worker's runtime unless it runs already.
    fn start_reaper(self: &Arc<Self>, conns: &mut Conns) {
        if conns.reaping {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            conns.reaping = true;
            runtime.spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Closes what has idled too long; the next instant to look again, or
    /// `None` (and the reaper stops) once the pool holds nothing.
    fn reap(&self, now: Instant) -> Option<Instant> {
        let timeout = self.config.idle_timeout;
        let mut conns = self.lock();
        let mut keep = |i: &mut Idle| now - i.since < timeout && is_open(&mut i.conn);
        conns.idle.retain_mut(&mut keep);
        if conns.last.as_mut().is_some_and(|i| !keep(i)) {
            conns.last = None;
        }
        if matches!(&conns.h2, H2::Open(s, used) if s.is_closed() || now - *used >= timeout) {
            conns.h2 = H2::None;
        }
        let oldest = conns.idle.first().or(conns.last.as_ref());
        let mut next = oldest.map(|i| i.since + timeout);
        if let H2::Open(_, used) = &conns.h2 {
            let at = *used + timeout;
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if next.is_none() {
            conns.reaping = false;
        }
        next
    }
}

async fn connect_h2(
    connector: &NodeConnector,
) -> Result<http2::SendRequest<RequestBody>, PoolError> {
    let io = TokioIo::new(connector.connect().await?);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(PoolError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "node connection ended with an error");
        }
    });
    Ok(sender)
}

/// Runs while the pool exists and holds connections.
async fn reap(pool: Weak<Inner>) {
    let mut wake = match pool.upgrade() {
        Some(p) => Instant::now() + p.config.idle_timeout,
        None => return,
    };
    loop {
        tokio::time::sleep_until(wake).await;
        let Some(pool) = pool.upgrade() else { return };
        match pool.reap(Instant::now()) {
            Some(next) => wake = next,
            None => return,
        }
    }
}

/// Whether an idle connection can take a request (see
/// [`h1::Conn::is_open`]); a quiet one can, known without a read.
fn is_open(conn: &mut h1::Conn<NodeStream>) -> bool {
    conn.get_ref().is_quiet() || conn.is_open()
}

/// The answer of a future polled after it answered, which no caller does.
fn spent() -> PoolError {
    PoolError::Send(NodeError::H1(h1::Error::Closed))
}

/// The error of an HTTP/1 request that (perhaps partly) reached the node.
fn sent(e: SendError) -> PoolError {
    match e {
        SendError::Sent(h1::Error::Head(HeadError::Framing)) => PoolError::Framing,
        SendError::Sent(e) | SendError::Unsent(_, e) => PoolError::Send(NodeError::H1(e)),
    }
}

/// The request back from a reused HTTP/2 connection that closed before
/// sending it, or the error if it may have been sent.
fn unsent(mut e: TrySendError<Request<RequestBody>>) -> Result<Request<RequestBody>, PoolError> {
    match e.take_message() {
        Some(req) => {
            debug!(error = %e.error(), "pooled node connection closed before use; sending on a new one");
            Ok(req)
        }
        None => Err(PoolError::Send(NodeError::H2(e.into_error()))),
    }
}

/// The error of a new HTTP/2 connection.
fn not_sent(mut e: TrySendError<Request<RequestBody>>) -> PoolError {
    if e.take_message().is_some() {
        PoolError::NotSent(NodeError::H2(e.into_error()))
    } else {
        PoolError::Send(NodeError::H2(e.into_error()))
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
