//! `ChooseBackend` (what `when_all_down` does when every node is out, and a
//! failover backend's budget) and `Shed` (lower priorities refused first as
//! the backend fills up).

use std::sync::{Arc, Mutex};

use http::{Method, Response};
use levee_resilience::{BulkheadPermit, LimitPhase};
use levee_telemetry::{BackendEvent, ErrorReason};
use tower::{Layer, Service, ServiceExt};

use crate::body::ProxyBody;
use crate::classes::ClassTable;
use crate::error::ProxyError;
use crate::stack::backend::{ChooseBackend, Shed};
use crate::stack::{testing, Routed};
use crate::stack::{DecideLayer, Decision};
use crate::state::ProxyState;
use crate::upstream::Backend;

/// `app` (two nodes, failing over to `standby`) and `standby` (one node);
/// one failure opens a node's breaker.
fn config(when_all_down: &str) -> String {
    format!(
        r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001", "127.0.0.1:9002"]
failover = "standby"
when_all_down = "{when_all_down}"
[backend.breaker]
consecutive_failures = 1
[[backend]]
name = "standby"
nodes = ["127.0.0.1:9101"]
[backend.breaker]
consecutive_failures = 1
[[route]]
path_prefix = "/"
backend = "app"
"#
    )
}

/// What the inner service saw: the backend index and `ignore_state`.
#[derive(Clone, Default)]
struct Record(Arc<Mutex<Vec<(usize, bool)>>>);

impl Record {
    fn take(&self) -> Vec<(usize, bool)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn answering(
    record: &Record,
) -> impl Service<Routed, Response = Response<ProxyBody>, Error = ProxyError> + Clone {
    let record = record.clone();
    tower::service_fn(move |req: Routed| {
        record
            .0
            .lock()
            .unwrap()
            .push((req.backend, req.ignore_state));
        async move { Ok::<_, ProxyError>(testing::local_response(200, "ok")) }
    })
}

async fn routed(state: &Arc<ProxyState>, method: Method, path: &str) -> Routed {
    testing::routed(state, testing::client_request(method, path, "").await)
}

fn events(backend: &Backend) -> [u64; 6] {
    BackendEvent::ALL.map(|e| backend.stats.events(e))
}

fn only(event: BackendEvent) -> [u64; 6] {
    BackendEvent::ALL.map(|e| u64::from(e == event))
}

async fn choose(
    state: &Arc<ProxyState>,
    record: &Record,
    method: Method,
) -> Result<(), ProxyError> {
    let mut svc = DecideLayer(ChooseBackend).layer(answering(record));
    let req = routed(state, method, "/x").await;
    svc.ready().await?.call(req).await.map(|resp| {
        assert_eq!(resp.status(), 200);
    })
}

#[tokio::test(start_paused = true)]
async fn usable_nodes_keep_the_route_backend_and_count_nothing() {
    let state = testing::state(&config("fail"));
    let record = Record::default();
    choose(&state, &record, Method::GET).await.unwrap();
    assert_eq!(record.take(), [(0, false)]);
    assert_eq!(events(&state.backends[0]), [0; 6]);
}

#[tokio::test(start_paused = true)]
async fn all_down_fail_refuses_with_no_healthy_node() {
    let state = testing::state(&config("fail"));
    testing::open_every_node(&state.backends[0], ClassTable::SAFE);
    let record = Record::default();
    let err = choose(&state, &record, Method::GET).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::NoHealthyNode);
    assert!(record.take().is_empty(), "the inner is never called");
    assert_eq!(
        events(&state.backends[0]),
        only(BackendEvent::AllDownFail),
        "no failover although standby is usable"
    );
    assert_eq!(events(&state.backends[1]), [0; 6]);
}

#[tokio::test(start_paused = true)]
async fn breakers_of_another_class_do_not_make_the_backend_down() {
    let state = testing::state(&config("fail"));
    testing::open_every_node(&state.backends[0], ClassTable::SAFE);
    let record = Record::default();
    choose(&state, &record, Method::POST).await.unwrap();
    assert_eq!(record.take(), [(0, false)], "POST is judged by `unsafe`");
    assert_eq!(events(&state.backends[0]), [0; 6]);
}

