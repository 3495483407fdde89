//! `levee demo`: built-in app nodes misbehave behind levee while clients send
//! traffic; the tables show what the clients saw and how levee contained it.

use std::time::Duration;

use anyhow::Context as _;
use http::Method;
use levee_telemetry::{ErrorReason, StatusClass};
use levee_testkit::{AppNode, Behavior};
use tokio::time::Instant;

use crate::traffic::{self, Tally};
use crate::Levee;

/// The demo config, from `config/demo.toml`; node and listener addresses are
/// replaced by the demo's own.
const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

pub async fn run(duration: Duration) -> anyhow::Result<()> {
    let healthy = AppNode::start("healthy", Behavior::Healthy { body_bytes: 64 }).await?;
    let failing = AppNode::start(
        "failing",
        Behavior::Status {
            code: 500,
            share: 1.0,
            methods: None,
        },
    )
    .await?;
    let stuck = AppNode::start("stuck", Behavior::Stuck).await?;

    let mut config =
        levee_config::parse(DEMO_CONFIG, "config/demo.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
    config.server.listen = "127.0.0.1:0".parse()?;
    config.admin.listen = "127.0.0.1:0".parse()?;
    let backend = config
        .backends
        .first_mut()
        .context("config/demo.toml has no backend")?;
    backend.nodes = vec![healthy.addr(), failing.addr(), stuck.addr()];
    let levee = Levee::start(config).await?;

    println!(
        "levee demo: 3 app nodes behind levee on {}, admin on {}",
        levee.proxy_addr, levee.admin_addr
    );
    println!("  {}  healthy", healthy.addr());
    println!("  {}  answers 500 to everything", failing.addr());
    println!(
        "  {}  stuck: accepts and reads, never answers",
        stuck.addr()
    );
    println!(
        "sending traffic for {duration:?}: 8 readers GET /items (route reads), 8 writers POST /api/orders (route writes, its own bulkhead of 8)\n"
    );

    let client = traffic::client();
    let base = format!("http://{}", levee.proxy_addr);
    let health_url = format!("http://{}/healthz", levee.admin_addr);
    let (reads_url, writes_url) = (format!("{base}/items"), format!("{base}/api/orders"));
    let (reads, writes, health) = tokio::join!(
        traffic::drive(&client, Method::GET, reads_url.as_str(), 8, duration),
        traffic::drive(&client, Method::POST, writes_url.as_str(), 8, duration),
        probe(&client, &health_url, duration),
    );

    println!("what clients saw, per route:");
    println!(
        "  {:<8} {:>8} {:>6} {:>8} {:>8} {:>8}  outcomes",
        "route", "requests", "2xx%", "p50", "p99", "max"
    );
    for (name, t) in [("reads", &reads), ("writes", &writes)] {
        let ok: u64 = t
            .by_key
            .iter()
            .filter(|(k, _)| k.starts_with('2'))
            .map(|(_, v)| v)
            .sum();
        println!(
            "  {:<8} {:>8} {:>5.1}% {:>8} {:>8} {:>8}  {}",
            name,
            t.total(),
            percent(ok, t.total()),
            ms(t.quantile(0.5)),
            ms(t.quantile(0.99)),
            ms(t.quantile(1.0)),
            outcomes(t)
        );
    }

    println!("\nwhat each node got (levee's view):");
    println!(
        "  {:<22} {:>8} {:>6} {:>6} {:>9} {:>8}",
        "node", "answered", "2xx", "5xx", "deadline", "reset"
    );
    let topo = levee.telemetry.topology();
    for node in topo.backends.iter().flat_map(|b| b.nodes.iter()) {
        let o = &node.outcomes;
        println!(
            "  {:<22} {:>8} {:>6} {:>6} {:>9} {:>8}",
            node.addr,
            o.total(),
            o.class(StatusClass::Success),
            o.class(StatusClass::ServerError),
            o.reason(ErrorReason::Deadline),
            o.reason(ErrorReason::UpstreamReset)
        );
    }
    println!(
        "\n/healthz on the isolated admin listener during the run: {} probes, {} answered 200, slowest {}",
        health.total(),
        health.count("200"),
        ms(health.quantile(1.0))
    );
    println!(
        "Deadlines bound every request (writes 500ms, reads 1s) and the writes bulkhead keeps stuck writes from taking\n\
         the slots reads need. Circuit breakers that eject the failing and stuck nodes are the next step (issue 3)."
    );

    levee.shutdown().await;
    for node in [healthy, failing, stuck] {
        node.shutdown().await;
    }
    Ok(())
}

/// Probes the admin `/healthz` every 100 ms.
async fn probe(client: &traffic::HttpClient, url: &str, duration: Duration) -> Tally {
    let until = Instant::now() + duration;
    let mut tally = Tally::default();
    while Instant::now() < until {
        tally.add(traffic::send(client, Method::GET, url, b"", Duration::from_secs(2)).await);
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
