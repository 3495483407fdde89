//! Streaming bodies with idle bounds, and what a request holds until its
//! response body ends.
//!
//! Bodies are never buffered: each frame is passed on as it arrives. An idle
//! bound fires only while levee is actually waiting on the other side (it is
//! armed on the first `Pending`), so a slow reader is not blamed on the node.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use levee_resilience::BulkheadPermit;
use levee_telemetry::{ErrorReason, RouteStats};
use tokio::time::{Instant, Sleep};

use crate::access_log::{AccessEntry, UpstreamInfo};
use crate::activity::ActivityGuard;
use crate::gate::Violation;
use crate::h1;
use crate::pool::{NodeBody, NodeError};

/// A client's request body as the stack takes it: none, read by levee's
/// HTTP/1 connection, or hyper's for HTTP/2.
#[derive(Debug)]
pub enum ClientBody {
    Empty,
    H1(h1::server::RequestBody),
    H2(Incoming),
}

/// Reading a client's request body failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientReadError {
    #[error(transparent)]
    H1(#[from] h1::server::ReadError),
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

impl ClientReadError {
    /// The framing rule the body broke, if that is why it failed.
    pub fn violation(&self) -> Option<Violation> {
        match self {
            ClientReadError::H1(h1::server::ReadError::Framing(v)) => Some(*v),
            _ => None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientReadError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(ClientReadError::from))),
            ClientBody::H2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(ClientReadError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(body) => body.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(body) => body.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
        }
    }
}

/// The client's request body failed while levee forwarded it.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("reading the client's request body failed: {0}")]
    Read(#[source] ClientReadError),
    #[error("the client sent no request body data for {0:?}")]
    Idle(Duration),
    #[error("the request body passed the route's limit of {0} bytes")]
    TooLarge(u64),
    #[error("the request body's framing is invalid: {0}")]
    Framing(Violation),
}

impl ClientBodyError {
    /// What levee answers (or counts) for it.
    pub fn reason(&self) -> ErrorReason {
        match self {
            ClientBodyError::TooLarge(_) => ErrorReason::BodyTooLarge,
            ClientBodyError::Framing(v) => v.reason(),
            ClientBodyError::Read(_) | ClientBodyError::Idle(_) => ErrorReason::ClientBody,
        }
    }
}

/// Set once by a streamed request body that failed on the client's side
/// (too large, read error, idle), so that a response already under way,
/// which then fails too, is charged to the client and not to the node.
pub type ClientBodyFailure = Arc<OnceLock<ErrorReason>>;

/// The node's response body failed after its headers were sent on.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("the node's response body failed: {0}")]
    Read(#[source] NodeError),
    #[error("the node sent no response body data for {0:?}")]
    Idle(Duration),
    #[error("the response was not through within total_timeout ({0:?})")]
    Total(Duration),
}

impl UpstreamBodyError {
    /// The reason the access log gives for the cut.
    pub fn reason(&self) -> ErrorReason {
        match self {
            UpstreamBodyError::Read(_) => ErrorReason::UpstreamReset,
            UpstreamBodyError::Idle(_) | UpstreamBodyError::Total(_) => ErrorReason::Deadline,
        }
    }
}

/// An idle bound, allocated on the first wait only: a body that is always
/// ready when polled (most small ones) never pays for a timer.
#[derive(Debug)]
pub struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// Progress was made: the next wait starts a new idle period.
    fn progressed(&mut self) {
        self.armed = false;
    }

    /// Called when the other side is pending; true once the bound has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = Instant::now() + self.limit;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if !self.armed {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// The client's request body on its way to the node: streamed, or kept