#[tokio::test(start_paused = true)]
async fn all_down_failover_sends_the_request_to_the_failover_backend() {
    let state = testing::state(&config("failover"));
    testing::open_every_node(&state.backends[0], ClassTable::SAFE);
    let record = Record::default();
    choose(&state, &record, Method::GET).await.unwrap();
    assert_eq!(record.take(), [(1, false)], "standby is backend 1");
    assert_eq!(events(&state.backends[0]), only(BackendEvent::FailedOver));
    assert_eq!(events(&state.backends[1]), [0; 6]);
}

#[tokio::test(start_paused = true)]
async fn all_down_failover_without_a_usable_failover_node_fails() {
    let state = testing::state(&config("failover"));
    testing::open_every_node(&state.backends[0], ClassTable::SAFE);
    testing::open_every_node(&state.backends[1], ClassTable::SAFE);
    let record = Record::default();
    let err = choose(&state, &record, Method::GET).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::NoHealthyNode);
    assert!(err.detail.contains("app"), "{}", err.detail);
    assert!(record.take().is_empty());
    assert_eq!(events(&state.backends[0]), only(BackendEvent::AllDownFail));
}

#[tokio::test(start_paused = true)]
async fn all_down_try_all_keeps_the_backend_and_ignores_node_state() {
    let state = testing::state(&config("try_all"));
    testing::open_every_node(&state.backends[0], ClassTable::SAFE);
    let record = Record::default();
    choose(&state, &record, Method::GET).await.unwrap();
    assert_eq!(record.take(), [(0, true)]);
    assert_eq!(
        events(&state.backends[0]),
        only(BackendEvent::AllDownTryAll)
    );
}

#[tokio::test(start_paused = true)]
async fn nodes_failing_health_checks_count_as_down() {
    let state = testing::state(
        r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001", "127.0.0.1:9002"]
[backend.health_check]
path = "/healthz"
unhealthy_after = 1
[[route]]
path_prefix = "/"
backend = "app"
"#,
    );
    let app = &state.backends[0];
    for node in app.nodes.nodes() {
        node.health().record(false);
        assert!(!node.health().is_healthy());
    }
    let record = Record::default();
    let err = choose(&state, &record, Method::GET).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::NoHealthyNode);
    assert!(record.take().is_empty());
    assert_eq!(events(app), only(BackendEvent::AllDownFail));
}

// --- Shed ------------------------------------------------------------------

/// `app` has four slots; sheddable requests may use half, normal ones three
/// quarters, critical ones all. `standby` is another backend to choose.
const SHEDDING: &str = r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001"]
max_in_flight = 4
[backend.shedding]
sheddable = 0.5
normal = 0.75
[[backend]]
name = "standby"
nodes = ["127.0.0.1:9101"]
max_in_flight = 4
[[route]]
name = "critical"
path_prefix = "/critical"
backend = "app"
priority = "critical"
[[route]]
name = "normal"
path_prefix = "/normal"
backend = "app"
priority = "normal"
[[route]]
name = "bulk"
path_prefix = "/bulk"
backend = "app"
priority = "sheddable"
"#;

fn hold(backend: &Backend, n: usize) -> Vec<BulkheadPermit> {
    let held: Vec<_> = (0..n)
        .map(|_| {
            backend
                .bulkhead()
                .try_acquire()
                .unwrap()
                .expect("a free slot")
        })
        .collect();
    assert_eq!(backend.bulkhead().in_flight(), n);
    held
}

async fn shed(state: &Arc<ProxyState>, path: &str, backend: usize) -> Result<(), ProxyError> {
    let record = Record::default();
    let mut svc = DecideLayer(Shed).layer(answering(&record));
    let mut req = routed(state, Method::GET, path).await;
    req.backend = backend;
    let result = svc.ready().await?.call(req).await.map(|_| ());
    let seen = record.take();
    match &result {
        Ok(()) => assert_eq!(seen, [(backend, false)]),
        Err(_) => assert!(seen.is_empty(), "a shed request never reaches the inner"),
    }
    result
}

