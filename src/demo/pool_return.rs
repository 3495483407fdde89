//! The pool-return scene: a whole pool comes back after an outage, once
//! with a failover backend and once without. Each second of the return is
//! one row: the share of requests the returning pool was given, the share
//! the failover took, and the share served, all counted from what the
//! clients and the nodes saw.

use std::time::Duration;

use http::Method;
use levee_testkit::{AppNode, Behavior};

use super::scenes::received;
use super::*;

/// A pool of three nodes whose breakers notice a return within a second,
/// ramping back over `slow_start`; `standby` is its failover when
/// `FAILOVER_LINE` says so.
const POOL: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "pool"
nodes = ["127.0.0.1:1"]
connect_timeout = "200ms"
timeout = "2s"
slow_start = "3s"
FAILOVER_LINE

[backend.breaker]
consecutive_failures = 3
open_for = "500ms"
open_for_max = "1s"
half_open_calls = 1
jitter = 0.0

[[backend]]
name = "standby"
nodes = ["127.0.0.1:2"]
connect_timeout = "200ms"
timeout = "2s"

[[route]]
name = "app"
path_prefix = "/"
backend = "pool"
"#;

/// Clients sending back to back.
const CLIENTS: usize = 8;

/// How long a client waits after a 503 (levee answers `Retry-After: 1`;
/// a client that retries sooner still does not spin). Without it, the
/// instant 503s of the moment before levee sees the pool back would be
/// most of the requests counted.
const AFTER_503: Duration = Duration::from_millis(50);

/// The window after the return that the verdict judges (issue 12: a
/// healthy pool returning with no failover serves more than 95 % of
/// requests within 5 s).
const JUDGED: Duration = Duration::from_secs(5);

/// What one second of the return saw.
#[derive(Debug, Default)]
struct Second {
    requests: u64,
    served: u64,
    to_pool: u64,
    to_standby: u64,
}

impl Second {
    fn pool_share(&self) -> f64 {
        percent(self.to_pool, self.requests)
    }
}

pub async fn pool_return(duration: Duration) -> anyhow::Result<Verdict> {
    let run_for = duration.max(JUDGED);
    let mut v = Verdict::default();
    for failover in [true, false] {
        let label = match failover {
            true => "with failover",
            false => "without failover",
        };
        println!(
            "\n  -- {label}: 3 nodes lost, then back; {CLIENTS} clients (each waits {AFTER_503:?} after a 503); slow_start 3s{}",
            match failover {
                true => "; the rest goes to the standby",
                false => "; no failover",
            }
        );
        let seconds = one_return(failover, run_for).await?;
        let judged: Vec<&Second> = seconds.iter().take(JUDGED.as_secs() as usize).collect();
        let requests: u64 = judged.iter().map(|s| s.requests).sum();
        let served: u64 = judged.iter().map(|s| s.served).sum();
        v.enough_requests(label, requests, 20);
        v.at_least(
            &format!("{label}: requests served in the first 5 s of the return"),
            percent(served, requests),
            95.0,
            "%",
        );
        let last = seconds.last().map_or(0.0, Second::pool_share);
        v.at_least(
            &format!("{label}: share of requests the pool took in the last second"),
            last,
            90.0,
            "%",
        );
    }
    Ok(v)
}

/// Loses the pool, brings it back, and prints one row a second for
/// `run_for` after the return.
async fn one_return(failover: bool, run_for: Duration) -> anyhow::Result<Vec<Second>> {
    let pool = start_nodes(&[Behavior::Refuse, Behavior::Refuse, Behavior::Refuse]).await?;
    let standby = start_nodes(&[answering()]).await?;
    let line = match failover {
        true => "failover = \"standby\"",
        false => "",
    };
    let cfg = POOL.replace("FAILOVER_LINE", line);
    let origin = "demo:pool-return";
    let levee = Levee::start(config(&cfg, origin, &[&pool, &standby])?).await?;
    let clients = Clients::new();
    let url = format!("{}/", base(&levee));

    let lost = clients
        .drive_paced(
            Method::GET,
            url.clone(),
            CLIENTS,
            Duration::from_millis(1500),
            AFTER_503,
        )
        .await;
    clients.live.take();
    for n in &pool {
        n.set_behavior(answering()).await?;
    }
    println!(
        "  {:>5} {:>8} {:>8} {:>8} {:>10}  not served, by status and reason",
        "t", "requests", "served", "to pool", "to standby"
    );
    let (back, seconds) = tokio::join!(
        clients.drive_paced(Method::GET, url, CLIENTS, run_for, AFTER_503),
        per_second(&clients, &pool, &standby, run_for),
    );
    route_header();
    route_row("pool lost", &lost);
    route_row("pool back", &back);
    shutdown(levee, vec![pool, standby]).await;
    Ok(seconds)
}

/// Nodes that answer in 20 ms, so the clients stay a steady load.
fn answering() -> Behavior {
    Behavior::Slow {
        delay: Duration::from_millis(20),
        body_bytes: 64,
    }
}

/// Every second for `run_for`: what the clients got, and how many requests
/// each side's nodes received, printed as a row and returned.
async fn per_second(
    clients: &Clients,
    pool: &[AppNode],
    standby: &[AppNode],
    run_for: Duration,
) -> Vec<Second> {
    let started = Instant::now();
    let mut ticks =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let (mut pool_before, mut standby_before) = (received(pool), received(standby));
    let mut seconds = Vec::new();
    while started.elapsed() + Duration::from_millis(500) < run_for {
        ticks.tick().await;
        let tally = clients.live.take();
        let (pool_now, standby_now) = (received(pool), received(standby));
        let second = Second {
            requests: tally.total(),
            served: tally.successes(),
            to_pool: pool_now - pool_before,
            to_standby: standby_now - standby_before,
        };
        (pool_before, standby_before) = (pool_now, standby_now);
        let not_served: Vec<String> = tally
            .by_key
            .iter()
            .filter(|(k, _)| !k.starts_with('2'))
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        println!(
            "  {:>4.0}s {:>8} {:>7.1}% {:>7.1}% {:>9.1}%  {}",
            started.elapsed().as_secs_f64(),
            second.requests,
            percent(second.served, second.requests),
            second.pool_share(),
            percent(second.to_standby, second.requests),
            match not_served.is_empty() {
                true => "-".to_owned(),
                false => not_served.join(", "),
            }
        );
        seconds.push(second);
    }
    seconds
}