/// whole (small bodies, so that a retry can send them again, and so that a
/// small chunked body is validated whole before a node sees a byte of it).
///
/// A streamed body counts its bytes against the route's limit: the frame
/// that would pass it is never sent on; the body fails instead, which
/// aborts the node connection mid-request (the node never sees a complete
/// request). A declared Content-Length over the limit is refused earlier,
/// at the edge.
#[derive(Debug)]
pub enum RequestBody {
    /// Boxed: a request travels through every layer's future and waits in
    /// the node connection's queue, so its size is paid on every move and
    /// in every queue slot, while most requests (bodiless ones) keep nothing.
    Stream(Box<Streaming>),
    /// What is left to send (empty once sent): with no `Option` around
    /// it, a request with this body is 256 bytes, which memcpy moves by a
    /// shorter path than anything larger.
    Kept(Bytes),
}

/// A request body streamed to the node as the client sends it.
#[derive(Debug)]
pub struct Streaming {
    /// Bytes already read from `inner`, sent first.
    prefix: Option<Bytes>,
    inner: ClientBody,
    idle: IdleTimer,
    limit: Option<u64>,
    read: u64,
    failure: Option<ClientBodyFailure>,
}

impl RequestBody {
    /// `limit`: most bytes the body may have (`None`: no limit).
    pub fn stream(inner: ClientBody, idle_timeout: Duration, limit: Option<u64>) -> Self {
        RequestBody::Stream(Box::new(Streaming {
            prefix: None,
            inner,
            idle: IdleTimer::new(idle_timeout),
            limit,
            read: 0,
            failure: None,
        }))
    }

    /// A streamed body records its failure in `flag`.
    pub fn watched(mut self, flag: ClientBodyFailure) -> Self {
        if let RequestBody::Stream(body) = &mut self {
            body.failure = Some(flag);
        }
        self
    }

    /// Reads the body up to `max` bytes: whole if it ends within them,
    /// else its first bytes, to be sent before the rest streams.
    pub async fn read_up_to(mut self, max: usize) -> Result<Self, ClientBodyError> {
        let mut data = BytesMut::new();
        while let Some(frame) = self.frame().await {
            // Trailers are dropped: `Trailer` is hop-by-hop, and levee never
            // forwards request trailers.
            if let Ok(chunk) = frame?.into_data() {
                data.extend_from_slice(&chunk);
                if data.len() > max {
                    if let RequestBody::Stream(body) = &mut self {
                        body.prefix = Some(data.freeze());
                    }
                    return Ok(self);
                }
            }
        }
        Ok(RequestBody::kept(data.freeze()))
    }

    pub fn kept(data: Bytes) -> Self {
        RequestBody::Kept(data)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Kept(data) => {
                Poll::Ready((!data.is_empty()).then(|| Ok(Frame::data(std::mem::take(data)))))
            }
            RequestBody::Stream(body) => {
                let Streaming {
                    prefix,
                    inner,
                    idle,
                    limit,
                    read,
                    failure,
                } = &mut **body;
                if let Some(data) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                let result = match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        idle.progressed();
                        let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                        *read = read.saturating_add(len);
                        match *limit {
                            Some(limit) if *read > limit => Err(ClientBodyError::TooLarge(limit)),
                            _ => Ok(frame),
                        }
                    }
                    Poll::Ready(Some(Err(e))) => Err(match e.violation() {
                        Some(v) => ClientBodyError::Framing(v),
                        None => ClientBodyError::Read(e),
                    }),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending if idle.expired(cx) => Err(ClientBodyError::Idle(idle.limit)),
                    Poll::Pending => return Poll::Pending,
                };
                if let (Err(e), Some(flag)) = (&result, failure.as_ref()) {
                    let _ = flag.set(e.reason());
                }
                Poll::Ready(Some(result))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Kept(data) => data.is_empty(),
            RequestBody::Stream(body) => body.prefix.is_none() && body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Kept(data) => SizeHint::with_exact(data.len() as u64),
            RequestBody::Stream(body) if body.prefix.is_none() => body.inner.size_hint(),
            RequestBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// Everything a proxied request holds until its response body ends: its
/// bulkhead slots, its place in the node's in-flight gauge, and the stats
/// that a failure mid-body is charged to. The node's stats are reached
/// through the node the in-flight place holds, not an `Arc` of their own,
/// whose counts would be one more cold cache line per request with many
/// nodes.
#[derive(Debug)]
pub struct RequestScope {
    pub route_slot: Option<BulkheadPermit>,
    pub backend_slot: Option<BulkheadPermit>,
    pub node_in_flight: crate::nodes::InFlightGuard,
    pub route: Arc<RouteStats>,
    /// Set if the request body (still streaming) failed on the client's side.
    pub client_body: Option<ClientBodyFailure>,
}

impl RequestScope {
    fn fail(self, reason: ErrorReason) {
        self.node_in_flight
            .node()
            .stats
            .outcomes
            .record_error(reason);
        self.route.outcomes.record_error(reason);
    }

