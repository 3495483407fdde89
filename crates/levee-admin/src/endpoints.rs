//! What each admin endpoint answers, from telemetry alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use levee_resilience::{AdaptiveLimit, BreakerState, TransitionReason, WindowStats};
use levee_telemetry::{
    BackendEvent, BackendTopology, BreakerMove, BreakerView, ErrorReason, NodeStats, NodeView,
    OutcomeCounters, RateLimitTopology, ReloadResult, StatusClass, Telemetry, TunnelClose,
    TunnelStats,
};
use prometheus_client::registry::Registry;
use serde_json::{json, Map, Value};

/// The admin endpoints and the registry they render.
#[derive(Debug)]
pub struct Endpoints {
    telemetry: Arc<Telemetry>,
    registry: Registry,
    /// `heartbeat_stale_after` in ms; a reload may change it.
    stale_after_ms: Arc<AtomicU64>,
}

impl Endpoints {
    pub fn new(telemetry: Arc<Telemetry>, stale_after: Duration) -> Self {
        let stale_after_ms = Arc::new(AtomicU64::new(millis(stale_after)));
        let registry = telemetry.registry();
        Self {
            telemetry,
            registry,
            stale_after_ms,
        }
    }

    /// The setting a reload may change, shared with the running listener.
    pub fn stale_after_setting(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.stale_after_ms)
    }

    fn stale_after(&self) -> Duration {
        Duration::from_millis(self.stale_after_ms.load(Ordering::Relaxed))
    }

    pub fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin endpoints answer GET only\n".into(),
            );
        }
        match req.uri().path() {
            "/" => page(),
            "/healthz" => self.healthz(),
            "/readyz" => self.readyz(),
            "/status" => self.status(),
            "/metrics" => self.metrics(),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try / /healthz /readyz /status /metrics\n".into(),
            ),
        }
    }

    /// Liveness, including the data plane's: a stale heartbeat is a 503.
    fn healthz(&self) -> Response<Full<Bytes>> {
        match self.telemetry.heartbeat_age() {
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy: the data plane has not started its heartbeat\n".into(),
            ),
            Some(age) if age > self.stale_after() => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "unhealthy: data plane heartbeat is {} ms old (limit {} ms): the data plane is wedged or starved\n",
                    age.as_millis(),
                    self.stale_after().as_millis()
                ),
            ),
            Some(age) => text(
                StatusCode::OK,
                format!("ok: data plane heartbeat {} ms ago\n", age.as_millis()),
            ),
        }
    }

    /// Readiness: loaded, listening, not draining; lists usable nodes.
    fn readyz(&self) -> Response<Full<Bytes>> {
        let t = &self.telemetry;
        let topo = t.topology();
        let mut body = String::new();
        let status = if t.is_draining() {
            body.push_str("not ready: draining\n");
            StatusCode::SERVICE_UNAVAILABLE
        } else if !t.is_ready() {
            body.push_str("not ready: the data-plane listener is not up yet\n");
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            body.push_str("ready\n");
            StatusCode::OK
        };
        for b in &topo.backends {
            let n = b.nodes.len();
            let breakers = b.nodes.first().map(|node| node.state.breakers());
            let classes = breakers.as_ref().map_or(0, Vec::len).max(1);
            let per_class: Vec<String> = (0..classes)
                .map(|c| {
                    let usable = b.nodes.iter().filter(|node| node.state.usable(c)).count();
                    let name = breakers
                        .as_ref()
                        .and_then(|br| br.get(c))
                        .map_or("all", |br| br.class.as_str());
                    format!("{name} {usable}/{n}")
                })
                .collect();
            let usable = b.nodes.iter().filter(|node| node.state.usable(0)).count();
            body.push_str(&format!(
                "backend {}: {usable}/{n} nodes usable ({})\n",
                b.stats.name,
                per_class.join(", ")
            ));
        }
        text(status, body)
    }

    fn status(&self) -> Response<Full<Bytes>> {
        let t = &self.telemetry;
        let topo = t.topology();
        let routes: Vec<Value> = topo
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rate_limit = topo.rate_limits.get(i).and_then(Option::as_ref);
                json!({
                    "name": r.name,
                    "backend": r.backend,
                    "in_flight": r.bulkhead.as_ref().map(|b| b.in_flight()),
                    "queued": r.bulkhead.as_ref().map(|b| b.queued()),
                    "max_in_flight": r.bulkhead.as_ref().map(|b| b.max_in_flight()),
                    "responses": by_class(&r.outcomes),
                    "errors": by_reason(&r.outcomes, |_| true),
                    "tunnels": tunnels(&r.tunnels),
                    "rate_limit": rate_limit.map(rate_limit_json),
                })
            })
            .collect();
        let backends: Vec<Value> = topo
            .backends
            .iter()
            .map(|b| {
                let nodes: Vec<Value> = b
                    .nodes
                    .iter()
                    .map(|node| {
                        let (n, state) = (&node.stats, &node.state);
                        let breakers = state.breakers();
                        json!({
                            "addr": n.addr,
                            "state": node_state(n, &**state, &breakers),
                            "healthy": state.healthy(),
                            "health_checked": state.health_checked(),
                            "weight": state.weight(),
                            "ramping": state.ramping(),
                            "anomalous": n.is_anomalous(),
                            "breakers": breakers.iter().map(breaker_json).collect::<Vec<_>>(),
                            "in_flight": state.in_flight(),
                            "responses": by_class(&n.outcomes),
                            "errors": by_reason(&n.outcomes, |r| r.blames_node()),
                            "latency_mean_ms": mean_ms(n.latency.sum_seconds(), n.latency.count()),
                        })
                    })
                    .collect();
                let dns = dns_json(b);
                let failover_budget = json!({
                    "max_share": b.failover_max_share,
                    "max_in_flight": b.stats.failover_budget(b.failover_max_share),
                });
                let b = &b.stats;
                let events: Map<String, Value> = BackendEvent::ALL
                    .iter()
                    .map(|e| (e.as_str().to_owned(), json!(b.events(*e))))
                    .collect();
                json!({
                    "name": b.name,
                    "events": events,
                    "in_flight": b.bulkhead.in_flight(),
                    "queued": b.bulkhead.queued(),
                    "max_in_flight": b.bulkhead.max_in_flight(),
                    "max_queue": b.bulkhead.max_queue(),
                    "failover_budget": failover_budget,
                    "admission": admission_json(&b.admission),
                    "nodes": nodes,
                    "dns": dns,
                })
            })
            .collect();
        let config = t.config_status();
        let config_json = json!({
            "hash": config.hash,
            "file": config.origin,
            "loaded_at": rfc3339(config.loaded_at),
            "restart_required": config.restart_required,
            "reloads": { "success": t.reloads(ReloadResult::Success), "failure": t.reloads(ReloadResult::Failure) },
            "last_reload_error": config.last_failure.as_ref().map(|f| json!({
                "at": rfc3339(f.at),
                "error": f.error,
            })),
        });
        let doc = json!({
            "config_version": topo.version,
            "config": config_json,
            "ready": t.is_ready() && !t.is_draining(),
            "draining": t.is_draining(),
            "heartbeat_age_ms": t.heartbeat_age().map(|a| a.as_millis() as u64),
            "heartbeat_stale_after_ms": millis(self.stale_after()),
            "connections_open": t.connections_open(),
            "connections_total": t.connections_total(),
            "unrouted": { "responses": by_class(&topo.unrouted), "errors": by_reason(&topo.unrouted, |_| true) },
            "routes": routes,
            "backends": backends,
        });
        let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
        set_type(&mut resp, "application/json");
        resp
    }

    fn metrics(&self) -> Response<Full<Bytes>> {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics failed: {e}\n"),
            );
        }
        let mut resp = Response::new(Full::new(Bytes::from(out)));
        set_type(
            &mut resp,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        );
        resp
    }
}

