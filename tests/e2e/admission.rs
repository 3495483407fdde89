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
}

/// `WORKERS` loops sending GETs until `until`, each outcome stamped.
async fn drive_timed(levee: &Levee, origin: Instant, until: Instant) -> Vec<Timed> {
    let client = traffic::client();
    let url = url(levee, "/r");
    let out = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..WORKERS)
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
                    });
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

/// A healthy pool that comes back with no failover serves nearly every
/// request within 5 s of its return, and no node gets more than 1.3× its
/// share in any of its first three seconds. (A wall-clock ramp over the
/// 30 s `slow_start` shed most of them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_pool_returning_without_failover_serves_nearly_everything_at_once() {
    let delay = Duration::from_millis(100);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            node(Behavior::Slow {
                delay,
                body_bytes: 8,
            })
            .await,
        );
    }
    let spare = node(Behavior::Healthy { body_bytes: 8 }).await;
    let addrs: Vec<_> = nodes.iter().map(AppNode::addr).collect();
    let levee = start_levee(
        &RETURNING.replace("FAILOVER", ""),
        &[&addrs, &[spare.addr()]],
    )
    .await;
    take_out(&nodes, &levee).await;

    let origin = Instant::now();
    let until = origin + Duration::from_secs(7);
    let back = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for n in &nodes {
            n.set_behavior(Behavior::Slow {
                delay,
                body_bytes: 8,
            })
            .await
            .unwrap();
        }
    };
    let (got, samples, ()) = tokio::join!(
        drive_timed(&levee, origin, until),
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
    let delay = Duration::from_millis(100);
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            node(Behavior::Slow {
                delay,
                body_bytes: 8,
            })
            .await,
        );
    }
    let spare = vec![
        node(Behavior::Slow {
            delay,
            body_bytes: 8,
        })
        .await,
    ];
    let addrs: Vec<_> = nodes.iter().map(AppNode::addr).collect();
    let cfg = RETURNING.replace("FAILOVER", "failover = \"spare\"");
    let levee = start_levee(&cfg, &[&addrs, &[spare[0].addr()]]).await;
    take_out(&nodes, &levee).await;

    let origin = Instant::now();
    let until = origin + Duration::from_secs(6);
    let back = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for n in &nodes {
            n.set_behavior(Behavior::Slow {
                delay,
                body_bytes: 8,
            })
            .await
            .unwrap();
        }
    };
    let (got, primary, secondary, ()) = tokio::join!(
        drive_timed(&levee, origin, until),
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
    let topo = levee.telemetry.topology();
    assert!(
        topo.backends[0]
            .stats
            .events(levee_telemetry::BackendEvent::FailedOver)
            > 0
    );
    levee.shutdown().await;
}
