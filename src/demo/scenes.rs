//! The demo's scenes, one per incident shape in `shared/incidents/`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use levee_resilience::BreakerState;
use levee_telemetry::{BackendEvent, NodeTopology};
use levee_testkit::Behavior;
use tokio::time::Instant;

use super::*;

pub type SceneFuture = Pin<Box<dyn Future<Output = anyhow::Result<Verdict>>>>;

/// Breakers that act within a second, and retries on 5xx for idempotent requests.
const SIX_NODES: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "200ms"
timeout = "2s"
max_in_flight = 256
max_queue = 64
slow_start = "3s"

[backend.breaker]
window = "5s"
min_calls = 10
consecutive_failures = 3
open_for = "2s"
open_for_max = "30s"
half_open_calls = 1
jitter = 0.1

[backend.retry]
max_retries = 2
on_statuses = [500, 502, 503, 504]

[backend.shedding]
normal = 1.0

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
"#;

const FAILOVER: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "primary"
nodes = ["127.0.0.1:1"]
connect_timeout = "200ms"
timeout = "2s"
max_in_flight = 256
failover = "secondary"
slow_start = "3s"

[backend.breaker]
window = "5s"
min_calls = 10
consecutive_failures = 3
open_for = "1s"
open_for_max = "4s"
half_open_calls = 1
jitter = 0.0

[backend.retry]
max_retries = 2

[backend.shedding]
normal = 1.0

[[backend]]
name = "secondary"
nodes = ["127.0.0.1:2"]
connect_timeout = "200ms"
timeout = "2s"
max_in_flight = SECONDARY_SLOTS
max_queue = 32
queue_timeout = "500ms"

[backend.shedding]
sheddable = 0.5
normal = 0.8

[[route]]
name = "checkout"
path_prefix = "/checkout"
backend = "primary"
priority = "critical"

[[route]]
name = "recommendations"
path_prefix = "/"
backend = "primary"
priority = "sheddable"
"#;

fn internal_500(methods: Option<Vec<Method>>) -> Behavior {
    Behavior::Status {
        code: 500,
        share: 1.0,
        methods,
    }
}

/// Time from now until the node's breaker for `class` first opens, if within `limit`.
fn watch_ejection(
    node: NodeTopology,
    class: usize,
    limit: Duration,
) -> tokio::task::JoinHandle<Option<Duration>> {
    tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < limit {
            if node
                .state
                .breakers()
                .get(class)
                .is_some_and(|b| b.state != BreakerState::Closed)
            {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    })
}

pub async fn stuck_writes(duration: Duration) -> anyhow::Result<Verdict> {
    let nodes = start_nodes(&[
        Behavior::Healthy { body_bytes: 64 },
        internal_500(None),
        Behavior::Stuck,
    ])
    .await?;
    let levee = Levee::start(config(DEMO_CONFIG, "config/demo.toml", &[&nodes])?).await?;
    println!("config/demo.toml: backend app = 3 nodes; route writes (POST, PUT, PATCH, DELETE; deadline 500ms; its own bulkhead of 8), route reads (deadline 1s)");
    println!("  {}  healthy\n  {}  answers 500 to everything\n  {}  stuck: accepts and reads, never answers", nodes[0].addr(), nodes[1].addr(), nodes[2].addr());
    let clients = Clients::new();
    let b = base(&levee);
    let table = clients.table(&levee);
    let (reads, writes, health) = tokio::join!(
        clients.drive(Method::GET, format!("{b}/items"), 8, duration),
        clients.drive(Method::POST, format!("{b}/api/orders"), 8, duration),
        probe_health(
            &clients.client,
            format!("http://{}/healthz", levee.admin_addr),
            duration
        ),
    );
    table.stop().await;
    route_header();
    route_row("8 readers GET", &reads);
    route_row("8 writers POST", &writes);
    let topo = levee.telemetry.topology();
    node_table(&topo);
    println!(
        "  /healthz on the isolated admin listener: {} probes, {} answered 200, slowest {}",
        health.total(),
        health.count("200"),
        ms(health.quantile(1.0))
    );

    let mut v = Verdict::default();
    v.enough_requests("readers", reads.total(), 20);
    v.enough_requests("writers", writes.total(), 20);
    v.at_most(
        "slowest read, deadline 1s (+1s margin)",
        millis(reads.quantile(1.0)),
        2000.0,
        "ms",
    );
    v.at_most(
        "slowest write, deadline 500ms (+1s margin)",
        millis(writes.quantile(1.0)),
        1500.0,
        "ms",
    );
    v.at_most(
        "reads that failed (hung writes took no read slots)",
        failed_percent(&reads),
        5.0,
        "%",
    );
    v.at_least(
        "/healthz probes answered 200",
        percent(health.count("200"), health.total()),
        100.0,
        "%",
    );
    v.at_most(
        "slowest /healthz probe",
        millis(health.quantile(1.0)),
        500.0,
        "ms",
    );
    for (node, what) in [(1, "failing"), (2, "stuck")] {
        let opened = topo.backends[0].nodes.get(node).map_or(0, |n| {
            n.state.breakers().iter().map(|b| b.opened_total).sum()
        });
        v.observed(
            opened > 0,
            &format!("the {what} node {} was ejected", nodes[node].addr()),
            &format!("its breakers opened {opened}x"),
        );
    }
    shutdown(levee, vec![nodes]).await;
    Ok(v)
}

