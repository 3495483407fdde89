//! `Bulkhead`: a free slot at once, a bounded wait in the queue, and
//! `bulkhead-full` when neither works; the route's or the chosen backend's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Response};
use levee_resilience::{Bulkhead as Limit, Deadline};
use levee_telemetry::ErrorReason;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::stack::bulkhead::BulkheadLayer;
use crate::stack::{testing, ProxyResult, Routed};
use crate::state::ProxyState;

/// A route with a bulkhead of one slot and a queue of `max_queue`, waiting
/// at most 50 ms; its backend `app` has one slot and a queue of one, and
/// a second backend `standby` the same.
fn config(max_queue: usize) -> String {
    format!(
        r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001"]
max_in_flight = 1
max_queue = 1
[[backend]]
name = "standby"
nodes = ["127.0.0.1:9101"]
max_in_flight = 1
max_queue = 1
queue_timeout = "80ms"
[[route]]
name = "limited"
path_prefix = "/limited"
backend = "app"
timeout = "2s"
max_in_flight = 1
max_queue = {max_queue}
queue_timeout = "50ms"
[[route]]
name = "open"
path_prefix = "/"
backend = "app"
timeout = "2s"
queue_timeout = "50ms"
"#
    )
}

fn route_bulkhead(state: &ProxyState) -> &Limit {
    state.routes[0].bulkhead.as_deref().unwrap()
}

/// What the inner service saw: whether each slot was set, and the in-flight
/// count of the route's and each backend's bulkhead while it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    route_slot: bool,
    backend_slot: bool,
    route_in_flight: Option<usize>,
    backends_in_flight: [usize; 2],
}

#[derive(Clone, Default)]
struct Record(Arc<Mutex<Vec<Seen>>>);

impl Record {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A mock that records what it saw and answers 200 at once.
fn answering(
    record: &Record,
) -> impl Service<Routed, Response = Response<ProxyBody>, Error = ProxyError, Future: Send + 'static>
       + Clone
       + Send
       + 'static {
    let record = record.clone();
    tower::service_fn(move |req: Routed| {
        record.0.lock().unwrap().push(seen(&req));
        async move { Ok::<_, ProxyError>(testing::local_response(200, "ok")) }
    })
}

fn seen(req: &Routed) -> Seen {
    Seen {
        route_slot: req.route_slot.is_some(),
        backend_slot: req.backend_slot.is_some(),
        route_in_flight: req.route().bulkhead.as_ref().map(|b| b.in_flight()),
        backends_in_flight: [
            req.state.backends[0].bulkhead().in_flight(),
            req.state.backends[1].bulkhead().in_flight(),
        ],
    }
}

async fn routed(state: &Arc<ProxyState>, path: &str) -> Routed {
    testing::routed(state, testing::client_request(Method::GET, path, "").await)
}

