//! `Retry`: another node only when it is safe, within the deadline and the
//! retry budget; small bodies kept and sent again; the answer carries the
//! request's slots in its body.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::BodyExt as _;
use levee_resilience::Deadline;
use levee_telemetry::{BackendEvent, ErrorReason};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::body::ProxyBody;
use crate::classes::ClassTable;
use crate::error::ProxyError;
use crate::stack::balance::{Answer, Attempt, TryFailed};
use crate::stack::retry::RetryLayer;
use crate::stack::{testing, Routed};
use crate::state::ProxyState;
use crate::upstream::Backend;

/// A backend of `nodes` nodes with `retry` in its `[backend.retry]`, and a
/// route with a bulkhead.
fn config(nodes: usize, retry: &str) -> String {
    let nodes: Vec<String> = (0..nodes)
        .map(|i| format!("\"127.0.0.1:{}\"", 9001 + i))
        .collect();
    format!(
        r#"
[[backend]]
name = "app"
nodes = [{}]
timeout = "5s"
[backend.retry]
{retry}
[[route]]
name = "r"
path_prefix = "/"
backend = "app"
max_in_flight = 4
"#,
        nodes.join(", ")
    )
}

/// How the mock's try number `n` ends. The node is the first one not tried.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// The node answered: status, body, and whether that counts as failed.
    Answer(u16, &'static str, bool),
    Fail(ErrorReason),
    NoNode,
}