pub async fn bad_node(duration: Duration) -> anyhow::Result<Verdict> {
    let mut behaviors = vec![Behavior::Healthy { body_bytes: 64 }; 5];
    behaviors.push(internal_500(None));
    let nodes = start_nodes(&behaviors).await?;
    let bad = nodes[5].addr();
    let levee = Levee::start(config(SIX_NODES, "demo:bad-node", &[&nodes])?).await?;
    let clients = Clients::new();
    let b = base(&levee);
    let bad_node = levee.telemetry.topology().backends[0].nodes[5].clone();
    println!(
        "6 nodes; {bad} answers 500 to every request. Clients: 6 readers GET, 2 writers POST."
    );
    let eject = watch_ejection(bad_node, 0, duration);
    let table = clients.table(&levee);
    let (reads, writes) = tokio::join!(
        clients.drive(Method::GET, format!("{b}/items"), 6, duration),
        clients.drive(Method::POST, format!("{b}/orders"), 2, duration),
    );
    table.stop().await;
    route_header();
    route_row("6 readers GET", &reads);
    route_row("2 writers POST", &writes);
    let all = reads.total() + writes.total();
    let errors = reads.server_errors() + writes.server_errors();
    let ejected = eject.await?;
    println!(
        "  client-visible 5xx: {errors} of {all} ({:.3}%); reads' breaker on {bad} opened after {}",
        percent(errors, all),
        ejected.map_or("(not within the run)".to_owned(), ms)
    );
    let mut v = Verdict::default();
    v.enough_requests("all clients", all, 40);
    v.at_most(
        "requests answered 5xx while one node of six fails everything",
        percent(errors, all),
        2.0,
        "%",
    );
    v.observed(
        ejected.is_some(),
        &format!("reads' breaker on {bad} opened"),
        &ejected.map_or("not within the run".to_owned(), |d| {
            format!("after {}", ms(d))
        }),
    );

    // The shape the incident really had: 500 to writes only.
    println!("\nNow {bad} answers 500 to POST only, 200 to reads and to health checks (the node left writing to a read-only replica).");
    levee.shutdown().await;
    nodes[5]
        .set_behavior(internal_500(Some(vec![Method::POST])))
        .await?;
    let cfg = SIX_NODES.replace(
        "[backend.retry]",
        "[backend.health_check]\npath = \"/healthz\"\ninterval = \"500ms\"\ntimeout = \"200ms\"\n\n[backend.retry]",
    );
    let levee = Levee::start(config(&cfg, "demo:bad-node-writes", &[&nodes])?).await?;
    let b = base(&levee);
    let bad_node = levee.telemetry.topology().backends[0].nodes[5].clone();
    let bad_stats = bad_node.stats.clone();
    let bad_state = Arc::clone(&bad_node.state);
    let before = nodes[5].stats().requests;
    let eject = watch_ejection(bad_node, 1, duration);
    let table = clients.table(&levee);
    let (writes, reads) = tokio::join!(
        clients.drive(Method::POST, format!("{b}/orders"), 6, duration),
        clients.drive(Method::GET, format!("{b}/items"), 2, duration),
    );
    table.stop().await;
    route_header();
    route_row("6 writers POST", &writes);
    route_row("2 readers GET", &reads);
    let kept_serving = (nodes[5].stats().requests - before).saturating_sub(
        bad_stats
            .outcomes
            .class(levee_telemetry::StatusClass::ServerError),
    );
    let ejected = eject.await?;
    println!(
        "  POST 5xx: {} of {} ({:.3}%); writes' breaker on {bad} opened after {}; it kept serving {kept_serving} requests (reads, health checks)",
        writes.server_errors(),
        writes.total(),
        percent(writes.server_errors(), writes.total()),
        ejected.map_or("(not within the run)".to_owned(), ms),
    );
    node_table(&levee.telemetry.topology());
    v.enough_requests("writers", writes.total(), 40);
    v.at_most(
        "writes answered 5xx while one node of six fails writes",
        percent(writes.server_errors(), writes.total()),
        2.0,
        "%",
    );
    v.observed(
        ejected.is_some(),
        &format!("writes' breaker on {bad} opened"),
        &ejected.map_or("not within the run".to_owned(), |d| {
            format!("after {}", ms(d))
        }),
    );
    let reads_breaker = bad_state
        .breakers()
        .first()
        .map(|b| (b.state, b.opened_total));
    v.observed(
        reads_breaker == Some((BreakerState::Closed, 0)) && kept_serving > 0,
        &format!("{bad} stayed in for reads"),
        &format!(
            "reads' breaker {}, {kept_serving} reads and health checks served",
            reads_breaker.map_or("missing".to_owned(), |(s, n)| format!("{s} (opened {n}x)"))
        ),
    );
    shutdown(levee, vec![nodes]).await;
    Ok(v)
}

