//! `Edge`: refusals before routing, routing, header hygiene, and every error
//! from below turned into a response and counted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HOST, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use levee_telemetry::{ErrorReason, StatusClass, Telemetry, Topology};
use tower::{Layer, Service, ServiceExt};

use crate::body::{ClientBody, ProxyBody};
use crate::classes::ClassTable;
use crate::error::{ProxyError, X_LEVEE_ERROR};
use crate::stack::edge::EdgeLayer;
use crate::stack::{testing, Routed};
use crate::state::{ProxyState, Shared};

const PEER: &str = "10.1.2.3:4567";

const CONFIG: &str = r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001"]
[[backend]]
name = "other"
nodes = ["127.0.0.1:9002"]
[[route]]
name = "first"
path_prefix = "/first/"
backend = "app"
[[route]]
name = "api"
path_prefix = "/api/"
backend = "other"
timeout = "2s"
"#;

/// What the inner service saw of one request.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    route: usize,
    backend: usize,
    class: usize,
    peer: SocketAddr,
    budget: Duration,
    ignore_state: bool,
    slots: (bool, bool),
}

type Reply = fn() -> Result<Response<ProxyBody>, ProxyError>;

fn shared(toml: &str) -> (Arc<Shared>, Arc<ProxyState>) {
    let state = testing::state(toml);
    let shared = Arc::new(Shared::new(
        Arc::clone(&state),
        Telemetry::new(Topology::default(), 1),
    ));
    (shared, state)
}

/// Runs `req` through an `Edge` over a mock that records what it saw and
/// answers with `reply`.
async fn run(
    shared: &Arc<Shared>,
    req: Request<ClientBody>,
    reply: Reply,
) -> (Response<ProxyBody>, Vec<Seen>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let seen = Arc::clone(&seen);
        tower::service_fn(move |req: Routed| {
            seen.lock().unwrap().push(Seen {
                method: req.parts.method.clone(),
                uri: req.parts.uri.clone(),
                // As the node gets them.
                headers: {
                    let mut h = req.parts.headers.clone();
                    if let Some(f) = &req.forwarded {
                        f.apply(&mut h);
                    }
                    h
                },
                route: req.route,
                backend: req.backend,
                class: req.class,
                peer: req.peer,
                budget: req.deadline.budget(),
                ignore_state: req.ignore_state,
                slots: (req.route_slot.is_some(), req.backend_slot.is_some()),
            });
            async move { reply() }
        })
    };
    let mut edge = EdgeLayer::new(
        Arc::clone(shared),
        PEER.parse().unwrap(),
        crate::headers::Scheme::Http,
    )
    .layer(inner);
    let resp = edge.ready().await.unwrap().call(req).await.unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (resp, seen)
}

fn ok() -> Result<Response<ProxyBody>, ProxyError> {
    Ok(testing::local_response(200, "from below"))
}