    /// The response body failed: the node's fault, unless the request body
    /// failed first (the node connection was aborted for the client's sake).
    fn fail_upstream(self) {
        match self.client_body.as_ref().and_then(|f| f.get().copied()) {
            Some(reason) => self.route.outcomes.record_error(reason),
            None => self.fail(ErrorReason::UpstreamReset),
        }
    }
}

/// The request's `total_timeout`: one timer for the whole body, set once
/// and never reset.
#[derive(Debug)]
struct TotalTimer {
    sleep: Pin<Box<Sleep>>,
    budget: Duration,
}

/// The node's response body on its way to the client.
///
/// Its end is bounded twice: by `body_idle_timeout` between frames and, when
/// the request has one, by the `total_timeout` instant. Either cut fails the
/// body, so hyper closes the client connection (HTTP/1) or resets the
/// stream (HTTP/2), and drops the node connection instead of pooling it.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: NodeBody,
    idle: IdleTimer,
    total: Option<TotalTimer>,
    scope: Option<RequestScope>,
}

impl UpstreamBody {
    /// `end`: the instant by which the last byte is due, with the budget it
    /// was set from (for the message); `None`: no total bound.
    pub fn new(
        inner: NodeBody,
        idle_timeout: Duration,
        end: Option<(Instant, Duration)>,
        scope: RequestScope,
    ) -> Self {
        let done = inner.is_end_stream();
        Self {
            inner,
            idle: IdleTimer::new(idle_timeout),
            // An empty body needs no timer and frees its slots at once.
            total: end.filter(|_| !done).map(|(at, budget)| TotalTimer {
                sleep: Box::pin(tokio::time::sleep_until(at)),
                budget,
            }),
            scope: if done { None } else { Some(scope) },
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(total) = &mut this.total {
            // Checked before the node's next frame: a node that is always
            // ready is cut as surely as one that drips.
            if total.sleep.as_mut().poll(cx).is_ready() {
                let budget = total.budget;
                this.total = None;
                if let Some(scope) = this.scope.take() {
                    scope.fail(ErrorReason::Deadline);
                }
                return Poll::Ready(Some(Err(UpstreamBodyError::Total(budget))));
            }
        }
        let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending if this.idle.expired(cx) => {
                if let Some(scope) = this.scope.take() {
                    scope.fail(ErrorReason::Deadline);
                }
                return Poll::Ready(Some(Err(UpstreamBodyError::Idle(this.idle.limit))));
            }
            Poll::Pending => return Poll::Pending,
        };
        this.idle.progressed();
        match polled {
            None => {
                // Done: free the slots and the timer now rather than when
                // hyper drops us.
                this.scope.take();
                this.total = None;
                Poll::Ready(None)
            }
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => {
                if let Some(scope) = this.scope.take() {
                    scope.fail_upstream();
                }
                Poll::Ready(Some(Err(UpstreamBodyError::Read(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug)]
enum Kind {
    Local(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// What the client receives: a node's streamed body or levee's own short
/// answer. It also marks its connection busy until it ends, and writes the
/// request's access log line when it ends or is dropped.
///
/// One box for all of it: a response is moved several times on its way up
/// the stack and out, and with its body a pointer it stays within 128
/// bytes, which the compiler moves inline rather than by a call to memcpy.
#[derive(Debug)]
pub struct ProxyBody(Box<Held>);

#[derive(Debug)]
struct Held {
    kind: Kind,
    activity: Option<ActivityGuard>,
    /// The node that answered (set only while the access log is on;
    /// boxed so that it costs a response little while the log is off).
    upstream: Option<Box<UpstreamInfo>>,
    log: Option<Logged>,
    /// The request's id, for the response head's writer
    /// ([`crate::stack::request_id`]).
    request_id: Option<HeaderValue>,
}

/// A request's access log entry and the bytes sent so far.
#[derive(Debug)]
struct Logged {
    /// Boxed where the edge makes it: the entry is larger than the rest of
    /// the body, the edge's future holds it until the response comes, and
    /// with the log off there is none.
    entry: Box<AccessEntry>,
    bytes_out: u64,
}

impl ProxyBody {
    pub fn local(data: Bytes) -> Self {
        Self::new(Kind::Local(Some(data)), None)
    }

    pub fn upstream(body: UpstreamBody, upstream: Option<Box<UpstreamInfo>>) -> Self {
        Self::new(Kind::Upstream(body), upstream)
    }

    fn new(kind: Kind, upstream: Option<Box<UpstreamInfo>>) -> Self {
        ProxyBody(Box::new(Held {
            kind,
            activity: None,
            upstream,
            log: None,
            request_id: None,
        }))
    }

    /// Carries the request's id to whoever writes the response head.
    pub fn carry_request_id(&mut self, id: HeaderValue) {
        self.0.request_id = Some(id);
    }

    /// The id [`ProxyBody::carry_request_id`] left, once.
    pub fn take_request_id(&mut self) -> Option<HeaderValue> {
        self.0.request_id.take()
    }

    /// The field lines of a node's HTTP/1 response, once: the response's
    /// map does not hold them, and whoever writes the head must
    /// ([`crate::h1::Fields`]).
    pub fn take_fields(&mut self) -> Option<crate::h1::Fields> {
        match &mut self.0.kind {
            Kind::Upstream(body) => body.inner.take_fields(),
            _ => None,
        }
    }

    /// Marks the connection busy until this body ends.
    pub fn track(&mut self, guard: ActivityGuard) {
        self.0.activity = Some(guard);
    }

    /// The line for `entry` is written when this body ends. `upstream`:
    /// the node that failed the request, when levee answers for it.
    pub fn log(&mut self, entry: Box<AccessEntry>, upstream: Option<Box<UpstreamInfo>>) {
        if upstream.is_some() {
            self.0.upstream = upstream;
        }
        self.0.log = Some(Logged {
            entry,
            bytes_out: 0,
        });
    }
}

impl Held {
    fn write_log(&mut self, complete: bool) {
        if let Some(log) = self.log.take() {
            log.entry
                .write(self.upstream.as_deref(), log.bytes_out, complete);
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(data) => data.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }
}

/// Boxed error, as hyper's server wants one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self.get_mut().0;
        let out = match &mut this.kind {
            Kind::Local(data) => data.take().map(|d| Ok(Frame::data(d))),
            Kind::Upstream(body) => ready!(Pin::new(body).poll_frame(cx)).map(|r| {
                r.map_err(|e| {
                    if let Some(log) = &mut this.log {
                        log.entry.reason.get_or_insert(e.reason());
                    }
                    e.into()
                })
            }),
        };
        match &out {
            None => {
                this.activity.take();
                this.write_log(true);
            }
            Some(Ok(frame)) => {
                if let (Some(log), Some(data)) = (&mut this.log, frame.data_ref()) {
                    log.bytes_out += data.len() as u64;
                }
            }
            Some(Err(_)) => this.write_log(false),
        }
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0.kind {
            Kind::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    /// A body hyper never polled to its end: empty (HEAD, 204, 304, 101),
    /// or the client went away mid-body.
    fn drop(&mut self) {
        let held = &mut *self.0;
        if held.log.is_some() {
            let complete = held.is_end_stream();
            held.write_log(complete);
        }
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