pub async fn pool_lost(duration: Duration) -> anyhow::Result<Verdict> {
    let primary = start_nodes(&[Behavior::Refuse, Behavior::Refuse, Behavior::Refuse]).await?;
    let secondary = start_nodes(&[Behavior::Healthy { body_bytes: 64 }]).await?;
    let cfg = FAILOVER.replace("SECONDARY_SLOTS", "64");
    let levee = Levee::start(config(&cfg, "demo:pool-lost", &[&primary, &secondary])?).await?;
    let clients = Clients::new();
    let b = base(&levee);
    println!(
        "primary: 3 nodes, all refusing connections; secondary: 1 node. Clients: 4 on /checkout."
    );
    let table = clients.table(&levee);
    let lost = clients
        .drive(Method::GET, format!("{b}/checkout"), 4, duration)
        .await;
    table.stop().await;
    println!("  The primary's nodes come back.");
    for n in &primary {
        n.set_behavior(Behavior::Healthy { body_bytes: 64 }).await?;
    }
    let before: Vec<u64> = primary
        .iter()
        .chain(&secondary)
        .map(|n| n.stats().requests)
        .collect();
    let table = clients.table(&levee);
    let back = clients
        .drive(Method::GET, format!("{b}/checkout"), 4, duration)
        .await;
    table.stop().await;
    route_header();
    route_row("pool lost", &lost);
    route_row("pool back", &back);
    let after: Vec<u64> = primary
        .iter()
        .chain(&secondary)
        .map(|n| n.stats().requests)
        .collect();
    let to_primary: u64 = after[..3]
        .iter()
        .zip(&before[..3])
        .map(|(a, b)| a - b)
        .sum();
    let to_secondary = after[3] - before[3];
    let failovers = levee.telemetry.topology().backends[0]
        .stats
        .events(BackendEvent::FailedOver);
    println!(
        "  after the return: {to_primary} requests to the primary, {to_secondary} to the secondary while the primary ramped up (slow start 3s); failovers: {failovers}"
    );
    node_table(&levee.telemetry.topology());
    let mut v = Verdict::default();
    v.enough_requests("pool lost", lost.total(), 20);
    v.enough_requests("pool back", back.total(), 20);
    v.at_least(
        "requests answered 2xx with the whole primary pool lost",
        percent(lost.successes(), lost.total()),
        98.0,
        "%",
    );
    v.at_least(
        "requests answered 2xx after the pool's return",
        percent(back.successes(), back.total()),
        99.0,
        "%",
    );
    v.observed(
        to_primary > 0,
        "the returning primary got traffic back",
        &format!("{to_primary} requests"),
    );
    shutdown(levee, vec![primary, secondary]).await;
    Ok(v)
}

