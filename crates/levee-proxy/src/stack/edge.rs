//! The edge of the stack: what levee refuses before taking any slot, the
//! route, the header rewrite for the node, and the one place where every
//! error from below becomes a response and is counted.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{HeaderValue, HOST};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use levee_resilience::Deadline;
use levee_telemetry::{ErrorReason, OutcomeCounters, RouteStats};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::debug;

use super::{ProxyResult, Routed};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers::{self, X_REQUEST_ID};
use crate::state::Shared;

/// Adds [`Edge`].
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl EdgeLayer {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr) -> Self {
        Self { shared, peer }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            shared: Arc::clone(&self.shared),
            peer: self.peer,
        }
    }
}

/// Checks and routes a client request, runs it down the stack on the live
/// config version, and turns any error into levee's own response.
#[derive(Debug, Clone)]
pub struct Edge<S> {
    inner: S,
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl<S> Service<Request<Incoming>> for Edge<S>
where
    S: Service<Routed, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every levee layer is always ready; an error would still be answered.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        let state = self.shared.current();
        if let Err(e) = check_request(&req, state.config.server.max_header_bytes) {
            log_error(&e, req.headers(), None);
            return EdgeFuture::unrouted(&state.topology.unrouted, e);
        }
        let host = headers::request_host(req.headers(), req.uri());
        let Some(route) = state.route_index(host, req.method(), req.uri().path()) else {
            let e = ProxyError::new(ErrorReason::NoRoute, "no route matched");
            return EdgeFuture::unrouted(&state.topology.unrouted, e);
        };
        let (mut parts, body) = req.into_parts();
        prepare_headers(&mut parts, self.peer);
        let r = &state.routes[route];
        let routed = Routed {
            class: r.class_of(&parts.method),
            deadline: Deadline::after(r.timeout),
            backend: r.backend_index,
            route,
            parts,
            body,
            peer: self.peer,
            route_slot: None,
            backend_slot: None,
            ignore_state: false,
            state: Arc::clone(&state),
        };
        let stats = Arc::clone(&r.stats);
        EdgeFuture::Routed {
            fut: self.inner.call(routed),
            stats: Some(stats),
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// Answers with the inner response, or with the error's response,
    /// counting either on the route.
    #[project = EdgeProj]
    pub enum EdgeFuture<F> {
        Routed { #[pin] fut: F, stats: Option<Arc<RouteStats>>, started: Instant },
        Unrouted { response: Option<Response<ProxyBody>> },
    }
}

impl<F> EdgeFuture<F> {
    fn unrouted(counters: &OutcomeCounters, e: ProxyError) -> Self {
        counters.record_error(e.reason);
        counters.record_status(e.status().as_u16());
        EdgeFuture::Unrouted {
            response: Some(e.into_response()),
        }
    }
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = ProxyResult>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeProj::Unrouted { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| ProxyError::new(ErrorReason::BadRequest, "").into_response()))),
            EdgeProj::Routed {
                fut,
                stats,
                started,
            } => {
                let result = ready!(fut.poll(cx));
                let Some(stats) = stats.take() else {
                    return Poll::Ready(Ok(
                        ProxyError::new(ErrorReason::BadRequest, "").into_response()
                    ));
                };
                let resp = match result {
                    Ok(resp) => resp,
                    Err(e) => {
                        stats.outcomes.record_error(e.reason);
                        debug!(reason = e.reason.as_str(), detail = %e.detail, route = %stats.name, "request failed");
                        e.into_response()
                    }
                };
                stats.outcomes.record_status(resp.status().as_u16());
                stats.latency.observe(started.elapsed());
                Poll::Ready(Ok(resp))
            }
        }
    }
}

/// Rejects what levee will not forward, before any slot is taken.
fn check_request(req: &Request<Incoming>, max_header_bytes: usize) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::new(
            ErrorReason::Unsupported,
            "CONNECT is not proxied",
        ));
    }
    if headers::head_size(req.headers(), req.uri()) > max_header_bytes {
        return Err(ProxyError::new(
            ErrorReason::HeaderTooLarge,
            format!("request head over {max_header_bytes} bytes"),
        ));
    }
    if req.uri().path_and_query().is_none() && req.method() != Method::OPTIONS {
        return Err(ProxyError::new(
            ErrorReason::BadRequest,
            "request has no path",
        ));
    }
    Ok(())
}

/// Rewrites the client's headers for the node, once per request.
fn prepare_headers(parts: &mut http::request::Parts, peer: SocketAddr) {
    let host = parts.headers.get(HOST).cloned();
    let authority_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    let original_host = host.or(authority_host);
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::set_forwarded(
        &mut parts.headers,
        peer.ip(),
        "http",
        original_host.as_ref(),
    );
    if let Some(h) = original_host {
        // HTTP/2 clients send :authority instead of Host; an HTTP/1.1 node needs Host.
        parts.headers.insert(HOST, h);
    }
}

fn log_error(e: &ProxyError, headers: &http::HeaderMap, route: Option<&str>) {
    debug!(
        reason = e.reason.as_str(),
        detail = %e.detail,
        route = route.unwrap_or(""),
        request_id = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or(""),
        "request failed"
    );
}
