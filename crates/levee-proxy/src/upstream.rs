//! Backends, their nodes, the keep-alive pool to each node, and selection.
//!
//! Each backend has one HTTP/1.1 client whose pool is keyed by node address,
//! so every node gets its own keep-alive pool, bounded by
//! `pool_max_idle_per_node` and closed after `pool_idle_timeout`.
//!
//! A node is usable for a traffic class when its active health check (if
//! any) passes and its breaker for that class admits calls. Selection only
//! ever looks at usable nodes; what happens when there are none is the
//! backend's explicit `when_all_down` rule, applied in `forward`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use levee_config::{
    BackendConfig, BreakerConfig, LoadBalancing, Priority, RetryConfig, SheddingConfig, WhenAllDown,
};
use levee_resilience::{
    Admission, BreakerPolicy, BreakerState, Bulkhead, CallOutcome, EjectionBudget, Recorded,
    RetryBudget,
};
use levee_telemetry::{BackendStats, ClassBreaker, NodeStats};
use tracing::{info, warn};

use crate::balancer::{pick, LoadEstimate, Pool};
use crate::body::RequestBody;

pub type NodeClient = Client<HttpConnector, RequestBody>;

/// Traffic classes by index: 0 `safe` (GET, HEAD, OPTIONS), 1 `unsafe` (the
/// rest), then the classes routes name with `breaker_class`.
#[derive(Debug, Clone)]
pub struct ClassTable {
    names: Vec<String>,
}

impl ClassTable {
    pub const SAFE: usize = 0;
    pub const UNSAFE: usize = 1;

    pub fn new<'a>(route_classes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names = vec!["safe".to_owned(), "unsafe".to_owned()];
        for c in route_classes {
            if !names.iter().any(|n| n == c) {
                names.push(c.to_owned());
            }
        }
        Self { names }
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The default class of a method.
    pub fn of_method(method: &http::Method) -> usize {
        if matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        ) {
            Self::SAFE
        } else {
            Self::UNSAFE
        }
    }
}

/// One app node.
#[derive(Debug)]
pub struct Node {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, built once so each request only clones it.
    pub authority: Authority,
    /// Counters, per-class breakers, health and slow start, published for
    /// the admin listener.
    pub stats: Arc<NodeStats>,
    pub load: LoadEstimate,
}

impl Node {
    fn usable(&self, class: usize) -> bool {
        self.stats.usable(class)
    }
}

/// A chosen node and whether it is a half-open trial call.
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    pub index: usize,
    pub probe: bool,
}

/// A pool of nodes behind one bulkhead.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub nodes: Vec<Node>,
    /// What the admin listener sees of this backend.
    pub stats: Arc<BackendStats>,
    pub bulkhead: Arc<Bulkhead>,
    /// One client (and so one set of node pools) per data-plane worker, so a
    /// request and its node connection live on the same runtime.
    clients: Vec<NodeClient>,
    pub timeout: Duration,
    pub queue_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub policy: LoadBalancing,
    pub failover: Option<usize>,
    pub when_all_down: WhenAllDown,
    pub retry: RetryConfig,
    pub retry_budget: RetryBudget,
    pub shedding: SheddingConfig,
    pub breakers_enabled: bool,
    failure_statuses: Vec<u16>,
    budgets: Vec<EjectionBudget>,
    all_down: AtomicBool,
    cursor: AtomicUsize,
}

