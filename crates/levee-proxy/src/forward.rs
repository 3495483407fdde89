//! Forwarding one request: route, deadline, bulkheads, node, response.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, HOST};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use levee_resilience::{BulkheadFull, Deadline, DeadlineExceeded, Phase};
use levee_telemetry::ErrorReason;
use tokio::time::Instant;
use tracing::debug;

use crate::body::{ClientBodyError, ProxyBody, RequestBody, RequestScope, UpstreamBody};
use crate::error::ProxyError;
use crate::headers::{self, X_REQUEST_ID};
use crate::state::{Route, Shared};

/// Handles one client request; every outcome is a response.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let request_id = headers::request_id(req.headers());
    let state = shared.state();

    let mut resp = match check_request(&req, state.config.server.max_header_bytes) {
        Err(e) => {
            state.topology.unrouted.record_error(e.reason);
            state.topology.unrouted.record_status(e.status().as_u16());
            log_error(&e, &request_id, None);
            e.into_response()
        }
        Ok(()) => {
            let host = headers::request_host(req.headers(), req.uri());
            match state.route(host, req.method(), req.uri().path()) {
                None => {
                    let e = ProxyError::new(ErrorReason::NoRoute, "no route matched");
                    state.topology.unrouted.record_error(e.reason);
                    state.topology.unrouted.record_status(e.status().as_u16());
                    e.into_response()
                }
                Some(route) => {
                    let resp = match forward(route, req, peer, request_id.clone()).await {
                        Ok(resp) => resp,
                        Err(e) => {
                            route.stats.outcomes.record_error(e.reason);
                            log_error(&e, &request_id, Some(&route.name));
                            e.into_response()
                        }
                    };
                    route.stats.outcomes.record_status(resp.status().as_u16());
                    route.stats.latency.observe(started.elapsed());
                    resp
                }
            }
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    resp
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

async fn forward(
    route: &Route,
    req: Request<Incoming>,
    peer: SocketAddr,
    request_id: HeaderValue,
) -> Result<Response<ProxyBody>, ProxyError> {
    let backend = &route.backend;
    let deadline = Deadline::after(route.timeout);
    let wait_until = deadline.capped(route.queue_timeout);

    let route_slot = match &route.bulkhead {
        Some(b) => Some(
            b.acquire(wait_until)
                .await
                .map_err(|e| full("route", &route.name, e))?,
        ),
        None => None,
    };
    let backend_slot = backend
        .bulkhead
        .acquire(wait_until)
        .await
        .map_err(|e| full("backend", &backend.name, e))?;

    let node = backend
        .pick()
        .ok_or_else(|| ProxyError::new(ErrorReason::UpstreamConnect, "backend has no nodes"))?;
    let node_in_flight = node.stats.enter();

    let (mut parts, body) = req.into_parts();
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
    if let Some(h) = &original_host {
        // HTTP/2 clients send :authority instead of Host; an HTTP/1.1 node needs Host.
        parts.headers.insert(HOST, h.clone());
    }
    parts.headers.insert(X_REQUEST_ID, request_id);
    parts.uri = node_uri(&parts.uri, node)?;
    parts.version = Version::HTTP_11;
    let upstream_req =
        Request::from_parts(parts, RequestBody::new(body, backend.body_idle_timeout));

    let sent = Instant::now();
    let result = deadline
        .run(Phase::Headers, backend.client.request(upstream_req))
        .await;
    let upstream_resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let err = classify(&e);
            if err.reason.blames_node() {
                node.stats.outcomes.record_error(err.reason);
            }
            return Err(err);
        }
        Err(DeadlineExceeded { phase, after }) => {
            // Dropping the request future drops its connection: it is never reused.
            node.stats.outcomes.record_error(ErrorReason::Deadline);
            return Err(ProxyError::new(
                ErrorReason::Deadline,
                format!("no {phase} from {} within {after:?}", node.addr),
            ));
        }
    };
    node.stats.latency.observe(sent.elapsed());
    node.stats
        .outcomes
        .record_status(upstream_resp.status().as_u16());

    let (mut parts, body) = upstream_resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let scope = RequestScope {
        route_slot,
        backend_slot,
        node_in_flight,
        node: Arc::clone(&node.stats),
        route: Arc::clone(&route.stats),
    };
    let body = UpstreamBody::new(body, backend.body_idle_timeout, scope);
    Ok(Response::from_parts(parts, ProxyBody::upstream(body)))
}

fn full(kind: &str, name: &str, e: BulkheadFull) -> ProxyError {
    ProxyError::new(ErrorReason::BulkheadFull, format!("{kind} {name}: {e}"))
}

fn node_uri(uri: &Uri, node: &crate::upstream::Node) -> Result<Uri, ProxyError> {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme("http")
        .authority(node.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::new(ErrorReason::BadRequest, format!("bad request target: {e}")))
}

/// Maps a client error to its reason by walking its causes.
fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    if e.is_connect() {
        return ProxyError::new(
            ErrorReason::UpstreamConnect,
            format!("connect failed: {}", chain(e)),
        );
    }
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = source {
        if let Some(body) = err.downcast_ref::<ClientBodyError>() {
            return ProxyError::new(ErrorReason::ClientBody, body.to_string());
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

fn log_error(e: &ProxyError, request_id: &HeaderValue, route: Option<&str>) {
    debug!(
        reason = e.reason.as_str(),
        detail = %e.detail,
        route = route.unwrap_or(""),
        request_id = request_id.to_str().unwrap_or(""),
        "request failed"
    );
}
