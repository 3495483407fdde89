//! `Balance`: which node takes a try, where the request is aimed, and how
//! each outcome is fed back to the node set (breaker, counters).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use levee_resilience::{BreakerState, Deadline};
use levee_telemetry::{ErrorReason, StatusClass};
use tower::{Layer, Service, ServiceExt};

use crate::body::RequestBody;
use crate::classes::ClassTable;
use crate::error::ProxyError;
use crate::stack::balance::{Answer, Attempt, BalanceLayer, Tried, TryFailed};
use crate::stack::node::{NodeRequest, NotReplied, Replied};
use crate::stack::testing;
use crate::upstream::Backend;

const SAFE: usize = ClassTable::SAFE;

/// Two nodes in turn; one failure opens a breaker for one second.
const TWO: &str = r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001", "127.0.0.1:9002"]
load_balancing = "round_robin"
[backend.breaker]
consecutive_failures = 1
open_for = "1s"
jitter = 0.0
half_open_calls = 1
[[route]]
path_prefix = "/"
backend = "app"
"#;

/// How the mock node call ends.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    Fail(ErrorReason),
    Never,
}

/// What the mock saw of one node call.
#[derive(Debug, Clone)]
struct Call {
    addr: SocketAddr,
    uri: Uri,
    in_flight: i64,
}

#[derive(Clone, Default)]
struct Record(Arc<Mutex<Vec<Call>>>);

impl Record {
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

type NodeFuture = Pin<Box<dyn Future<Output = Result<Replied, NotReplied>> + Send>>;

fn node_mock(
    record: &Record,
    reply: Reply,
) -> impl Service<NodeRequest, Response = Replied, Error = NotReplied, Future = NodeFuture> + Clone
{
    let record = record.clone();
    tower::service_fn(move |req: NodeRequest| -> NodeFuture {
        record.0.lock().unwrap().push(Call {
            addr: req.node.addr,
            uri: req.request.uri().clone(),
            in_flight: req.node.in_flight(),
        });
        Box::pin(async move {
            match reply {
                Reply::Status(status) => Ok(Replied {
                    response: testing::node_response(status, "from node").await,
                    head: None,
                }),
                Reply::Fail(reason) => Err(NotReplied::from(ProxyError::new(reason, "mock"))),
                Reply::Never => std::future::pending().await,
            }
        })
    })
}

fn attempt(backend: &Arc<Backend>, tried: &[usize], allow_probe: bool) -> Attempt {
    let mut t = Tried::default();
    for i in tried {
        t.push(*i);
    }
    Attempt {
        backend: Arc::clone(backend),
        class: SAFE,
        tried: t,
        allow_probe,
        ignore_state: false,
        deadline: Deadline::after(Duration::from_secs(5)),
        request: Request::builder()
            .uri("/p/a?q=1")
            .body(RequestBody::kept(Bytes::new()))
            .unwrap(),
        forwarded: None,
        head_back: false,
    }
}

async fn try_once(record: &Record, reply: Reply, attempt: Attempt) -> Result<Answer, TryFailed> {
    let mut svc = BalanceLayer.layer(node_mock(record, reply));
    svc.ready().await.unwrap().call(attempt).await
}

fn state_of(backend: &Backend, index: usize) -> BreakerState {
    backend.nodes.nodes()[index]
        .breaker(SAFE)
        .unwrap()
        .breaker
        .state()
}

#[tokio::test(start_paused = true)]
async fn a_usable_node_is_picked_and_the_request_aimed_at_it() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    testing::open_node(app, SAFE, 0);
    let record = Record::default();
    for _ in 0..3 {
        let answer = try_once(&record, Reply::Status(200), attempt(app, &[], true))
            .await
            .unwrap();
        assert_eq!(answer.index, 1, "node 0 is open");
        assert!(!answer.failed);
        assert_eq!(answer.response.status(), 200);
        assert_eq!(answer.node.addr, app.nodes.nodes()[1].addr);
        assert_eq!(answer.node.in_flight(), 1, "held by the answer");
        drop(answer);
        assert_eq!(app.nodes.nodes()[1].in_flight(), 0);
    }
    let calls = record.take();
    assert_eq!(calls.len(), 3);
    for call in calls {
        assert_eq!(call.addr, "127.0.0.1:9002".parse::<SocketAddr>().unwrap());
        assert_eq!(call.uri, "/p/a?q=1", "origin form for HTTP/1");
        assert_eq!(call.in_flight, 1, "counted in flight during the call");
    }
    let node1 = &app.nodes.nodes()[1].stats;
    assert_eq!(node1.outcomes.class(StatusClass::Success), 3);
    assert_eq!(node1.latency.count(), 3);
    let node0 = &app.nodes.nodes()[0].stats;
    assert_eq!(node0.outcomes.class(StatusClass::Success), 0);
}

