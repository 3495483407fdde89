//! The request path as a stack of tower layers, outermost first.
//!
//! Each layer is one mechanism with the tower shape (layer, service,
//! response future); the stack's type is concrete, and one future is boxed
//! on the fast path: the retry layer's, which holds a request's tries (its
//! head, its body, the try in progress) and would otherwise be moved whole
//! by every layer above. Elsewhere only a wait in a bulkhead queue, reading
//! a body kept for retries, and a retry's backoff allocate. A request passes
//! down as [`Routed`] once it has a route, and each layer adds what it
//! decided.
//! Below [`retry`] each try is an [`balance::Attempt`]; below [`balance`] a
//! call to one node.
//!
//! ```text
//! h1::server / Serve   calls the connection's one stack in place: levee's HTTP/1 server, or
//!                     hyper's HTTP/2 one through Serve
//! TrackActivity       connection idle bookkeeping                  (connection.rs)
//! RequestId           keep a usable x-request-id or make one; every response's body carries
//!                     it to the head's writer (levee's HTTP/1 one writes the line)
//! Edge                CONNECT, header count, target length, head size, target form,
//!                     Host ─▶ 405/431/414/431/400/400; route (404 no-route); declared
//!                     body over the route's limit ─▶ 413; a WebSocket upgrade that is not a
//!                     GET for websocket alone ─▶ 400 bad-upgrade; header hygiene (the target's
//!                     authority becomes Host; X-Forwarded-* beside the map when the client
//!                     sent none, written by the node client); deadline starts (headers by the earlier of
//!                     timeout and total_timeout); every error becomes a response
//! RateLimit           the route's token bucket, or the client's (address or header
//!                     value) ─▶ 429 rate-limited with Retry-After
//! Tunnel              WebSocket handshake: route's max_tunnels ─▶ 503 tunnel-limit; node's 101
//!                     ─▶ tunnel task splices both sockets (tunnel idle timeout), no bulkhead slot
//! Bulkhead(route)     wait ≤ queue_timeout ─▶ 503 bulkhead-full
//! ChooseBackend       all nodes out ─▶ when_all_down (fail / failover / try_all); a returning
//!                     pool's ramp full ─▶ failover if any (else its queue)
//! Shed                priority over the fill of the backend's current limit ─▶ 503 shed;
//!                     within its share a request takes its slot here (one atomic step)
//! Bulkhead(backend)   limit = max_in_flight, or the ramp's / adaptive limit; wait ≤ queue_timeout,
//!                     critical waiters first ─▶ 503 bulkhead-full
//! Retry               keep small bodies; another node when safe, within deadline and budget;
//!                     no node left at pick time (or after a failed trial call) ─▶ failover
//!                     backend, once; bodies counted against the route's limit as they stream (413)
//! Balance             NodeSet::pick (breaker-aware, p2c/least/rr, ramp weights) ─▶ record the
//!                     outcome (breaker, node ramp, the backend's limit)
//! NodeCall            keep-alive pool, connect_timeout ─▶ 502 upstream-*;
//!                     response headers by the deadline ─▶ 504 deadline
//! └▶ response body streams back (body idle timeout, total_timeout cut); slots and gauges held until it ends
//! ```

pub mod backend;
pub mod balance;
pub mod bulkhead;
pub mod edge;
pub mod node;
pub mod rate_limit;
pub mod request_id;
pub mod retry;
pub mod serve;
pub mod tunnel;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use levee_resilience::{BulkheadPermit, Deadline};
use tower::{Layer, Service, ServiceBuilder};

use crate::body::{ClientBody, ProxyBody};
use crate::error::ProxyError;
use crate::headers::{Forwarded, Scheme};
use crate::state::{ProxyState, Route, Shared};
use crate::upstream::Backend;

/// A request with a route, and what the layers above decided for it.
/// Boxed once at the edge: each layer's `call` takes it by value, and
/// moves eight bytes where it moved the 400 of a [`RoutedRequest`].
#[derive(Debug)]
pub struct Routed(Box<RoutedRequest>);

/// What a [`Routed`] holds.
#[derive(Debug)]
pub struct RoutedRequest {
    pub parts: http::request::Parts,
    /// The `X-Forwarded-*` lines for the node when they are not in `parts`.
    pub forwarded: Option<Forwarded>,
    pub body: ClientBody,
    pub peer: SocketAddr,
    /// The config version this request runs on, start to end.
    pub state: Arc<ProxyState>,
    pub route: usize,
    /// Index in `state.backends`: the route's own, or its failover.
    pub backend: usize,
    /// The traffic class whose breakers judge this request.
    pub class: usize,
    pub deadline: Deadline,
    /// `when_all_down = "try_all"`: pick among nodes whatever their state.
    pub ignore_state: bool,
    pub route_slot: Option<BulkheadPermit>,
    pub backend_slot: Option<BulkheadPermit>,
    /// A WebSocket handshake ([`tunnel::handshake_of`]).
    pub websocket: bool,
    /// It waited in a bulkhead's queue: the clock has moved since
    /// `deadline`'s start, which layers below may not take for now.
    pub queued: bool,
}