/// The live status page: one self-contained file (no external assets)
/// that polls `/status` every second.
const STATUS_PAGE: &str = include_str!("status.html");

fn page() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
    set_type(&mut resp, "text/html; charset=utf-8");
    resp
}

/// One word for a node: what an operator wants to know first.
fn node_state(n: &NodeStats, state: &dyn NodeView, breakers: &[BreakerView]) -> &'static str {
    if !state.healthy() {
        "unhealthy"
    } else if breakers.iter().any(|b| b.state != BreakerState::Closed) {
        if breakers.iter().all(|b| b.state != BreakerState::Closed) {
            "ejected"
        } else {
            "partly-ejected"
        }
    } else if state.ramping() {
        "ramping"
    } else if n.is_anomalous() {
        "anomalous"
    } else {
        "active"
    }
}

/// Why a backend admits what it does: its limit's phase (steady, ramping
/// back, out), the limit against its floor and ceiling, and the latencies
/// it follows.
fn admission_json(a: &AdaptiveLimit) -> Value {
    let p = a.policy();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    json!({
        "phase": a.phase().as_str(),
        "adaptive": p.gradient,
        "limit": a.limit(),
        "floor": p.floor,
        "ceiling": p.ceiling,
        "under_pressure": a.under_pressure(),
        "min_rtt_ms": ms(a.min_rtt()),
        "sampled_rtt_ms": ms(a.sampled_rtt()),
    })
}