#[tokio::test(start_paused = true)]
async fn a_free_route_slot_is_taken_for_the_inner_call_and_released_after_it() {
    let state = testing::state(&config(1));
    let bulkhead = route_bulkhead(&state);
    // The inner call holds on until told to finish.
    let entered = Arc::new(Mutex::new(None::<Seen>));
    let (finish_tx, finish_rx) = oneshot::channel::<()>();
    let finish_rx = Arc::new(Mutex::new(Some(finish_rx)));
    let inner = {
        let entered = Arc::clone(&entered);
        tower::service_fn(move |req: Routed| {
            *entered.lock().unwrap() = Some(seen(&req));
            let finish = finish_rx.lock().unwrap().take();
            async move {
                if let Some(f) = finish {
                    let _ = f.await;
                }
                drop(req);
                Ok::<_, ProxyError>(testing::local_response(200, "ok"))
            }
        })
    };
    let mut svc = BulkheadLayer::route().layer(inner);
    let req = routed(&state, "/limited").await;
    let mut call = std::pin::pin!(svc.ready().await.unwrap().call(req));
    assert!(futures_util::FutureExt::now_or_never(call.as_mut()).is_none());
    let seen = entered
        .lock()
        .unwrap()
        .take()
        .expect("the inner was called");
    assert!(seen.route_slot);
    assert!(!seen.backend_slot, "the route layer takes no backend slot");
    assert_eq!(seen.route_in_flight, Some(1));
    assert_eq!(seen.backends_in_flight, [0, 0]);
    assert_eq!(bulkhead.in_flight(), 1, "held while the inner runs");

    finish_tx.send(()).unwrap();
    let resp = call.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(bulkhead.in_flight(), 0, "released once the inner is done");
    assert_eq!(bulkhead.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_route_without_a_bulkhead_passes_without_a_slot() {
    let state = testing::state(&config(1));
    let record = Record::default();
    let mut svc = BulkheadLayer::route().layer(answering(&record));
    let req = routed(&state, "/other").await;
    assert_eq!(req.route, 1);
    let resp = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = record.take();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].route_slot);
    assert!(!seen[0].backend_slot);
    assert_eq!(route_bulkhead(&state).in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_route_queues_and_takes_the_slot_when_it_is_released() {
    let state = testing::state(&config(1));
    let bulkhead = route_bulkhead(&state);
    let held = bulkhead.try_acquire().unwrap().expect("a free slot");
    let record = Record::default();
    let mut svc = BulkheadLayer::route().layer(answering(&record));
    let req = routed(&state, "/limited").await;
    let started = Instant::now();
    let call = svc.ready().await.unwrap().call(req);
    let task = tokio::spawn(call);
    for _ in 0..100 {
        if bulkhead.queued() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(bulkhead.queued(), 1, "the request waits in the queue");
    tokio::time::advance(Duration::from_millis(30)).await;
    assert!(record.take().is_empty(), "no slot yet, no inner call");
    assert!(!task.is_finished());

    drop(held);
    let resp: ProxyResult = task.await.unwrap();
    assert_eq!(resp.unwrap().status(), 200);
    assert_eq!(started.elapsed(), Duration::from_millis(30));
    let seen = record.take();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].route_slot);
    assert_eq!(seen[0].route_in_flight, Some(1));
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(bulkhead.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_route_refuses_with_bulkhead_full_after_its_queue_timeout() {
    let state = testing::state(&config(1));
    let bulkhead = route_bulkhead(&state);
    let _held = bulkhead.try_acquire().unwrap().expect("a free slot");
    let record = Record::default();
    let mut svc = BulkheadLayer::route().layer(answering(&record));
    let req = routed(&state, "/limited").await;
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::BulkheadFull);
    assert!(err.detail.contains("route limited"), "{}", err.detail);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(50),
        "the route's queue_timeout"
    );
    assert!(record.take().is_empty());
    assert_eq!(bulkhead.queued(), 0, "it left the queue");
    assert_eq!(bulkhead.in_flight(), 1, "only the held slot");
}

#[tokio::test(start_paused = true)]
async fn a_queued_wait_ends_at_the_deadline_when_that_is_sooner() {
    let state = testing::state(&config(1));
    let bulkhead = route_bulkhead(&state);
    let _held = bulkhead.try_acquire().unwrap().expect("a free slot");
    let record = Record::default();
    let mut svc = BulkheadLayer::route().layer(answering(&record));
    let mut req = routed(&state, "/limited").await;
    req.deadline = Deadline::after(Duration::from_millis(20));
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::BulkheadFull);
    assert_eq!(started.elapsed(), Duration::from_millis(20));
    assert!(record.take().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_full_route_without_a_queue_refuses_at_once() {
    let state = testing::state(&config(0));
    let bulkhead = route_bulkhead(&state);
    assert_eq!(bulkhead.max_queue(), 0);
    let _held = bulkhead.try_acquire().unwrap().expect("a free slot");
    let record = Record::default();
    let mut svc = BulkheadLayer::route().layer(answering(&record));
    let req = routed(&state, "/limited").await;
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::BulkheadFull);
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait at all");
    assert!(record.take().is_empty());
    assert_eq!(bulkhead.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_backend_scope_takes_a_slot_of_the_chosen_backend() {
    let state = testing::state(&config(1));
    let record = Record::default();
    let mut svc = BulkheadLayer::backend().layer(answering(&record));

    let req = routed(&state, "/other").await;
    assert_eq!(req.backend, 0);
    svc.ready().await.unwrap().call(req).await.unwrap();
    // As ChooseBackend would set it after a failover.
    let mut req = routed(&state, "/other").await;
    req.backend = 1;
    svc.ready().await.unwrap().call(req).await.unwrap();

    let seen = record.take();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.backend_slot && !s.route_slot));
    assert_eq!(seen[0].backends_in_flight, [1, 0]);
    assert_eq!(seen[1].backends_in_flight, [0, 1], "req.backend's bulkhead");
    assert_eq!(state.backends[0].bulkhead().in_flight(), 0);
    assert_eq!(state.backends[1].bulkhead().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_chosen_backend_queues_then_refuses_naming_that_backend() {
    let state = testing::state(&config(1));
    let standby = state.backends[1].bulkhead();
    let _held = standby.try_acquire().unwrap().expect("a free slot");
    let record = Record::default();
    let mut svc = BulkheadLayer::backend().layer(answering(&record));
    let mut req = routed(&state, "/other").await;
    req.backend = 1;
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::BulkheadFull);
    assert!(err.detail.contains("backend standby"), "{}", err.detail);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(80),
        "the backend's own queue_timeout, not the route's"
    );
    assert!(record.take().is_empty());
    assert_eq!(state.backends[0].bulkhead().in_flight(), 0, "app untouched");
    assert_eq!(standby.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_backend_request_gets_the_slot_when_it_frees() {
    let state = testing::state(&config(1));
    let app = state.backends[0].bulkhead();
    let held = app.try_acquire().unwrap().expect("a free slot");
    let record = Record::default();
    let mut svc = BulkheadLayer::backend().layer(answering(&record));
    let req = routed(&state, "/other").await;
    let task = tokio::spawn(svc.ready().await.unwrap().call(req));
    for _ in 0..100 {
        if app.queued() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(app.queued(), 1);
    drop(held);
    task.await.unwrap().unwrap();
    let seen = record.take();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].backend_slot);
    assert_eq!(seen[0].backends_in_flight, [1, 0]);
    assert_eq!(app.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_backend_queue_refuses_at_once_when_it_is_full() {
    let state = testing::state(&config(1));
    let app = state.backends[0].bulkhead();
    let _held = app.try_acquire().unwrap().expect("a free slot");
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = Arc::clone(&calls);
        tower::service_fn(move |_req: Routed| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, ProxyError>(testing::local_response(200, "ok")) }
        })
    };
    let mut svc = BulkheadLayer::backend().layer(inner);
    // One waits in the queue of one...
    let req = routed(&state, "/other").await;
    let first = tokio::spawn(svc.ready().await.unwrap().call(req));
    for _ in 0..100 {
        if app.queued() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(app.queued(), 1);
    // ...so the next is refused without waiting.
    let req = routed(&state, "/other").await;
    let started = Instant::now();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::BulkheadFull);
    assert_eq!(started.elapsed(), Duration::ZERO);
    let first = first.await.unwrap().unwrap_err();
    assert_eq!(
        first.reason,
        ErrorReason::BulkheadFull,
        "timed out in queue"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A normal and a critical request wait for the backend's one slot; the
/// critical one, though it came second, gets it first.
#[tokio::test(start_paused = true)]
async fn a_critical_request_waiting_for_the_backend_goes_before_a_normal_one() {
    let state = testing::state(
        r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001"]
max_in_flight = 1
max_queue = 4
queue_timeout = "1s"
[[route]]
name = "pay"
path_prefix = "/pay"
backend = "app"
priority = "critical"
[[route]]
name = "browse"
path_prefix = "/"
backend = "app"
"#,
    );
    let held = state.backends[0]
        .bulkhead()
        .try_acquire()
        .unwrap()
        .expect("a free slot");
    let order = Arc::new(Mutex::new(Vec::new()));
    let inner = {
        let order = Arc::clone(&order);
        tower::service_fn(move |req: Routed| {
            order.lock().unwrap().push(req.route().name.clone());
            async move { Ok::<_, ProxyError>(testing::local_response(200, "ok")) }
        })
    };
    let svc = BulkheadLayer::backend().layer(inner);
    let normal = tokio::spawn(svc.clone().oneshot(routed(&state, "/browse").await));
    tokio::task::yield_now().await;
    let critical = tokio::spawn(svc.oneshot(routed(&state, "/pay").await));
    tokio::task::yield_now().await;
    assert_eq!(state.backends[0].bulkhead().queued(), 2);
    drop(held);
    critical.await.unwrap().unwrap();
    normal.await.unwrap().unwrap();
    assert_eq!(*order.lock().unwrap(), ["pay", "browse"]);
}
