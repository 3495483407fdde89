//! Drift detection finds a node that quietly stands apart from its peers.
//!
//! One node of six failing 17% of its requests for hours stays under every
//! breaker threshold, and the pool's figures look fine because the healthy
//! nodes dilute it. Comparing each node with its peers' median over a sliding
//! window catches it: a node is flagged once its error rate or mean latency
//! has stood well apart for `sustain`, and unflagged once it has not for as
//! long. One background task ticks a backend's detector once a second with
//! each node's cumulative counters, so this is a plain owned struct and
//! nothing here is on the request path.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// When a node counts as standing apart. The defaults are levee-config's
/// (`[backend.drift]`, documented in `config/levee.toml`): one source of
/// truth, so this mechanism has none of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// The error rate must exceed the peers' median by at least this much...
    pub error_rate_margin: f64,
    /// ...and be more than this many times the peers' median.
    pub error_rate_factor: f64,
    /// Mean latency more than this many times the peers' median (and at
    /// least 1 ms more).
    pub latency_factor: f64,
    /// How long a node must stand apart to be flagged, and not to be
    /// unflagged.
    pub sustain: Duration,
    /// Requests a node needs in the window to be judged or to serve as a peer.
    pub min_requests: u64,
    /// The sliding window the rates and means are taken over.
    pub window: Duration,
}

/// One node's cumulative totals since it started being counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeSample {
    pub requests: u64,
    pub failures: u64,
    pub latency_sum_us: u64,
    pub latency_count: u64,
}

/// Why a node's flag changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftReason {
    ErrorRate,
    Latency,
    Recovered,
}

impl DriftReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DriftReason::ErrorRate => "error-rate",
            DriftReason::Latency => "latency",
            DriftReason::Recovered => "recovered",
        }
    }
}

impl fmt::Display for DriftReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's flag changed on this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftChange {
    pub node: usize,
    pub anomalous: bool,
    pub reason: DriftReason,
}

/// A node's windowed figures and its peers' medians, as of the last tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftFigures {
    pub error_rate: f64,
    pub peer_error_rate: f64,
    pub mean_latency: Duration,
    pub peer_mean_latency: Duration,
}

/// Latency must differ by at least this much to count, so microsecond noise
/// on a fast backend cannot flag a node.
const MIN_LATENCY_GAP_US: f64 = 1_000.0;

#[derive(Debug, Clone, Copy, Default)]
struct NodeState {
    anomalous: bool,
    apart_since: Option<Instant>,
    calm_since: Option<Instant>,
    figures: Option<DriftFigures>,
}

/// One node's deltas over the window.
#[derive(Debug, Clone, Copy)]
struct Windowed {
    requests: u64,
    error_rate: f64,
    /// Mean latency in microseconds, if any latency was recorded.
    latency_us: Option<f64>,
}

impl Windowed {
    fn between(old: &NodeSample, new: &NodeSample) -> Self {
        // Counters that went backwards (a reset) read as no traffic.
        let requests = new.requests.saturating_sub(old.requests);
        let failures = new.failures.saturating_sub(old.failures).min(requests);
        let lat_sum = new.latency_sum_us.saturating_sub(old.latency_sum_us);
        let lat_count = new.latency_count.saturating_sub(old.latency_count);
        Self {
            requests,
            error_rate: if requests == 0 {
                0.0
            } else {
                failures as f64 / requests as f64
            },
            latency_us: (lat_count > 0).then(|| lat_sum as f64 / lat_count as f64),
        }
    }
}

/// A backend's drift detector, owned by the task that ticks it.
#[derive(Debug)]
pub struct DriftDetector {
    config: DriftConfig,
    /// Samples taken at each tick, oldest first; the front is the newest
    /// sample at least `window` old, so deltas span the whole window.
    history: VecDeque<(Instant, Vec<NodeSample>)>,
    nodes: Vec<NodeState>,
    /// A sample list dropped from `history`, whose memory the next tick's
    /// takes over, and the buffers each tick fills: with many nodes, a
    /// tick allocates nothing.
    spare: Vec<NodeSample>,
    windowed: Vec<Windowed>,
    peers: Peers,
}

