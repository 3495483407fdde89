//! Active health checks and the per-backend watch, on their own tasks.
//!
//! Checks never take a data-plane bulkhead slot and use their own
//! connections, so a saturated backend cannot hide a dead node and a check
//! cannot take a slot a request needs. A node failing `unhealthy_after`
//! checks in a row is out of rotation until it passes `healthy_after` in a
//! row; it then ramps back in on observed health.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::BodyExt;
use levee_config::{BackendConfig, HealthCheckConfig, UpstreamProtocol};
use levee_resilience::{jittered, NodeSample};
use levee_telemetry::{ErrorReason, StatusClass};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::body::RequestBody;
use crate::node_io::NodeConnector;
use crate::nodes::Node;
use crate::pool::{NodePool, PoolConfig};
use crate::upstream::Backend;

/// Starts the background work of a config version: health checks for the
/// backends that have them, and a watch per backend (drift, all-down).
/// A reload aborts these tasks and starts those of the new version; the
/// health state itself lives in the nodes and carries over.
pub fn spawn_background(
    backends: &[Arc<Backend>],
    configs: &[levee_config::BackendConfig],
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (backend, cfg) in backends.iter().zip(configs) {
        if let Some(check) = &cfg.health_check {
            tasks.extend(spawn_checks(backend, cfg, check));
        }
        tasks.push(spawn_watch(backend));
    }
    tasks
}

/// Starts one checking task per node of `backend`; checks speak the
/// backend's protocol, over TLS when its nodes do.
pub fn spawn_checks(
    backend: &Arc<Backend>,
    backend_cfg: &BackendConfig,
    cfg: &HealthCheckConfig,
) -> Vec<JoinHandle<()>> {
    backend
        .nodes
        .nodes()
        .iter()
        .map(|node| {
            let connector = NodeConnector::new(
                node.addr,
                node.host.as_deref(),
                cfg.timeout,
                backend_cfg.tls.as_ref(),
            );
            // Its own pool, one connection kept between checks.
            let client = NodePool::new(
                connector,
                PoolConfig {
                    idle_timeout: cfg.interval.saturating_mul(2),
                    max_idle: 1,
                    http2: backend_cfg.protocol == UpstreamProtocol::Http2,
                },
            );
            let node = Arc::clone(node);
            let backend = Arc::clone(backend);
            let cfg = cfg.clone();
            let http1 = backend_cfg.protocol == UpstreamProtocol::Http1;
            tokio::spawn(async move { check_node(backend, node, cfg, client, http1).await })
        })
        .collect()
}

async fn check_node(
    backend: Arc<Backend>,
    node: Arc<Node>,
    cfg: HealthCheckConfig,
    client: NodePool,
    http1: bool,
) {
    let name = &backend.name;
    let uri: Option<Uri> = format!("http://{}{}", node.addr, cfg.path).parse().ok();
    let Some(uri) = uri else {
        warn!(backend = %name, node = %node.addr, path = %cfg.path, "health check path does not form a URI");
        return;
    };
    // Spread the first checks so a large pool is not probed all at once.
    tokio::time::sleep(jittered(cfg.interval, 1.0) / 2).await;
    loop {
        let ok = probe(&client, &uri, &cfg, http1).await;
        if let Some(t) = node.health().record(ok) {
            if t.healthy {
                backend.nodes.ramp_in(&node);
                info!(backend = %name, node = %node.addr, passed = t.after, "node passes its health checks again; ramping back in");
            } else {
                warn!(backend = %name, node = %node.addr, failed = t.after, "node failed its health checks; out of rotation");
                if backend.nodes.all_out() {
                    // The pool's next request after a return starts its ramp.
                    backend.stats.admission.mark_out();
                }
            }
        }
        tokio::time::sleep(jittered(cfg.interval, cfg.jitter)).await;
    }
}

/// HTTP/1.1 needs a Host header (HTTP/2 carries the URI's authority).
async fn probe(client: &NodePool, uri: &Uri, cfg: &HealthCheckConfig, http1: bool) -> bool {
    let mut req = Request::get(uri.clone()).header(http::header::USER_AGENT, "levee-health-check");
    if let Some(host) = uri.authority().filter(|_| http1) {
        req = req.header(http::header::HOST, host.as_str());
    }
    let Ok(req) = req.body(RequestBody::kept(Bytes::new())) else {
        return false;
    };
    let call = async {
        let resp = client.send(req, None, false).await.ok()?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.ok()?;
        Some(status)
    };
    matches!(
        tokio::time::timeout(cfg.timeout, call).await,
        Ok(Some(status)) if cfg.expect_statuses.contains(&status)
    )
}

/// Once a second: ticks a drift detector with each node's counters and
/// flags nodes that stand apart from their peers, and logs when the
/// backend loses (or regains) every node of a traffic class.
pub fn spawn_watch(backend: &Arc<Backend>) -> JoinHandle<()> {
    let backend = Arc::clone(backend);
    tokio::spawn(async move {
        let nodes = backend.nodes.nodes();
        let classes = nodes.first().map_or(0, |n| n.breakers().len());
        let mut all_down = vec![false; classes];
        let mut samples = Vec::with_capacity(nodes.len());
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            for (class, was_down) in all_down.iter_mut().enumerate() {
                let down = !backend.nodes.any_usable(class);
                if down != *was_down {
                    *was_down = down;
                    let class = nodes
                        .first()
                        .and_then(|n| n.breaker(class))
                        .map_or("", |b| b.class.as_str());
                    if down {
                        warn!(backend = %backend.name, class, when_all_down = %backend.when_all_down, "every node of the backend is out");
                    } else {
                        info!(backend = %backend.name, class, "backend has usable nodes again");
                    }
                }
            }
            samples.clear();
            samples.extend(nodes.iter().map(|n| sample(&n.stats)));
            // Only this task locks it (one a second, on the control thread).
            let detector = backend.drift.lock();
            let mut detector = detector.unwrap_or_else(std::sync::PoisonError::into_inner);
            for change in detector.tick(&samples) {
                let Some(node) = nodes.get(change.node) else {
                    continue;
                };
                node.stats.set_anomalous(change.anomalous);
                let figures = detector.figures(change.node);
                if change.anomalous {
                    warn!(backend = %backend.name, node = %node.addr, reason = change.reason.as_str(), ?figures, "node stands apart from its peers");
                } else {
                    info!(backend = %backend.name, node = %node.addr, "node no longer stands apart from its peers");
                }
            }
        }
    })
}

fn sample(stats: &levee_telemetry::NodeStats) -> NodeSample {
    let o = &stats.outcomes;
    let node_errors: u64 = ErrorReason::ALL
        .iter()
        .filter(|r| r.blames_node())
        .map(|r| o.reason(*r))
        .sum();
    NodeSample {
        requests: o.total() + node_errors,
        failures: o.class(StatusClass::ServerError) + node_errors,
        latency_sum_us: (stats.latency.sum_seconds() * 1e6) as u64,
        latency_count: stats.latency.count(),
    }
}
