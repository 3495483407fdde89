//! Backends: a pool of nodes behind one bulkhead, with its deadlines, retry
//! rules and what to do when every node is out.
//!
//! A node is usable for a traffic class when its active health check (if
//! any) passes and its breaker for that class admits calls. Selection only
//! ever looks at usable nodes ([`NodeSet`]); what happens when there are
//! none is the backend's explicit `when_all_down` rule.

use std::sync::Arc;
use std::time::Duration;

use levee_config::{BackendConfig, RetryConfig, SheddingConfig, WhenAllDown};
use levee_resilience::{Bulkhead, RetryBudget};
use levee_telemetry::{BackendStats, BackendTopology, NodeTopology, NodeView};

use crate::classes::ClassTable;
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
    pub when_all_down: WhenAllDown,
    pub retry: RetryConfig,
    pub retry_budget: Arc<RetryBudget>,
    pub shedding: SheddingConfig,
}

impl Backend {
    /// Builds the backend of `cfg`; `previous` is the backend of the same
    /// name in the config being replaced, whose bulkhead (resized), counters,
    /// retry budget and node state carry over.
    pub fn build(
        cfg: &BackendConfig,
        classes: &ClassTable,
        workers: usize,
        previous: Option<&Backend>,
    ) -> Self {
        let stats = match previous {
            Some(old) => {
                old.stats.bulkhead.resize(cfg.max_in_flight, cfg.max_queue);
                Arc::clone(&old.stats)
            }
            None => Arc::new(BackendStats::new(
                &cfg.name,
                Arc::new(Bulkhead::new(cfg.max_in_flight, cfg.max_queue)),
            )),
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
        Self {
            name: cfg.name.clone(),
            nodes: NodeSet::build(cfg, classes, workers, previous.map(|b| &b.nodes)),
            stats,
            timeout: cfg.timeout,
            queue_timeout: cfg.queue_timeout,
            body_idle_timeout: cfg.body_idle_timeout,
            failover: cfg.failover_index,
            when_all_down: cfg.when_all_down,
            retry: cfg.retry.clone(),
            retry_budget,
            shedding: cfg.shedding.clone(),
        }
    }

    pub fn bulkhead(&self) -> &Bulkhead {
        &self.stats.bulkhead
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
                    stats: Arc::clone(&n.stats),
                    state: Arc::clone(n) as Arc<dyn NodeView>,
                })
                .collect(),
        }
    }
}
