//! Typed resilience policy of a backend or route: load balancing, failover,
//! circuit breaking, active health checks, retries, priority shedding, drift
//! alarms and route rate limits.
//!
//! `config/levee.toml` documents every key, its default and its rule; the
//! `Default` impls here carry the same defaults.

use std::fmt;
use std::time::Duration;

/// `load_balancing`: how a backend picks a node for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalancing {
    /// `"round_robin"`: each node in turn.
    RoundRobin,
    /// `"least_request"`: the node with the fewest requests in flight.
    LeastRequest,
    /// `"p2c_ewma"` (default): of two random nodes, the one with the lower
    /// latency average weighted by its requests in flight.
    #[default]
    P2cEwma,
}

impl LoadBalancing {
    /// Every policy, in the order messages list them.
    pub(crate) const ALL: [Self; 3] = [Self::RoundRobin, Self::LeastRequest, Self::P2cEwma];

    /// The spelling in the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastRequest => "least_request",
            Self::P2cEwma => "p2c_ewma",
        }
    }
}

/// `when_all_down`: what a backend does when none of its nodes is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAllDown {
    /// `"fail"`: answer at once with an error.
    Fail,
    /// `"failover"`: send the request to the backend named by `failover`.
    Failover,
    /// `"try_all"`: ignore ejections and breakers and try the nodes anyway.
    TryAll,
}

impl WhenAllDown {
    /// Every choice, in the order messages list them.
    pub(crate) const ALL: [Self; 3] = [Self::Fail, Self::Failover, Self::TryAll];

    /// The spelling in the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Failover => "failover",
            Self::TryAll => "try_all",
        }
    }
}

/// `priority` of a route: which requests are shed first under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// `"critical"`: admitted up to the whole of `max_in_flight`.
    Critical,
    /// `"normal"` (default): admitted below `shedding.normal` of `max_in_flight`.
    #[default]
    Normal,
    /// `"sheddable"`: admitted below `shedding.sheddable` of `max_in_flight`.
    Sheddable,
}

impl Priority {
    /// Every priority, in the order messages list them.
    pub(crate) const ALL: [Self; 3] = [Self::Critical, Self::Normal, Self::Sheddable];

    /// The spelling in the TOML file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Normal => "normal",
            Self::Sheddable => "sheddable",
        }
    }
}

