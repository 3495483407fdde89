//! levee-telemetry: what the data plane publishes and the admin listener reads.
//!
//! The data plane writes counters, gauges and histograms made of atomics; the
//! admin listener reads them (and nothing else) on its own runtime. Nothing in
//! here takes a lock on the request path: recording an outcome is a handful
//! of relaxed atomic adds, and the set of routes, backends and nodes is an
//! `ArcSwap` snapshot that a config reload replaces whole.
//!
//! It must never reach into the data plane: no sockets, no HTTP, no tasks.

mod collector;
mod heartbeat;
mod stats;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use heartbeat::Heartbeat;
pub use stats::{
    BackendEvent, BackendStats, ClassBreaker, ErrorReason, InFlightGuard, LatencyHistogram,
    NodeStats, OutcomeCounters, RouteStats, StatusClass, Topology, LATENCY_BUCKETS,
};

/// Everything the admin listener may read, shared by `Arc`.
#[derive(Debug)]
pub struct Telemetry {
    pub heartbeat: Heartbeat,
    topology: ArcSwap<Topology>,
    ready: AtomicBool,
    draining: AtomicBool,
    connections_open: AtomicU64,
    connections_total: AtomicU64,
}

impl Telemetry {
    pub fn new(topology: Topology) -> Arc<Self> {
        Arc::new(Self {
            heartbeat: Heartbeat::new(),
            topology: ArcSwap::from_pointee(topology),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
        })
    }

    /// The routes, backends and nodes now live.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    /// Publishes a new topology (a reload); readers see old or new, never a mix.
    pub fn publish(&self, topology: Topology) {
        self.topology.store(Arc::new(topology));
    }

    /// Publishes a topology the data plane also holds.
    pub fn publish_arc(&self, topology: Arc<Topology>) {
        self.topology.store(topology);
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