/// What the mock saw of one try.
#[derive(Debug, Clone)]
struct Seen {
    tried: Vec<usize>,
    allow_probe: bool,
    ignore_state: bool,
    class: usize,
    method: Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

type TryFuture = Pin<Box<dyn Future<Output = Result<Answer, TryFailed>> + Send>>;

fn scripted(
    script: &[Reply],
    seen: &Arc<Mutex<Vec<Seen>>>,
) -> impl Service<Attempt, Response = Answer, Error = TryFailed, Future = TryFuture> + Clone {
    let script: Arc<[Reply]> = script.into();
    let seen = Arc::clone(seen);
    tower::service_fn(move |attempt: Attempt| -> TryFuture {
        let script = Arc::clone(&script);
        let seen = Arc::clone(&seen);
        Box::pin(async move {
            let (parts, body) = attempt.request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let tried = attempt.tried.as_slice().to_vec();
            let n = {
                let mut seen = seen.lock().unwrap();
                seen.push(Seen {
                    tried: tried.clone(),
                    allow_probe: attempt.allow_probe,
                    ignore_state: attempt.ignore_state,
                    class: attempt.class,
                    method: parts.method.clone(),
                    uri: parts.uri.clone(),
                    // As the node gets them.
                    headers: {
                        let mut h = parts.headers.clone();
                        if let Some(f) = &attempt.forwarded {
                            f.apply(&mut h);
                        }
                        h
                    },
                    body,
                });
                seen.len() - 1
            };
            let backend = &attempt.backend;
            let index = (0..backend.nodes.len())
                .find(|i| !tried.contains(i))
                .expect("the mock is asked only while a node is left");
            match script.get(n).copied().expect("a reply for every try") {
                // As levee's HTTP/1 client, it gives the request head back.
                Reply::Answer(status, body, failed) => {
                    let mut answer = testing::answer(backend, index, status, body, failed).await;
                    answer.head = Some(Box::new(parts));
                    Ok(answer)
                }
                Reply::Fail(reason) => Err(TryFailed::Call {
                    error: ProxyError::new(reason, "mock"),
                    index,
                    head: Some(Box::new(parts)),
                }),
                Reply::NoNode => Err(TryFailed::NoNode(None)),
            }
        })
    })
}

/// Runs `req` through `Retry` over the script; what it answered and what
/// each try looked like.
async fn run(
    req: Routed,
    script: &[Reply],
) -> (Result<Response<ProxyBody>, ProxyError>, Vec<Seen>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut svc = RetryLayer.layer(scripted(script, &seen));
    let result = svc.ready().await.unwrap().call(req).await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (result, seen)
}

async fn routed(state: &Arc<ProxyState>, method: Method, body: &'static str) -> Routed {
    testing::routed(
        state,
        testing::client_request_with(method, "/r/x?y=1", &[("x-kept", "yes")], body).await,
    )
}

fn count(backend: &Backend, event: BackendEvent) -> u64 {
    backend.stats.events(event)
}

fn tried(seen: &[Seen]) -> Vec<Vec<usize>> {
    seen.iter().map(|s| s.tried.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_connect_failure_on_post_is_retried_on_another_node() {
    let state = testing::state(&config(2, ""));
    let app = &state.backends[0];
    let req = routed(&state, Method::POST, "hello").await;
    let started = Instant::now();
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamConnect),
            Reply::Answer(200, "second", false),
        ],
    )
    .await;
    let resp = result.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(testing::text(resp.into_body()).await, "second");
    assert_eq!(tried(&seen), [vec![], vec![0]]);
    assert!(seen[0].allow_probe, "a first try may probe");
    assert!(!seen[1].allow_probe, "a retry never probes");
    assert!(seen.iter().all(|s| s.method == Method::POST));
    assert!(seen.iter().all(|s| s.uri == "/r/x?y=1"));
    assert!(seen.iter().all(|s| s.class == ClassTable::UNSAFE));
    assert_eq!(count(app, BackendEvent::Retry), 1);
    assert_eq!(count(app, BackendEvent::RetryBudgetExhausted), 0);
    // One jittered backoff of 10 ms to 20 ms (tokio's timer rounds a
    // sleep up to whole milliseconds, so 20 ms itself may be reached).
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(10) && waited <= Duration::from_millis(20),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reset_on_post_is_not_retried() {
    let state = testing::state(&config(2, ""));
    let app = &state.backends[0];
    let req = routed(&state, Method::POST, "hello").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamReset),
            Reply::Answer(200, "never", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamReset);
    assert_eq!(seen.len(), 1);
    assert_eq!(count(app, BackendEvent::Retry), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reset_or_bad_response_on_get_is_retried() {
    for reason in [ErrorReason::UpstreamReset, ErrorReason::UpstreamProtocol] {
        let state = testing::state(&config(2, ""));
        let app = &state.backends[0];
        let req = routed(&state, Method::GET, "").await;
        let (result, seen) =
            run(req, &[Reply::Fail(reason), Reply::Answer(200, "ok", false)]).await;
        assert_eq!(result.unwrap().status(), 200, "{reason:?}");
        assert_eq!(tried(&seen), [vec![], vec![0]]);
        assert_eq!(count(app, BackendEvent::Retry), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_or_client_body_error_is_never_retried() {
    for reason in [ErrorReason::Deadline, ErrorReason::ClientBody] {
        let state = testing::state(&config(2, ""));
        let app = &state.backends[0];
        let req = routed(&state, Method::GET, "").await;
        let (result, seen) =
            run(req, &[Reply::Fail(reason), Reply::Answer(200, "ok", false)]).await;
        assert_eq!(result.unwrap_err().reason, reason);
        assert_eq!(seen.len(), 1, "{reason:?}");
        assert_eq!(count(app, BackendEvent::Retry), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_503_for_get_is_retried_when_on_statuses_has_it() {
    let state = testing::state(&config(3, "on_statuses = [503]"));
    let app = &state.backends[0];
    let req = routed(&state, Method::GET, "").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Answer(503, "first", true),
            Reply::Answer(200, "second", false),
        ],
    )
    .await;
    let resp = result.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(testing::text(resp.into_body()).await, "second");
    assert_eq!(tried(&seen), [vec![], vec![0]]);
    assert_eq!(count(app, BackendEvent::Retry), 1);
    // The given-up answer released its node's in-flight count.
    assert_eq!(app.nodes.nodes()[0].in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_last_503_answer_is_returned_when_no_other_node_remains() {
    let state = testing::state(&config(2, "on_statuses = [503]"));
    let app = &state.backends[0];
    let req = routed(&state, Method::GET, "").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Answer(503, "first", true),
            Reply::Answer(503, "second", true),
        ],
    )
    .await;
    let resp = result.expect("an answer, never an error");
    assert_eq!(resp.status(), 503);
    assert_eq!(testing::text(resp.into_body()).await, "second");
    assert_eq!(tried(&seen), [vec![], vec![0]]);
    assert_eq!(count(app, BackendEvent::Retry), 1);
}

#[tokio::test(start_paused = true)]
async fn a_503_from_the_only_node_is_returned_at_once() {
    let state = testing::state(&config(1, "on_statuses = [503]"));
    let app = &state.backends[0];
    let req = routed(&state, Method::GET, "").await;
    let started = Instant::now();
    let (result, seen) = run(req, &[Reply::Answer(503, "only", true)]).await;
    let resp = result.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(testing::text(resp.into_body()).await, "only");
    assert_eq!(seen.len(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO, "no backoff");
    assert_eq!(count(app, BackendEvent::Retry), 0);
}

#[tokio::test(start_paused = true)]
async fn a_503_is_not_retried_for_post_or_when_on_statuses_lacks_it() {
    let state = testing::state(&config(2, "on_statuses = [503]"));
    let req = routed(&state, Method::POST, "hello").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Answer(503, "first", true),
            Reply::Answer(200, "x", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap().status(), 503);
    assert_eq!(seen.len(), 1, "POST is not idempotent");

    let state = testing::state(&config(2, "on_statuses = [502]"));
    let req = routed(&state, Method::GET, "").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Answer(503, "first", true),
            Reply::Answer(200, "x", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap().status(), 503);
    assert_eq!(seen.len(), 1, "503 is not in on_statuses");
    assert_eq!(count(&state.backends[0], BackendEvent::Retry), 0);
}

#[tokio::test(start_paused = true)]
async fn a_spent_retry_budget_stops_retries_and_is_counted() {
    let retry = "budget_percent = 0\nbudget_min_per_sec = 0\non_statuses = [503]";
    let state = testing::state(&config(2, retry));
    let app = &state.backends[0];
    let req = routed(&state, Method::GET, "").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamReset),
            Reply::Answer(200, "never", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamReset);
    assert_eq!(seen.len(), 1);
    assert_eq!(count(app, BackendEvent::RetryBudgetExhausted), 1);
    assert_eq!(count(app, BackendEvent::Retry), 0);

    // A retryable answer is then returned as it is.
    let req = routed(&state, Method::GET, "").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Answer(503, "kept", true),
            Reply::Answer(200, "never", false),
        ],
    )
    .await;
    let resp = result.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(testing::text(resp.into_body()).await, "kept");
    assert_eq!(seen.len(), 1);
    assert_eq!(count(app, BackendEvent::RetryBudgetExhausted), 2);
    assert_eq!(count(app, BackendEvent::Retry), 0);
}

#[tokio::test(start_paused = true)]
async fn no_retry_when_the_deadline_leaves_no_room_for_the_backoff() {
    let state = testing::state(&config(2, "backoff = \"100ms\""));
    let app = &state.backends[0];
    let mut req = routed(&state, Method::GET, "").await;
    req.deadline = Deadline::after(Duration::from_millis(50));
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamReset),
            Reply::Answer(200, "never", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamReset);
    assert_eq!(seen.len(), 1);
    assert_eq!(count(app, BackendEvent::Retry), 0);
    assert_eq!(count(app, BackendEvent::RetryBudgetExhausted), 0);
}

#[tokio::test(start_paused = true)]
async fn a_small_post_body_is_kept_and_sent_whole_on_every_try() {
    let state = testing::state(&config(3, "max_retries = 2"));
    let app = &state.backends[0];
    let req = routed(&state, Method::POST, "hello").await;
    assert_eq!(req.parts.headers["content-length"], "5");
    let started = Instant::now();
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamConnect),
            Reply::Fail(ErrorReason::UpstreamConnect),
            Reply::Answer(201, "made", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap().status(), 201);
    assert_eq!(tried(&seen), [vec![], vec![0], vec![0, 1]]);
    assert_eq!(
        seen.iter().map(|s| s.allow_probe).collect::<Vec<_>>(),
        [true, false, false]
    );
    for s in &seen {
        assert_eq!(s.body, Bytes::from_static(b"hello"));
        assert_eq!(s.headers["content-length"], "5");
        assert_eq!(s.headers["x-kept"], "yes", "every try has the headers");
    }
    assert_eq!(count(app, BackendEvent::Retry), 2);
    // Backoffs of 10-20 ms, then 20-40 ms (each rounded up to whole ms).
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(30) && waited <= Duration::from_millis(60),
        "{waited:?}"
    );
}

/// More retries allowed than nodes: the try on the last untried node is the
/// last, and every try has the client's headers.
#[tokio::test(start_paused = true)]
async fn retries_stop_when_every_node_was_tried_and_each_try_has_the_headers() {
    let state = testing::state(&config(2, "max_retries = 5"));
    let req = routed(&state, Method::GET, "").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamConnect),
            Reply::Fail(ErrorReason::UpstreamConnect),
            Reply::Answer(200, "never", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamConnect);
    assert_eq!(tried(&seen), [vec![], vec![0]]);
    for s in &seen {
        assert_eq!(s.headers["x-kept"], "yes", "every try has the headers");
    }
}