#[tokio::test(start_paused = true)]
async fn below_every_share_all_priorities_pass() {
    let state = testing::state(SHEDDING);
    let _held = hold(&state.backends[0], 1);
    for path in ["/critical", "/normal", "/bulk"] {
        shed(&state, path, 0).await.unwrap();
    }
    assert_eq!(state.backends[0].stats.events(BackendEvent::Shed), 0);
}

#[tokio::test(start_paused = true)]
async fn at_its_share_a_sheddable_route_is_shed_while_critical_and_normal_pass() {
    let state = testing::state(SHEDDING);
    let app = &state.backends[0];
    let _held = hold(app, 2);
    let err = shed(&state, "/bulk", 0).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::Shed);
    assert!(err.detail.contains("sheds sheddable"), "{}", err.detail);
    shed(&state, "/critical", 0).await.unwrap();
    shed(&state, "/normal", 0).await.unwrap();
    assert_eq!(events(app), only(BackendEvent::Shed));
}

#[tokio::test(start_paused = true)]
async fn at_the_normal_share_a_healthy_backend_lets_normal_through_to_its_queue() {
    let state = testing::state(SHEDDING);
    let app = &state.backends[0];
    let mut held = hold(app, 3);
    shed(&state, "/normal", 0).await.unwrap();
    assert_eq!(
        shed(&state, "/bulk", 0).await.unwrap_err().reason,
        ErrorReason::Shed,
        "sheddable is shed past its share whatever the backend's state"
    );
    shed(&state, "/critical", 0).await.unwrap();
    held.extend(hold_one_more(app));
    assert_eq!(app.bulkhead().in_flight(), 4);
    shed(&state, "/normal", 0).await.unwrap();
    shed(&state, "/critical", 0).await.unwrap();
    assert_eq!(app.stats.events(BackendEvent::Shed), 1);
}

#[tokio::test(start_paused = true)]
async fn at_the_normal_share_a_backend_in_trouble_sheds_normal_but_not_critical() {
    let state = testing::state(
        &SHEDDING
            .replacen(
                "nodes = [\"127.0.0.1:9001\"]",
                "nodes = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]",
                1,
            )
            .replace(
                "normal = 0.75",
                "normal = 0.75\n[backend.breaker]\nconsecutive_failures = 1",
            ),
    );
    let app = &state.backends[0];
    testing::open_node(app, ClassTable::SAFE, 1);
    let held = hold(app, 1);
    shed(&state, "/normal", 0).await.unwrap();
    let more: Vec<_> = (0..2).filter_map(|_| hold_one_more(app)).collect();
    assert_eq!(app.bulkhead().in_flight(), 3);
    assert_eq!(
        shed(&state, "/normal", 0).await.unwrap_err().reason,
        ErrorReason::Shed
    );
    shed(&state, "/critical", 0).await.unwrap();
    assert_eq!(app.stats.events(BackendEvent::Shed), 1);
    drop((held, more));
}

/// Requests decided one after another but not yet at the bulkhead (as on
/// several workers at once) cannot all pass a share: the check takes the
/// slot. Sheddable's share of four is two; a healthy backend's normal
/// requests past theirs go on to its queue without a slot.
#[tokio::test(start_paused = true)]
async fn a_share_is_checked_and_taken_in_one_step() {
    let state = testing::state(SHEDDING);
    let app = &state.backends[0];
    let mut passed = Vec::new();
    let mut shed_count = 0;
    for _ in 0..4 {
        let mut req = routed(&state, Method::GET, "/bulk").await;
        match Shed.decide(&mut req) {
            Ok(()) => passed.push(req),
            Err(e) => {
                assert_eq!(e.reason, ErrorReason::Shed);
                shed_count += 1;
            }
        }
    }
    assert_eq!((passed.len(), shed_count), (2, 2));
    assert!(passed.iter().all(|r| r.backend_slot.is_some()));
    assert_eq!(app.bulkhead().in_flight(), 2);
    let mut normal = Vec::new();
    for _ in 0..3 {
        let mut req = routed(&state, Method::GET, "/normal").await;
        Shed.decide(&mut req).unwrap();
        normal.push(req);
    }
    let slots = normal.iter().filter(|r| r.backend_slot.is_some()).count();
    assert_eq!(slots, 1, "normal's share of four is three");
    assert_eq!(app.bulkhead().in_flight(), 3);
    drop((passed, normal));
    assert_eq!(app.bulkhead().in_flight(), 0);
}

