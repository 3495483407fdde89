//! Hot reload end to end: `Levee::reload` and `Levee::reload_file` under
//! traffic, with testkit nodes on loopback. A good reload applies at once
//! and drops nothing; a bad one changes nothing but the failure counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use levee::Levee;
use levee_resilience::BreakerState;
use levee_telemetry::{NodeTopology, ReloadResult, StatusClass};
use levee_testkit::{AppNode, Behavior, NODE_HEADER};
use tokio::time::Instant;

use crate::common::*;

/// Backends `a` and `b`, one node each; the route goes to `BACKEND`.
const TWO_BACKENDS: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "a"
nodes = ["127.0.0.1:1"]
connect_timeout = "500ms"
timeout = "2s"

[[backend]]
name = "b"
nodes = ["127.0.0.1:2"]
connect_timeout = "500ms"
timeout = "2s"

[[route]]
name = "all"
path_prefix = "/"
backend = "BACKEND"
"#;

/// One request of the steady load: which reload phase it was sent and
/// answered in, and what came back.
struct Sample {
    /// Even `2k`: config `k` is live and no reload is under way; odd: a
    /// reload is under way.
    sent_in: usize,
    answered_in: usize,
    /// Status and the answering node's name, or what went wrong.
    got: Result<(StatusCode, String), String>,
}

/// GETs `url` back to back until `stop` (or a hard limit of time and count).
async fn steady_client(
    client: HttpClient,
    url: String,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let hard_stop = Instant::now() + Duration::from_secs(20);
    let mut samples = Vec::new();
    for _ in 0..200_000 {
        if stop.load(Ordering::SeqCst) || Instant::now() >= hard_stop {
            break;
        }
        let sent_in = phase.load(Ordering::SeqCst);
        let once = async {
            let resp = client
                .request(request(Method::GET, &url))
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status();
            let node = resp
                .headers()
                .get(NODE_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
                .to_owned();
            resp.into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
            Ok((status, node))
        };
        let got = match tokio::time::timeout(Duration::from_secs(5), once).await {
            Ok(got) => got,
            Err(_) => Err("no answer in 5s".to_owned()),
        };
        let answered_in = phase.load(Ordering::SeqCst);
        samples.push(Sample {
            sent_in,
            answered_in,
            got,
        });
    }
    samples
}

/// Ten reloads, 250 ms apart, each moving the route `/` to the other
/// backend, while four clients send GETs back to back: not one request
/// fails, and every request sent and answered between two reloads went to
/// the backend of the config live then.
#[tokio::test]
async fn ten_reloads_under_steady_load_fail_no_request_and_move_the_route_at_once() {
    let a = AppNode::start("a", Behavior::Healthy { body_bytes: 10 })
        .await
        .unwrap();
    let b = AppNode::start("b", Behavior::Healthy { body_bytes: 20 })
        .await
        .unwrap();
    let pools: [&[SocketAddr]; 2] = [&[a.addr()], &[b.addr()]];
    let routed_to = |backend: &str| test_config(&TWO_BACKENDS.replace("BACKEND", backend), &pools);
    let mut levee = Levee::start(routed_to("a")).await.unwrap();
    let client = client();

    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(steady_client(
                client.clone(),
                url(&levee, "/items"),
                Arc::clone(&phase),
                Arc::clone(&stop),
            ))
        })
        .collect();

    let started = Instant::now();
    let nodes = [&a, &b];
    for k in 1..=10 {
        tokio::time::sleep_until(started + Duration::from_millis(250) * k).await;
        let target = nodes[(k % 2) as usize];
        let before = target.stats().requests;
        phase.fetch_add(1, Ordering::SeqCst);
        let report = levee
            .reload(routed_to(if k % 2 == 1 { "b" } else { "a" }))
            .await
            .unwrap();
        phase.fetch_add(1, Ordering::SeqCst);
        assert!(!report.rebound, "reload {k}: same listen address");
        assert!(report.restart_required.is_empty(), "reload {k}: {report:?}");
        assert!(
            eventually(Duration::from_secs(2), || target.stats().requests > before).await,
            "reload {k}: no request reached node {}",
            target.name()
        );
    }
    tokio::time::sleep_until(started + Duration::from_millis(250) * 11).await;
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.unwrap());
    }

    let sent = samples.len();
    let failed: Vec<String> = samples
        .iter()
        .filter_map(|s| match &s.got {
            Ok((StatusCode::OK, _)) => None,
            Ok((status, node)) => Some(format!("{status} from {node}")),
            Err(e) => Some(e.clone()),
        })
        .collect();
    println!(
        "10 reloads under load: {sent} requests sent, {} failed, in {:?}",
        failed.len(),
        started.elapsed()
    );
    assert!(sent >= 200, "steady load: only {sent} requests");
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let (to_a, to_b) = (a.stats().requests, b.stats().requests);
    assert_eq!(
        (to_a + to_b) as usize,
        sent,
        "each request reached one node once ({to_a} to a, {to_b} to b)"
    );

    // Between two reloads, every request went to the backend of the live
    // config: the swap applies to the next request.
    for k in 0..=10usize {
        let expected = if k % 2 == 1 { "b" } else { "a" };
        let stable: Vec<&str> = samples
            .iter()
            .filter(|s| s.sent_in == 2 * k && s.answered_in == 2 * k)
            .filter_map(|s| s.got.as_ref().ok().map(|(_, node)| node.as_str()))
            .collect();
        assert!(!stable.is_empty(), "no request while config {k} was live");
        let wrong = stable.iter().filter(|n| **n != expected).count();
        assert_eq!(
            wrong,
            0,
            "config {k} routes to {expected}, but {wrong} of {} requests went elsewhere",
            stable.len()
        );
    }
    assert_eq!(levee.telemetry.reloads(ReloadResult::Success), 10);
    assert_eq!(levee.telemetry.reloads(ReloadResult::Failure), 0);
    levee.shutdown().await;
}