impl DriftDetector {
    pub fn new(config: DriftConfig, nodes: usize) -> Self {
        Self {
            config,
            history: VecDeque::new(),
            nodes: vec![NodeState::default(); nodes],
            spare: Vec::new(),
            windowed: Vec::new(),
            peers: Peers::default(),
        }
    }

    pub fn config(&self) -> &DriftConfig {
        &self.config
    }

    /// Judges by `config` from the next tick on, keeping the samples and
    /// the current flags (a flagged node stays flagged until it has not
    /// stood apart, by the new thresholds, for the new `sustain`).
    pub fn set_config(&mut self, config: DriftConfig) {
        self.config = config;
    }

    /// Starts over for a pool of `nodes`: history and flags are dropped.
    pub fn reset(&mut self, nodes: usize) {
        self.history.clear();
        self.nodes = vec![NodeState::default(); nodes];
    }

    /// Feeds cumulative samples taken now, one per node in the same order
    /// every tick; returns the nodes whose flag changed. A different number
    /// of samples means the pool changed: the detector [`reset`](Self::reset)s
    /// (dropping flags without reporting them) and starts from this tick.
    pub fn tick(&mut self, samples: &[NodeSample]) -> Vec<DriftChange> {
        if samples.len() != self.nodes.len() {
            self.reset(samples.len());
        }
        let now = Instant::now();
        let mut copy = std::mem::take(&mut self.spare);
        copy.clear();
        copy.extend_from_slice(samples);
        self.history.push_back((now, copy));
        while self
            .history
            .get(1)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.config.window)
        {
            if let Some((_, dropped)) = self.history.pop_front() {
                self.spare = dropped;
            }
        }
        let mut windowed = std::mem::take(&mut self.windowed);
        windowed.clear();
        match self.history.front() {
            Some((_, oldest)) if self.history.len() > 1 => windowed.extend(
                oldest
                    .iter()
                    .zip(samples)
                    .map(|(old, new)| Windowed::between(old, new)),
            ),
            // One sample spans no time: nothing to judge yet.
            _ => {}
        }
        let mut peers = std::mem::take(&mut self.peers);
        peers.fill(&windowed, self.config.min_requests.max(1));
        let mut changes = Vec::new();
        for node in 0..self.nodes.len() {
            let (apart, figures) = match windowed.get(node) {
                Some(me) => {
                    let (apart, figures) = self.judge(me, &peers);
                    (apart, Some(figures))
                }
                None => (None, None),
            };
            let sustain = self.config.sustain;
            let state = &mut self.nodes[node];
            state.figures = figures;
            match apart {
                Some(reason) => {
                    state.calm_since = None;
                    let since = *state.apart_since.get_or_insert(now);
                    if !state.anomalous && now.saturating_duration_since(since) >= sustain {
                        state.anomalous = true;
                        changes.push(DriftChange {
                            node,
                            anomalous: true,
                            reason,
                        });
                    }
                }
                // Too little traffic to judge counts as not standing apart,
                // so a drained node is unflagged rather than held forever.
                None => {
                    state.apart_since = None;
                    if state.anomalous {
                        let since = *state.calm_since.get_or_insert(now);
                        if now.saturating_duration_since(since) >= sustain {
                            state.anomalous = false;
                            state.calm_since = None;
                            changes.push(DriftChange {
                                node,
                                anomalous: false,
                                reason: DriftReason::Recovered,
                            });
                        }
                    }
                }
            }
        }
        self.windowed = windowed;
        self.peers = peers;
        changes
    }

    /// Whether the node is flagged now (false for an unknown node).
    pub fn is_anomalous(&self, node: usize) -> bool {
        self.nodes.get(node).is_some_and(|s| s.anomalous)
    }

    /// The node's windowed error rate and mean latency and its peers' median
    /// of each, as of the last tick; `None` for an unknown node or before the
    /// window spans any time.
    pub fn figures(&self, node: usize) -> Option<DriftFigures> {
        self.nodes.get(node).and_then(|s| s.figures)
    }

    /// Whether node `me` stands apart from its peers now, and its figures.
    fn judge(&self, me: &Windowed, peers: &Peers) -> (Option<DriftReason>, DriftFigures) {
        let min = self.config.min_requests.max(1);
        // `me` counts among the qualifying values only with enough traffic.
        let counted = me.requests >= min;
        let (error_peers, peer_error) = peers.errors.without(counted.then_some(me.error_rate));
        let (latency_peers, peer_latency) =
            peers.latencies.without(me.latency_us.filter(|_| counted));
        let figures = DriftFigures {
            error_rate: me.error_rate,
            peer_error_rate: peer_error.unwrap_or(0.0),
            mean_latency: micros(me.latency_us.unwrap_or(0.0)),
            peer_mean_latency: micros(peer_latency.unwrap_or(0.0)),
        };
        if me.requests < min {
            return (None, figures);
        }
        let c = &self.config;
        let error_apart = error_peers >= 2
            && peer_error.is_some_and(|peer| {
                me.error_rate > peer * c.error_rate_factor
                    && me.error_rate > peer + c.error_rate_margin
            });
        if error_apart {
            return (Some(DriftReason::ErrorRate), figures);
        }
        let latency_apart = latency_peers >= 2
            && match (me.latency_us, peer_latency) {
                (Some(mine), Some(peer)) => {
                    mine > peer * c.latency_factor && mine - peer >= MIN_LATENCY_GAP_US
                }
                _ => false,
            };
        (latency_apart.then_some(DriftReason::Latency), figures)
    }
}

