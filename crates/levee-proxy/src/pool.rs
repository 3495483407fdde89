//! Keep-alive connections to one node, for one data-plane worker.
//!
//! Each worker runs its own current-thread runtime and has its own pool per
//! node ([`crate::nodes::Node::pool`]), so a request, its node connection and
//! that connection's task all live on one core; the pool's lock is only ever
//! taken by that worker (and its reaper, on the same runtime): it is never
//! contended.
//!
//! HTTP/1: idle connections are a stack (the most recently used is reused
//! first, so a quiet period lets the others expire). A connection is reused
//! only once hyper says it is ready for another request, which it is when
//! the previous response body has been read to its end: a connection whose
//! body is still streaming when its headers are handed on waits in a busy
//! list until then. Nothing is spawned per request.
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

use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tracing::debug;

use crate::body::RequestBody;
use crate::node_io::{ConnectError, NodeConnector};

/// How a pool keeps its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// HTTP/1 connections kept for reuse at most (idle, or still reading a
    /// response body); 0: a new connection per request.
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
    /// The HTTP handshake on a new connection failed: no request reached
    /// the node.
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// A new connection closed before the request was written: nothing
    /// reached the node.
    #[error("the node closed a new connection before the request was sent: {0}")]
    NotSent(#[source] hyper::Error),
    /// The request was (perhaps partly) sent, and no response came.
    #[error(transparent)]
    Send(hyper::Error),
    /// The response framed its body two ways; its connection is closed.
    #[error("the response has both Transfer-Encoding and Content-Length")]
    Framing,
    /// The HTTP/2 connection attempt this request waited for failed.
    #[error(transparent)]
    Shared(Arc<PoolError>),
}

/// A node's response headers, or why there are none.
pub type ResponseFuture = BoxFuture<'static, Result<Response<Incoming>, PoolError>>;

/// The keep-alive connections of one node for one worker.
#[derive(Debug, Clone)]
pub struct NodePool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connector: NodeConnector,
    config: PoolConfig,
    conns: Mutex<Conns>,
}

#[derive(Debug, Default)]
struct Conns {
    /// Ready HTTP/1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// HTTP/1 connections whose response body was still streaming when
    /// their response headers were handed on.
    busy: Vec<http1::SendRequest<RequestBody>>,
    /// The shared HTTP/2 connection.
    h2: H2,
    /// Whether a reaper task is running for this pool.
    reaping: bool,
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
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
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
    pub fn send(&self, req: Request<RequestBody>) -> ResponseFuture {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            if inner.config.http2 {
                inner.send_h2(req).await
            } else {
                inner.send_h1(req).await
            }
        })
    }

    /// HTTP/1 connections idle in the pool now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.inner.lock().idle.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn send_h1(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        if let Some(mut sender) = self.checkout_h1() {
            match sender.try_send_request(req).await {
                Ok(resp) => return self.answered_h1(sender, resp),
                Err(e) => req = unsent(e)?,
            }
        }
        let mut sender = self.connect_h1().await?;
        match sender.try_send_request(req).await {
            Ok(resp) => self.answered_h1(sender, resp),
            Err(e) => Err(not_sent(e)),
        }
    }

    async fn send_h2(
        self: Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        let connecting = match self.shared_h2() {
            Ok(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    req = unsent(e)?;
                    self.replace_h2()
                }
            },
            Err(connecting) => connecting,
        };
        let mut sender = connecting.await.map_err(PoolError::Shared)?;
        sender.try_send_request(req).await.map_err(not_sent)
    }

    /// The most recently used ready connection, else one whose body has
    /// ended since; closed ones are dropped on the way. Expired ones are
    /// the reaper's: it wakes when the oldest expires, and the most recent
    /// is the last to.
    fn checkout_h1(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut conns = self.lock();
        while let Some(idle) = conns.idle.pop() {
            if idle.sender.is_ready() {
                return Some(idle.sender);
            }
        }
        let busy = &mut conns.busy;
        let mut i = 0;
        while i < busy.len() {
            if busy[i].is_ready() {
                return Some(busy.swap_remove(i));
            }
            if busy[i].is_closed() {
                busy.swap_remove(i);
            } else {
                i += 1;
            }
        }
        None
    }

    /// Keeps the connection for the next request unless the response rules
    /// that out.
    fn answered_h1(
        self: &Arc<Self>,
        sender: http1::SendRequest<RequestBody>,
        resp: Response<Incoming>,
    ) -> Result<Response<Incoming>, PoolError> {
        let headers = resp.headers();
        // RFC 9112 §6.3 lets a recipient treat this as an error; the node
        // may be desynchronised, so its connection must not carry another
        // request (dropping the sender closes it).
        if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
            return Err(PoolError::Framing);
        }
        // An upgraded connection is the tunnel's now.
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS && self.config.max_idle > 0 {
            self.checkin(sender);
        }
        Ok(resp)
    }

    fn checkin(self: &Arc<Self>, sender: http1::SendRequest<RequestBody>) {
        let mut conns = self.lock();
        if conns.idle.len() + conns.busy.len() >= self.config.max_idle {
            return;
        }
        if sender.is_ready() {
            conns.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        } else if !sender.is_closed() {
            conns.busy.push(sender);
        } else {
            return;
        }
        self.start_reaper(&mut conns);
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<RequestBody>, PoolError> {
        let io = self.connector.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(PoolError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "node connection ended with an error");
            }
        });
        Ok(sender)
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
        conns
            .idle
            .retain(|i| now - i.since < timeout && !i.sender.is_closed());
        conns.busy.retain(|s| !s.is_closed());
        if matches!(&conns.h2, H2::Open(s, used) if s.is_closed() || now - *used >= timeout) {
            conns.h2 = H2::None;
        }
        let mut next = conns.idle.first().map(|i| i.since + timeout);
        if !conns.busy.is_empty() {
            // Their bodies end some time: look at them again.
            next = Some(next.map_or(now + timeout, |n| n.min(now + timeout)));
        }
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
    let io = connector.connect().await?;
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

/// The request back from a reused connection that closed before writing
/// it, or the error if it may have been sent.
fn unsent(mut e: TrySendError<Request<RequestBody>>) -> Result<Request<RequestBody>, PoolError> {
    match e.take_message() {
        Some(req) => {
            debug!(error = %e.error(), "pooled node connection closed before use; sending on a new one");
            Ok(req)
        }
        None => Err(PoolError::Send(e.into_error())),
    }
}

/// The error of a new connection.
fn not_sent(mut e: TrySendError<Request<RequestBody>>) -> PoolError {
    if e.take_message().is_some() {
        PoolError::NotSent(e.into_error())
    } else {
        PoolError::Send(e.into_error())
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