impl fmt::Display for LoadBalancing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for WhenAllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[backend.breaker]`: a circuit breaker per node and traffic class.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// `false` turns breakers off for this backend (default `true`).
    pub enabled: bool,
    /// Length of the sliding window of 1 s buckets (default 10s, whole seconds, 1s..=60s).
    pub window: Duration,
    /// Calls in the window before rates are judged (default 20, >= 1).
    pub min_calls: u32,
    /// Failed share of calls in the window that opens the breaker (default 0.5, 0 < x <= 1).
    pub failure_rate: f64,
    /// Slow share of calls in the window that opens the breaker (default 0.8, 0 < x <= 1).
    pub slow_call_rate: f64,
    /// A call slower than this is slow (default min(2s, backend timeout); <= backend timeout).
    pub slow_call_duration: Duration,
    /// Failures in a row that open the breaker at once (default 5; 0 disables this trigger).
    pub consecutive_failures: u32,
    /// Response statuses that count as failures (default 500, 502, 503, 504; each 5xx).
    pub failure_statuses: Vec<u16>,
    /// First open period (default 5s, > 0).
    pub open_for: Duration,
    /// Longest open period as repeated openings back off (default 60s, >= `open_for`).
    pub open_for_max: Duration,
    /// Trial calls let through while half-open (default 3, >= 1).
    pub half_open_calls: u32,
    /// Share of random spread on open periods (default 0.2, 0.0..=1.0).
    pub jitter: f64,
}

impl Default for BreakerConfig {
    /// The defaults documented in `config/levee.toml`. `slow_call_duration`
    /// is 2s here; a backend whose timeout is shorter gets its timeout instead.
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_rate: 0.5,
            slow_call_rate: 0.8,
            slow_call_duration: Duration::from_secs(2),
            consecutive_failures: 5,
            failure_statuses: vec![500, 502, 503, 504],
            open_for: Duration::from_secs(5),
            open_for_max: Duration::from_secs(60),
            half_open_calls: 3,
            jitter: 0.2,
        }
    }
}

/// `[backend.health_check]`: active probes of every node.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// Path probed with GET; starts with '/'.
    pub path: String,
    /// Time between probes of one node (default 2s, > 0).
    pub interval: Duration,
    /// Share of random spread on `interval` (default 0.1, 0.0..=1.0).
    pub jitter: f64,
    /// Longest wait for a probe's answer (default 1s, > 0, < `interval`).
    pub timeout: Duration,
    /// Failed probes in a row that mark a node down (default 3, >= 1).
    pub unhealthy_after: u32,
    /// Passed probes in a row that mark a node up again (default 2, >= 1).
    pub healthy_after: u32,
    /// Statuses that pass (default every 2xx, i.e. 200..=299; each 100..=599).
    pub expect_statuses: Vec<u16>,
}

/// `[backend.retry]`: retries of idempotent requests, under a budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts beyond the first (default 2; 0 disables retries).
    pub max_retries: u32,
    /// Retries may add at most this percentage of requests (default 20, 0..=100).
    pub budget_percent: u32,
    /// Retries per second allowed whatever the percentage (default 10).
    pub budget_min_per_sec: u32,
    /// Statuses that make an idempotent request retried (default 502, 503, 504; each 5xx).
    pub on_statuses: Vec<u16>,
    /// Request bodies up to this many bytes are kept for a retry (default 65536; 0 = never).
    pub buffer_bytes: usize,
    /// Base of the jittered backoff between attempts (default min(10ms, timeout / 2); < timeout).
    pub backoff: Duration,
}

impl Default for RetryConfig {
    /// The defaults documented in `config/levee.toml`. `backoff` is 10ms here;
    /// a backend with a timeout under 20ms gets half its timeout instead.
    fn default() -> Self {
        Self {
            max_retries: 2,
            budget_percent: 20,
            budget_min_per_sec: 10,
            on_statuses: vec![502, 503, 504],
            buffer_bytes: 64 * 1024,
            backoff: Duration::from_millis(10),
        }
    }
}

/// `[backend.shedding]`: admission by priority, as shares of `max_in_flight`.
#[derive(Debug, Clone, PartialEq)]
pub struct SheddingConfig {
    /// Sheddable requests are admitted while in flight < this share (default 0.5).
    pub sheddable: f64,
    /// Normal requests are admitted while in flight < this share (default 0.8).
    /// Critical ones may use all of `max_in_flight`. 0 < sheddable <= normal <= 1.
    pub normal: f64,
}

impl Default for SheddingConfig {
    fn default() -> Self {
        Self {
            sheddable: 0.5,
            normal: 0.8,
        }
    }
}

/// `[backend.drift]`: when a node counts as standing apart from its peers
/// (the drift alarm). A node is judged on a sliding `window` against the
/// median of its peers, and flagged once it has stood apart for `sustain`.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// The error rate must exceed the peers' median by more than this (default 0.05, 0..=1)...
    pub error_rate_margin: f64,
    /// ...and be more than this many times the peers' median (default 3.0, >= 1).
    pub error_rate_factor: f64,
    /// Mean latency more than this many times the peers' median, and at
    /// least 1 ms more, stands apart (default 3.0, >= 1).
    pub latency_factor: f64,
    /// How long a node must stand apart to be flagged, and be back among
    /// its peers to be unflagged (default 10s, > 0).
    pub sustain: Duration,
    /// Requests a node needs in the window to be judged or to count as a peer (default 20, >= 1).
    pub min_requests: u64,
    /// The sliding window the rates and means are taken over (default 10s, >= 1s).
    pub window: Duration,
}

impl Default for DriftConfig {
    /// The defaults documented in `config/levee.toml`.
    fn default() -> Self {
        Self {
            error_rate_margin: 0.05,
            error_rate_factor: 3.0,
            latency_factor: 3.0,
            sustain: Duration::from_secs(10),
            min_requests: 20,
            window: Duration::from_secs(10),
        }
    }
}

/// `[backend.adaptive]`: the backend's concurrency limit as it adapts to
/// node latency. Its floor, tolerance and window also shape the return
/// ramp of a pool or a node, which runs whether or not `enabled` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// Follow the latency gradient between `min_in_flight` and
    /// `max_in_flight` (default false: `max_in_flight` is fixed).
    pub enabled: bool,
    /// The floor: where a returning pool's ramp starts and the least the
    /// limit may be (default 4, or `max_in_flight` if smaller; >= 1).
    pub min_in_flight: usize,
    /// Latency up to this many times the minimum RTT (plus 2 ms) counts as
    /// near the no-load baseline (default 2.0, >= 1).
    pub tolerance: f64,
    /// Shortest sample window; the limit moves at most once a window
    /// (default 100ms, > 0).
    pub window: Duration,
    /// How often the minimum RTT is measured afresh (default 30s, > 0).
    pub min_rtt_interval: Duration,
}

impl AdaptiveConfig {
    /// The defaults documented in `config/levee.toml`, for a backend of
    /// `max_in_flight`.
    pub fn defaults(max_in_flight: usize) -> Self {
        Self {
            enabled: false,
            min_in_flight: 4.min(max_in_flight),
            tolerance: 2.0,
            window: Duration::from_millis(100),
            min_rtt_interval: Duration::from_secs(30),
        }
    }
}

/// `[route.rate_limit]`: token buckets that bound how fast requests may
/// arrive on a route; a request over the limit gets 429 `rate-limited`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Time to earn one token: the inverse of `requests_per_second`.
    pub per_token: Duration,
    /// Tokens a full bucket holds: the burst allowed after a quiet spell
    /// (default `requests_per_second` rounded up, >= 1).
    pub burst: u32,
    /// Whose bucket a request draws from (default [`RateLimitKey::Route`]).
    pub key: RateLimitKey,
    /// Per-key buckets tracked at most; past it new keys share one
    /// overflow bucket (default 100000, >= 1; keyed limits only).
    pub max_keys: usize,
}

/// `key` of `[route.rate_limit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// `"route"`: one bucket for every request of the route.
    Route,
    /// `"client"`: a bucket per client IP address.
    Client,
    /// `"header:NAME"`: a bucket per value of this request header (an API
    /// key, say); requests without it share one bucket.
    Header(http::HeaderName),
}

impl fmt::Display for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Route => f.write_str("route"),
            Self::Client => f.write_str("client"),
            Self::Header(name) => write!(f, "header:{name}"),
        }
    }
}