/// A route's rate limit: its settings, and how many client keys it tracks
/// now (0 with one bucket for the route). Refusals are in the route's
/// `errors` as `rate-limited`.
fn rate_limit_json(rl: &RateLimitTopology) -> Value {
    json!({
        "requests_per_second": rl.requests_per_second(),
        "burst": rl.burst,
        "key": rl.key,
        "max_keys": rl.max_keys,
        "tracked_keys": rl.limit.tracked_keys(),
    })
}

/// A backend's node names: what each stands for now, how lookups went,
/// and which names failed their latest lookup (`null` without names).
fn dns_json(b: &BackendTopology) -> Value {
    if b.names.is_empty() {
        return Value::Null;
    }
    let dns = &b.stats.dns;
    json!({
        "refresh_ms": millis(b.dns_refresh),
        "names": b.names.iter().map(|n| json!({"name": n.name, "addrs": n.addrs})).collect::<Vec<_>>(),
        "resolutions": { "success": dns.resolutions(true), "failure": dns.resolutions(false) },
        "failing": dns.failing().iter().map(|(name, error)| json!({"name": name, "error": error})).collect::<Vec<_>>(),
    })
}

fn breaker_json(b: &BreakerView) -> Value {
    let w = &b.window;
    let transitions: Map<String, Value> = TransitionReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), json!(b.transitions(*r))))
        .collect();
    json!({
        "class": b.class,
        "state": b.state.as_str(),
        "open_remaining_ms": b.open_remaining.map(|d| d.as_millis() as u64),
        "window": window_json(w),
        "consecutive_failures": b.consecutive_failures,
        "opened_total": b.opened_total,
        "ejections_refused": b.ejections_refused,
        "transitions": transitions,
        "last_move": b.last_move.as_ref().map(move_json),
    })
}

/// Why a breaker last moved, with the figures its policy saw then.
fn move_json(m: &BreakerMove) -> Value {
    let t = &m.transition;
    json!({
        "from": t.from.as_str(),
        "to": t.to.as_str(),
        "reason": t.reason.as_str(),
        "ago_ms": millis(m.ago),
        "window": window_json(&t.window),
        "consecutive_failures": t.consecutive_failures,
        "open_for_ms": t.open_for.map(millis),
    })
}

fn window_json(w: &WindowStats) -> Value {
    json!({ "calls": w.calls, "failures": w.failures, "slow": w.slow,
            "failure_rate": w.failure_rate(), "slow_rate": w.slow_rate() })
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn by_class(o: &OutcomeCounters) -> Value {
    let m: Map<String, Value> = StatusClass::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), json!(o.class(*c))))
        .collect();
    Value::Object(m)
}

