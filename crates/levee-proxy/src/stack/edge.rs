//! The edge of the stack: what levee refuses before taking any slot, the
//! route, the header rewrite for the node, and the one place where every
//! error from below becomes a response and is counted.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use h2::ext::HeaderListTooLarge;
use http::header::{HeaderValue, HOST, UPGRADE};
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use levee_config::ServerConfig;
use levee_resilience::Deadline;
use levee_telemetry::{ErrorReason, OutcomeCounters, RouteStats};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::debug;

use super::{tunnel, ProxyResult, Routed, RoutedRequest};
use crate::access_log::{AccessEntry, UpstreamInfo};
use crate::body::{ClientBody, ProxyBody};
use crate::clock;
use crate::error::ProxyError;
use crate::headers::{self, Forwarded, Scheme, X_REQUEST_ID};
use crate::state::Shared;

/// Adds [`Edge`].
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    shared: Arc<Shared>,
    peer: SocketAddr,
    scheme: Scheme,
}

impl EdgeLayer {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, scheme: Scheme) -> Self {
        Self {
            shared,
            peer,
            scheme,
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            shared: Arc::clone(&self.shared),
            peer: self.peer,
            forwarded_for: headers::peer_value(self.peer.ip()),
            scheme: self.scheme,
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
    /// The peer's `X-Forwarded-For` entry, made once per connection.
    forwarded_for: HeaderValue,
    scheme: Scheme,
}

impl<S> Service<Request<ClientBody>> for Edge<S>
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

    fn call(&mut self, req: Request<ClientBody>) -> Self::Future {
        let started = clock::now();
        // A guard, not an owned `Arc`: the request's own reference (in
        // `Routed`) is the one write to the state's count, which every
        // worker shares.
        let state = self.shared.state();
        // Boxed: it rides in the response future and body, which every layer
        // moves; most requests have no entry.
        let mut log = AccessEntry::new(&state, &req, self.peer, started).map(Box::new);
        // The Host line, looked up once for the checks, the route and the
        // node's headers.
        let host_line = match check_request(&req, &state.config.server) {
            Ok(host_line) => host_line,
            Err(e) => {
                log_error(&e, req.headers(), None);
                return EdgeFuture::unrouted(&state.topology.unrouted, e, log);
            }
        };
        let host = headers::request_host(host_line, req.uri());
        let Some(route) = state.route_index(host, req.method(), req.uri().path()) else {
            let e = ProxyError::new(ErrorReason::NoRoute, "no route matched");
            return EdgeFuture::unrouted(&state.topology.unrouted, e, log);
        };
        let r = &state.routes[route];
        let class = r.class_of(req.method());
        if let Some(log) = &mut log {
            log.route = Some(route);
            log.class = Some(class);
        }
        // Without a hop-by-hop header there is neither an `Upgrade` to look
        // into nor anything to strip: one pass over the names, no lookups.
        let hop_by_hop = headers::has_hop_by_hop(req.headers());
        let websocket = match check_body_length(&req, r.max_request_body_bytes).and_then(|()| {
            if hop_by_hop {
                tunnel::handshake_of(&req)
            } else {
                Ok(false)
            }
        }) {
            Ok(websocket) => websocket && tunnel::carried_to(&state, r),
            Err(e) => {
                log_error(&e, req.headers(), Some(&r.name));
                return EdgeFuture::refused(&r.stats, started, e, log);
            }
        };
        let http2 = req.version() >= Version::HTTP_2;
        let host_line = host_line.cloned();
        let (mut parts, body) = req.into_parts();
        let upgrade = websocket
            .then(|| parts.headers.get(UPGRADE).cloned())
            .flatten();
        let forwarded = prepare_headers(
            &mut parts,
            host_line,
            &self.forwarded_for,
            self.scheme,
            hop_by_hop,
        );
        if let Some(upgrade) = upgrade {
            tunnel::restore_handshake(&mut parts.headers, upgrade);
        }
        let routed = Routed::new(RoutedRequest {
            class,
            deadline: Deadline::within_from(started, r.timeout, r.total_timeout),
            backend: r.backend_index,
            route,
            parts,
            forwarded,
            body,
            peer: self.peer,
            route_slot: None,
            backend_slot: None,
            websocket,
            queued: false,
            ignore_state: false,
            state: Arc::clone(&*state),
        });
        let stats = Arc::clone(&r.stats);
        EdgeFuture::Routed {
            fut: self.inner.call(routed),
            stats: Some(stats),
            started,
            log,
            http2,
        }
    }
}