/// An HTTP/1 node gets the target in origin form, whatever form the
/// client sent; an HTTP/2 node gets it absolute, with its own authority.
#[tokio::test(start_paused = true)]
async fn the_target_is_origin_form_for_http1_and_absolute_with_the_node_for_http2() {
    for (protocol, want) in [
        ("http1", "/p/a?q=1"),
        ("http2", "http://127.0.0.1:9001/p/a?q=1"),
    ] {
        let state = testing::state(&format!(
            "[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:9001\"]\nprotocol = \"{protocol}\"\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n"
        ));
        let app = &state.backends[0];
        let record = Record::default();
        for target in ["/p/a?q=1", "http://client.example/p/a?q=1"] {
            let mut a = attempt(app, &[], true);
            *a.request.uri_mut() = target.parse().unwrap();
            try_once(&record, Reply::Status(200), a).await.unwrap();
            let calls = record.take();
            assert_eq!(calls[0].uri, want, "{protocol}, client sent {target}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_500_answer_is_a_failure_and_opens_that_node_breaker() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    let record = Record::default();
    let answer = try_once(&record, Reply::Status(500), attempt(app, &[], true))
        .await
        .unwrap();
    assert!(answer.failed);
    assert_eq!(answer.response.status(), 500);
    let i = answer.index;
    let other = 1 - i;
    assert_eq!(record.take().len(), 1);
    assert_eq!(state_of(app, i), BreakerState::Open);
    assert_eq!(state_of(app, other), BreakerState::Closed);
    let node = &app.nodes.nodes()[i];
    assert_eq!(
        node.breaker(ClassTable::UNSAFE).unwrap().breaker.state(),
        BreakerState::Closed,
        "only the request's class"
    );
    assert_eq!(node.stats.outcomes.class(StatusClass::ServerError), 1);
    assert!(!node.usable(SAFE));
}

#[tokio::test(start_paused = true)]
async fn a_4xx_answer_is_not_a_failure() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    let record = Record::default();
    let answer = try_once(&record, Reply::Status(404), attempt(app, &[], true))
        .await
        .unwrap();
    assert!(!answer.failed);
    assert_eq!(state_of(app, answer.index), BreakerState::Closed);
    let stats = &app.nodes.nodes()[answer.index].stats;
    assert_eq!(stats.outcomes.class(StatusClass::ClientError), 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_that_blames_the_node_is_recorded_against_it() {
    for reason in [
        ErrorReason::UpstreamReset,
        ErrorReason::UpstreamConnect,
        ErrorReason::Deadline,
        ErrorReason::UpstreamProtocol,
    ] {
        let state = testing::state(TWO);
        let app = &state.backends[0];
        let record = Record::default();
        let failed = try_once(&record, Reply::Fail(reason), attempt(app, &[1], true)).await;
        let Err(TryFailed::Call { error, index, .. }) = failed else {
            panic!("{reason:?}: {failed:?}");
        };
        assert_eq!(error.reason, reason);
        assert_eq!(index, 0, "node 1 was tried before");
        assert_eq!(record.take().len(), 1);
        let node = &app.nodes.nodes()[0];
        assert_eq!(node.stats.outcomes.reason(reason), 1, "{reason:?}");
        assert_eq!(node.in_flight(), 0);
        assert_eq!(state_of(app, 0), BreakerState::Open, "{reason:?}");
        assert_eq!(state_of(app, 1), BreakerState::Closed);
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_body_error_is_not_recorded_against_the_node() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    let record = Record::default();
    let failed = try_once(
        &record,
        Reply::Fail(ErrorReason::ClientBody),
        attempt(app, &[1], true),
    )
    .await;
    let Err(TryFailed::Call { error, index, .. }) = failed else {
        panic!("{failed:?}");
    };
    assert_eq!(error.reason, ErrorReason::ClientBody);
    assert_eq!(index, 0);
    let node = &app.nodes.nodes()[0];
    assert_eq!(node.stats.outcomes.reason(ErrorReason::ClientBody), 0);
    assert_eq!(node.stats.outcomes.total(), 0);
    assert_eq!(state_of(app, 0), BreakerState::Closed);
    let breaker = node.breaker(SAFE).unwrap();
    assert_eq!(breaker.breaker.consecutive_failures(), 0);
    assert_eq!(breaker.breaker.window().calls, 0);
    assert_eq!(node.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn with_every_node_tried_there_is_no_node_and_no_call() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    let record = Record::default();
    let failed = try_once(&record, Reply::Status(200), attempt(app, &[0, 1], true)).await;
    assert!(matches!(failed, Err(TryFailed::NoNode(_))), "{failed:?}");
    assert!(record.take().is_empty());
}

#[tokio::test(start_paused = true)]
async fn with_every_node_open_there_is_no_node_unless_state_is_ignored() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    testing::open_every_node(app, SAFE);
    let record = Record::default();
    let failed = try_once(&record, Reply::Status(200), attempt(app, &[], true)).await;
    assert!(matches!(failed, Err(TryFailed::NoNode(_))), "{failed:?}");
    assert!(record.take().is_empty());

    let mut try_all = attempt(app, &[], true);
    try_all.ignore_state = true;
    let answer = try_once(&record, Reply::Status(200), try_all)
        .await
        .unwrap();
    assert_eq!(answer.response.status(), 200);
    assert_eq!(record.take().len(), 1, "try_all calls an open node");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_trial_call_gives_its_slot_back() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    testing::open_every_node(app, SAFE);
    tokio::time::advance(Duration::from_millis(1500)).await;
    let record = Record::default();
    let mut svc = BalanceLayer.layer(node_mock(&record, Reply::Never));
    let call = svc.ready().await.unwrap().call(attempt(app, &[1], true));
    // Boxed, so that dropping it below drops the future itself.
    let mut call = Box::pin(call);
    assert!(futures_util::FutureExt::now_or_never(call.as_mut()).is_none());
    let calls = record.take();
    assert_eq!(calls.len(), 1, "the trial call was sent");
    assert_eq!(calls[0].addr, app.nodes.nodes()[0].addr);
    assert_eq!(state_of(app, 0), BreakerState::HalfOpen);
    assert!(
        app.nodes.pick(SAFE, &[1], true, false).is_none(),
        "the one trial slot is taken"
    );
    assert!(!app.nodes.nodes()[0].usable(SAFE));

    // The client goes away before the node answers.
    drop(call);
    assert_eq!(app.nodes.nodes()[0].in_flight(), 0);
    assert_eq!(app.nodes.nodes()[0].stats.outcomes.total(), 0);
    let again = app.nodes.pick(SAFE, &[1], true, false);
    assert!(
        again.as_ref().is_some_and(|p| p.index == 0 && p.is_probe()),
        "the slot came back: {again:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_trial_call_that_succeeds_closes_the_breaker() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    testing::open_node(app, SAFE, 0);
    tokio::time::advance(Duration::from_millis(1500)).await;
    let record = Record::default();
    let answer = try_once(&record, Reply::Status(200), attempt(app, &[1], true))
        .await
        .unwrap();
    assert_eq!(answer.index, 0);
    assert!(!answer.failed);
    assert_eq!(state_of(app, 0), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_retry_never_makes_a_trial_call() {
    let state = testing::state(TWO);
    let app = &state.backends[0];
    testing::open_node(app, SAFE, 0);
    tokio::time::advance(Duration::from_millis(1500)).await;
    let record = Record::default();
    let failed = try_once(&record, Reply::Status(200), attempt(app, &[1], false)).await;
    assert!(matches!(failed, Err(TryFailed::NoNode(_))), "{failed:?}");
    assert!(record.take().is_empty());
    assert!(
        app.nodes
            .pick(SAFE, &[1], true, false)
            .is_some_and(|p| p.is_probe()),
        "the trial slot is still free for a first try"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_passes_over_half_open_nodes_to_a_closed_one() {
    let state = testing::state(
        r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003",
         "127.0.0.1:9004", "127.0.0.1:9005", "127.0.0.1:9006"]
load_balancing = "round_robin"
[backend.breaker]
consecutive_failures = 1
open_for = "1s"
jitter = 0.0
[[route]]
path_prefix = "/"
backend = "app"
"#,
    );
    let app = &state.backends[0];
    // Nodes 0 to 4 open (each one round-robin round: the cursor moves to 5).
    for i in 0..5 {
        testing::open_node(app, SAFE, i);
    }
    // One more round on node 5 brings the cursor back to node 0.
    let five = app.nodes.pick(SAFE, &[0, 1, 2, 3, 4], true, false).unwrap();
    assert_eq!(five.index, 5);
    drop(five);
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert!(
        app.nodes.has_alternative(SAFE, &[], false),
        "node 5 is closed and usable"
    );
    let record = Record::default();
    let answer = try_once(&record, Reply::Status(200), attempt(app, &[], false)).await;
    let answer = answer.expect("a retry may not probe nodes 0-4 but node 5 is closed");
    assert_eq!(answer.index, 5);
}