/// The config file of the bad-reload test: one backend, both listeners on
/// kernel-chosen ports (as the running levee has them).
fn one_backend_file(node: SocketAddr, timeout: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["{node}"]
timeout = "{timeout}"

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
"#
    )
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

/// A missing, empty, truncated or invalid file is refused: levee keeps
/// serving on the config it had, counts the failure and shows its error
/// (file and line) on /status; a good file afterwards is taken, changes
/// the hash and clears the error.
#[tokio::test]
async fn bad_reloads_are_refused_and_levee_keeps_serving_the_last_good_config() {
    let app = node(Behavior::Healthy { body_bytes: 5 }).await;
    let first = one_backend_file(app.addr(), "2s");
    let mut levee = Levee::start(test_config(&first, &[&[app.addr()]]))
        .await
        .unwrap();
    let client = client();
    let dir = TempDir::new("bad-reloads");
    let hash = status_json(&client, &levee).await["config"]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(hash.len(), 16, "{hash}");

    // Cut inside the [[backend]] table, in the middle of a node address.
    let cut = first.find(&format!("{}\"]", app.addr().port())).unwrap();
    let truncated = first[..cut].to_owned();
    assert!(truncated.ends_with("nodes = [\"127.0.0.1:"), "{truncated}");
    let unknown = first.replace("backend = \"app\"", "backend = \"nope\"");
    let duration = first.replace("timeout = \"2s\"", "timeout = \"5 parsecs\"");
    // (file, its text or none, what the error must name besides the file)
    let cases: [(&str, Option<&str>, Vec<String>); 5] = [
        (
            "missing.toml",
            None,
            vec!["cannot read config file".to_owned()],
        ),
        ("empty.toml", Some(""), vec!["[server]".to_owned()]),
        (
            "truncated.toml",
            Some(truncated.as_str()),
            vec![
                format!("truncated.toml:{}:", line_of(&truncated, "nodes = [")),
                "invalid TOML".to_owned(),
            ],
        ),
        (
            "unknown.toml",
            Some(unknown.as_str()),
            vec![
                format!("unknown.toml:{}:", line_of(&unknown, "\"nope\"")),
                "route[0].backend".to_owned(),
                "no backend named \"nope\"".to_owned(),
            ],
        ),
        (
            "duration.toml",
            Some(duration.as_str()),
            vec![
                format!("duration.toml:{}:", line_of(&duration, "parsecs")),
                "backend[0].timeout".to_owned(),
                "5 parsecs".to_owned(),
            ],
        ),
    ];
    for (i, (file, text, names)) in cases.iter().enumerate() {
        let path = dir.path(file);
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let err = levee.reload_file(&path).await.unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()),
            "{file}: error names the file: {err}"
        );
        for name in names {
            assert!(err.contains(name.as_str()), "{file}: `{name}` in: {err}");
        }

        let got = get(&client, &url(&levee, "/x")).await;
        assert_eq!(got.status, StatusCode::OK, "{file}: still serving");
        assert_eq!(got.body.len(), 5);
        let ready = get(&client, &admin_url(&levee, "/readyz")).await;
        assert_eq!(ready.status, StatusCode::OK, "{file}: still ready");

        let status = status_json(&client, &levee).await;
        let config = &status["config"];
        assert_eq!(config["hash"], hash.as_str(), "{file}: config unchanged");
        assert_eq!(status["config_version"], hash.as_str());
        assert_eq!(config["last_reload_error"]["error"], err.as_str(), "{file}");
        assert!(config["last_reload_error"]["at"].is_string(), "{config}");
        assert_eq!(config["reloads"]["failure"], i + 1, "{file}");
        assert_eq!(config["reloads"]["success"], 0, "{file}");
    }
    let metrics = metrics_text(&client, &levee).await;
    for line in [
        "levee_config_reloads_total{result=\"failure\"} 5".to_owned(),
        "levee_config_reloads_total{result=\"success\"} 0".to_owned(),
        format!("levee_config_info{{hash=\"{hash}\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }

    // A good file now: taken, counted, and the error is cleared.
    let good = dir.path("good.toml");
    let second = one_backend_file(app.addr(), "3s");
    std::fs::write(&good, &second).unwrap();
    let report = levee.reload_file(&good).await.unwrap();
    let new_hash = levee_config::parse(&second, "x").unwrap().version;
    assert_eq!(report.hash, new_hash);
    assert_ne!(new_hash, hash);
    assert!(!report.rebound);
    assert!(report.restart_required.is_empty(), "{report:?}");
    assert_eq!(levee.telemetry.reloads(ReloadResult::Success), 1);
    assert_eq!(levee.telemetry.reloads(ReloadResult::Failure), 5);

    let status = status_json(&client, &levee).await;
    let config = &status["config"];
    assert_eq!(config["hash"], new_hash.as_str());
    assert_eq!(status["config_version"], new_hash.as_str());
    assert_eq!(config["file"], good.display().to_string().as_str());
    assert!(config["last_reload_error"].is_null(), "{config}");
    assert_eq!(config["reloads"]["success"], 1);
    assert_eq!(config["reloads"]["failure"], 5);
    let metrics = metrics_text(&client, &levee).await;
    for line in [
        "levee_config_reloads_total{result=\"failure\"} 5".to_owned(),
        "levee_config_reloads_total{result=\"success\"} 1".to_owned(),
        format!("levee_config_info{{hash=\"{new_hash}\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "missing `{line}` in:\n{metrics}");
    }
    assert!(!metrics.contains(&hash), "old hash gone:\n{metrics}");
    let got = get(&client, &url(&levee, "/x")).await;
    assert_eq!(got.status, StatusCode::OK);
    levee.shutdown().await;
}

/// Backend `app` (round robin, so the failing node keeps getting its turn
/// until its breaker opens) and backend `other`.
const APP_AND_OTHER: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "500ms"
timeout = "2s"
load_balancing = "round_robin"
slow_start = "10s"

[backend.breaker]
consecutive_failures = 3
open_for = "30s"
open_for_max = "60s"
jitter = 0.0

[[backend]]
name = "other"
nodes = ["127.0.0.1:2"]
connect_timeout = "500ms"
timeout = "OTHER_TIMEOUT"

[[route]]
name = "other"
path_prefix = "/other"
backend = "other"

[[route]]
name = "app"
path_prefix = "/"
backend = "app"
"#;

fn node_view(levee: &Levee, addr: SocketAddr) -> NodeTopology {
    let addr = addr.to_string();
    levee
        .telemetry
        .topology()
        .backends
        .iter()
        .flat_map(|b| b.nodes.iter())
        .find(|n| n.stats.addr == addr)
        .cloned()
        .unwrap_or_else(|| panic!("node {addr} in the topology"))
}

fn safe_breaker(levee: &Levee, addr: SocketAddr) -> levee_telemetry::BreakerView {
    node_view(levee, addr)
        .state
        .breakers()
        .into_iter()
        .find(|b| b.class == "safe")
        .expect("a breaker for class safe")
}

/// A reload that changes another backend and adds a node keeps what levee
/// learnt about the nodes that stay: the failing node stays ejected (and
/// gets no traffic), the healthy ones stay at full weight, and the new node
/// ramps in through slow start.
#[tokio::test]
async fn an_open_breaker_survives_a_reload_and_a_new_node_ramps_in() {
    let good1 = node(Behavior::Healthy { body_bytes: 3 }).await;
    let good2 = node(Behavior::Healthy { body_bytes: 3 }).await;
    let bad = node(Behavior::Status {
        code: 500,
        share: 1.0,
        methods: None,
    })
    .await;
    let other = node(Behavior::Healthy { body_bytes: 4 }).await;
    let app = [good1.addr(), good2.addr(), bad.addr()];
    let with = |timeout: &str, app: &[SocketAddr]| {
        test_config(
            &APP_AND_OTHER.replace("OTHER_TIMEOUT", timeout),
            &[app, &[other.addr()]],
        )
    };
    let mut levee = Levee::start(with("2s", &app)).await.unwrap();
    let client = client();

    // Round robin gives the failing node every third request: three 500s
    // in a row on it open its breaker.
    let mut opened = false;
    for _ in 0..60 {
        let got = get(&client, &url(&levee, "/items")).await;
        assert!(
            got.status == StatusCode::OK || got.status == StatusCode::INTERNAL_SERVER_ERROR,
            "{got:?}"
        );
        if safe_breaker(&levee, bad.addr()).state == BreakerState::Open {
            opened = true;
            break;
        }
    }
    assert!(opened, "the failing node's breaker opens");
    let bad_5xx = node_view(&levee, bad.addr())
        .stats
        .outcomes
        .class(StatusClass::ServerError);
    assert!(bad_5xx >= 3, "{bad_5xx}");

    let newcomer = node(Behavior::Healthy { body_bytes: 3 }).await;
    let grown = [good1.addr(), good2.addr(), bad.addr(), newcomer.addr()];
    let report = levee.reload(with("3s", &grown)).await.unwrap();
    assert!(!report.rebound);

    let breaker = safe_breaker(&levee, bad.addr());
    assert_eq!(breaker.state, BreakerState::Open, "still open: {breaker:?}");
    assert_eq!(breaker.opened_total, 1);
    assert!(
        breaker
            .open_remaining
            .is_some_and(|r| r > Duration::from_secs(20)),
        "the open period went on, it did not restart or end: {breaker:?}"
    );
    let bad_view = node_view(&levee, bad.addr());
    assert_eq!(
        bad_view.stats.outcomes.class(StatusClass::ServerError),
        bad_5xx,
        "counters carried over"
    );
    for kept in [good1.addr(), good2.addr()] {
        let view = node_view(&levee, kept);
        assert!(!view.state.ramping(), "{kept} keeps its full weight");
        assert!(view.state.healthy());
    }
    let fresh = node_view(&levee, newcomer.addr());
    assert!(fresh.state.ramping(), "the new node ramps in");
    assert!(fresh.state.weight() < 1.0, "{}", fresh.state.weight());
    assert_eq!(levee.telemetry.topology().backends[0].nodes.len(), 4);

    // The ejection is in force, not only shown: the failing node gets
    // nothing, clients get 200.
    let before = bad.stats().requests;
    for _ in 0..20 {
        let got = get(&client, &url(&levee, "/items")).await;
        assert_eq!(got.status, StatusCode::OK);
    }
    assert_eq!(
        bad.stats().requests,
        before,
        "no request to the ejected node"
    );
    assert_eq!(
        get(&client, &url(&levee, "/other")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        safe_breaker(&levee, bad.addr()).state,
        BreakerState::Open,
        "still open after traffic"
    );
    levee.shutdown().await;
}

/// One route with its own bulkhead of MAX slots and no queue.
const NARROW_ROUTE: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "500ms"
timeout = "10s"
max_in_flight = 32

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
max_in_flight = MAX
max_queue = 0
"#;

/// A larger route bulkhead applies to the next request: with two slow
/// requests holding both slots, a reload to four slots lets two more in at
/// once, and the first two still finish.
#[tokio::test]
async fn a_grown_bulkhead_admits_more_at_once_and_keeps_requests_in_flight() {
    let slow = node(Behavior::Slow {
        delay: Duration::from_secs(2),
        body_bytes: 7,
    })
    .await;
    let narrow = |max: usize| {
        test_config(
            &NARROW_ROUTE.replace("MAX", &max.to_string()),
            &[&[slow.addr()]],
        )
    };
    let mut levee = Levee::start(narrow(2)).await.unwrap();
    let client = client();
    let bulkhead = levee.telemetry.topology().routes[0]
        .bulkhead
        .clone()
        .unwrap();
    let slow_url = url(&levee, "/slow");
    let spawn_get = || {
        let client = client.clone();
        let u = slow_url.clone();
        tokio::spawn(async move { get(&client, &u).await })
    };

    let first: Vec<_> = (0..2).map(|_| spawn_get()).collect();
    assert!(
        eventually(Duration::from_secs(5), || bulkhead.in_flight() == 2).await,
        "two requests hold the route's two slots"
    );
    let refused = get(&client, &url(&levee, "/slow")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.reason(), Some("bulkhead-full"));

    levee.reload(narrow(4)).await.unwrap();
    let live = levee.telemetry.topology().routes[0]
        .bulkhead
        .clone()
        .unwrap();
    assert!(
        Arc::ptr_eq(&live, &bulkhead),
        "the route keeps its bulkhead"
    );
    assert_eq!(live.max_in_flight(), 4);
    let more: Vec<_> = (0..2).map(|_| spawn_get()).collect();
    assert!(
        eventually(Duration::from_secs(1), || live.in_flight() == 4).await,
        "two more got in beside the first two: in flight {}",
        live.in_flight()
    );
    assert!(first.iter().all(|t| !t.is_finished()), "first two still on");
    for t in first.into_iter().chain(more) {
        let got = t.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        assert_eq!(got.body.len(), 7);
    }
    assert!(
        eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await,
        "every slot released"
    );
    levee.shutdown().await;
}

/// `listen = "127.0.0.1:0"` again is no change; an explicit free port moves
/// the listener there and the old address closes; a port that cannot be
/// bound is refused and the listener stays where it is.
#[tokio::test]
async fn a_changed_listen_address_is_rebound_and_an_unbindable_one_is_refused() {
    let app = node(Behavior::Healthy { body_bytes: 2 }).await;
    let listening_on = |addr: SocketAddr| {
        let mut config = test_config(ONE_ROUTE, &[&[app.addr()]]);
        config.server.listen = addr;
        config
    };
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut levee = Levee::start(listening_on(any_port)).await.unwrap();
    let client = client();
    let old = levee.proxy_addr;

    let same = levee.reload(listening_on(any_port)).await.unwrap();
    assert!(!same.rebound, "127.0.0.1:0 again is no change");
    assert_eq!(levee.proxy_addr, old);

    let target = free_addr();
    let report = levee.reload(listening_on(target)).await.unwrap();
    assert!(report.rebound, "{report:?}");
    assert_eq!(levee.proxy_addr, target);
    let got = get(&client, &format!("http://{target}/x")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(old)
            .is_err())
        .await,
        "the old address {old} stops accepting"
    );

    // A plain listener (no SO_REUSEPORT) holds this port: levee's
    // SO_REUSEPORT bind must fail with EADDRINUSE.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let err = levee
        .reload(listening_on(taken))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.listen"), "{err}");
    assert!(err.contains(&taken.to_string()), "{err}");
    assert!(
        err.contains("in use") || err.contains("os error 98"),
        "EADDRINUSE: {err}"
    );
    assert_eq!(levee.telemetry.reloads(ReloadResult::Failure), 1);
    assert_eq!(levee.telemetry.reloads(ReloadResult::Success), 2);
    assert_eq!(levee.proxy_addr, target, "the listener stays");
    let got = get(&client, &format!("http://{target}/x")).await;
    assert_eq!(got.status, StatusCode::OK);
    let status = status_json(&client, &levee).await;
    let error = status["config"]["last_reload_error"]["error"]
        .as_str()
        .unwrap();
    assert_eq!(error, err);
    drop(holder);
    levee.shutdown().await;
}

/// A changed `heartbeat_stale_after` applies to the running admin listener
/// (its port is kept); a changed `admin.listen` moves it; a port another
/// process shares with SO_REUSEPORT is refused for the proxy listener.
#[tokio::test]
async fn admin_settings_apply_in_place_and_a_new_admin_address_is_rebound() {
    let app = node(Behavior::Healthy { body_bytes: 2 }).await;
    let admin = free_addr();
    let with = |admin: SocketAddr, stale_ms: u64| {
        let mut config = test_config(ONE_ROUTE, &[&[app.addr()]]);
        config.admin.listen = admin;
        config.admin.heartbeat_stale_after = Duration::from_millis(stale_ms);
        config
    };
    let mut levee = Levee::start(with(admin, 2_000)).await.unwrap();
    let client = client();
    levee.reload(with(admin, 3_000)).await.unwrap();
    assert_eq!(levee.admin_addr, admin, "same port, same listener");
    let health = get(&client, &admin_url(&levee, "/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);

    let moved = free_addr();
    levee.reload(with(moved, 3_000)).await.unwrap();
    assert_eq!(levee.admin_addr, moved);
    let health = get(&client, &admin_url(&levee, "/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(
        eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
            admin
        )
        .is_err())
        .await,
        "the old admin address {admin} stops accepting"
    );

    // Another process's SO_REUSEPORT listener: sharing its port would
    // split traffic with it, so the reload is refused.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.set_reuse_port(true).unwrap();
    other.bind(&free_addr().into()).unwrap();
    other.listen(8).unwrap();
    let shared: SocketAddr = other.local_addr().unwrap().as_socket().unwrap();
    let mut config = with(moved, 3_000);
    config.server.listen = shared;
    let err = levee.reload(config).await.unwrap_err().to_string();
    assert!(err.contains("server.listen"), "{err}");
    assert_eq!(levee.telemetry.reloads(ReloadResult::Failure), 1);
    assert_eq!(levee.telemetry.reloads(ReloadResult::Success), 2);
    levee.shutdown().await;
}

/// The demo's reload scene runs end to end (scaled down) and is listed.
#[tokio::test]
async fn the_reload_demo_scene_runs() {
    assert!(levee::demo::scene_names().contains(&"reload"));
    let ran = tokio::time::timeout(
        Duration::from_secs(30),
        levee::demo::run(Duration::from_millis(900), Some("reload")),
    )
    .await
    .expect("the scene ends in time");
    ran.unwrap();
}