pin_project_lite::pin_project! {
    /// Answers with the inner response, or with the error's response,
    /// counting either on the route.
    #[project = EdgeProj]
    pub enum EdgeFuture<F> {
        Routed {
            #[pin] fut: F,
            stats: Option<Arc<RouteStats>>,
            started: Instant,
            log: Option<Box<AccessEntry>>,
            // HTTP/2 has no `Connection` header: a failed request body ends
            // only its stream.
            http2: bool,
        },
        // The error, not its response: the stack's future is moved whole
        // at every layer above and in the connection, and is as large as
        // its largest state.
        Unrouted { refused: Option<(ProxyError, Option<Box<AccessEntry>>)> },
    }
}

impl<F> EdgeFuture<F> {
    fn unrouted(counters: &OutcomeCounters, e: ProxyError, log: Option<Box<AccessEntry>>) -> Self {
        counters.record_error(e.reason);
        counters.record_status(e.status().as_u16());
        EdgeFuture::Unrouted {
            refused: Some((e, log)),
        }
    }

    /// Refused by the edge once routed: counted on the route.
    fn refused(
        stats: &RouteStats,
        started: Instant,
        e: ProxyError,
        log: Option<Box<AccessEntry>>,
    ) -> Self {
        stats.outcomes.record_error(e.reason);
        stats.outcomes.record_status(e.status().as_u16());
        stats.latency.observe(started.elapsed());
        EdgeFuture::Unrouted {
            refused: Some((e, log)),
        }
    }
}

/// levee's own response for error `e`; with the access log on, its body
/// carries the request's entry, written when the body ends.
fn answer(mut e: ProxyError, log: Option<Box<AccessEntry>>) -> Response<ProxyBody> {
    let upstream = e.upstream.take();
    let reason = e.reason;
    let mut resp = e.into_response();
    if let Some(entry) = log {
        log_to(&mut resp, entry, Some(reason), upstream);
    }
    resp
}

fn log_to(
    resp: &mut Response<ProxyBody>,
    mut entry: Box<AccessEntry>,
    reason: Option<ErrorReason>,
    upstream: Option<Box<UpstreamInfo>>,
) {
    entry.status = resp.status().as_u16();
    entry.reason = reason;
    resp.body_mut().log(entry, upstream);
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = ProxyResult>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EdgeProj::Unrouted { refused } => Poll::Ready(Ok(match refused.take() {
                Some((e, log)) => answer(e, log),
                None => ProxyError::new(ErrorReason::BadRequest, "").into_response(),
            })),
            EdgeProj::Routed {
                fut,
                stats,
                started,
                log,
                http2,
            } => {
                // The node's answer is looked at and logged where it is,
                // and moved once, into the output.
                let mut poll = fut.poll(cx);
                let Poll::Ready(result) = &mut poll else {
                    return Poll::Pending;
                };
                let Some(stats) = stats.take() else {
                    return Poll::Ready(Ok(
                        ProxyError::new(ErrorReason::BadRequest, "").into_response()
                    ));
                };
                stats
                    .latency
                    .observe(clock::now().saturating_duration_since(*started));
                match result {
                    Ok(resp) => {
                        if let Some(entry) = log.take() {
                            log_to(resp, entry, None, None);
                        }
                        stats.outcomes.record_status(resp.status().as_u16());
                    }
                    Err(e) => {
                        e.closes &= !*http2;
                        stats.outcomes.record_error(e.reason);
                        debug!(reason = e.reason.as_str(), detail = %e.detail, route = %stats.name, "request failed");
                    }
                }
                let Poll::Ready(result) = poll else {
                    return Poll::Pending;
                };
                Poll::Ready(Ok(match result {
                    Ok(resp) => resp,
                    Err(e) => {
                        let resp = answer(e, log.take());
                        stats.outcomes.record_status(resp.status().as_u16());
                        resp
                    }
                }))
            }
        }
    }
}