#[tokio::test(start_paused = true)]
async fn max_retries_zero_makes_exactly_one_try() {
    let state = testing::state(&config(3, "max_retries = 0"));
    let app = &state.backends[0];
    let req = routed(&state, Method::GET, "").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamReset),
            Reply::Answer(200, "never", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamReset);
    assert_eq!(seen.len(), 1);

    // A POST streams its body once, and a connect failure stays an error.
    let req = routed(&state, Method::POST, "hello").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamConnect),
            Reply::Answer(200, "never", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamConnect);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Bytes::from_static(b"hello"));
    assert_eq!(count(app, BackendEvent::Retry), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_buffer_bytes_is_streamed_once_and_never_retried() {
    let state = testing::state(&config(2, "buffer_bytes = 4"));
    let req = routed(&state, Method::POST, "hello").await;
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamConnect),
            Reply::Answer(200, "never", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamConnect);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, Bytes::from_static(b"hello"));
}

#[tokio::test(start_paused = true)]
async fn no_node_on_a_retry_gives_the_last_error_and_on_a_first_try_no_healthy_node() {
    let state = testing::state(&config(2, ""));
    let req = routed(&state, Method::POST, "hello").await;
    let (result, seen) = run(
        req,
        &[Reply::Fail(ErrorReason::UpstreamConnect), Reply::NoNode],
    )
    .await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamConnect);
    assert_eq!(seen.len(), 2);

    let req = routed(&state, Method::GET, "").await;
    let (result, seen) = run(req, &[Reply::NoNode]).await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::NoHealthyNode);
    assert_eq!(seen.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn try_all_passes_ignore_state_down_and_retries_on_open_nodes() {
    let state = testing::state(&config(2, "[backend.breaker]\nconsecutive_failures = 1"));
    let app = &state.backends[0];
    testing::open_every_node(app, ClassTable::SAFE);
    let mut req = routed(&state, Method::GET, "").await;
    req.ignore_state = true;
    let (result, seen) = run(
        req,
        &[
            Reply::Fail(ErrorReason::UpstreamReset),
            Reply::Answer(200, "ok", false),
        ],
    )
    .await;
    assert_eq!(result.unwrap().status(), 200);
    assert_eq!(
        seen.len(),
        2,
        "an open node is an alternative under try_all"
    );
    assert!(seen.iter().all(|s| s.ignore_state));
}

#[tokio::test(start_paused = true)]
async fn the_answer_body_holds_the_slots_until_it_is_dropped() {
    let state = testing::state(&config(2, ""));
    let app = &state.backends[0];
    let route_bulkhead = state.routes[0].bulkhead.as_deref().unwrap();
    let mut req = routed(&state, Method::GET, "").await;
    req.backend_slot = app.bulkhead().try_acquire().unwrap();
    req.route_slot = route_bulkhead.try_acquire().unwrap();
    assert!(req.backend_slot.is_some() && req.route_slot.is_some());
    let (result, _) = run(req, &[Reply::Answer(200, "a body", false)]).await;
    let resp = result.unwrap();
    let node = &app.nodes.nodes()[0];
    assert_eq!(app.bulkhead().in_flight(), 1, "held by the response body");
    assert_eq!(route_bulkhead.in_flight(), 1);
    assert_eq!(node.in_flight(), 1);
    drop(resp);
    assert_eq!(app.bulkhead().in_flight(), 0);
    assert_eq!(route_bulkhead.in_flight(), 0);
    assert_eq!(node.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_slots_are_released_when_the_answer_body_ends() {
    let state = testing::state(&config(2, ""));
    let app = &state.backends[0];
    let mut req = routed(&state, Method::GET, "").await;
    req.backend_slot = app.bulkhead().try_acquire().unwrap();
    let (result, _) = run(req, &[Reply::Answer(200, "a body", false)]).await;
    let mut body = result.unwrap().into_body();
    assert_eq!(app.bulkhead().in_flight(), 1);
    let mut data = Vec::new();
    for _ in 0..10 {
        match body.frame().await {
            Some(frame) => {
                if let Ok(d) = frame.unwrap().into_data() {
                    data.extend_from_slice(&d);
                }
            }
            None => break,
        }
    }
    assert_eq!(data, b"a body");
    assert_eq!(
        app.bulkhead().in_flight(),
        0,
        "freed at the end, before the body is dropped"
    );
    drop(body);
}

#[tokio::test(start_paused = true)]
async fn an_error_releases_the_slots() {
    let state = testing::state(&config(2, ""));
    let app = &state.backends[0];
    let mut req = routed(&state, Method::POST, "hello").await;
    req.backend_slot = app.bulkhead().try_acquire().unwrap();
    let (result, _) = run(req, &[Reply::Fail(ErrorReason::UpstreamReset)]).await;
    assert_eq!(result.unwrap_err().reason, ErrorReason::UpstreamReset);
    assert_eq!(app.bulkhead().in_flight(), 0);
}