fn hold_one_more(backend: &Backend) -> Option<BulkheadPermit> {
    backend.bulkhead().try_acquire().unwrap()
}

#[tokio::test(start_paused = true)]
async fn shedding_judges_the_chosen_backend_not_the_route_backend() {
    let state = testing::state(SHEDDING);
    let _held = hold(&state.backends[0], 4);
    // Failed over to the empty standby: nothing to shed there.
    shed(&state, "/bulk", 1).await.unwrap();
    assert_eq!(state.backends[0].stats.events(BackendEvent::Shed), 0);
    assert_eq!(state.backends[1].stats.events(BackendEvent::Shed), 0);
    // And a full standby sheds, counted on standby.
    let _standby = hold(&state.backends[1], 2);
    assert_eq!(
        shed(&state, "/bulk", 1).await.unwrap_err().reason,
        ErrorReason::Shed
    );
    assert_eq!(state.backends[1].stats.events(BackendEvent::Shed), 1);
    assert_eq!(state.backends[0].stats.events(BackendEvent::Shed), 0);
}

// --- Failover budget ---------------------------------------------------------

/// `app` fails over to `standby`, whose eight slots give failed-over
/// requests a budget of four: sheddable ones two, normal ones three;
/// critical ones are not held to it.
const BUDGET: &str = r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001"]
failover = "standby"
[backend.breaker]
consecutive_failures = 1
[[backend]]
name = "standby"
nodes = ["127.0.0.1:9101"]
max_in_flight = 8
failover_max_share = 0.5
[backend.shedding]
sheddable = 0.5
normal = 0.75
[[route]]
name = "critical"
path_prefix = "/critical"
backend = "app"
priority = "critical"
[[route]]
name = "normal"
path_prefix = "/normal"
backend = "app"
priority = "normal"
[[route]]
name = "bulk"
path_prefix = "/bulk"
backend = "app"
priority = "sheddable"
"#;

/// `ChooseBackend` for a GET to `path`: the backend it chose, or its error.
async fn choose_for(state: &Arc<ProxyState>, path: &str) -> Result<usize, ProxyError> {
    let record = Record::default();
    let mut svc = DecideLayer(ChooseBackend).layer(answering(&record));
    let req = routed(state, Method::GET, path).await;
    svc.ready().await?.call(req).await?;
    let seen = record.take();
    assert_eq!(seen.len(), 1);
    Ok(seen[0].0)
}

fn failed_over_state(toml: &str) -> Arc<ProxyState> {
    let state = testing::state(toml);
    testing::open_every_node(&state.backends[0], ClassTable::SAFE);
    state
}

#[tokio::test(start_paused = true)]
async fn failed_over_requests_are_shed_by_priority_past_the_failover_budget() {
    let state = failed_over_state(BUDGET);
    let (app, standby) = (&state.backends[0], &state.backends[1]);
    assert_eq!(standby.failover_budget(), 4);
    for path in ["/critical", "/normal", "/bulk"] {
        assert_eq!(choose_for(&state, path).await.unwrap(), 1);
    }
    assert_eq!(app.stats.events(BackendEvent::FailedOver), 3);

    let mut held = hold(standby, 2);
    let err = choose_for(&state, "/bulk").await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::Shed);
    assert!(err.detail.contains("failover budget 4"), "{}", err.detail);
    assert_eq!(choose_for(&state, "/normal").await.unwrap(), 1);

    // Three in flight: a healthy standby still sheds normal failed-over
    // requests (no queuing on the failover region), not critical ones.
    held.extend(hold_one_more(standby));
    assert_eq!(
        choose_for(&state, "/normal").await.unwrap_err().reason,
        ErrorReason::Shed
    );
    assert_eq!(choose_for(&state, "/critical").await.unwrap(), 1);

    // Every slot taken: critical ones still go on, to the standby's queue.
    held.extend((0..5).filter_map(|_| hold_one_more(standby)));
    assert_eq!(standby.bulkhead().in_flight(), 8);
    assert_eq!(choose_for(&state, "/critical").await.unwrap(), 1);
    assert_eq!(standby.stats.events(BackendEvent::Shed), 2);
    assert_eq!(app.stats.events(BackendEvent::FailedOver), 6);
    assert_eq!(app.stats.events(BackendEvent::Shed), 0);
    drop(held);
}

