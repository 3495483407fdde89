//! Forwarding one request: route, deadline, bulkheads, node, response.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::uri::Authority;
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use levee_config::WhenAllDown;
use levee_resilience::{BulkheadFull, Deadline, DeadlineExceeded, Phase};
use levee_telemetry::{BackendEvent, ErrorReason};
use tokio::time::Instant;
use tracing::debug;

use crate::body::{ClientBodyError, ProxyBody, RequestBody, RequestScope, UpstreamBody};
use crate::error::ProxyError;
use crate::headers::{self, X_REQUEST_ID};
use crate::nodes::Outcome;
use crate::state::{ProxyState, Route, Shared};
use crate::upstream::Backend;

/// Handles one client request; every outcome is a response. `worker` is
/// the data-plane worker serving the connection; its node pools are used.
pub async fn handle(
    shared: Arc<Shared>,
    worker: usize,
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
                    let resp =
                        match forward(&state, worker, route, req, peer, request_id.clone()).await {
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
    state: &ProxyState,
    worker: usize,
    route: &Route,
    req: Request<Incoming>,
    peer: SocketAddr,
    request_id: HeaderValue,
) -> Result<Response<ProxyBody>, ProxyError> {
    let deadline = Deadline::after(route.timeout);
    let wait_until = deadline.capped(route.queue_timeout);
    let class = route.class_of(req.method());

    let route_slot = match &route.bulkhead {
        Some(b) => Some(
            b.acquire(wait_until)
                .await
                .map_err(|e| full("route", &route.name, e))?,
        ),
        None => None,
    };
    let (backend, ignore_state) = choose_backend(state, &route.backend, class)?;
    if !backend.admits_priority(route.priority) {
        backend.stats.count(BackendEvent::Shed);
        return Err(ProxyError::new(
            ErrorReason::Shed,
            format!(
                "backend {} sheds {} requests at {} in flight",
                backend.name,
                route.priority,
                backend.bulkhead().in_flight()
            ),
        ));
    }
    let backend_slot = backend
        .bulkhead()
        .acquire(wait_until)
        .await
        .map_err(|e| full("backend", &backend.name, e))?;
    backend.retry_budget.record_request();

    let (mut parts, body) = req.into_parts();
    prepare_headers(&mut parts, peer, request_id);
    let idempotent = is_idempotent(&parts.method);
    let mut outgoing = Outgoing::prepare(body, &parts.headers, &backend, &deadline).await?;
    let attempts = 1 + if outgoing.replayable() {
        backend.retry.max_retries.min(MAX_RETRIES)
    } else {
        0
    };

    let mut tried = [usize::MAX; MAX_RETRIES as usize + 1];
    let mut last_error = None;
    for attempt in 0..attempts {
        let last_attempt = attempt + 1 == attempts;
        let Some(mut pick) = backend.nodes.pick(
            class,
            &tried[..attempt as usize],
            attempt == 0,
            ignore_state,
        ) else {
            break;
        };
        tried[attempt as usize] = pick.index;
        let node_in_flight = pick.node.enter();
        let headers = if last_attempt {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        let mut upstream_req = Request::new(outgoing.body(backend.body_idle_timeout));
        *upstream_req.method_mut() = parts.method.clone();
        *upstream_req.uri_mut() = node_uri(&parts.uri, &pick.node.authority)?;
        *upstream_req.version_mut() = Version::HTTP_11;
        *upstream_req.headers_mut() = headers;

        let sent = Instant::now();
        let result = deadline
            .run(
                Phase::Headers,
                pick.node.client(worker).request(upstream_req),
            )
            .await;
        let elapsed = sent.elapsed();
        let error = match result {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                let failed = backend
                    .nodes
                    .record(&mut pick, elapsed, Outcome::Status(status));
                // Never give up an answer unless another node can be asked.
                let retry = failed
                    && idempotent
                    && !last_attempt
                    && backend.retry.on_statuses.contains(&status)
                    && backend.nodes.has_alternative(
                        class,
                        &tried[..=attempt as usize],
                        ignore_state,
                    )
                    && retry_allowed(&backend, &deadline, attempt).await;
                if retry {
                    continue;
                }
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                let scope = RequestScope {
                    route_slot,
                    backend_slot,
                    node_in_flight,
                    node: Arc::clone(&pick.node.stats),
                    route: Arc::clone(&route.stats),
                };
                let body = UpstreamBody::new(body, backend.body_idle_timeout, scope);
                return Ok(Response::from_parts(parts, ProxyBody::upstream(body)));
            }
            Ok(Err(e)) => classify(&e),
            Err(DeadlineExceeded { phase, after }) => ProxyError::new(
                ErrorReason::Deadline,
                format!("no {phase} from {} within {after:?}", pick.node.addr),
            ),
        };
        if error.reason.blames_node() {
            backend
                .nodes
                .record(&mut pick, elapsed, Outcome::Failed(error.reason));
        }
        // Retry only where it is safe: any method if the request never reached
        // the node, idempotent ones also after a reset or a bad response.
        let safe = match error.reason {
            ErrorReason::UpstreamConnect => true,
            ErrorReason::UpstreamReset | ErrorReason::UpstreamProtocol => idempotent,
            _ => false,
        };
        if !safe
            || last_attempt
            || !backend
                .nodes
                .has_alternative(class, &tried[..=attempt as usize], ignore_state)
            || !retry_allowed(&backend, &deadline, attempt).await
        {
            return Err(error);
        }
        last_error = Some(error);
    }
    Err(last_error.unwrap_or_else(|| {
        ProxyError::new(
            ErrorReason::NoHealthyNode,
            format!("backend {} has no usable node", backend.name),
        )
    }))
}

/// Most retries one request may make, whatever the config says.
const MAX_RETRIES: u32 = 7;

/// Picks the backend for a request: the route's own while it has a usable
/// node (and its pool is not ramping back), else what `when_all_down` says.
fn choose_backend(
    state: &ProxyState,
    primary: &Arc<Backend>,
    class: usize,
) -> Result<(Arc<Backend>, bool), ProxyError> {
    let failover = || {
        primary
            .failover
            .and_then(|i| state.backends.get(i))
            .filter(|fb| fb.nodes.any_usable(class))
            .map(Arc::clone)
    };
    if primary.nodes.any_usable(class) {
        let share = primary.nodes.pool_admission(class);
        if share >= 1.0 || levee_resilience::admit_share(share) {
            return Ok((Arc::clone(primary), false));
        }
        // The whole pool is ramping back: the rest goes to the failover pool
        // if there is one, else it is shed, so the pool is not knocked over.
        if let Some(fb) = failover() {
            primary.stats.count(BackendEvent::FailedOver);
            return Ok((fb, false));
        }
        primary.stats.count(BackendEvent::Shed);
        return Err(ProxyError::new(
            ErrorReason::Shed,
            format!(
                "backend {} is ramping back up ({:.0}% admitted)",
                primary.name,
                share * 100.0
            ),
        ));
    }
    match primary.when_all_down {
        WhenAllDown::Fail => {
            primary.stats.count(BackendEvent::AllDownFail);
            Err(no_healthy_node(primary))
        }
        WhenAllDown::Failover => match failover() {
            Some(fb) => {
                primary.stats.count(BackendEvent::FailedOver);
                Ok((fb, false))
            }
            None => {
                primary.stats.count(BackendEvent::AllDownFail);
                Err(no_healthy_node(primary))
            }
        },
        WhenAllDown::TryAll => {
            primary.stats.count(BackendEvent::AllDownTryAll);
            Ok((Arc::clone(primary), true))
        }
    }
}

fn no_healthy_node(backend: &Backend) -> ProxyError {
    ProxyError::new(
        ErrorReason::NoHealthyNode,
        format!(
            "every node of backend {} is open or unhealthy",
            backend.name
        ),
    )
}

/// Takes a retry from the budget and waits a small jittered backoff, if the
/// deadline leaves room for both.
async fn retry_allowed(backend: &Backend, deadline: &Deadline, attempt: u32) -> bool {
    let base = backend.retry.backoff.mul_f64(1.0 + fastrand::f64());
    let pause = base.saturating_mul(1 << attempt.min(6));
    if deadline.remaining() <= pause {
        return false;
    }
    if !backend.retry_budget.try_retry() {
        backend.stats.count(BackendEvent::RetryBudgetExhausted);
        return false;
    }
    backend.stats.count(BackendEvent::Retry);
    tokio::time::sleep(pause).await;
    true
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Rewrites the client's headers for the node, once per request.
fn prepare_headers(parts: &mut http::request::Parts, peer: SocketAddr, request_id: HeaderValue) {
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
    parts.headers.insert(X_REQUEST_ID, request_id);
}

/// The request body as levee will send it: kept whole when small enough to
/// be sent again, else streamed once.
enum Outgoing {
    Kept(Bytes),
    Stream(Option<Incoming>),
}

impl Outgoing {
    async fn prepare(
        body: Incoming,
        headers: &http::HeaderMap,
        backend: &Backend,
        deadline: &Deadline,
    ) -> Result<Self, ProxyError> {
        if body.is_end_stream() {
            return Ok(Outgoing::Kept(Bytes::new()));
        }
        let small = body
            .size_hint()
            .exact()
            .filter(|_| headers.contains_key(http::header::CONTENT_LENGTH))
            .is_some_and(|len| len <= backend.retry.buffer_bytes as u64);
        if !small || backend.retry.max_retries == 0 {
            return Ok(Outgoing::Stream(Some(body)));
        }
        let read = RequestBody::stream(body, backend.body_idle_timeout).collect();
        match deadline.run(Phase::BodyIdle, read).await {
            Ok(Ok(collected)) => Ok(Outgoing::Kept(collected.to_bytes())),
            Ok(Err(e)) => Err(ProxyError::new(ErrorReason::ClientBody, e.to_string())),
            Err(_) => Err(ProxyError::new(
                ErrorReason::ClientBody,
                "the client did not send its request body before the deadline",
            )),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Outgoing::Kept(_))
    }

    fn body(&mut self, idle: std::time::Duration) -> RequestBody {
        match self {
            Outgoing::Kept(data) => RequestBody::kept(data.clone()),
            Outgoing::Stream(body) => match body.take() {
                Some(b) => RequestBody::stream(b, idle),
                None => RequestBody::kept(Bytes::new()),
            },
        }
    }
}

fn full(kind: &str, name: &str, e: BulkheadFull) -> ProxyError {
    ProxyError::new(ErrorReason::BulkheadFull, format!("{kind} {name}: {e}"))
}

fn node_uri(uri: &Uri, authority: &Authority) -> Result<Uri, ProxyError> {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
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