/// Rejects what levee will not forward, before routing and before any slot
/// is taken: in order, CONNECT (405), the head limits of HTTP/2 requests
/// ([`check_limits`]; the gate checked HTTP/1 heads on their bytes), a
/// target that is not origin- or absolute-form (400, `*` allowed for
/// OPTIONS only), and the Host rules of [`check_host`] (400 bad-host).
/// Gives the request's one Host line, if it has one.
fn check_request<'a>(
    req: &'a Request<ClientBody>,
    server: &ServerConfig,
) -> Result<Option<&'a HeaderValue>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::new(
            ErrorReason::Unsupported,
            "CONNECT is not proxied",
        ));
    }
    if req.version() >= Version::HTTP_2 {
        check_limits(req, server)?;
    }
    check_target(req)?;
    check_host(req)
}

/// A header list over SETTINGS_MAX_HEADER_LIST_SIZE (431: h2 dropped its
/// fields and marked it), too many header lines (431), a target over
/// `max_uri_bytes` (414), a head over `max_header_bytes` (431).
fn check_limits(req: &Request<ClientBody>, server: &ServerConfig) -> Result<(), ProxyError> {
    if req.extensions().get::<HeaderListTooLarge>().is_some() {
        return Err(ProxyError::new(
            ErrorReason::HeaderTooLarge,
            "header list over SETTINGS_MAX_HEADER_LIST_SIZE",
        ));
    }
    // The request id layer adds an x-request-id when the client sent none,
    // so one such line is not counted.
    let has_id = req.headers().contains_key(&X_REQUEST_ID);
    if req.headers().len() - usize::from(has_id) > server.max_headers {
        return Err(ProxyError::new(
            ErrorReason::TooManyHeaders,
            format!("more than {} header lines", server.max_headers),
        ));
    }
    let uri = req.uri();
    if uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > server.max_uri_bytes {
        return Err(ProxyError::new(
            ErrorReason::UriTooLong,
            format!("request target over {} bytes", server.max_uri_bytes),
        ));
    }
    if headers::head_size(req.headers(), uri) > server.max_header_bytes {
        return Err(ProxyError::new(
            ErrorReason::HeaderTooLarge,
            format!("request head over {} bytes", server.max_header_bytes),
        ));
    }
    Ok(())
}

/// The target forms levee forwards: origin and absolute (http/https).
fn check_target(req: &Request<ClientBody>) -> Result<(), ProxyError> {
    let uri = req.uri();
    match uri.path_and_query().map(|pq| pq.as_str()) {
        // Authority-form is for CONNECT only (RFC 9112 §3.2.3).
        None => {
            return Err(ProxyError::new(
                ErrorReason::BadRequest,
                "request target has no path",
            ))
        }
        // Asterisk-form is for OPTIONS only (RFC 9112 §3.2.4).
        Some("*") if req.method() != Method::OPTIONS => {
            return Err(ProxyError::new(
                ErrorReason::BadRequest,
                "asterisk-form target outside OPTIONS",
            ))
        }
        Some(_) => {}
    }
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https"))
    {
        return Err(ProxyError::new(
            ErrorReason::BadRequest,
            "absolute-form target with a scheme other than http or https",
        ));
    }
    Ok(())
}

