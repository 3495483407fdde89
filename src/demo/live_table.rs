//! The table a scene prints while its traffic runs: one row a second with
//! what the clients saw in that second and the state levee keeps on its
//! nodes, so a person watches the fault arrive and be contained.

use std::sync::Arc;
use std::time::Duration;

use levee_resilience::BreakerState;
use levee_telemetry::{NodeTopology, Telemetry};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::ms;
use crate::traffic::{Live, Tally};

/// Prints a row every second until stopped; on stop, the partial second
/// since the last row is printed if it is long enough to say something
/// (the totals after the table count every request).
pub struct LiveTable {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveTable {
    /// Starts printing what `live` records, with the nodes of `telemetry`'s
    /// current topology (it follows reloads).
    pub fn start(live: Live, telemetry: Arc<Telemetry>) -> Self {
        println!(
            "  {:>5} {:>8} {:>7} {:>8}  {:<30} nodes",
            "t", "requests", "ok", "p99", "not ok, by status and reason"
        );
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut ticks =
                tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                let last = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = &mut stopped => true,
                };
                let second = live.take();
                let partial = started.elapsed().as_secs_f64().fract();
                if !last || (second.total() > 0 && partial >= MIN_PARTIAL) {
                    println!("{}", row(started.elapsed(), &second, &telemetry));
                }
                if last {
                    return;
                }
            }
        });
        Self { stop, task }
    }

    /// Prints the last row and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// A last row shorter than this fraction of a second is left out.
const MIN_PARTIAL: f64 = 0.25;

fn row(at: Duration, t: &Tally, telemetry: &Telemetry) -> String {
    let failed: Vec<String> = t
        .by_key
        .iter()
        .filter(|(k, _)| !k.starts_with('2'))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let failed = match failed.is_empty() {
        true => "-".to_owned(),
        false => failed.join(", "),
    };
    format!(
        "  {:>4.1}s {:>8} {:>6.2}% {:>8}  {:<30} {}",
        at.as_secs_f64(),
        t.total(),
        super::percent(t.successes(), t.total()),
        ms(t.quantile(0.99)),
        failed,
        nodes(telemetry)
    )
}

/// The nodes that are not plainly serving, by port, or "all ok".
fn nodes(telemetry: &Telemetry) -> String {
    let topo = telemetry.topology();
    let states: Vec<String> = topo
        .backends
        .iter()
        .flat_map(|b| &b.nodes)
        .filter_map(|n| state(n).map(|s| format!("{} {s}", port(&n.stats.addr))))
        .collect();
    match states.is_empty() {
        true => "all ok".to_owned(),
        false => states.join(", "),
    }
}

/// ":PORT" for a loopback address (the demo's nodes), the address otherwise.
fn port(addr: &str) -> &str {
    addr.strip_prefix("127.0.0.1").unwrap_or(addr)
}

/// A short state of one node, `None` when it serves normally.
fn state(node: &NodeTopology) -> Option<String> {
    let view = &node.state;
    let mut parts = Vec::new();
    if !view.healthy() {
        parts.push("unhealthy".to_owned());
    }
    let breakers = view.breakers();
    let not_closed: Vec<_> = breakers
        .iter()
        .filter(|b| b.state != BreakerState::Closed)
        .collect();
    if !not_closed.is_empty() {
        let all_same = not_closed.len() == breakers.len()
            && not_closed.iter().all(|b| b.state == not_closed[0].state);
        if all_same {
            parts.push(not_closed[0].state.to_string());
        } else {
            parts.extend(
                not_closed
                    .iter()
                    .map(|b| format!("{} {}", b.class, b.state)),
            );
        }
    }
    if view.ramping() {
        parts.push(format!("ramping {:.0}%", view.weight() * 100.0));
    }
    if node.stats.is_anomalous() {
        parts.push("drifting".to_owned());
    }
    (!parts.is_empty()).then(|| parts.join("+"))
}