impl Routed {
    pub fn new(req: RoutedRequest) -> Self {
        Self(Box::new(req))
    }

    pub fn into_inner(self) -> RoutedRequest {
        *self.0
    }
}

impl Deref for Routed {
    type Target = RoutedRequest;

    fn deref(&self) -> &RoutedRequest {
        &self.0
    }
}

impl DerefMut for Routed {
    fn deref_mut(&mut self) -> &mut RoutedRequest {
        &mut self.0
    }
}

impl RoutedRequest {
    pub fn route(&self) -> &Route {
        &self.state.routes[self.route]
    }

    pub fn backend(&self) -> &Backend {
        &self.state.backends[self.backend]
    }

    /// The value of header `name` as the node will get it.
    pub fn header(&self, name: &http::HeaderName) -> Option<&http::HeaderValue> {
        self.forwarded
            .as_ref()
            .and_then(|f| f.get(name))
            .or_else(|| self.parts.headers.get(name))
    }
}

/// What the layers below [`edge::Edge`] answer.
pub type ProxyResult = Result<Response<ProxyBody>, ProxyError>;

/// The whole stack for one client connection of data-plane `worker`.
pub fn stack(shared: Arc<Shared>, worker: usize, peer: SocketAddr, scheme: Scheme) -> Stack {
    stack_over(shared, peer, scheme, node::NodeCall::new(worker))
}

/// The stack with `node` as its bottom, the call to one node; benches put
/// an in-memory node there to measure everything above it.
pub fn stack_over<N>(
    shared: Arc<Shared>,
    peer: SocketAddr,
    scheme: Scheme,
    node: N,
) -> StackOver<N> {
    ServiceBuilder::new()
        .layer(request_id::RequestIdLayer)
        .layer(edge::EdgeLayer::new(shared, peer, scheme))
        .layer(DecideLayer(rate_limit::RateLimitDecision))
        .layer(tunnel::TunnelLayer)
        .layer(bulkhead::BulkheadLayer::route())
        .layer(DecideLayer(backend::ChooseBackend))
        .layer(DecideLayer(backend::Shed))
        .layer(bulkhead::BulkheadLayer::backend())
        .layer(retry::RetryLayer)
        .layer(balance::BalanceLayer)
        .service(node)
}

/// The concrete type of [`stack`].
pub type Stack = StackOver<node::NodeCall>;

/// The concrete type of [`stack_over`].
pub type StackOver<N> = request_id::RequestId<
    edge::Edge<
        Decide<
            tunnel::Tunnel<
                bulkhead::Bulkhead<
                    Decide<
                        Decide<
                            bulkhead::Bulkhead<retry::Retry<balance::Balance<N>>>,
                            backend::Shed,
                        >,
                        backend::ChooseBackend,
                    >,
                >,
            >,
            rate_limit::RateLimitDecision,
        >,
    >,
>;

/// A mechanism that decides from the request alone, at once: pass it on
/// (perhaps amended) or refuse it. [`DecideLayer`] gives it the tower shape.
pub trait Decision {
    fn decide(&self, req: &mut Routed) -> Result<(), ProxyError>;
}

/// Adds [`Decide`] with decision `D`.
#[derive(Debug, Clone, Copy)]
pub struct DecideLayer<D>(pub D);

impl<S, D: Clone> Layer<S> for DecideLayer<D> {
    type Service = Decide<S, D>;

    fn layer(&self, inner: S) -> Decide<S, D> {
        Decide {
            inner,
            decision: self.0.clone(),
        }
    }
}

/// Runs decision `D` on each request before the inner service.
#[derive(Debug, Clone)]
pub struct Decide<S, D> {
    inner: S,
    decision: D,
}

impl<S, D> Service<Routed> for Decide<S, D>
where
    S: Service<Routed, Error = ProxyError>,
    D: Decision,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = Decided<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Routed) -> Self::Future {
        match self.decision.decide(&mut req) {
            Ok(()) => Decided::Inner {
                fut: self.inner.call(req),
            },
            Err(e) => Decided::refused(e),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a layer that decides at once: pass the request on, or
    /// refuse it with an error.
    #[project = DecidedProj]
    pub enum Decided<F> {
        Inner { #[pin] fut: F },
        Refused { error: Option<ProxyError> },
    }
}

impl<F> Decided<F> {
    pub fn refused(error: ProxyError) -> Self {
        Decided::Refused { error: Some(error) }
    }
}

impl<F, T> Future for Decided<F>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    type Output = Result<T, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DecidedProj::Inner { fut } => fut.poll(cx),
            DecidedProj::Refused { error } => Poll::Ready(Err(taken(error))),
        }
    }
}

/// The error a refusing future holds; it answers once, and a poll after
/// that (which tower and hyper never do) gets a generic error, not a panic.
pub(crate) fn taken(error: &mut Option<ProxyError>) -> ProxyError {
    error.take().unwrap_or_else(|| {
        ProxyError::new(
            levee_telemetry::ErrorReason::BadRequest,
            "future polled after completion",
        )
    })
}
