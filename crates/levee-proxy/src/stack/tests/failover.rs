//! `Retry` over `Balance`: a request whose backend has no node left for it
//! by the time one is picked, or whose failed trial call emptied it, goes
//! on to the failover backend within its budget.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use http::{Method, Response};
use levee_resilience::BreakerState;
use levee_telemetry::{BackendEvent, ErrorReason};
use tower::{Layer, Service, ServiceExt};

use crate::body::ProxyBody;
use crate::classes::ClassTable;
use crate::error::ProxyError;
use crate::stack::balance::BalanceLayer;
use crate::stack::node::{NodeRequest, NotReplied, Replied};
use crate::stack::retry::RetryLayer;
use crate::stack::{testing, Routed};
use crate::state::ProxyState;

const SAFE: usize = ClassTable::SAFE;

/// A primary of one node whose breaker opens on one failure, for a second,
/// then lets one trial call through; a standby of one node.
const PRIMARY_STANDBY: &str = r#"
[[backend]]
name = "primary"
nodes = ["127.0.0.1:9001"]
failover = "standby"
[backend.breaker]
consecutive_failures = 1
open_for = "1s"
jitter = 0.0
half_open_calls = 1
[[backend]]
name = "standby"
nodes = ["127.0.0.1:9101"]
[[route]]
path_prefix = "/"
backend = "primary"
"#;

type NodeFuture = Pin<Box<dyn Future<Output = Result<Replied, NotReplied>> + Send>>;

/// The primary's node refuses connections; the standby's answers 200 to a
/// request that kept the client's headers, else 400.
fn nodes_mock(
) -> impl Service<NodeRequest, Response = Replied, Error = NotReplied, Future = NodeFuture> + Clone
{
    tower::service_fn(|req: NodeRequest| -> NodeFuture {
        let primary = req.node.addr.port() == 9001;
        let status = if req.request.headers().contains_key(CLIENT_HEADER) {
            200
        } else {
            400
        };
        // As levee's HTTP/1 client, it gives the request head back.
        let head = Some(Box::new(req.request.into_parts().0));
        Box::pin(async move {
            if primary {
                Err(NotReplied {
                    error: ProxyError::new(ErrorReason::UpstreamConnect, "refused"),
                    head,
                })
            } else {
                let response = testing::node_response(status, "standby").await;
                Ok(Replied { response, head })
            }
        })
    })
}

/// A header the client sent, which every try must carry.
const CLIENT_HEADER: &str = "x-client";

/// A GET routed to the primary, holding a slot of the primary's bulkhead
/// as the layers above leave it.
async fn get(state: &std::sync::Arc<ProxyState>) -> Routed {
    let req = testing::client_request(Method::GET, "/", "").await;
    let mut routed = testing::routed(state, req);
    routed
        .parts
        .headers
        .insert(CLIENT_HEADER, http::HeaderValue::from_static("1"));
    routed.backend_slot = state.backends[0].bulkhead().try_acquire().unwrap();
    assert!(routed.backend_slot.is_some());
    routed
}

async fn run(req: Routed) -> Result<Response<ProxyBody>, ProxyError> {
    let mut svc = RetryLayer.layer(BalanceLayer.layer(nodes_mock()));
    svc.ready().await.unwrap().call(req).await
}

/// The primary's breaker opened, and half-open now.
async fn half_open(state: &ProxyState) {
    testing::open_every_node(&state.backends[0], SAFE);
    tokio::time::advance(Duration::from_millis(1500)).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_that_finds_the_last_trial_slot_taken_goes_to_the_failover() {
    let state = testing::state(PRIMARY_STANDBY);
    let (primary, standby) = (&state.backends[0], &state.backends[1]);
    half_open(&state).await;
    // ChooseBackend saw the trial slot free and kept the request on the
    // primary; another request takes the slot before this one's pick.
    let req = get(&state).await;
    let trial = primary.nodes.pick(SAFE, &[], true, false).unwrap();
    assert!(trial.is_probe());

    let resp = run(req).await.expect("served by the standby");
    assert_eq!(resp.status(), 200);
    assert_eq!(primary.bulkhead().in_flight(), 0, "its slot went back");
    assert_eq!(standby.bulkhead().in_flight(), 1, "held by the answer");
    assert_eq!(testing::text(resp.into_body()).await, "standby");
    assert_eq!(standby.bulkhead().in_flight(), 0);
    assert_eq!(primary.stats.events(BackendEvent::FailedOver), 1);
    drop(trial);
}

#[tokio::test(start_paused = true)]
async fn a_failed_trial_call_fails_over_when_a_retry_may_follow() {
    let state = testing::state(PRIMARY_STANDBY);
    let primary = &state.backends[0];
    half_open(&state).await;
    let resp = run(get(&state).await).await.expect("served by the standby");
    assert_eq!(resp.status(), 200);
    let breaker = &primary.nodes.nodes()[0].breaker(SAFE).unwrap().breaker;
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(
        breaker.opened_total(),
        2,
        "the failed trial call re-opened it"
    );
    assert_eq!(primary.stats.events(BackendEvent::FailedOver), 1);
    assert_eq!(primary.stats.events(BackendEvent::Retry), 1);
}

#[tokio::test(start_paused = true)]
async fn without_failover_or_retries_a_failed_trial_call_is_the_answer() {
    for (key, value) in [("when_all_down", "\"fail\""), ("max_retries", "0")] {
        let cfg = if key == "max_retries" {
            PRIMARY_STANDBY.replace(
                "half_open_calls = 1",
                "half_open_calls = 1\n[backend.retry]\nmax_retries = 0",
            )
        } else {
            PRIMARY_STANDBY.replace(
                "failover = \"standby\"",
                "failover = \"standby\"\nwhen_all_down = \"fail\"",
            )
        };
        let state = testing::state(&cfg);
        half_open(&state).await;
        let e = run(get(&state).await).await.expect_err(key);
        assert_eq!(e.reason, ErrorReason::UpstreamConnect, "{key} = {value}");
        assert_eq!(state.backends[0].stats.events(BackendEvent::FailedOver), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_sheddable_request_past_the_failover_budget_is_shed_not_failed_over() {
    let cfg = PRIMARY_STANDBY
        .replace(
            "nodes = [\"127.0.0.1:9101\"]",
            "nodes = [\"127.0.0.1:9101\"]\nmax_in_flight = 4",
        )
        .replace(
            "backend = \"primary\"\n",
            "backend = \"primary\"\npriority = \"sheddable\"\n",
        );
    let state = testing::state(&cfg);
    let (primary, standby) = (&state.backends[0], &state.backends[1]);
    half_open(&state).await;
    let req = get(&state).await;
    let trial = primary.nodes.pick(SAFE, &[], true, false).unwrap();
    let _busy: Vec<_> = (0..3)
        .map(|_| standby.bulkhead().try_acquire().unwrap().unwrap())
        .collect();
    let e = run(req).await.expect_err("shed");
    assert_eq!(e.reason, ErrorReason::Shed);
    assert_eq!(standby.stats.events(BackendEvent::Shed), 1);
    assert_eq!(primary.stats.events(BackendEvent::FailedOver), 0);
    drop(trial);
}
