//! levee-telemetry: what the data plane publishes and the admin listener reads.
//!
//! The data plane writes counters, gauges and histograms made of atomics; the
//! admin listener reads them (and nothing else) on its own runtime. Nothing in
//! here takes a lock on the request path: recording an outcome is a handful
//! of relaxed atomic adds, and the set of routes, backends and nodes is an
//! `ArcSwap` snapshot that a config reload replaces whole.
//!
//! It owns no decisions: a node's breakers, health and slow start belong to
//! the data plane, which shows them through [`NodeView`]. It must never
//! reach into the data plane otherwise: no sockets, no HTTP, no tasks.

mod collector;
mod config_status;
mod heartbeat;
mod stats;
mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

pub use config_status::{ConfigStatus, ReloadFailure, ReloadResult};
pub use heartbeat::Heartbeat;
pub use stats::{
    BackendEvent, BackendStats, BackendTopology, BreakerMove, BreakerView, DnsStats, ErrorReason,
    LatencyHistogram, NameTopology, NodeStats, NodeTopology, NodeView, OutcomeCounters,
    RateLimitTopology, RouteStats, SharedNodeStats, StatusClass, Topology, TunnelClose,
    TunnelStats, LATENCY_BUCKETS,
};
pub use tls::TlsHandshakeFailure;

/// Everything the admin listener may read, shared by `Arc`.
#[derive(Debug)]
pub struct Telemetry {
    /// One per data-plane worker runtime.
    heartbeats: Vec<Heartbeat>,
    topology: ArcSwap<Topology>,
    config: ArcSwap<ConfigStatus>,
    reloads: [AtomicU64; ReloadResult::ALL.len()],
    ready: AtomicBool,
    draining: AtomicBool,
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    tls_handshake_failures: [AtomicU64; TlsHandshakeFailure::ALL.len()],
}

impl Telemetry {
    /// Telemetry for `workers` data-plane runtimes (at least one).
    pub fn new(topology: Topology, workers: usize) -> Arc<Self> {
        Arc::new(Self {
            heartbeats: (0..workers.max(1)).map(|_| Heartbeat::new()).collect(),
            topology: ArcSwap::from_pointee(topology),
            config: ArcSwap::from_pointee(ConfigStatus::default()),
            reloads: Default::default(),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            tls_handshake_failures: Default::default(),
        })
    }

    /// The heartbeat of worker `i` (the last one for an index out of range).
    pub fn heartbeat(&self, i: usize) -> &Heartbeat {
        let last = self.heartbeats.len() - 1;
        &self.heartbeats[i.min(last)]
    }

    /// Age of the stalest worker's heartbeat; `None` until every worker has
    /// ticked. One wedged worker is enough to make this grow.
    pub fn heartbeat_age(&self) -> Option<std::time::Duration> {
        self.heartbeats
            .iter()
            .map(Heartbeat::age)
            .try_fold(std::time::Duration::ZERO, |oldest, age| {
                age.map(|a| oldest.max(a))
            })
    }

    /// The routes, backends and nodes now live.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    /// Publishes a topology the data plane also holds (a reload replaces it
    /// whole; readers see old or new, never a mix).
    pub fn publish(&self, topology: Arc<Topology>) {
        self.topology.store(topology);
    }

    /// Records the config now live (at start or after a good reload); a
    /// failure recorded earlier stays visible until this replaces it.
    pub fn config_loaded(&self, hash: &str, origin: &str, restart_required: Vec<String>) {
        self.config.store(Arc::new(ConfigStatus {
            hash: hash.to_owned(),
            origin: origin.to_owned(),
            loaded_at: SystemTime::now(),
            restart_required,
            last_failure: None,
        }));
    }

    /// Counts a reload and, for a failed one, keeps its error beside the
    /// config that stayed live.
    pub fn reload_done(&self, result: Result<(), String>) {
        let kind = match &result {
            Ok(()) => ReloadResult::Success,
            Err(_) => ReloadResult::Failure,
        };
        self.reloads[kind as usize].fetch_add(1, Ordering::Relaxed);
        if let Err(error) = result {
            let mut status = ConfigStatus::clone(&self.config.load());
            status.last_failure = Some(ReloadFailure {
                at: SystemTime::now(),
                error,
            });
            self.config.store(Arc::new(status));
        }
    }

    pub fn config_status(&self) -> Arc<ConfigStatus> {
        self.config.load_full()
    }

    pub fn reloads(&self, result: ReloadResult) -> u64 {
        self.reloads[result as usize].load(Ordering::Relaxed)
    }

    /// The listener is up and the config loaded.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Shutdown began: stop advertising readiness so load balancers move away.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }

    pub fn tls_handshake_failed(&self, why: TlsHandshakeFailure) {
        self.tls_handshake_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn tls_handshake_failures(&self, why: TlsHandshakeFailure) -> u64 {
        self.tls_handshake_failures[why as usize].load(Ordering::Relaxed)
    }

    /// A Prometheus registry whose one collector reads this telemetry at
    /// scrape time, so every series exists (at 0) from startup.
    pub fn registry(self: &Arc<Self>) -> prometheus_client::registry::Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(collector::TelemetryCollector::new(Arc::clone(
            self,
        ))));
        registry
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_failed_reload_is_counted_and_kept_beside_the_live_config() {
        let t = Telemetry::new(Topology::default(), 1);
        t.config_loaded("aaaa", "levee.toml", Vec::new());
        t.reload_done(Err("levee.toml:3: backend[0].timeout: bad".into()));
        let status = t.config_status();
        assert_eq!(status.hash, "aaaa", "the live config stays");
        let failure = status.last_failure.as_ref().unwrap();
        assert!(failure.error.contains("levee.toml:3"));
        assert_eq!(t.reloads(ReloadResult::Failure), 1);
        assert_eq!(t.reloads(ReloadResult::Success), 0);

        t.config_loaded("bbbb", "levee.toml", vec!["server.workers".into()]);
        t.reload_done(Ok(()));
        let status = t.config_status();
        assert_eq!(status.hash, "bbbb");
        assert!(status.last_failure.is_none(), "a good reload clears it");
        assert_eq!(status.restart_required, ["server.workers"]);
        assert_eq!(t.reloads(ReloadResult::Success), 1);

        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &t.registry()).unwrap();
        assert!(out.contains("levee_config_info{hash=\"bbbb\"} 1"), "{out}");
        assert!(
            out.contains("levee_config_reloads_total{result=\"failure\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("levee_config_reloads_total{result=\"success\"} 1"),
            "{out}"
        );
    }
}