pub async fn weak_failover(duration: Duration) -> anyhow::Result<Verdict> {
    let primary = start_nodes(&[Behavior::Refuse, Behavior::Refuse]).await?;
    let secondary = start_nodes(&[Behavior::Slow {
        delay: Duration::from_millis(30),
        body_bytes: 64,
    }])
    .await?;
    let cfg = FAILOVER.replace("SECONDARY_SLOTS", "8");
    let levee = Levee::start(config(&cfg, "demo:weak-failover", &[&primary, &secondary])?).await?;
    let clients = Clients::new();
    let b = base(&levee);
    println!("primary down; secondary: 1 node answering in 30ms behind a bulkhead of 8 (sheddable admitted below 50%, critical up to 100% + queue).");
    let _warm = traffic::drive(
        &clients.client,
        Method::GET,
        format!("{b}/checkout"),
        1,
        Duration::from_millis(300),
    )
    .await;
    let table = clients.table(&levee);
    let (critical, sheddable) = tokio::join!(
        clients.drive(Method::GET, format!("{b}/checkout"), 8, duration),
        clients.drive(Method::GET, format!("{b}/recommendations"), 8, duration),
    );
    table.stop().await;
    route_header();
    route_row("critical", &critical);
    route_row("sheddable", &sheddable);
    let mut v = Verdict::default();
    v.enough_requests("critical", critical.total(), 20);
    v.enough_requests("sheddable", sheddable.total(), 20);
    v.at_least(
        "critical requests answered 2xx",
        percent(critical.successes(), critical.total()),
        99.0,
        "%",
    );
    v.at_least(
        "sheddable requests shed (503 shed) to keep room for critical ones",
        percent(sheddable.count("503 shed"), sheddable.total()),
        50.0,
        "%",
    );
    v.at_most(
        "critical requests shed",
        critical.count("503 shed") as f64,
        0.0,
        "",
    );
    shutdown(levee, vec![primary, secondary]).await;
    Ok(v)
}