impl Backend {
    pub fn new(cfg: &BackendConfig, classes: &ClassTable, workers: usize) -> Self {
        let policy = breaker_policy(&cfg.breaker);
        let nodes: Vec<Node> = cfg
            .nodes
            .iter()
            .map(|addr| {
                let breakers = classes
                    .names()
                    .iter()
                    .map(|c| ClassBreaker::new(c, policy.clone()))
                    .collect();
                let health = cfg
                    .health_check
                    .as_ref()
                    .map(|h| (h.unhealthy_after, h.healthy_after));
                Node {
                    addr: *addr,
                    authority: authority_of(*addr),
                    stats: Arc::new(NodeStats::with_state(
                        &cfg.name,
                        &addr.to_string(),
                        breakers,
                        health,
                        cfg.slow_start,
                    )),
                    load: LoadEstimate::new(classes.names().len()),
                }
            })
            .collect();
        let budgets = classes
            .names()
            .iter()
            .map(|_| EjectionBudget::new(nodes.len(), cfg.max_ejected_percent))
            .collect();
        let bulkhead = Arc::new(Bulkhead::new(cfg.max_in_flight, cfg.max_queue));
        let stats = Arc::new(BackendStats::new(
            &cfg.name,
            Arc::clone(&bulkhead),
            nodes.iter().map(|n| Arc::clone(&n.stats)).collect(),
        ));
        Self {
            name: cfg.name.clone(),
            nodes,
            stats,
            bulkhead,
            clients: (0..workers.max(1)).map(|_| node_client(cfg)).collect(),
            timeout: cfg.timeout,
            queue_timeout: cfg.queue_timeout,
            body_idle_timeout: cfg.body_idle_timeout,
            policy: cfg.load_balancing,
            failover: cfg.failover_index,
            when_all_down: cfg.when_all_down,
            retry: cfg.retry.clone(),
            retry_budget: RetryBudget::new(cfg.retry.budget_percent, cfg.retry.budget_min_per_sec),
            shedding: cfg.shedding.clone(),
            breakers_enabled: cfg.breaker.enabled,
            failure_statuses: cfg.breaker.failure_statuses.clone(),
            budgets,
            all_down: AtomicBool::new(false),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The node client of data-plane worker `worker`.
    pub fn client(&self, worker: usize) -> &NodeClient {
        &self.clients[worker % self.clients.len()]
    }

    /// Whether any node is usable for `class`; logs when the backend enters
    /// or leaves the all-down state.
    pub fn has_usable(&self, class: usize) -> bool {
        let any = self.nodes.iter().any(|n| n.usable(class));
        let was_down = self.all_down.swap(!any, Ordering::Relaxed);
        if was_down == any {
            if any {
                info!(backend = %self.name, "backend has usable nodes again");
            } else {
                warn!(backend = %self.name, when_all_down = %self.when_all_down, "every node of the backend is out");
            }
        }
        any
    }

    /// Admission share for the pool: below 1.0 while every usable node is
    /// ramping back through slow start.
    pub fn pool_admission(&self, class: usize) -> f64 {
        // The usual case, no node ramping, costs no clock reads.
        let usable = || self.nodes.iter().filter(|n| n.usable(class));
        if usable().any(|n| !n.stats.slow_start.is_ramping()) {
            return 1.0;
        }
        levee_resilience::pool_admission(
            usable().map(|n| (n.stats.slow_start.weight(), n.stats.slow_start.is_ramping())),
        )
    }

    /// Picks a node for `class`, skipping `tried`. Trial (half-open) calls
    /// are allowed only when `allow_probe`; `ignore_state` is `try_all`.
    pub fn select(
        &self,
        class: usize,
        tried: &[usize],
        allow_probe: bool,
        ignore_state: bool,
    ) -> Option<Pick> {
        let mut refused = [usize::MAX; 4];
        for round in 0..self.nodes.len() {
            let view = PoolView {
                backend: self,
                class,
                tried,
                refused: &refused,
                ignore_state,
            };
            let index = pick(self.policy, &view, &self.cursor)?;
            if ignore_state || !self.breakers_enabled {
                return Some(Pick {
                    index,
                    probe: false,
                });
            }
            let Some(b) = self.nodes[index].stats.breakers.get(class) else {
                return Some(Pick {
                    index,
                    probe: false,
                });
            };
            let (admission, moved) = b.breaker.admit();
            if let Some(t) = moved {
                b.count_transition(&t);
                info!(backend = %self.name, node = %self.nodes[index].addr, class = %b.class, reason = t.reason.as_str(), "breaker half-open: sending trial calls");
            }
            match admission {
                Admission::Pass => {
                    return Some(Pick {
                        index,
                        probe: false,
                    })
                }
                Admission::Probe if allow_probe => return Some(Pick { index, probe: true }),
                Admission::Probe => b.breaker.cancel_probe(),
                Admission::Reject => {}
            }
            if let Some(slot) = refused.get_mut(round) {
                *slot = index;
            } else {
                return None;
            }
        }
        None
    }

    /// Whether a node other than those in `tried` could take a retry now.
    pub fn has_alternative(&self, class: usize, tried: &[usize], ignore_state: bool) -> bool {
        (0..self.nodes.len())
            .any(|i| !tried.contains(&i) && (ignore_state || self.nodes[i].usable(class)))
    }

    /// Whether `status` from a node counts as a failure for its breaker.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.failure_statuses.contains(&status)
    }

    /// Feeds one call's outcome to the node's breaker for `class` and its
    /// load estimate, logging and counting any move.
    pub fn record(&self, node: usize, class: usize, probe: bool, outcome: CallOutcome) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        n.load.observe(class, outcome.elapsed, outcome.failed);
        if !self.breakers_enabled {
            return;
        }
        let (Some(b), Some(budget)) = (n.stats.breakers.get(class), self.budgets.get(class)) else {
            return;
        };
        match b.breaker.record(probe, outcome, budget) {
            Recorded::Nothing => {}
            Recorded::EjectionRefused(w) => {
                b.count_ejection_refused();
                tracing::debug!(backend = %self.name, node = %n.addr, class = %b.class, calls = w.calls, failures = w.failures, "breaker would open but max_ejected_percent keeps the node in");
            }
            Recorded::Moved(t) => {
                b.count_transition(&t);
                if t.to == BreakerState::Closed {
                    n.stats.slow_start.begin();
                }
                warn!(
                    backend = %self.name,
                    node = %n.addr,
                    class = %b.class,
                    from = t.from.as_str(),
                    to = t.to.as_str(),
                    reason = t.reason.as_str(),
                    calls = t.window.calls,
                    failures = t.window.failures,
                    slow = t.window.slow,
                    failure_rate = format!("{:.2}", t.window.failure_rate()),
                    slow_rate = format!("{:.2}", t.window.slow_rate()),
                    consecutive = t.consecutive_failures,
                    open_for = ?t.open_for,
                    "breaker moved"
                );
            }
        }
    }

