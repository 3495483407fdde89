//! `levee demo`: built-in app nodes misbehave behind levee while clients send
//! traffic; each scene replays one kind of incident, prints a per-second
//! table of what the clients saw, and closes with a verdict computed from
//! the measurements: if the fault was not contained, the demo says so and
//! fails.

mod live_table;
mod pool_return;
mod scenes;
mod verdict;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use levee_config::{Config, NodeAddr};
use levee_telemetry::{ErrorReason, StatusClass, Topology};
use levee_testkit::{AppNode, Behavior};
use tokio::time::Instant;

use crate::traffic::{self, HttpClient, Live, Tally};
use crate::Levee;
use live_table::LiveTable;
pub use verdict::Verdict;

/// The demo's first scene runs `config/demo.toml`; node and listener
/// addresses are replaced by the demo's own.
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// A scene: its name, what it shows, and how to run it.
struct Scene {
    name: &'static str,
    title: &'static str,
    run: fn(Duration) -> scenes::SceneFuture,
}

const SCENES: [Scene; 8] = [
    Scene {
        name: "stuck-writes",
        title: "1. Stuck writes: a node hangs every write, another fails everything",
        run: |d| Box::pin(scenes::stuck_writes(d)),
    },
    Scene {
        name: "bad-node",
        title: "2. Bad node after failover: one node of six answers 500",
        run: |d| Box::pin(scenes::bad_node(d)),
    },
    Scene {
        name: "pool-lost",
        title: "3. Whole pool lost, then back",
        run: |d| Box::pin(scenes::pool_lost(d)),
    },
    Scene {
        name: "weak-failover",
        title: "4. Weak failover region: a small secondary, critical and sheddable traffic",
        run: |d| Box::pin(scenes::weak_failover(d)),
    },
    Scene {
        name: "flapping",
        title: "5. Flapping node: healthy and failing in turns",
        run: |d| Box::pin(scenes::flapping(d)),
    },
    Scene {
        name: "balancing",
        title: "6. Balancing policies under a slow node and a fast-failing node",
        run: |d| Box::pin(scenes::balancing(d)),
    },
    Scene {
        name: "reload",
        title:
            "7. Hot reload under traffic: a broken config is refused, a good one moves the route",
        run: |d| Box::pin(scenes::reload(d)),
    },
    Scene {
        name: "pool-return",
        title: "8. A pool returning, with and without failover: the share it takes each second",
        run: |d| Box::pin(pool_return::pool_return(d)),
    },
];

/// Every scene's name and title, for `--list`.
pub fn scenes() -> impl Iterator<Item = (&'static str, &'static str)> {
    SCENES.iter().map(|s| (s.name, s.title))
}

/// Names of the scenes, for `--scene`.
pub fn scene_names() -> Vec<&'static str> {
    SCENES.iter().map(|s| s.name).collect()
}

/// Runs every scene (or only `only`), each sending traffic for `duration`,
/// and fails naming the scenes whose fault was not contained.
pub async fn run(duration: Duration, only: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = only {
        if !SCENES.iter().any(|s| s.name == name) {
            anyhow::bail!(
                "no scene named {name:?}; scenes: {}",
                scene_names().join(", ")
            );
        }
    }
    let mut not_contained = Vec::new();
    for scene in SCENES.iter().filter(|s| only.is_none_or(|n| n == s.name)) {
        println!("\n=== {} ({})", scene.title, scene.name);
        let verdict = (scene.run)(duration).await?;
        verdict.print();
        if !verdict.contained() {
            not_contained.push(scene.name);
        }
    }
    match not_contained.is_empty() {
        true => Ok(()),
        false => anyhow::bail!(
            "the fault was not contained in: {} (see the failed checks above)",
            not_contained.join(", ")
        ),
    }
}

/// A scene's clients: one keep-alive client whose outcomes are also
/// recorded live, for the per-second table.
struct Clients {
    client: HttpClient,
    live: Live,
}

impl Clients {
    fn new() -> Self {
        Self {
            client: traffic::client(),
            live: Live::default(),
        }
    }

    /// `workers` clients sending `method url` back to back for `duration`.
    async fn drive(
        &self,
        method: Method,
        url: String,
        workers: usize,
        duration: Duration,
    ) -> Tally {
        self.drive_paced(method, url, workers, duration, Duration::ZERO)
            .await
    }

    /// Like [`Clients::drive`], each client waiting `after_503` after a 503.
    async fn drive_paced(
        &self,
        method: Method,
        url: String,
        workers: usize,
        duration: Duration,
        after_503: Duration,
    ) -> Tally {
        traffic::drive_paced(
            &self.client,
            method,
            url,
            workers,
            duration,
            &self.live,
            after_503,
        )
        .await
    }

