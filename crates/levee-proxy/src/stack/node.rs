//! The bottom of the stack: one call to one node over its keep-alive pool
//! ([`crate::pool`]), until the request's deadline for the response headers.
//!
//! The deadline's timer is a connection's, kept across its requests: a
//! tokio timer made per request is put in the runtime's timer wheel on its
//! first poll and taken out when dropped, a lock and a wheel update each
//! time. One moved to a later deadline stays in the wheel (tokio only
//! notes the new instant), so a connection's requests pay for neither.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use http::request::Parts;
use http::{Request, Response};
use levee_resilience::{Deadline, Phase};
use levee_telemetry::ErrorReason;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::body::{ClientBodyError, RequestBody};
use crate::error::ProxyError;
use crate::h1;
use crate::headers::Forwarded;
use crate::node_io::ConnectError;
use crate::nodes::Node;
use crate::pool::{NodeBody, NodeError, PoolError, ResponseFuture};

/// A request for one node, its URI already aimed there (origin form for
/// HTTP/1, absolute for HTTP/2: see [`super::balance`]).
#[derive(Debug)]
pub struct NodeRequest {
    pub node: Arc<Node>,
    pub request: Request<RequestBody>,
    /// Its `X-Forwarded-*` lines when they are not in its headers.
    pub forwarded: Option<Forwarded>,
    pub deadline: Deadline,
    /// Give the request head back, for a retry.
    pub head_back: bool,
}

/// A node's response, and the request head when asked for and the node
/// client gave it back (HTTP/1), for a retry to send again without a copy.
#[derive(Debug)]
pub struct Replied {
    pub response: Response<NodeBody>,
    pub head: Option<Box<Parts>>,
}

/// A call that got no response, and the request head when the node client
/// gave it back.
#[derive(Debug)]
pub struct NotReplied {
    pub error: ProxyError,
    pub head: Option<Box<Parts>>,
}

impl From<ProxyError> for NotReplied {
    fn from(error: ProxyError) -> Self {
        Self { error, head: None }
    }
}

/// Sends a request through the node's pool of data-plane worker `worker`.
/// One per client connection (the stack is), with the connection's spare
/// deadline timer.
#[derive(Debug, Clone)]
pub struct NodeCall {
    worker: usize,
    spare: SpareTimer,
}

impl NodeCall {
    pub fn new(worker: usize) -> Self {
        Self {
            worker,
            spare: SpareTimer::default(),
        }
    }
}

/// A connection's deadline timer between its calls. A slot that never
/// waits: a call that finds it taken (HTTP/2 streams at once) makes its
/// own timer, and one that finds it full drops its timer.
#[derive(Debug, Clone, Default)]
struct SpareTimer(Arc<Mutex<Option<Pin<Box<Sleep>>>>>);

impl SpareTimer {
    /// A timer set for `at`: the spare one, moved, or a new one.
    fn take(&self, at: Instant) -> Pin<Box<Sleep>> {
        let spare = self.0.try_lock().ok().and_then(|mut slot| slot.take());
        match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(at);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(at)),
        }
    }

    fn give_back(&self, sleep: Pin<Box<Sleep>>) {
        if let Ok(mut slot) = self.0.try_lock() {
            slot.get_or_insert(sleep);
        }
    }
}