    /// Whether a request of `priority` may take a slot now, given how full
    /// the bulkhead is: lower priorities are refused first.
    pub fn admits_priority(&self, priority: Priority) -> bool {
        let share = match priority {
            Priority::Critical => return true,
            Priority::Normal => self.shedding.normal,
            Priority::Sheddable => self.shedding.sheddable,
        };
        let limit = (self.bulkhead.max_in_flight() as f64 * share).ceil() as usize;
        self.bulkhead.in_flight() < limit.max(1)
    }
}

/// The nodes of one backend as selection sees them for one request.
struct PoolView<'a> {
    backend: &'a Backend,
    class: usize,
    tried: &'a [usize],
    refused: &'a [usize],
    ignore_state: bool,
}

impl Pool for PoolView<'_> {
    fn size(&self) -> usize {
        self.backend.nodes.len()
    }

    fn usable(&self, i: usize) -> bool {
        if self.tried.contains(&i) || self.refused.contains(&i) {
            return false;
        }
        self.ignore_state || self.backend.nodes[i].usable(self.class)
    }

    fn in_flight(&self, i: usize) -> i64 {
        self.backend.nodes[i].stats.in_flight()
    }

    fn latency(&self, i: usize) -> Duration {
        self.backend.nodes[i].load.latency()
    }

    fn penalty(&self, i: usize) -> f64 {
        self.backend.nodes[i].load.penalty(self.class)
    }

    fn weight(&self, i: usize) -> f64 {
        self.backend.nodes[i].stats.slow_start.weight()
    }
}

pub fn breaker_policy(cfg: &BreakerConfig) -> BreakerPolicy {
    BreakerPolicy {
        window_buckets: u32::try_from(cfg.window.as_secs()).unwrap_or(60).max(1),
        min_calls: cfg.min_calls,
        failure_rate: cfg.failure_rate,
        slow_call_rate: cfg.slow_call_rate,
        slow_call_duration: cfg.slow_call_duration,
        consecutive_failures: cfg.consecutive_failures,
        open_for: cfg.open_for,
        open_for_max: cfg.open_for_max,
        half_open_calls: cfg.half_open_calls,
        jitter: cfg.jitter,
    }
}

fn authority_of(addr: SocketAddr) -> Authority {
    // A SocketAddr always renders as a valid authority ("1.2.3.4:80", "[::1]:80").
    addr.to_string()
        .parse()
        .unwrap_or_else(|_| Authority::from_static("invalid.invalid"))
}

fn node_client(cfg: &BackendConfig) -> NodeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_node)
        // The client's Host header is forwarded as is.
        .set_host(false)
        .build(connector)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn consecutive_failures_open_the_node_breaker() {
        let cfg = levee_config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n[backend.breaker]\nconsecutive_failures = 3\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
            "t",
        )
        .unwrap();
        let classes = ClassTable::new([]);
        let b = Backend::new(&cfg.backends[0], &classes, 1);
        let fail = CallOutcome {
            failed: true,
            elapsed: Duration::from_millis(1),
            unreachable: false,
        };
        for _ in 0..3 {
            b.record(0, ClassTable::SAFE, false, fail);
        }
        let br = &b.nodes[0].stats.breakers[ClassTable::SAFE];
        assert_eq!(
            br.breaker.state(),
            BreakerState::Open,
            "{:?} {:?}",
            br.breaker.window(),
            br.breaker.consecutive_failures()
        );
    }
}