/// The failover budget too is checked and taken in one step: of four
/// sheddable requests failed over at once, two fit standby's budget (half
/// of four) and hold their slot from there on; critical ones take none.
#[tokio::test(start_paused = true)]
async fn a_failover_budget_is_checked_and_taken_in_one_step() {
    let state = failed_over_state(BUDGET);
    let standby = &state.backends[1];
    let mut chosen = Vec::new();
    for _ in 0..4 {
        let mut req = routed(&state, Method::GET, "/bulk").await;
        if ChooseBackend.decide(&mut req).is_ok() {
            assert_eq!(req.backend, 1);
            // Shed and the bulkhead take no second slot.
            Shed.decide(&mut req).unwrap();
            chosen.push(req);
        }
    }
    assert_eq!(chosen.len(), 2);
    assert_eq!(standby.bulkhead().in_flight(), 2);
    assert_eq!(standby.stats.events(BackendEvent::Shed), 2);
    let mut critical = routed(&state, Method::GET, "/critical").await;
    ChooseBackend.decide(&mut critical).unwrap();
    assert!(
        critical.backend_slot.is_none(),
        "its slot comes at the bulkhead"
    );
    drop(chosen);
    assert_eq!(standby.bulkhead().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_reload_applies_a_new_failover_budget() {
    let state = failed_over_state(BUDGET);
    let _held = hold(&state.backends[1], 3);
    assert!(choose_for(&state, "/normal").await.is_err());

    // A reload to the whole of standby's limit: normal passes again, and
    // the in-flight requests of the old version count in the new one.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        BUDGET.replace("failover_max_share = 0.5", "failover_max_share = 1.0")
    );
    let config = levee_config::parse(&text, "test.toml").unwrap();
    let reloaded = Arc::new(ProxyState::build(Arc::new(config), 1, Some(&state)));
    assert_eq!(reloaded.backends[1].failover_budget(), 8);
    assert_eq!(reloaded.backends[1].bulkhead().in_flight(), 3);
    assert_eq!(choose_for(&reloaded, "/normal").await.unwrap(), 1);
    let _more = hold_one_more(&reloaded.backends[1]);
    assert_eq!(
        choose_for(&reloaded, "/bulk").await.unwrap_err().reason,
        ErrorReason::Shed,
        "four in flight is sheddable's half of eight"
    );
}

#[test]
fn the_budget_is_a_share_of_the_limit_rounded_up_and_at_least_one() {
    let state =
        testing::state(&BUDGET.replace("failover_max_share = 0.5", "failover_max_share = 0.01"));
    assert_eq!(state.backends[1].failover_budget(), 1);
    let state =
        testing::state(&BUDGET.replace("failover_max_share = 0.5", "failover_max_share = 0.3"));
    assert_eq!(
        state.backends[1].failover_budget(),
        3,
        "0.3 of 8, rounded up"
    );
    let state = testing::state(&BUDGET.replace("failover_max_share = 0.5\n", ""));
    assert_eq!(state.backends[1].failover_budget(), 8, "default: all of it");
}

// --- The return ramp and the adaptive limit --------------------------------

/// `app` (two health-checked nodes, four slots, a ramp from two) failing
/// over to `standby`.
const RETURNING: &str = r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001", "127.0.0.1:9002"]
max_in_flight = 4
failover = "standby"
[backend.adaptive]
min_in_flight = 2
[backend.health_check]
path = "/healthz"
unhealthy_after = 1
healthy_after = 1
[[backend]]
name = "standby"
nodes = ["127.0.0.1:9101"]
[[route]]
path_prefix = "/"
backend = "app"
"#;

#[tokio::test(start_paused = true)]
async fn a_returning_pool_admits_from_its_floor_and_the_rest_fails_over() {
    let state = testing::state(RETURNING);
    let app = &state.backends[0];
    let record = Record::default();
    for node in app.nodes.nodes() {
        node.health().record(false);
    }
    choose(&state, &record, Method::GET).await.unwrap();
    assert_eq!(record.take(), [(1, false)], "all out: the failover");
    assert_eq!(app.admission().phase(), LimitPhase::Out);

    app.nodes.nodes()[0].health().record(true);
    choose(&state, &record, Method::GET).await.unwrap();
    assert_eq!(record.take(), [(0, false)], "back: the pool itself");
    assert_eq!(app.admission().phase(), LimitPhase::Ramping);
    assert_eq!(
        app.bulkhead().max_in_flight(),
        1,
        "the ramp's floor, shared by the nodes back so far"
    );
    app.nodes.nodes()[1].health().record(true);
    choose(&state, &record, Method::GET).await.unwrap();
    assert_eq!(record.take(), [(0, false)]);
    assert_eq!(app.bulkhead().max_in_flight(), 2, "the ramp's floor");
    for node in app.nodes.nodes() {
        assert!(!node.ramp().is_ramping(), "the pool's ramp paces its nodes");
    }
    let _held = hold(app, 2);
    choose(&state, &record, Method::GET).await.unwrap();
    assert_eq!(record.take(), [(1, false)], "past the ramp: the failover");
    assert_eq!(app.stats.events(BackendEvent::FailedOver), 2);
}

#[tokio::test(start_paused = true)]
async fn a_single_node_returning_among_healthy_ones_ramps_its_own_weight() {
    let state = testing::state(RETURNING);
    let app = &state.backends[0];
    let node = &app.nodes.nodes()[1];
    node.health().record(false);
    node.health().record(true);
    app.nodes.ramp_in(node);
    assert!(node.ramp().is_ramping());
    assert_eq!(node.ramp().limit(), crate::nodes::MIN_WEIGHT);
    assert_eq!(app.admission().phase(), LimitPhase::Steady);
    assert_eq!(app.bulkhead().max_in_flight(), 4);
}

#[tokio::test(start_paused = true)]
async fn shares_are_of_the_current_limit() {
    // Adaptive on: a new backend starts from its floor, 4 of 8 slots.
    let state = testing::state(&SHEDDING.replacen(
        "max_in_flight = 4",
        "max_in_flight = 8\n[backend.adaptive]\nenabled = true\nmin_in_flight = 4",
        1,
    ));
    let app = &state.backends[0];
    assert_eq!(app.bulkhead().max_in_flight(), 4);
    let _held = hold(app, 2);
    assert_eq!(
        shed(&state, "/bulk", 0).await.unwrap_err().reason,
        ErrorReason::Shed,
        "half of the limit, not of max_in_flight"
    );
    shed(&state, "/normal", 0).await.unwrap();
    shed(&state, "/critical", 0).await.unwrap();
}

/// A layer below the edge (a rate limit keyed on a header) reads the
/// `X-Forwarded-*` lines the edge kept apart as the node will get them.
#[tokio::test]
async fn a_routed_request_reads_its_forwarded_lines_as_the_node_gets_them() {
    use crate::headers::{self, Forwarded, Scheme, X_FORWARDED_FOR, X_FORWARDED_HOST};
    let state = testing::state(&config("fail"));
    let mut req = routed(&state, Method::GET, "/").await;
    req.parts
        .headers
        .insert("x-kept", http::HeaderValue::from_static("yes"));
    assert_eq!(req.header(&X_FORWARDED_FOR), None);
    req.forwarded = Some(Forwarded {
        peer: headers::peer_value("10.1.2.3".parse().unwrap()),
        host: None,
        scheme: Scheme::Https,
    });
    assert_eq!(req.header(&X_FORWARDED_FOR).unwrap(), "10.1.2.3");
    assert_eq!(
        req.header(&http::HeaderName::from_static("x-forwarded-proto"))
            .unwrap(),
        "https"
    );
    assert_eq!(req.header(&X_FORWARDED_HOST), None);
    assert_eq!(
        req.header(&http::HeaderName::from_static("x-kept"))
            .unwrap(),
        "yes"
    );
}