/// The Host rules (RFC 9112 §3.2, RFC 9113 §8.3.1), each a 400 bad-host:
/// at most one Host header, and it must be a valid `host[:port]`
/// ([`headers::valid_host`]); so must the target's authority (absolute-form
/// or `:authority`: no userinfo). HTTP/1.1 requires a Host header, even
/// with an absolute-form target. HTTP/1.0 requires a Host header or an
/// absolute-form target: levee forwards as HTTP/1.1, which needs a Host, and
/// does not make one up. HTTP/2 requires `:authority` or Host, and when it
/// has both they must name the same authority. Gives the Host line.
fn check_host(req: &Request<ClientBody>) -> Result<Option<&HeaderValue>, ProxyError> {
    let bad = |detail: &'static str| Err(ProxyError::new(ErrorReason::BadHost, detail));
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return bad("more than one Host header");
    }
    if host.is_some_and(|h| !headers::valid_host(h.as_bytes())) {
        return bad("the Host header is not a valid host[:port]");
    }
    let authority = req.uri().authority();
    if authority.is_some_and(|a| !headers::valid_host(a.as_str().as_bytes())) {
        return bad("the target's authority is not a valid host[:port]");
    }
    match (req.version(), host, authority) {
        (Version::HTTP_2, None, None) => bad("HTTP/2 request with neither :authority nor Host"),
        (Version::HTTP_2, Some(h), Some(a))
            if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) =>
        {
            bad(":authority and Host differ")
        }
        (Version::HTTP_2, _, _) => Ok(host),
        (Version::HTTP_10 | Version::HTTP_09, None, None) => {
            bad("HTTP/1.0 request without Host or absolute-form target")
        }
        (Version::HTTP_10 | Version::HTTP_09, _, _) => Ok(host),
        (_, None, _) => bad("HTTP/1.1 request without Host"),
        (_, Some(_), _) => Ok(host),
    }
}

/// A declared body length (Content-Length) over the route's limit is refused
/// before anything is forwarded; bodies without one are counted as they
/// stream ([`crate::body::RequestBody`]).
fn check_body_length(req: &Request<ClientBody>, limit: Option<u64>) -> Result<(), ProxyError> {
    match limit {
        Some(limit) if req.body().size_hint().lower() > limit => Err(ProxyError::new(
            ErrorReason::BodyTooLarge,
            format!("declared request body over the route's limit of {limit} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Rewrites the client's headers for the node, once per request. The host
/// the node gets is the one the request was routed on: the target's
/// authority (absolute-form, or HTTP/2 `:authority`) replaces any Host
/// line (`host_line`, the request's one). `hop_by_hop`: the request has a
/// hop-by-hop header to strip ([`headers::has_hop_by_hop`]).
/// Rewrites the head for the node; the `X-Forwarded-*` lines come back
/// apart when the client sent none ([`Forwarded`]), else they are set in the
/// map.
fn prepare_headers(
    parts: &mut http::request::Parts,
    host_line: Option<HeaderValue>,
    peer: &HeaderValue,
    scheme: Scheme,
    hop_by_hop: bool,
) -> Option<Forwarded> {
    let (original_host, from_target) = match parts.uri.authority() {
        Some(a) => (HeaderValue::from_str(a.as_str()).ok(), true),
        None => (host_line, false),
    };
    let stripped = hop_by_hop && headers::strip_hop_by_hop(&mut parts.headers);
    let forwarded = if Forwarded::fits(&parts.headers) {
        Some(Forwarded {
            peer: peer.clone(),
            host: original_host.clone(),
            scheme,
        })
    } else {
        headers::set_forwarded_from(
            &mut parts.headers,
            peer,
            scheme.as_str(),
            original_host.as_ref(),
        );
        None
    };
    match original_host {
        // HTTP/2 clients send :authority instead of Host, and an absolute-form
        // target overrides Host; an HTTP/1.1 node needs the one routed on. A
        // Host line is put back only if `Connection` may have named it.
        Some(h) if from_target || stripped => {
            parts.headers.insert(HOST, h);
        }
        _ => {}
    }
    forwarded
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
