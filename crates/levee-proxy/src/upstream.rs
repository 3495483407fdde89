//! Backends: a pool of nodes behind one bulkhead, with its deadlines, retry
//! rules and what to do when every node is out.
//!
//! A node is usable for a traffic class when its active health check (if
//! any) passes and its breaker for that class admits calls. Selection only
//! ever looks at usable nodes ([`NodeSet`]); what happens when there are
//! none is the backend's explicit `when_all_down` rule.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee_config::{BackendConfig, RetryConfig, SheddingConfig, WhenAllDown};
use levee_resilience::{
    AdaptiveLimit, Bulkhead, DriftConfig, DriftDetector, LimitPolicy, RetryBudget,
};
use levee_telemetry::{
    BackendStats, BackendTopology, NameTopology, NodeTopology, NodeView, SharedNodeStats,
};

use tokio::time::Instant;
use tracing::warn;

use crate::classes::ClassTable;
use crate::dns::{self, Resolved};
use crate::nodes::NodeSet;

/// A pool of nodes behind one bulkhead.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub nodes: NodeSet,
    /// What the admin listener sees of this backend; it holds the bulkhead.
    pub stats: Arc<BackendStats>,
    pub timeout: Duration,
    pub queue_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub failover: Option<usize>,
    /// The share of this backend's limit that requests failed over to it
    /// may fill ([`Backend::failover_budget`]).
    pub failover_max_share: f64,
    pub when_all_down: WhenAllDown,
    pub retry: RetryConfig,
    pub retry_budget: Arc<RetryBudget>,
    pub shedding: SheddingConfig,
    /// The drift watch's memory of each node, kept across a reload while
    /// the node list is the same (its alarms would otherwise never clear);
    /// new thresholds apply to it in place.
    pub drift: Arc<Mutex<DriftDetector>>,
    /// Its node names and what they resolved to, for `/status`.
    names: Vec<NameTopology>,
    dns_refresh: Duration,
}