/// A route's WebSocket tunnels: open now, the cap, opened and closed by reason.
fn tunnels(t: &TunnelStats) -> Value {
    let closed: Map<String, Value> = TunnelClose::ALL
        .iter()
        .map(|why| (why.as_str().to_owned(), json!(t.closed_total(*why))))
        .collect();
    json!({
        "open": t.open(),
        "max": t.limit.max_in_flight(),
        "opened": t.opened_total(),
        "closed": closed,
    })
}

fn by_reason(o: &OutcomeCounters, keep: impl Fn(ErrorReason) -> bool) -> Value {
    let m: Map<String, Value> = ErrorReason::ALL
        .iter()
        .filter(|r| keep(**r))
        .map(|r| (r.as_str().to_owned(), json!(o.reason(*r))))
        .collect();
    Value::Object(m)
}

fn mean_ms(sum_seconds: f64, count: u64) -> Option<f64> {
    (count > 0).then(|| sum_seconds * 1000.0 / count as f64)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    set_type(&mut resp, "text/plain; charset=utf-8");
    resp
}

fn set_type(resp: &mut Response<Full<Bytes>>, content_type: &'static str) {
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use levee_telemetry::Topology;

    fn get(e: &Endpoints, path: &str) -> Response<Full<Bytes>> {
        e.answer(&Request::get(path).body(()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_turns_503_when_the_heartbeat_goes_stale() {
        let t = Telemetry::new(Topology::default(), 1);
        let e = Endpoints::new(Arc::clone(&t), Duration::from_secs(2));
        assert_eq!(
            get(&e, "/healthz").status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "no tick yet"
        );
        t.heartbeat(0).tick();
        tokio::time::advance(Duration::from_millis(1_900)).await;
        assert_eq!(get(&e, "/healthz").status(), StatusCode::OK);
        tokio::time::advance(Duration::from_millis(200)).await;
        let stale = get(&e, "/healthz");
        assert_eq!(stale.status(), StatusCode::SERVICE_UNAVAILABLE);
        t.heartbeat(0).tick();
        assert_eq!(
            get(&e, "/healthz").status(),
            StatusCode::OK,
            "recovers with the next tick"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_wedged_worker_makes_healthz_503() {
        let t = Telemetry::new(Topology::default(), 2);
        let e = Endpoints::new(Arc::clone(&t), Duration::from_secs(2));
        t.heartbeat(0).tick();
        let one_missing = get(&e, "/healthz").status();
        assert_eq!(
            one_missing,
            StatusCode::SERVICE_UNAVAILABLE,
            "worker 1 never ticked"
        );
        t.heartbeat(1).tick();
        assert_eq!(get(&e, "/healthz").status(), StatusCode::OK);
        tokio::time::advance(Duration::from_secs(3)).await;
        t.heartbeat(0).tick();
        let stale = get(&e, "/healthz").status();
        assert_eq!(stale, StatusCode::SERVICE_UNAVAILABLE, "worker 1 is stale");
    }

    #[test]
    fn readyz_follows_ready_and_draining() {
        let t = Telemetry::new(Topology::default(), 1);
        let e = Endpoints::new(Arc::clone(&t), Duration::from_secs(2));
        assert_eq!(get(&e, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        t.set_ready(true);
        assert_eq!(get(&e, "/readyz").status(), StatusCode::OK);
        t.set_draining();
        assert_eq!(get(&e, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_root_is_the_status_page_and_it_reads_status() {
        let t = Telemetry::new(Topology::default(), 1);
        let e = Endpoints::new(t, Duration::from_secs(2));
        let page = get(&e, "/");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(STATUS_PAGE.contains("fetch(\"status\""));
        assert!(STATUS_PAGE.contains("setTimeout(refresh, 1000)"));
    }

    #[test]
    fn only_get_is_answered() {
        let t = Telemetry::new(Topology::default(), 1);
        let e = Endpoints::new(t, Duration::from_secs(2));
        let post = e.answer(&Request::post("/healthz").body(()).unwrap());
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