    /// Starts the per-second table over these clients and `levee`'s nodes.
    fn table(&self, levee: &Levee) -> LiveTable {
        LiveTable::start(self.live.clone(), Arc::clone(&levee.telemetry))
    }
}

/// App nodes with the given behaviours, on loopback ports chosen by the kernel.
async fn start_nodes(behaviors: &[Behavior]) -> anyhow::Result<Vec<AppNode>> {
    let mut nodes = Vec::with_capacity(behaviors.len());
    for (i, b) in behaviors.iter().enumerate() {
        nodes.push(AppNode::start(&format!("node-{i}"), b.clone()).await?);
    }
    Ok(nodes)
}

fn addrs(nodes: &[AppNode]) -> Vec<NodeAddr> {
    nodes.iter().map(|n| NodeAddr::Ip(n.addr())).collect()
}

/// Parses a scene's config and points it at the demo's nodes and ports.
fn config(toml: &str, origin: &str, pools: &[&[AppNode]]) -> anyhow::Result<Config> {
    let mut config = levee_config::parse(toml, origin).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.server.listen = "127.0.0.1:0".parse()?;
    config.admin.listen = "127.0.0.1:0".parse()?;
    for (backend, nodes) in config.backends.iter_mut().zip(pools) {
        backend.nodes = addrs(nodes);
    }
    Ok(config)
}

async fn shutdown(levee: Levee, pools: Vec<Vec<AppNode>>) {
    levee.shutdown().await;
    for node in pools.into_iter().flatten() {
        node.shutdown().await;
    }
}

fn base(levee: &Levee) -> String {
    format!("http://{}", levee.proxy_addr)
}

/// A row of the per-route table: what one group of clients saw.
fn route_header() {
    println!(
        "  {:<16} {:>8} {:>7} {:>8} {:>8}  outcomes",
        "clients", "requests", "ok", "p50", "p99"
    );
}

fn route_row(name: &str, t: &Tally) {
    let ok = t.successes();
    println!(
        "  {:<16} {:>8} {:>6.2}% {:>8} {:>8}  {}",
        name,
        t.total(),
        percent(ok, t.total()),
        ms(t.quantile(0.5)),
        ms(t.quantile(0.99)),
        outcomes(t)
    );
}

/// What each node got and the state levee keeps on it.
fn node_table(topo: &Topology) {
    println!(
        "  {:<10} {:<22} {:>7} {:>6} {:>6} {:>6}  state",
        "backend", "node", "calls", "2xx", "5xx", "errors"
    );
    for b in &topo.backends {
        for node in &b.nodes {
            let (n, view) = (&node.stats, &node.state);
            let all = view.breakers();
            let o = &n.outcomes;
            let errors: u64 = ErrorReason::ALL
                .iter()
                .filter(|r| r.blames_node())
                .map(|r| o.reason(*r))
                .sum();
            let breakers: Vec<String> = all
                .iter()
                .filter(|br| {
                    br.opened_total > 0 || br.state != levee_resilience::BreakerState::Closed
                })
                .map(|br| {
                    format!(
                        "{} breaker {} (opened {}x)",
                        br.class, br.state, br.opened_total
                    )
                })
                .collect();
            let mut state = Vec::new();
            if !view.healthy() {
                state.push("unhealthy".to_owned());
            }
            state.extend(breakers);
            let refused: u64 = all.iter().map(|br| br.ejections_refused).sum();
            if refused > 0 {
                state.push(format!("kept in by max_ejected_percent ({refused}x)"));
            }
            if view.ramping() {
                state.push(format!("ramping {:.0}%", view.weight() * 100.0));
            }
            if n.is_anomalous() {
                state.push("anomalous".to_owned());
            }
            println!(
                "  {:<10} {:<22} {:>7} {:>6} {:>6} {:>6}  {}",
                b.stats.name,
                n.addr,
                o.total() + errors,
                o.class(StatusClass::Success),
                o.class(StatusClass::ServerError),
                errors,
                if state.is_empty() {
                    "ok".to_owned()
                } else {
                    state.join(", ")
                }
            );
        }
    }
}

/// Probes the admin `/healthz` every 100 ms for `duration`.
async fn probe_health(client: &HttpClient, url: String, duration: Duration) -> Tally {
    let until = Instant::now() + duration;
    let mut tally = Tally::default();
    while Instant::now() < until {
        tally.add(traffic::send(client, Method::GET, &url, b"", Duration::from_secs(2)).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tally
}

fn outcomes(t: &Tally) -> String {
    t.by_key
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Share of `t`'s requests that did not get a 2xx, in percent.
fn failed_percent(t: &Tally) -> f64 {
    percent(t.total() - t.successes(), t.total())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}