impl Backend {
    /// Builds the backend of `cfg`; `previous` is the backend of the same
    /// name in the config being replaced, whose bulkhead (resized), admission
    /// limit (its state kept, its policy new), counters, retry budget and
    /// node state carry over.
    pub fn build(
        cfg: &BackendConfig,
        resolved: &Resolved,
        classes: &ClassTable,
        workers: usize,
        previous: Option<&Backend>,
    ) -> Self {
        let stats = match previous {
            Some(old) => {
                old.stats.admission.set_policy(admission_policy(cfg));
                old.stats
                    .bulkhead
                    .resize(slots(old.stats.admission.limit()), cfg.max_queue);
                Arc::clone(&old.stats)
            }
            None => {
                let admission = AdaptiveLimit::new(admission_policy(cfg));
                if cfg.adaptive.enabled {
                    // An adaptive limit finds its level from the floor up,
                    // not by first letting max_in_flight through.
                    admission.begin_ramp();
                }
                let bulkhead = Bulkhead::new(slots(admission.limit()), cfg.max_queue);
                Arc::new(BackendStats::new(
                    &cfg.name,
                    Arc::new(bulkhead),
                    Arc::new(admission),
                ))
            }
        };
        let retry_budget = match previous {
            Some(old)
                if old.retry_budget.percent() == cfg.retry.budget_percent
                    && old.retry_budget.min_per_sec() == cfg.retry.budget_min_per_sec =>
            {
                Arc::clone(&old.retry_budget)
            }
            _ => Arc::new(RetryBudget::new(
                cfg.retry.budget_percent,
                cfg.retry.budget_min_per_sec,
            )),
        };
        if cfg.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
            warn!(
                backend = %cfg.name,
                "tls_insecure_skip_verify = true: node certificates are NOT verified; \
                 anyone on the path to the nodes can read and change this traffic"
            );
        }
        let endpoints = dns::endpoints(cfg, resolved);
        let nodes = NodeSet::build(
            cfg,
            &endpoints,
            classes,
            workers,
            previous.map(|b| &b.nodes),
            &stats.admission,
        );
        let same_nodes = previous.is_some_and(|old| {
            old.nodes.nodes().len() == endpoints.len()
                && old
                    .nodes
                    .nodes()
                    .iter()
                    .zip(&endpoints)
                    .all(|(n, e)| n.is(e))
        });
        let names = cfg
            .nodes
            .iter()
            .filter(|n| n.ip().is_none())
            .map(|n| NameTopology {
                name: n.to_string(),
                addrs: resolved.addrs(n).iter().map(ToString::to_string).collect(),
            })
            .collect();
        let drift_config = drift_config(&cfg.drift);
        let drift = match previous {
            Some(old) if same_nodes => {
                let mut detector = old
                    .drift
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *detector.config() != drift_config {
                    detector.set_config(drift_config);
                }
                drop(detector);
                Arc::clone(&old.drift)
            }
            _ => {
                // A new watch judges every node afresh.
                for n in nodes.nodes() {
                    n.stats.set_anomalous(false);
                }
                Arc::new(Mutex::new(DriftDetector::new(drift_config, nodes.len())))
            }
        };
        Self {
            name: cfg.name.clone(),
            nodes,
            stats,
            timeout: cfg.timeout,
            queue_timeout: cfg.queue_timeout,
            body_idle_timeout: cfg.body_idle_timeout,
            failover: cfg.failover_index,
            failover_max_share: cfg.failover_max_share,
            when_all_down: cfg.when_all_down,
            retry: cfg.retry.clone(),
            retry_budget,
            shedding: cfg.shedding.clone(),
            drift,
            names,
            dns_refresh: cfg.dns_refresh,
        }
    }

    pub fn bulkhead(&self) -> &Bulkhead {
        &self.stats.bulkhead
    }

    /// How many requests failed over to this backend may be in flight.
    pub fn failover_budget(&self) -> usize {
        self.stats.failover_budget(self.failover_max_share)
    }

    /// The pool's admitted concurrency: its return ramp and adaptive limit.
    pub fn admission(&self) -> &AdaptiveLimit {
        &self.stats.admission
    }

    /// Feeds one call, ended at `now`, to the admission limit; a limit that
    /// moved resizes the bulkhead (at most once a sample window).
    pub fn record(&self, now: Instant, rtt: Duration, failed: bool) {
        if self.admission().record_at(now, rtt, failed).is_some() {
            self.apply_limit();
        }
    }

    /// The bulkhead admits what the limit says now; waiters take the
    /// slots a growth frees. While the pool ramps back its nodes return one
    /// by one, so the limit is shared by those back: the first one back is
    /// not given the whole pool's admission.
    pub fn apply_limit(&self) {
        let admission = self.admission();
        let share = if admission.is_ramping() {
            self.nodes.back_share()
        } else {
            1.0
        };
        let want = slots(admission.limit() * share);
        if self.bulkhead().max_in_flight() != want {
            self.bulkhead().set_max_in_flight(want);
        }
    }

    /// What the admin listener sees of this backend in this config version.
    pub fn topology(&self) -> BackendTopology {
        BackendTopology {
            stats: Arc::clone(&self.stats),
            nodes: self
                .nodes
                .nodes()
                .iter()
                .map(|n| NodeTopology {
                    stats: SharedNodeStats::new(Arc::clone(&n.stats)),
                    state: Arc::clone(n) as Arc<dyn NodeView>,
                })
                .collect(),
            names: self.names.clone(),
            dns_refresh: self.dns_refresh,
            failover_max_share: self.failover_max_share,
        }
    }
}

/// The pool's admitted concurrency: between `[backend.adaptive]
/// min_in_flight` and `max_in_flight`, ramping back within `slow_start`,
/// following the latency gradient when adaptive is on.
fn admission_policy(cfg: &BackendConfig) -> LimitPolicy {
    let a = &cfg.adaptive;
    LimitPolicy {
        floor: a.min_in_flight as f64,
        ceiling: cfg.max_in_flight as f64,
        ramp_max: cfg.slow_start,
        tolerance: a.tolerance,
        window: a.window,
        gradient: a.enabled,
        min_rtt_interval: a.min_rtt_interval,
    }
}

/// Bulkhead slots for a limit: rounded, at least one.
fn slots(limit: f64) -> usize {
    (limit.round() as usize).max(1)
}

