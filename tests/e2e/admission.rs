//! Admission that adapts to what the nodes show (issue 12): a pool
//! returning after an outage ramps on observed health, with and without a
//! failover pool. Each test prints the per-second share served after the
//! return (run with `--nocapture` to see it).

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use levee::traffic;
use levee::Levee;
use levee_testkit::{AppNode, Behavior};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::common::*;

/// Three nodes behind health checks that notice an outage and a return
/// within a few hundred milliseconds; `slow_start` stays at its 30 s
/// default, as a new user would have it.
const RETURNING: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
connect_timeout = "500ms"
timeout = "5s"
max_in_flight = 256
queue_timeout = "2s"
FAILOVER

[backend.health_check]
path = "/"
interval = "200ms"
timeout = "150ms"
unhealthy_after = 2
healthy_after = 1

[[backend]]
name = "spare"
nodes = ["127.0.0.1:4"]
timeout = "5s"

[[route]]
path_prefix = "/"
backend = "app"
"#;

const WORKERS: usize = 32;

/// One request's outcome and when it was sent, from the test's origin.
#[derive(Debug, Clone)]
struct Timed {
    sent: Duration,
    ok: bool,
    key: String,
    latency: Duration,
}

/// `workers` loops sending GETs until `until`, each outcome stamped.
async fn drive_timed(levee: &Levee, workers: usize, origin: Instant, until: Instant) -> Vec<Timed> {
    let client = traffic::client();
    let url = url(levee, "/r");
    let out = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, url, out) = (client.clone(), url.clone(), Arc::clone(&out));
            tokio::spawn(async move {
                let mut mine = Vec::new();
                while Instant::now() < until {
                    let sent = origin.elapsed();
                    let o = traffic::send(&client, Method::GET, &url, b"", Duration::from_secs(10))
                        .await;
                    mine.push(Timed {
                        sent,
                        ok: o.ok,
                        key: o.key,
                        latency: o.latency,
                    });
                    if !mine.last().is_some_and(|t| t.ok) {
                        // A refused client waits a moment, as Retry-After
                        // asks, instead of spinning the machine's CPUs.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                out.lock().await.extend(mine);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut all = std::mem::take(&mut *out.lock().await);
    all.sort_by_key(|t| t.sent);
    all
}

/// Every 50 ms until `until`: (time from origin, requests each node has
/// answered so far).
async fn sample_nodes(
    nodes: &[AppNode],
    origin: Instant,
    until: Instant,
) -> Vec<(Duration, Vec<u64>)> {
    let mut samples = Vec::new();
    while Instant::now() < until {
        samples.push((
            origin.elapsed(),
            nodes.iter().map(|n| n.stats().requests).collect(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    samples
}

/// The counts of the last sample at or before `at`.
fn counts_at(samples: &[(Duration, Vec<u64>)], at: Duration) -> &[u64] {
    samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= at)
        .or(samples.first())
        .map(|(_, c)| c.as_slice())
        .unwrap()
}

/// Share served in each second from `from`, for `seconds` seconds.
fn shares(got: &[Timed], from: Duration, seconds: u32) -> Vec<(usize, f64)> {
    (0..seconds)
        .map(|s| {
            let lo = from + Duration::from_secs(u64::from(s));
            let hi = lo + Duration::from_secs(1);
            let in_second: Vec<_> = got.iter().filter(|t| t.sent >= lo && t.sent < hi).collect();
            let ok = in_second.iter().filter(|t| t.ok).count();
            (in_second.len(), ok as f64 / in_second.len().max(1) as f64)
        })
        .collect()
}

/// Nodes all refusing, levee seeing them out: the start of an outage.
async fn take_out(nodes: &[AppNode], levee: &Levee) {
    for n in nodes {
        n.set_behavior(Behavior::Refuse).await.unwrap();
    }
    let topo = levee.telemetry.topology();
    let out = eventually(Duration::from_secs(10), || {
        topo.backends[0].nodes.iter().all(|n| !n.state.healthy())
    })
    .await;
    assert!(out, "the health checks see every node out");
}

/// After `after`, every node answers as `behavior` again: the return.
async fn bring_back(nodes: &[AppNode], behavior: &Behavior, after: Duration) {
    tokio::time::sleep(after).await;
    for n in nodes {
        n.set_behavior(behavior.clone()).await.unwrap();
    }
}

/// A healthy pool that comes back with no failover serves nearly every
/// request within 5 s of its return, and no node gets more than 1.3× its
/// share in any of its first three seconds. (A wall-clock ramp over the
/// 30 s `slow_start` shed most of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_pool_returning_without_failover_serves_nearly_everything_at_once() {
    let slow = Behavior::Slow {
        delay: Duration::from_millis(100),
        body_bytes: 8,
    };
    let nodes = nodes(vec![slow.clone(); 3]).await;
    let spare = node(Behavior::Healthy { body_bytes: 8 }).await;
    let addrs = addrs(&nodes);
    let levee = start_levee(
        &RETURNING.replace("FAILOVER", ""),
        &[&addrs, &[spare.addr()]],
    )
    .await;
    take_out(&nodes, &levee).await;

    let origin = Instant::now();
    let until = origin + Duration::from_secs(7);
    let back = bring_back(&nodes, &slow, Duration::from_millis(300));
    let (got, samples, ()) = tokio::join!(
        drive_timed(&levee, WORKERS, origin, until),
        sample_nodes(&nodes, origin, until),
        back
    );

    let first_ok = got
        .iter()
        .find(|t| t.ok)
        .expect("the pool serves again")
        .sent;
    let per_second = shares(&got, first_ok, 5);
    eprintln!("no failover: per-second (requests, share served) from the return: {per_second:?}");
    let window: Vec<_> = got
        .iter()
        .filter(|t| t.sent >= first_ok && t.sent < first_ok + Duration::from_secs(5))
        .collect();
    let served = window.iter().filter(|t| t.ok).count();
    let mut refused = std::collections::BTreeMap::<&str, usize>::new();
    for t in window.iter().filter(|t| !t.ok) {
        *refused.entry(t.key.as_str()).or_default() += 1;
    }
    eprintln!(
        "no failover: {served} of {} served in 5 s; refused: {refused:?}",
        window.len()
    );
    assert!(
        served as f64 > 0.95 * window.len() as f64,
        "{served} of {} served in the 5 s after the return; refused: {refused:?}",
        window.len()
    );

    for s in 0..3u64 {
        let lo = first_ok + Duration::from_secs(s);
        let (a, b) = (
            counts_at(&samples, lo),
            counts_at(&samples, lo + Duration::from_secs(1)),
        );
        let per_node: Vec<u64> = a.iter().zip(b).map(|(a, b)| b - a).collect();
        let total: u64 = per_node.iter().sum();
        eprintln!("second {s}: requests per node {per_node:?}");
        for n in &per_node {
            assert!(
                *n as f64 <= 1.3 * total as f64 / 3.0,
                "second {s}: a node got more than 1.3x its fair share: {per_node:?}"
            );
        }
    }
    let status = status_json(&traffic::client(), &levee).await;
    assert_eq!(
        status["backends"][0]["admission"]["phase"], "steady",
        "{status}"
    );
    levee.shutdown().await;
}

/// With a failover pool, what the returning pool's ramp does not admit yet
/// goes on to the failover: nothing is refused, and the primary takes
/// (nearly) everything back within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_pool_with_failover_ramps_while_the_failover_takes_the_rest() {
    let slow = Behavior::Slow {
        delay: Duration::from_millis(100),
        body_bytes: 8,
    };
    let nodes = nodes(vec![slow.clone(); 3]).await;
    let spare = vec![node(slow.clone()).await];
    let addrs = addrs(&nodes);
    let cfg = RETURNING.replace("FAILOVER", "failover = \"spare\"");
    let levee = start_levee(&cfg, &[&addrs, &[spare[0].addr()]]).await;
    take_out(&nodes, &levee).await;

    let origin = Instant::now();
    let until = origin + Duration::from_secs(6);
    let back = bring_back(&nodes, &slow, Duration::from_millis(300));
    let (got, primary, secondary, ()) = tokio::join!(
        drive_timed(&levee, WORKERS, origin, until),
        sample_nodes(&nodes, origin, until),
        sample_nodes(&spare, origin, until),
        back
    );
    let refused: Vec<_> = got.iter().filter(|t| !t.ok).map(|t| &t.key).collect();
    assert!(
        refused.len() <= 5,
        "{} of {} refused: {refused:?}",
        refused.len(),
        got.len()
    );

    let returned = Duration::from_millis(300);
    let mut primary_shares = Vec::new();
    for s in 0..5u64 {
        let lo = returned + Duration::from_secs(s);
        let hi = lo + Duration::from_secs(1);
        let sum = |c: &[u64]| c.iter().sum::<u64>();
        let p = sum(counts_at(&primary, hi)) - sum(counts_at(&primary, lo));
        let f = sum(counts_at(&secondary, hi)) - sum(counts_at(&secondary, lo));
        primary_shares.push((p + f, p as f64 / (p + f).max(1) as f64));
    }
    eprintln!("with failover: per-second (requests, share served by the returning pool): {primary_shares:?}");
    let (_, last) = primary_shares[4];
    assert!(
        last > 0.9,
        "the primary takes the load back: {primary_shares:?}"
    );
    assert!(backend_events(&levee, 0, BackendEvent::FailedOver) > 0);
    levee.shutdown().await;
}

/// A returning pool whose nodes slow down under load (50 ms alone, 10 ms
/// more per request already in flight) is held back by its ramp: 96
/// clients would put about 32 requests on each node (370 ms answers); the
/// ramp keeps each node's concurrency, and so its latency, bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_pool_that_slows_under_load_is_held_back() {
    let loaded = Behavior::Loaded {
        base: Duration::from_millis(50),
        per_in_flight: Duration::from_millis(10),
        body_bytes: 8,
    };
    let nodes = nodes(vec![loaded.clone(); 3]).await;
    let spare = node(Behavior::Healthy { body_bytes: 8 }).await;
    let addrs = addrs(&nodes);
    let cfg = RETURNING
        .replace("FAILOVER", "")
        .replace("queue_timeout = \"2s\"", "queue_timeout = \"500ms\"");
    let levee = start_levee(&cfg, &[&addrs, &[spare.addr()]]).await;
    take_out(&nodes, &levee).await;
    for n in &nodes {
        n.set_behavior(loaded.clone()).await.unwrap();
    }
    let client = traffic::client();
    let got = traffic::drive(
        &client,
        Method::GET,
        url(&levee, "/r"),
        96,
        Duration::from_secs(5),
    )
    .await;

    let status = status_json(&client, &levee).await;
    let admission = &status["backends"][0]["admission"];
    eprintln!(
        "held back: {admission}; outcomes {:?}; p99 {:?}",
        got.by_key,
        got.quantile(0.99)
    );
    assert!(got.successes() > 100, "{:?}", got.by_key);
    assert_eq!(
        admission["phase"], "ramping",
        "still held back: {admission}"
    );
    assert!(admission["limit"].as_f64().unwrap() < 60.0, "{admission}");
    for n in &nodes {
        let peak = n.stats().peak_in_flight;
        assert!(peak <= 24, "a node's concurrency stays bounded: {peak}");
    }
    // What the ramp did not admit waited in the queue, then was refused.
    for key in got.by_key.keys() {
        assert!(
            key == "200" || key == "503 bulkhead-full" || key == "503 no-healthy-node",
            "{:?}",
            got.by_key
        );
    }
    levee.shutdown().await;
}

/// The same slowing pool returning, with half the clients on a critical
/// route: what the ramp admits goes to critical requests first (they stand
/// ahead of normal ones in the backend's queue), so a larger share of them
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramping_pool_admits_critical_requests_before_normal_ones() {
    let loaded = Behavior::Loaded {
        base: Duration::from_millis(50),
        per_in_flight: Duration::from_millis(10),
        body_bytes: 8,
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(loaded.clone()).await);
    }
    let spare = node(Behavior::Healthy { body_bytes: 8 }).await;
    let addrs: Vec<_> = nodes.iter().map(AppNode::addr).collect();
    let cfg = RETURNING
        .replace("FAILOVER", "")
        .replace("queue_timeout = \"2s\"", "queue_timeout = \"500ms\"")
        .replace(
            "[[route]]",
            "[[route]]\npath_prefix = \"/pay\"\nbackend = \"app\"\npriority = \"critical\"\n\n[[route]]",
        );
    let levee = start_levee(&cfg, &[&addrs, &[spare.addr()]]).await;
    take_out(&nodes, &levee).await;
    for n in &nodes {
        n.set_behavior(loaded.clone()).await.unwrap();
    }
    let client = traffic::client();
    let secs = Duration::from_secs(5);
    let (critical, normal) = tokio::join!(
        traffic::drive(&client, Method::GET, url(&levee, "/pay"), 48, secs),
        traffic::drive(&client, Method::GET, url(&levee, "/r"), 48, secs),
    );
    // Of the requests levee saw the pool back for (the first ones went out
    // before the health checks noticed the return).
    let share = |t: &traffic::Tally| {
        let seen = t.total() - t.count("503 no-healthy-node");
        t.successes() as f64 / seen.max(1) as f64
    };
    let status = status_json(&client, &levee).await;
    eprintln!(
        "critical {:?} ({:.3}), normal {:?} ({:.3}); admission {}",
        critical.by_key,
        share(&critical),
        normal.by_key,
        share(&normal),
        status["backends"][0]["admission"]
    );
    assert_eq!(
        status["backends"][0]["admission"]["phase"], "ramping",
        "the pool was held back throughout"
    );
    assert!(critical.successes() > 100, "{:?}", critical.by_key);
    assert!(normal.total() - normal.count("503 no-healthy-node") > 100);
    assert!(
        share(&critical) > share(&normal) + 0.2,
        "critical {:.3} vs normal {:.3}",
        share(&critical),
        share(&normal)
    );
    levee.shutdown().await;
}

/// One node whose latency grows with its concurrency (100 ms alone, 20 ms
/// more per request in flight) under 48 clients: a fixed bulkhead lets all
/// of them through and the node answers in about a second; with
/// `[backend.adaptive]` the limit settles where latency is near twice the
/// baseline, the rest is refused at once (normal requests past their share
/// of a held-back limit are shed, and there is no queue here, so a served
/// request's latency is the node's), and requests served after the first
/// two seconds keep a p99 near that target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_limit_keeps_a_loaded_node_near_its_latency_target() {
    let loaded = Behavior::Loaded {
        base: Duration::from_millis(100),
        per_in_flight: Duration::from_millis(20),
        body_bytes: 8,
    };
    let run = |adaptive: &'static str| {
        let loaded = loaded.clone();
        async move {
            let app = node(loaded).await;
            let cfg = format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n\n[[backend]]\nname = \"app\"\n\
                 nodes = [\"127.0.0.1:1\"]\ntimeout = \"5s\"\nmax_in_flight = 64\n\
                 max_queue = 0\n\n[backend.adaptive]\n{adaptive}\n\n\
                 [[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n"
            );
            let levee = start_levee(&cfg, &[&[app.addr()]]).await;
            let client = traffic::client();
            let origin = Instant::now();
            let got = drive_timed(&levee, 48, origin, origin + Duration::from_secs(5)).await;
            let mut tally = traffic::Tally::default();
            let mut served = traffic::Tally::default();
            for t in got {
                // Latencies of answered requests only: a shed is fast by design.
                let o = traffic::Outcome {
                    key: t.key,
                    ok: t.ok,
                    latency: t.latency,
                };
                // After two seconds, once the limit has found its level:
                // the ramp's windows last two round trips each, and on a
                // busy machine its first back-off can come after the first
                // second.
                if o.ok && t.sent >= Duration::from_secs(2) {
                    served.add(o.clone());
                }
                tally.add(o);
            }
            let status = status_json(&client, &levee).await;
            let metrics = metrics_text(&client, &levee).await;
            levee.shutdown().await;
            (
                tally,
                served.quantile(0.99),
                status["backends"][0]["admission"].clone(),
                metrics,
                app.stats().peak_in_flight,
            )
        }
    };
    // Side by side, so a stall of a busy machine falls on both runs alike.
    let ((off, off_p99, off_admission, _, off_peak), (on, on_p99, on_admission, metrics, on_peak)) =
        tokio::join!(run("enabled = false"), run("enabled = true"));
    eprintln!(
        "adaptive off: served p99 {off_p99:?}, peak in flight {off_peak}, {:?}, {off_admission}",
        off.by_key
    );
    eprintln!(
        "adaptive on: served p99 {on_p99:?}, peak in flight {on_peak}, {:?}, {on_admission}",
        on.by_key
    );
    assert_eq!(
        off.total(),
        off.count("200"),
        "a fixed bulkhead queues them all: {:?}",
        off.by_key
    );
    assert!(off_p99 > Duration::from_millis(800), "{off_p99:?}");
    assert!(
        on_p99.as_secs_f64() < off_p99.as_secs_f64() * 0.7,
        "{on_p99:?} against {off_p99:?}"
    );
    assert!(on.count("200") > 100, "{:?}", on.by_key);
    assert!(
        on.count("503 bulkhead-full") + on.count("503 shed") > 0,
        "the rest is refused: {:?}",
        on.by_key
    );
    assert_eq!(on_admission["adaptive"], true);
    assert!(
        on_admission["limit"].as_f64().unwrap() < 30.0,
        "{on_admission}"
    );
    assert!(
        on_admission["min_rtt_ms"].as_f64().unwrap() >= 100.0,
        "{on_admission}"
    );
    assert!(
        metrics.contains("levee_backend_limit{backend=\"app\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("levee_backend_min_rtt_seconds{backend=\"app\"}"));
    assert!(metrics.contains("levee_backend_sampled_rtt_seconds{backend=\"app\"}"));
}