impl Service<NodeRequest> for NodeCall {
    type Response = Replied;
    type Error = NotReplied;
    type Future = NodeCallFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), NotReplied>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: NodeRequest) -> NodeCallFuture {
        let call = req
            .node
            .pool(self.worker)
            .send(req.request, req.forwarded, req.head_back);
        NodeCallFuture {
            call,
            deadline: Some(self.spare.take(req.deadline.at())),
            spare: self.spare.clone(),
            node: req.node,
            start: req.deadline.start(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The node's response headers by the deadline, or why there are none.
    pub struct NodeCallFuture {
        call: ResponseFuture,
        // `None` once given back, when the call is over.
        deadline: Option<Pin<Box<Sleep>>>,
        spare: SpareTimer,
        // Its address is read only for the message of a failed call: with
        // many nodes, one cold cache line fewer per request than a copy.
        node: Arc<Node>,
        // The deadline's start: its budget, for the message of a missed
        // one, is worked out then, not on every call.
        start: Instant,
    }
}

impl Future for NodeCallFuture {
    type Output = Result<Replied, NotReplied>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready((result, head)) = this.call.poll_exchange(cx) {
            if let Some(sleep) = this.deadline.take() {
                this.spare.give_back(sleep);
            }
            return Poll::Ready(match result {
                Ok(response) => Ok(Replied { response, head }),
                Err(e) => Err(NotReplied {
                    error: classify(&e, this.node.addr),
                    head,
                }),
            });
        }
        let Some(sleep) = this.deadline else {
            return Poll::Ready(Err(NotReplied::from(ProxyError::new(
                ErrorReason::Deadline,
                "node call polled after it ended",
            ))));
        };
        ready!(sleep.as_mut().poll(cx));
        let budget = sleep.deadline().saturating_duration_since(*this.start);
        if let Some(sleep) = this.deadline.take() {
            this.spare.give_back(sleep);
        }
        Poll::Ready(Err(NotReplied::from(ProxyError::new(
            ErrorReason::Deadline,
            format!(
                "no {} from {} within {:?}",
                Phase::Headers,
                this.node.addr,
                budget
            ),
        ))))
    }
}

/// Maps a pool error to its reason by walking its causes.
fn classify(e: &PoolError, addr: SocketAddr) -> ProxyError {
    let cause = match e {
        PoolError::Connect(ConnectError::Tls(_)) => {
            return ProxyError::new(ErrorReason::UpstreamTls, chain(e));
        }
        // Nothing reached the node: safe to send elsewhere, whatever the
        // method (see the retry layer).
        PoolError::Connect(ConnectError::Tcp(_))
        | PoolError::Handshake(_)
        | PoolError::NotSent(_) => {
            return ProxyError::new(
                ErrorReason::UpstreamConnect,
                format!("connect failed: {}", chain(e)),
            );
        }
        // A response that frames its body two ways (RFC 9112 §6.3): the
        // node may be desynchronised; its connection is not reused.
        PoolError::Framing => {
            return ProxyError::new(
                ErrorReason::UpstreamProtocol,
                format!("{addr} answered with both Transfer-Encoding and Content-Length"),
            );
        }
        PoolError::Shared(e) => return classify(e, addr),
        PoolError::Send(NodeError::H1(h)) => return classify_h1(h, e),
        PoolError::Send(NodeError::H2(h)) => h,
    };
    let mut source: Option<&(dyn StdError + 'static)> = Some(cause);
    while let Some(err) = source {
        if tls_alert(err) {
            return ProxyError::new(ErrorReason::UpstreamTls, chain(e));
        }
        if let Some(body) = err.downcast_ref::<ClientBodyError>() {
            return ProxyError::client_body(body);
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                return ProxyError::new(ErrorReason::UpstreamProtocol, chain(e));
            }
        }
        source = err.source();
    }
    ProxyError::new(ErrorReason::UpstreamReset, chain(e))
}

/// An HTTP/1 exchange that failed after (some of) the request was written.
fn classify_h1(h: &h1::Error, e: &PoolError) -> ProxyError {
    let reason = match h {
        h1::Error::Client(body) => return ProxyError::client_body(body),
        h1::Error::Head(_) => ErrorReason::UpstreamProtocol,
        h1::Error::Io(io) if tls_alert(io) => ErrorReason::UpstreamTls,
        h1::Error::Io(_)
        | h1::Error::Closed
        | h1::Error::Body(_)
        | h1::Error::ShortBody
        | h1::Error::LongBody => ErrorReason::UpstreamReset,
    };
    ProxyError::new(reason, chain(e))
}

/// A TLS error after the handshake: with TLS 1.3 a node that refuses levee's
/// client certificate (or its lack of one) says so with an alert on the
/// first read, once the connection already counts as connected.
fn tls_alert(err: &(dyn StdError + 'static)) -> bool {
    // `io::Error::source` skips the error it wraps, so look inside.
    err.downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

/// An error and its causes on one line, for logs.
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