/// The detector's thresholds from `[backend.drift]`.
fn drift_config(cfg: &levee_config::DriftConfig) -> DriftConfig {
    DriftConfig {
        error_rate_margin: cfg.error_rate_margin,
        error_rate_factor: cfg.error_rate_factor,
        latency_factor: cfg.latency_factor,
        sustain: cfg.sustain,
        min_requests: cfg.min_requests,
        window: cfg.window,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn backend(nodes: &str, timeout: &str, previous: Option<&Backend>) -> Backend {
        backend_with(nodes, timeout, "", previous)
    }

    /// `extra` goes at the end of the backend table (e.g. a `[backend.drift]`).
    fn backend_with(
        nodes: &str,
        timeout: &str,
        extra: &str,
        previous: Option<&Backend>,
    ) -> Backend {
        let cfg = levee_config::parse(
            &format!("[server]\nlisten = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\nnodes = [{nodes}]\ntimeout = \"{timeout}\"\nmax_in_flight = 4\n{extra}\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n"),
            "t",
        )
        .unwrap();
        Backend::build(
            &cfg.backends[0],
            &Resolved::default(),
            &ClassTable::new([]),
            1,
            previous,
        )
    }

    #[tokio::test]
    async fn a_reload_keeps_the_drift_watch_while_the_nodes_stay_the_same() {
        let first = backend("\"127.0.0.1:1\", \"127.0.0.1:2\"", "5s", None);
        first.nodes.nodes()[1].stats.set_anomalous(true);
        let same = backend("\"127.0.0.1:1\", \"127.0.0.1:2\"", "3s", Some(&first));
        assert!(Arc::ptr_eq(&same.drift, &first.drift), "same memory");
        assert!(same.nodes.nodes()[1].stats.is_anomalous(), "alarm kept");
        assert!(
            Arc::ptr_eq(&same.stats, &first.stats),
            "counters and bulkhead kept"
        );
        assert!(Arc::ptr_eq(&same.retry_budget, &first.retry_budget));

        let grown = backend(
            "\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"",
            "3s",
            Some(&same),
        );
        assert!(!Arc::ptr_eq(&grown.drift, &same.drift));
        assert!(
            !grown.nodes.nodes()[1].stats.is_anomalous(),
            "a new watch judges every node afresh"
        );
    }

    #[test]
    fn drift_thresholds_map_field_by_field() {
        let cfg = levee_config::DriftConfig {
            error_rate_margin: 0.1,
            error_rate_factor: 2.0,
            latency_factor: 4.0,
            sustain: Duration::from_secs(3),
            min_requests: 7,
            window: Duration::from_secs(5),
        };
        assert_eq!(
            drift_config(&cfg),
            DriftConfig {
                error_rate_margin: 0.1,
                error_rate_factor: 2.0,
                latency_factor: 4.0,
                sustain: Duration::from_secs(3),
                min_requests: 7,
                window: Duration::from_secs(5),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_the_admission_limit_and_applies_its_new_bounds() {
        let nodes = "\"127.0.0.1:1\"";
        let first = backend_with(nodes, "5s", "[backend.adaptive]\nmin_in_flight = 2", None);
        first.admission().mark_out();
        assert!(first.admission().resume());
        first.apply_limit();
        assert_eq!(
            first.bulkhead().max_in_flight(),
            2,
            "ramping from the floor"
        );
        let kept = backend_with(
            nodes,
            "5s",
            "[backend.adaptive]\nmin_in_flight = 3",
            Some(&first),
        );
        assert!(Arc::ptr_eq(&kept.stats.admission, &first.stats.admission));
        assert!(kept.admission().is_ramping(), "the ramp goes on");
        assert_eq!(kept.admission().limit(), 3.0, "within the new floor");
        assert_eq!(kept.bulkhead().max_in_flight(), 3);
        let on = backend_with(
            nodes,
            "5s",
            "[backend.adaptive]\nenabled = true",
            Some(&kept),
        );
        assert!(on.admission().policy().gradient);
        assert!(on.admission().is_ramping());
    }

    #[tokio::test]
    async fn a_reload_applies_new_drift_thresholds_to_the_kept_watch() {
        let nodes = "\"127.0.0.1:1\", \"127.0.0.1:2\"";
        let first = backend(nodes, "5s", None);
        first.nodes.nodes()[1].stats.set_anomalous(true);
        let tuned = backend_with(
            nodes,
            "5s",
            "[backend.drift]\nerror_rate_margin = 0.3\nsustain = \"2s\"",
            Some(&first),
        );
        assert!(Arc::ptr_eq(&tuned.drift, &first.drift), "same memory");
        assert!(tuned.nodes.nodes()[1].stats.is_anomalous(), "alarm kept");
        let detector = tuned.drift.lock().unwrap();
        assert_eq!(detector.config().error_rate_margin, 0.3);
        assert_eq!(detector.config().sustain, Duration::from_secs(2));
        drop(detector);

        let fresh = backend_with(
            "\"127.0.0.1:3\"",
            "5s",
            "[backend.drift]\nmin_requests = 5",
            Some(&tuned),
        );
        assert_eq!(fresh.drift.lock().unwrap().config().min_requests, 5);
    }
}