#[tokio::test(start_paused = true)]
async fn connect_is_refused_with_405_unsupported_and_counted_as_unrouted() {
    let (shared, state) = shared(CONFIG);
    let req = testing::client_request(Method::CONNECT, "test:443", "").await;
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[X_LEVEE_ERROR], "unsupported");
    assert!(seen.is_empty(), "the inner service is never called");
    let unrouted = &state.topology.unrouted;
    assert_eq!(unrouted.reason(ErrorReason::Unsupported), 1);
    assert_eq!(unrouted.class(StatusClass::ClientError), 1);
    assert_eq!(unrouted.total(), 1);
    for route in &state.routes {
        assert_eq!(route.stats.outcomes.total(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn no_matching_route_is_404_no_route_and_counted_as_unrouted() {
    let (shared, state) = shared(CONFIG);
    let req = testing::client_request(Method::GET, "/elsewhere", "").await;
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()[X_LEVEE_ERROR], "no-route");
    assert!(!resp.headers().contains_key(RETRY_AFTER));
    let body = testing::text(resp.into_body()).await;
    assert!(body.starts_with("404 no-route"), "{body}");
    assert!(seen.is_empty());
    let unrouted = &state.topology.unrouted;
    assert_eq!(unrouted.reason(ErrorReason::NoRoute), 1);
    assert_eq!(unrouted.class(StatusClass::ClientError), 1);
    for route in &state.routes {
        assert_eq!(route.stats.outcomes.total(), 0);
    }
}

/// The edge checks the head limits of HTTP/2 requests only (the gate
/// checks HTTP/1 heads on their bytes).
fn as_http2(mut req: Request<ClientBody>) -> Request<ClientBody> {
    *req.version_mut() = Version::HTTP_2;
    req
}

#[tokio::test(start_paused = true)]
async fn an_http2_head_over_max_header_bytes_is_431_before_routing() {
    let (shared, state) = shared(&format!("max_header_bytes = 1024\n{CONFIG}"));
    let big = "x".repeat(2000);
    let req =
        testing::client_request_with(Method::GET, "/api/x", &[("x-big", big.as_str())], "").await;
    let req = as_http2(req);
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(resp.headers()[X_LEVEE_ERROR], "header-too-large");
    assert!(seen.is_empty());
    assert_eq!(
        state.topology.unrouted.reason(ErrorReason::HeaderTooLarge),
        1
    );
    assert_eq!(state.routes[1].stats.outcomes.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_inner_error_becomes_its_response_and_is_counted_on_the_route() {
    let (shared, state) = shared(CONFIG);
    let req = testing::client_request(Method::GET, "/api/x", "").await;
    let (resp, seen) = run(&shared, req, || {
        Err(ProxyError::new(ErrorReason::NoHealthyNode, "all open"))
    })
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()[X_LEVEE_ERROR], "no-healthy-node");
    assert_eq!(resp.headers()[RETRY_AFTER], "1");
    let body = testing::text(resp.into_body()).await;
    assert!(body.starts_with("503 no-healthy-node"), "{body}");
    assert!(!body.contains("all open"), "the detail stays in the log");

    let api = &state.routes[1].stats;
    assert_eq!(api.outcomes.reason(ErrorReason::NoHealthyNode), 1);
    assert_eq!(api.outcomes.class(StatusClass::ServerError), 1);
    assert_eq!(api.outcomes.total(), 1);
    assert_eq!(api.latency.count(), 1);
    assert_eq!(state.routes[0].stats.outcomes.total(), 0);
    assert_eq!(state.topology.unrouted.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn each_inner_error_gets_its_status_and_only_503_has_retry_after() {
    type Case = (Reply, u16, &'static str, bool);
    let cases: [Case; 5] = [
        (
            || Err(ProxyError::new(ErrorReason::BulkheadFull, "")),
            503,
            "bulkhead-full",
            true,
        ),
        (
            || Err(ProxyError::new(ErrorReason::Shed, "")),
            503,
            "shed",
            true,
        ),
        (
            || Err(ProxyError::new(ErrorReason::Deadline, "")),
            504,
            "deadline",
            false,
        ),
        (
            || Err(ProxyError::new(ErrorReason::UpstreamConnect, "")),
            502,
            "upstream-connect",
            false,
        ),
        (
            || Err(ProxyError::new(ErrorReason::ClientBody, "")),
            400,
            "client-body",
            false,
        ),
    ];
    let (shared, state) = shared(CONFIG);
    for (reply, status, reason, retry_after) in cases {
        let req = testing::client_request(Method::GET, "/api/x", "").await;
        let (resp, _) = run(&shared, req, reply).await;
        assert_eq!(resp.status().as_u16(), status, "{reason}");
        assert_eq!(resp.headers()[X_LEVEE_ERROR], reason);
        assert_eq!(
            resp.headers().get(RETRY_AFTER).map(|v| v.to_str().unwrap()),
            retry_after.then_some("1"),
            "{reason}"
        );
    }
    let api = &state.routes[1].stats.outcomes;
    assert_eq!(api.reason(ErrorReason::BulkheadFull), 1);
    assert_eq!(api.reason(ErrorReason::Shed), 1);
    assert_eq!(api.reason(ErrorReason::Deadline), 1);
    assert_eq!(api.reason(ErrorReason::UpstreamConnect), 1);
    assert_eq!(api.reason(ErrorReason::ClientBody), 1);
    assert_eq!(api.class(StatusClass::ServerError), 4);
    assert_eq!(api.class(StatusClass::ClientError), 1);
}

#[tokio::test(start_paused = true)]
async fn an_inner_answer_passes_through_and_is_counted() {
    let (shared, state) = shared(CONFIG);
    let req = testing::client_request(Method::GET, "/first/x", "").await;
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key(X_LEVEE_ERROR));
    assert_eq!(testing::text(resp.into_body()).await, "from below");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].route, 0);
    let first = &state.routes[0].stats;
    assert_eq!(first.outcomes.class(StatusClass::Success), 1);
    assert_eq!(first.outcomes.total(), 1);
    assert_eq!(first.latency.count(), 1);
    assert_eq!(state.routes[1].stats.outcomes.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_inner_gets_the_routed_request_with_hop_by_hop_headers_removed() {
    let (shared, _state) = shared(CONFIG);
    let req = testing::client_request_with(
        Method::POST,
        "/api/orders?id=7",
        &[
            ("connection", "x-foo"),
            ("x-foo", "secret"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ],
        "body",
    )
    .await;
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/api/orders?id=7");
    assert_eq!(seen.route, 1, "the first matching route");
    assert_eq!(seen.backend, 1, "the route's backend");
    assert_eq!(seen.class, ClassTable::UNSAFE);
    assert_eq!(seen.peer, PEER.parse::<SocketAddr>().unwrap());
    assert_eq!(
        seen.budget,
        Duration::from_secs(2),
        "the deadline is the route's"
    );
    assert!(!seen.ignore_state);
    assert_eq!(seen.slots, (false, false), "the edge takes no slot");

    let h = &seen.headers;
    for gone in ["connection", "x-foo", "te", "upgrade"] {
        assert!(!h.contains_key(gone), "{gone} is hop-by-hop: {h:?}");
    }
    assert_eq!(h["x-kept"], "yes");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "test");
    assert_eq!(h[HOST], "test");
    assert_eq!(h["content-length"], "4");
}

#[tokio::test(start_paused = true)]
async fn a_client_x_forwarded_for_list_gets_the_peer_appended() {
    let (shared, _state) = shared(CONFIG);
    let req = testing::client_request_with(
        Method::GET,
        "/api/x",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
        "",
    )
    .await;
    let (_, seen) = run(&shared, req, ok).await;
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(seen[0].class, ClassTable::SAFE);
}

#[tokio::test(start_paused = true)]
async fn http2_heads_with_too_many_lines_or_long_targets_are_refused_before_routing() {
    let (shared, state) = shared(&format!("max_headers = 32\nmax_uri_bytes = 256\n{CONFIG}"));
    let names: Vec<String> = (0..32).map(|i| format!("x-h-{i}")).collect();
    let lines: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    // Host plus 32 more: one over.
    let req = testing::client_request_with(Method::GET, "/api/x", &lines, "").await;
    let req = as_http2(req);
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(resp.headers()[X_LEVEE_ERROR], "too-many-headers");
    assert!(seen.is_empty());
    // At the limit, with the client's own x-request-id not counted.
    let mut at_limit = lines[..31].to_vec();
    at_limit.push(("x-request-id", "abc"));
    let req = testing::client_request_with(Method::GET, "/api/x", &at_limit, "").await;
    let req = as_http2(req);
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(seen.len(), 1);

    let long = format!("/api/{}", "a".repeat(252));
    let req = testing::client_request(Method::GET, &long, "").await;
    let req = as_http2(req);
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::URI_TOO_LONG);
    assert_eq!(resp.headers()[X_LEVEE_ERROR], "uri-too-long");
    assert!(seen.is_empty());
    let req = testing::client_request(Method::GET, &long[..256], "").await;
    let req = as_http2(req);
    let (resp, _) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::OK, "exactly 256 bytes pass");

    let unrouted = &state.topology.unrouted;
    assert_eq!(unrouted.reason(ErrorReason::TooManyHeaders), 1);
    assert_eq!(unrouted.reason(ErrorReason::UriTooLong), 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_or_invalid_host_is_400_bad_host() {
    let (shared, state) = shared(CONFIG);
    for extra in [("host", "other"), ("host", "test")] {
        let req = testing::client_request_with(Method::GET, "/api/x", &[extra], "").await;
        let (resp, seen) = run(&shared, req, ok).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{extra:?}");
        assert_eq!(resp.headers()[X_LEVEE_ERROR], "bad-host");
        assert!(seen.is_empty());
    }
    assert_eq!(state.topology.unrouted.reason(ErrorReason::BadHost), 2);
}

#[tokio::test(start_paused = true)]
async fn a_declared_body_over_the_route_limit_is_413_counted_on_the_route() {
    let config = CONFIG.replace(
        "timeout = \"2s\"",
        "timeout = \"2s\"\nmax_request_body_bytes = 4",
    );
    let (shared, state) = shared(&config);
    let req = testing::client_request(Method::POST, "/api/x", "12345").await;
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()[X_LEVEE_ERROR], "body-too-large");
    assert!(seen.is_empty(), "no slot, no node");
    let api = &state.routes[1].stats;
    assert_eq!(api.outcomes.reason(ErrorReason::BodyTooLarge), 1);
    assert_eq!(api.outcomes.class(StatusClass::ClientError), 1);
    assert_eq!(api.latency.count(), 1);
    assert_eq!(state.topology.unrouted.total(), 0);

    let req = testing::client_request(Method::POST, "/api/x", "1234").await;
    let (resp, seen) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::OK, "at the limit");
    assert_eq!(seen.len(), 1);
    // Another route keeps the server's default (1 GiB).
    let req = testing::client_request(Method::POST, "/first/x", "12345").await;
    let (resp, _) = run(&shared, req, ok).await;
    assert_eq!(resp.status(), StatusCode::OK);
}