pub async fn flapping(duration: Duration) -> anyhow::Result<Verdict> {
    let nodes = Arc::new(start_nodes(&vec![Behavior::Healthy { body_bytes: 64 }; 4]).await?);
    let flapper = nodes[3].addr();
    let cfg = SIX_NODES
        .replace(
            "slow_start = \"3s\"",
            "slow_start = \"0s\"\nload_balancing = \"round_robin\"",
        )
        .replace("open_for = \"2s\"", "open_for = \"500ms\"")
        .replace("jitter = 0.1", "jitter = 0.0");
    let levee = Levee::start(config(&cfg, "demo:flapping", &[&nodes])?).await?;
    let clients = Clients::new();
    let b = base(&levee);
    let run_for = duration * 2;
    println!("4 nodes; {flapper} alternates 500s and health every 500ms for {run_for:?}.");
    let flap = {
        let nodes = Arc::clone(&nodes);
        tokio::spawn(async move {
            let until = Instant::now() + run_for;
            let mut failing = true;
            while Instant::now() < until {
                let b = if failing {
                    internal_500(None)
                } else {
                    Behavior::Healthy { body_bytes: 64 }
                };
                let _ = nodes[3].set_behavior(b).await;
                failing = !failing;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = nodes[3]
                .set_behavior(Behavior::Healthy { body_bytes: 64 })
                .await;
        })
    };
    let watched = levee.telemetry.topology().backends[0].nodes[3].clone();
    let periods = {
        tokio::spawn(async move {
            let mut periods = Vec::new();
            let mut seen = 0;
            let until = Instant::now() + run_for;
            while Instant::now() < until {
                let b = &watched.state.breakers()[0];
                if b.opened_total != seen {
                    seen = b.opened_total;
                    if let Some(r) = b.open_remaining {
                        periods.push(r);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            periods
        })
    };
    let table = clients.table(&levee);
    let tally = clients
        .drive(Method::GET, format!("{b}/items"), 6, run_for)
        .await;
    table.stop().await;
    flap.await?;
    route_header();
    route_row("6 readers GET", &tally);
    let periods = periods.await?;
    let shown: Vec<String> = periods.iter().copied().map(ms).collect();
    println!(
        "  open periods of {flapper}'s breaker, in order: {}",
        shown.join(", ")
    );
    let mut v = Verdict::default();
    v.enough_requests("readers", tally.total(), 20);
    v.at_least(
        "reads answered 2xx",
        percent(tally.successes(), tally.total()),
        99.0,
        "%",
    );
    v.at_least(
        "times the flapping node's breaker opened",
        periods.len() as f64,
        2.0,
        "",
    );
    // The period is read shortly after it starts, so allow 10% for that.
    let grows = periods
        .windows(2)
        .all(|w| w[1].as_secs_f64() >= w[0].as_secs_f64() * 0.9);
    v.observed(
        grows && periods.len() >= 2,
        "each reopening keeps it out longer (backoff)",
        &shown.join(" -> "),
    );
    shutdown(levee, vec![Arc::try_unwrap(nodes).unwrap_or_default()]).await;
    Ok(v)
}

pub async fn balancing(duration: Duration) -> anyhow::Result<Verdict> {
    // Breakers off and no retries: this scene isolates what the balancer does.
    let cfg = SIX_NODES
        .replace("jitter = 0.1", "jitter = 0.1\nenabled = false")
        .replace("max_retries = 2", "max_retries = 0")
        .replace(
            "slow_start = \"3s\"",
            "slow_start = \"0s\"\nload_balancing = \"POLICY\"",
        );
    let each = (duration / 2).max(Duration::from_millis(500));
    println!("5 nodes, one misbehaving; breakers off and no retries, so only the balancer acts. 8 clients, {each:?} per row.");
    println!(
        "  {:<28} {:<14} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "condition", "policy", "requests", "ok", "p50", "p99", "odd node"
    );
    let mut v = Verdict::default();
    for (condition, odd) in [
        (
            "one node 100ms slower",
            Behavior::Slow {
                delay: Duration::from_millis(100),
                body_bytes: 64,
            },
        ),
        ("one node fails fast (500)", internal_500(None)),
    ] {
        // Per policy: the odd node's share of requests, and the failed share.
        let mut shares = Vec::new();
        for policy in ["round_robin", "least_request", "p2c_ewma"] {
            let mut behaviors = vec![Behavior::Healthy { body_bytes: 64 }; 4];
            behaviors.push(odd.clone());
            let nodes = start_nodes(&behaviors).await?;
            let levee = Levee::start(config(
                &cfg.replace("POLICY", policy),
                "demo:balancing",
                &[&nodes],
            )?)
            .await?;
            let client = traffic::client();
            let t =
                traffic::drive(&client, Method::GET, format!("{}/b", base(&levee)), 8, each).await;
            let to_odd = percent(nodes[4].stats().requests, t.total());
            println!(
                "  {:<28} {:<14} {:>8} {:>7.2}% {:>8} {:>8} {:>8.1}%",
                condition,
                policy,
                t.total(),
                percent(t.successes(), t.total()),
                ms(t.quantile(0.5)),
                ms(t.quantile(0.99)),
                to_odd,
            );
            v.enough_requests(&format!("{condition}, {policy}"), t.total(), 20);
            shares.push((policy, to_odd, failed_percent(&t)));
            shutdown(levee, vec![nodes]).await;
        }
        if let (Some(rr), Some(p2c)) = (shares.first(), shares.last()) {
            let (what, p2c_figure, rr_figure) = match odd {
                Behavior::Slow { .. } => ("share of requests sent to the slow node", p2c.1, rr.1),
                _ => ("share of requests failed", p2c.2, rr.2),
            };
            v.at_most(
                &format!(
                    "{condition}: p2c_ewma's {what}, at most half of round_robin's {}%",
                    (rr_figure * 100.0).round() / 100.0
                ),
                p2c_figure,
                rr_figure / 2.0,
                "%",
            );
        }
    }
    Ok(v)
}

/// The reload scene's config file: backends blue and green, the route on
/// `to`, both listeners on kernel-chosen ports.
fn blue_green(blue: &[AppNode], green: &[AppNode], to: &str) -> String {
    let list = |nodes: &[AppNode]| {
        nodes
            .iter()
            .map(|n| format!("\"{}\"", n.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[[backend]]
name = "blue"
nodes = [{}]
connect_timeout = "200ms"
timeout = "2s"

[[backend]]
name = "green"
nodes = [{}]
connect_timeout = "200ms"
timeout = "2s"

[[route]]
name = "all"
path_prefix = "/"
backend = "{to}"
"#,
        list(blue),
        list(green)
    )
}

/// A directory removed when the scene ends, however it ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Requests each pool's nodes have received so far.
pub(super) fn received(nodes: &[AppNode]) -> u64 {
    nodes.iter().map(|n| n.stats().requests).sum()
}

/// One config push: how it went, how long it took, when in the run it
/// came, and what blue and green had received just before it and once it
/// was applied.
struct Push {
    result: anyhow::Result<crate::ReloadReport>,
    took: Duration,
    at: Duration,
    before: (u64, u64),
    applied: (u64, u64),
}

async fn push(
    levee: &mut Levee,
    file: &std::path::Path,
    started: Instant,
    (blue, green): (&[AppNode], &[AppNode]),
) -> Push {
    let before = (received(blue), received(green));
    let t = Instant::now();
    let result = levee.reload_file(file).await;
    Push {
        result,
        took: t.elapsed(),
        at: started.elapsed(),
        before,
        applied: (received(blue), received(green)),
    }
}

pub async fn reload(duration: Duration) -> anyhow::Result<Verdict> {
    let blue = start_nodes(&vec![Behavior::Healthy { body_bytes: 64 }; 2]).await?;
    let green = start_nodes(&vec![Behavior::Healthy { body_bytes: 64 }; 2]).await?;
    let dir =
        TempDir(std::env::temp_dir().join(format!("levee-demo-reload-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let file = dir.0.join("levee.toml");
    let good = blue_green(&blue, &green, "green");
    std::fs::write(&file, blue_green(&blue, &green, "blue"))?;
    let config = levee_config::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut levee = Levee::start(config).await?;
    let first_hash = levee.telemetry.config_status().hash.clone();
    let clients = Clients::new();
    println!(
        "{}: route / -> backend blue (2 nodes); backend green (2 nodes) idle. 8 clients GET for {duration:?}.",
        file.display()
    );
    println!("At 1/3 of the run a truncated copy of the file is pushed, at 2/3 the file moves the route to green.");

    let items = format!("{}/items", base(&levee));
    let table = clients.table(&levee);
    let started = Instant::now();
    let pushes = async {
        tokio::time::sleep_until(started + duration / 3).await;
        // Cut in the middle of the green backend's table.
        let cut = good
            .find("name = \"green\"")
            .map_or(good.len() / 2, |i| i + 10);
        std::fs::write(&file, &good[..cut])?;
        let bad = push(&mut levee, &file, started, (&blue, &green)).await;
        tokio::time::sleep_until(started + duration * 2 / 3).await;
        std::fs::write(&file, &good)?;
        let taken = push(&mut levee, &file, started, (&blue, &green)).await;
        anyhow::Ok((bad, taken))
    };
    let (tally, pushed) = tokio::join!(clients.drive(Method::GET, items, 8, duration), pushes);
    table.stop().await;
    let (bad, taken) = pushed?;
    let at_end = (received(&blue), received(&green));

    match &bad.result {
        Err(e) => println!(
            "  t={:.1}s  truncated file: refused in {}\n           error: {e}",
            bad.at.as_secs_f64(),
            ms(bad.took)
        ),
        Ok(r) => println!(
            "  t={:.1}s  truncated file: taken (hash {}), which it should not have been",
            bad.at.as_secs_f64(),
            r.hash
        ),
    }
    let served = (taken.before.0 + taken.before.1) - (bad.before.0 + bad.before.1);
    println!(
        "           in the {:.1}s until the next push, {served} requests reached the nodes, {} of them blue",
        taken.at.saturating_sub(bad.at).as_secs_f64(),
        taken.before.0 - bad.before.0
    );
    match &taken.result {
        Ok(r) => println!(
            "  t={:.1}s  route / -> green: taken in {} (hash {first_hash} -> {}{})",
            taken.at.as_secs_f64(),
            ms(taken.took),
            r.hash,
            if r.restart_required.is_empty() {
                String::new()
            } else {
                format!("; needs a restart for {}", r.restart_required.join(", "))
            }
        ),
        Err(e) => println!(
            "  t={:.1}s  route / -> green: refused: {e}",
            taken.at.as_secs_f64()
        ),
    }

    route_header();
    route_row("8 readers GET", &tally);
    let failed = tally.total() - tally.successes();
    println!(
        "  requests sent {}, failed (not 2xx) {failed} ({:.3}%)",
        tally.total(),
        percent(failed, tally.total())
    );
    println!(
        "  {:<8} {:>22} {:>22}",
        "backend", "before the good push", "after it"
    );
    println!(
        "  {:<8} {:>22} {:>22}",
        "blue",
        taken.before.0,
        at_end.0 - taken.before.0
    );
    println!(
        "  {:<8} {:>22} {:>22}",
        "green",
        taken.before.1,
        at_end.1 - taken.before.1
    );
    let t = &levee.telemetry;
    let status = t.config_status();
    let (succeeded, refused) = (
        t.reloads(levee_telemetry::ReloadResult::Success),
        t.reloads(levee_telemetry::ReloadResult::Failure),
    );
    let last_error = match &status.last_failure {
        Some(f) => f.error.clone(),
        None if refused > 0 => "none (a later good reload cleared it)".to_owned(),
        None => "none".to_owned(),
    };
    println!(
        "  reloads: {succeeded} succeeded, {refused} refused; live config {} from {}; last reload error: {last_error}",
        status.hash,
        status.origin,
    );
    node_table(&t.topology());
    let mut v = Verdict::default();
    v.enough_requests("readers", tally.total(), 20);
    v.observed(
        bad.result.is_err(),
        "the truncated file was refused",
        if bad.result.is_err() {
            "refused"
        } else {
            "taken"
        },
    );
    v.observed(
        taken.result.is_ok(),
        "the good file was taken",
        if taken.result.is_ok() {
            "taken"
        } else {
            "refused"
        },
    );
    v.at_most("requests failed across both pushes", failed as f64, 0.0, "");
    v.at_least(
        "requests to green after the good push",
        (at_end.1 - taken.before.1) as f64,
        1.0,
        "",
    );
    // Requests already on their way to blue when the route moved may
    // arrive after it: at most one per client.
    v.at_most(
        "requests to blue once the good push was applied (in flight at the swap)",
        (at_end.0 - taken.applied.0) as f64,
        8.0,
        "",
    );
    shutdown(levee, vec![blue, green]).await;
    Ok(v)
}