/// Every qualifying node's figures, sorted once per tick, so that each
/// node's peers' median (all of them but itself) is a lookup rather than a
/// sort: O(n log n) a tick instead of O(n² log n) for a pool of n nodes.
#[derive(Debug, Default)]
struct Peers {
    errors: Sorted,
    latencies: Sorted,
}

impl Peers {
    /// Holds the figures of the nodes with at least `min` requests in the
    /// window.
    fn fill(&mut self, windowed: &[Windowed], min: u64) {
        let judged = || windowed.iter().filter(|w| w.requests >= min);
        self.errors.fill(judged().map(|w| w.error_rate));
        self.latencies.fill(judged().filter_map(|w| w.latency_us));
    }
}

/// Values in ascending order.
#[derive(Debug, Default)]
struct Sorted(Vec<f64>);

impl Sorted {
    #[cfg(test)]
    fn new(values: Vec<f64>) -> Self {
        let mut sorted = Self::default();
        sorted.fill(values.into_iter());
        sorted
    }

    /// Holds `values`, sorted.
    fn fill(&mut self, values: impl Iterator<Item = f64>) {
        self.0.clear();
        self.0.extend(values);
        self.0.sort_by(f64::total_cmp);
    }

    /// How many values remain without one occurrence of `mine` (when it is
    /// one of them), and their median (`None` when none remain).
    fn without(&self, mine: Option<f64>) -> (usize, Option<f64>) {
        let values = &self.0;
        // Removing any one of several equal values leaves the same list.
        let removed = mine.and_then(|v| values.binary_search_by(|x| x.total_cmp(&v)).ok());
        let n = values.len() - usize::from(removed.is_some());
        // The k-th remaining value skips the removed position.
        let at = |k: usize| {
            values
                .get(if removed.is_some_and(|r| k >= r) {
                    k + 1
                } else {
                    k
                })
                .copied()
        };
        let median = match n {
            0 => None,
            _ if n % 2 == 1 => at(n / 2),
            _ => at(n / 2 - 1).zip(at(n / 2)).map(|(a, b)| (a + b) / 2.0),
        };
        (n, median)
    }
}

fn micros(us: f64) -> Duration {
    Duration::try_from_secs_f64(us / 1e6).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
#[path = "drift_tests.rs"]
mod tests;
