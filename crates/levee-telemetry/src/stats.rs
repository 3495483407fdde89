//! Counters per route, backend and node, made of atomics.
//!
//! Every series a scrape can show exists from the moment a topology is built,
//! so "no data" is never mistaken for "no errors".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use levee_resilience::{
    AdaptiveLimit, BreakerState, Bulkhead, RateLimit, Transition, TransitionReason, WindowStats,
};

/// Why levee answered (or cut) a request itself. The string is the value of
/// the `x-levee-error` header and of the `reason` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    NoRoute,
    BulkheadFull,
    Deadline,
    UpstreamConnect,
    UpstreamReset,
    UpstreamProtocol,
    BadRequest,
    HeaderTooLarge,
    ClientBody,
    Unsupported,
    NoHealthyNode,
    Shed,
    /// The request's Host (or `:authority`, or absolute-form target) is
    /// missing, repeated or not a valid `host[:port]`.
    BadHost,
    /// The request target is over `server.max_uri_bytes`.
    UriTooLong,
    /// The request has more header lines than `server.max_headers`.
    TooManyHeaders,
    /// The request body is over the route's `max_request_body_bytes`.
    BodyTooLarge,
    /// A WebSocket handshake while the route has `max_tunnels` open.
    TunnelLimit,
    /// A WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`)
    /// that is not a valid handshake: not a GET, or other protocols offered too.
    BadUpgrade,
    /// The request's Transfer-Encoding is anything but exactly `chunked`.
    UnsupportedTransferEncoding,
    /// The TLS handshake with the node failed (its certificate did not
    /// verify, or no protocol in common).
    UpstreamTls,
    /// The route's `[route.rate_limit]` bucket (or the client's) is empty.
    RateLimited,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 21] = [
        ErrorReason::NoRoute,
        ErrorReason::BulkheadFull,
        ErrorReason::Deadline,
        ErrorReason::UpstreamConnect,
        ErrorReason::UpstreamReset,
        ErrorReason::UpstreamProtocol,
        ErrorReason::BadRequest,
        ErrorReason::HeaderTooLarge,
        ErrorReason::ClientBody,
        ErrorReason::Unsupported,
        ErrorReason::NoHealthyNode,
        ErrorReason::Shed,
        ErrorReason::BadHost,
        ErrorReason::UriTooLong,
        ErrorReason::TooManyHeaders,
        ErrorReason::BodyTooLarge,
        ErrorReason::TunnelLimit,
        ErrorReason::BadUpgrade,
        ErrorReason::UnsupportedTransferEncoding,
        ErrorReason::UpstreamTls,
        ErrorReason::RateLimited,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorReason::NoRoute => "no-route",
            ErrorReason::BulkheadFull => "bulkhead-full",
            ErrorReason::Deadline => "deadline",
            ErrorReason::UpstreamConnect => "upstream-connect",
            ErrorReason::UpstreamReset => "upstream-reset",
            ErrorReason::UpstreamProtocol => "upstream-protocol",
            ErrorReason::BadRequest => "bad-request",
            ErrorReason::HeaderTooLarge => "header-too-large",
            ErrorReason::ClientBody => "client-body",
            ErrorReason::Unsupported => "unsupported",
            ErrorReason::NoHealthyNode => "no-healthy-node",
            ErrorReason::Shed => "shed",
            ErrorReason::BadHost => "bad-host",
            ErrorReason::UriTooLong => "uri-too-long",
            ErrorReason::TooManyHeaders => "too-many-headers",
            ErrorReason::BodyTooLarge => "body-too-large",
            ErrorReason::TunnelLimit => "tunnel-limit",
            ErrorReason::BadUpgrade => "bad-upgrade",
            ErrorReason::UnsupportedTransferEncoding => "unsupported-transfer-encoding",
            ErrorReason::UpstreamTls => "upstream-tls",
            ErrorReason::RateLimited => "rate-limited",
        }
    }

    /// Whether this outcome says something about the node (versus the client
    /// or levee's own limits): only these count against a node.
    pub const fn blames_node(self) -> bool {
        matches!(
            self,
            ErrorReason::Deadline
                | ErrorReason::UpstreamConnect
                | ErrorReason::UpstreamReset
                | ErrorReason::UpstreamProtocol
                | ErrorReason::UpstreamTls
        )
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Status class of a response as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: u16) -> Self {
        match status {
            0..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Responses by status class and levee errors by reason. The status
/// classes, which every response counts, come first, and the reasons,
/// which only errors count, are apart: so that in [`NodeStats`] the
/// classes and the latency histogram that follows them share a cache line.
#[derive(Debug, Default)]
#[repr(C)]
pub struct OutcomeCounters {
    by_class: [AtomicU64; 5],
    by_reason: Box<[AtomicU64; ErrorReason::ALL.len()]>,
}

impl OutcomeCounters {
    pub fn record_status(&self, status: u16) {
        self.by_class[StatusClass::of(status).index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_error(&self, reason: ErrorReason) {
        self.by_reason[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn class(&self, class: StatusClass) -> u64 {
        self.by_class[class.index()].load(Ordering::Relaxed)
    }

    pub fn reason(&self, reason: ErrorReason) -> u64 {
        self.by_reason[reason.index()].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        StatusClass::ALL.iter().map(|c| self.class(*c)).sum()
    }
}

/// Upper bounds (seconds) of the duration histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus-style histogram of atomics (no lock per observation).
/// The sum comes first, beside the fastest buckets, which most
/// observations land in; the count is the buckets' sum, not a counter
/// of its own that each observation would also write.
#[derive(Debug, Default)]
#[repr(C)]
pub struct LatencyHistogram {
    sum_us: AtomicU64,
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Cumulative `(upper bound, count)` pairs, ending with +Inf.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut running = 0;
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        bounds
            .zip(&self.buckets)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect()
    }
}

/// One app node's counters. Its decision state (breakers, health, slow
/// start) belongs to the data plane, which shows it through [`NodeView`].
///
/// Its requests in flight are the data plane's, shown through [`NodeView`]:
/// selection reads them with the node's load, in one cache line.
///
/// With many nodes each request meets its node's counters cold, and fewer
/// cache lines are fewer misses: what every answered call counts (a status
/// class, then a latency's sum and, for a call within a millisecond, its
/// bucket) lies in its first 64 bytes (`HOT_COUNTERS` checks it at compile
/// time), which the data plane keeps beside the node's load estimate.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct NodeStats {
    pub outcomes: OutcomeCounters,
    pub latency: LatencyHistogram,
    anomalous: AtomicBool,
    pub backend: String,
    pub addr: String,
}

/// Where a node's latency bucket up to 1 ms ends: within its first 64 bytes.
const HOT_COUNTERS: usize = std::mem::offset_of!(NodeStats, latency)
    + std::mem::offset_of!(LatencyHistogram, buckets)
    + std::mem::size_of::<AtomicU64>();
const _: () = assert!(std::mem::offset_of!(NodeStats, outcomes) == 0 && HOT_COUNTERS <= 64);

impl NodeStats {
    pub fn new(backend: &str, addr: &str) -> Self {
        Self {
            backend: backend.to_owned(),
            addr: addr.to_owned(),
            outcomes: OutcomeCounters::default(),
            latency: LatencyHistogram::default(),
            anomalous: AtomicBool::new(false),
        }
    }

    /// Flagged by the drift watch: its errors or latency stand apart from its peers'.
    pub fn is_anomalous(&self) -> bool {
        self.anomalous.load(Ordering::Relaxed)
    }

    pub fn set_anomalous(&self, anomalous: bool) {
        self.anomalous.store(anomalous, Ordering::Relaxed);
    }
}

/// Things a backend did that explain what clients saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendEvent {
    /// A request was sent again to another node.
    Retry,
    /// A retry was wanted but the retry budget was spent.
    RetryBudgetExhausted,
    /// A request went to the failover backend.
    FailedOver,
    /// Every node was out and the request was refused (`when_all_down`).
    AllDownFail,
    /// Every node was out and the request was sent anyway (`try_all`).
    AllDownTryAll,
    /// A lower-priority request was shed, or a ramping pool refused it.
    Shed,
}

impl BackendEvent {
    pub const ALL: [BackendEvent; 6] = [
        BackendEvent::Retry,
        BackendEvent::RetryBudgetExhausted,
        BackendEvent::FailedOver,
        BackendEvent::AllDownFail,
        BackendEvent::AllDownTryAll,
        BackendEvent::Shed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            BackendEvent::Retry => "retry",
            BackendEvent::RetryBudgetExhausted => "retry-budget-exhausted",
            BackendEvent::FailedOver => "failed-over",
            BackendEvent::AllDownFail => "all-down-fail",
            BackendEvent::AllDownTryAll => "all-down-try-all",
            BackendEvent::Shed => "shed",
        }
    }
}

/// A backend's bulkhead and what it did; kept across reloads while the
/// backend keeps its name.
#[derive(Debug)]
pub struct BackendStats {
    pub name: String,
    /// Its `max_in_flight` follows `admission`'s limit.
    pub bulkhead: Arc<Bulkhead>,
    /// The pool's admitted concurrency: its return ramp and, if on, its
    /// adaptive limit.
    pub admission: Arc<AdaptiveLimit>,
    events: [AtomicU64; BackendEvent::ALL.len()],
    /// Lookups of the backend's node names.
    pub dns: DnsStats,
}

impl BackendStats {
    pub fn new(name: &str, bulkhead: Arc<Bulkhead>, admission: Arc<AdaptiveLimit>) -> Self {
        Self {
            name: name.to_owned(),
            bulkhead,
            admission,
            events: Default::default(),
            dns: DnsStats::default(),
        }
    }

    pub fn count(&self, event: BackendEvent) {
        self.events[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn events(&self, event: BackendEvent) -> u64 {
        self.events[event as usize].load(Ordering::Relaxed)
    }

    /// How many requests failed over to this backend may be in flight at
    /// most: `max_share` (its `failover_max_share`) of its current limit,
    /// at least one. It follows the limit as it moves.
    pub fn failover_budget(&self, max_share: f64) -> usize {
        ((self.bulkhead.max_in_flight() as f64 * max_share).ceil() as usize).max(1)
    }
}

/// How a backend's node names resolve: lookups counted by result, and the
/// names whose last lookup failed (they keep their last known addresses).
#[derive(Debug, Default)]
pub struct DnsStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// (name, error) of each name whose latest lookup failed.
    failing: ArcSwap<Vec<(String, String)>>,
}

impl DnsStats {
    pub fn record_success(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends one round of lookups: `failing` lists the names that failed in it.
    pub fn record_failures(&self, failing: Vec<(String, String)>) {
        self.failed
            .fetch_add(failing.len() as u64, Ordering::Relaxed);
        self.failing.store(Arc::new(failing));
    }

    /// Lookups that succeeded (`true`) or failed (`false`).
    pub fn resolutions(&self, succeeded: bool) -> u64 {
        match succeeded {
            true => self.succeeded.load(Ordering::Relaxed),
            false => self.failed.load(Ordering::Relaxed),
        }
    }

    /// (name, error) of each name whose latest lookup failed.
    pub fn failing(&self) -> Arc<Vec<(String, String)>> {
        self.failing.load_full()
    }
}

/// A route: what its clients saw.
#[derive(Debug)]
pub struct RouteStats {
    pub name: String,
    pub backend: String,
    pub bulkhead: Option<Arc<Bulkhead>>,
    pub outcomes: OutcomeCounters,
    pub latency: LatencyHistogram,
    pub tunnels: TunnelStats,
}

impl RouteStats {
    /// `max_tunnels`: the cap of the route's WebSocket tunnels.
    pub fn new(
        name: &str,
        backend: &str,
        bulkhead: Option<Arc<Bulkhead>>,
        max_tunnels: usize,
    ) -> Self {
        Self {
            name: name.to_owned(),
            backend: backend.to_owned(),
            bulkhead,
            outcomes: OutcomeCounters::default(),
            latency: LatencyHistogram::default(),
            tunnels: TunnelStats::new(max_tunnels),
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelClose {
    /// Nothing moved either way for the tunnel idle timeout.
    Idle,
    /// The client closed or reset its side first.
    Client,
    /// The node closed or reset its side first.
    Node,
    /// levee stopped with the tunnel still open (cut at the end of `shutdown_grace`).
    Shutdown,
}

impl TunnelClose {
    pub const ALL: [TunnelClose; 4] = [
        TunnelClose::Idle,
        TunnelClose::Client,
        TunnelClose::Node,
        TunnelClose::Shutdown,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TunnelClose::Idle => "idle",
            TunnelClose::Client => "client",
            TunnelClose::Node => "node",
            TunnelClose::Shutdown => "shutdown",
        }
    }
}

/// A route's WebSocket tunnels: the cap (a bulkhead without a queue, whose
/// in-flight count is the open tunnels), how many opened, and why they closed.
#[derive(Debug)]
pub struct TunnelStats {
    pub limit: Bulkhead,
    opened: AtomicU64,
    closed: [AtomicU64; TunnelClose::ALL.len()],
}

impl TunnelStats {
    pub fn new(max_tunnels: usize) -> Self {
        Self {
            limit: Bulkhead::new(max_tunnels, 0),
            opened: AtomicU64::new(0),
            closed: Default::default(),
        }
    }

    pub fn open(&self) -> usize {
        self.limit.in_flight()
    }

    pub fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub fn closed(&self, why: TunnelClose) {
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed_total(&self, why: TunnelClose) -> u64 {
        self.closed[why as usize].load(Ordering::Relaxed)
    }
}

/// The set of routes, backends and nodes of one config version.
#[derive(Debug, Default)]
pub struct Topology {
    pub version: String,
    pub routes: Vec<Arc<RouteStats>>,
    /// Each route's `[route.rate_limit]`, in the order of `routes`.
    pub rate_limits: Vec<Option<RateLimitTopology>>,
    pub backends: Vec<BackendTopology>,
    /// Requests that matched no route (they have no route to count them).
    pub unrouted: Arc<OutcomeCounters>,
    /// Access log lines dropped because the writer fell behind (or its
    /// file could not be opened); it carries over reloads.
    pub access_log_dropped: Arc<AtomicU64>,
}

/// A route's rate limit in this config version: its settings and its
/// buckets (kept across reloads that keep the settings).
#[derive(Debug, Clone)]
pub struct RateLimitTopology {
    /// Time to earn one token.
    pub per_token: Duration,
    pub burst: u32,
    /// Whose bucket a request draws from: `route`, `client` or `header:NAME`.
    pub key: String,
    /// Per-key buckets tracked at most (`None`: one bucket for the route).
    pub max_keys: Option<usize>,
    pub limit: Arc<RateLimit>,
}

impl RateLimitTopology {
    pub fn requests_per_second(&self) -> f64 {
        1.0 / self.per_token.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// One backend of a config version: its counters and its nodes.
#[derive(Debug)]
pub struct BackendTopology {
    pub stats: Arc<BackendStats>,
    pub nodes: Vec<NodeTopology>,
    /// The backend's node names (`host:port`) and what they resolved to.
    pub names: Vec<NameTopology>,
    pub dns_refresh: Duration,
    /// Its `failover_max_share` ([`BackendStats::failover_budget`]).
    pub failover_max_share: f64,
}

/// A node name and the addresses it stands for in this config version.
#[derive(Debug, Clone)]
pub struct NameTopology {
    pub name: String,
    pub addrs: Vec<String>,
}

/// One node of a config version: its counters and a read-only view of the
/// data plane's decision state.
#[derive(Debug, Clone)]
pub struct NodeTopology {
    pub stats: SharedNodeStats,
    pub state: Arc<dyn NodeView>,
}

/// A node's counters, shared with the data plane, which may keep them in
/// a larger allocation (beside what it reads of the node on each request).
#[derive(Clone)]
pub struct SharedNodeStats(Arc<dyn AsRef<NodeStats> + Send + Sync>);

impl SharedNodeStats {
    pub fn new(stats: Arc<impl AsRef<NodeStats> + Send + Sync + 'static>) -> Self {
        Self(stats)
    }
}

impl std::ops::Deref for SharedNodeStats {
    type Target = NodeStats;

    fn deref(&self) -> &NodeStats {
        (*self.0).as_ref()
    }
}

impl std::fmt::Debug for SharedNodeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// What the data plane lets the admin listener see of a node's decision
/// state. Read at scrape time only, so a snapshot may allocate.
pub trait NodeView: Send + Sync + std::fmt::Debug {
    /// Passes its active health checks (always true without checks).
    fn healthy(&self) -> bool;
    /// Whether active health checks run for it.
    fn health_checked(&self) -> bool;
    /// Slow-start share of its normal traffic, in (0, 1].
    fn weight(&self) -> f64;
    fn ramping(&self) -> bool;
    /// Healthy and its breaker for `class` admits calls.
    fn usable(&self, class: usize) -> bool;
    /// Requests in flight to it.
    fn in_flight(&self) -> i64;
    /// One per traffic class, in class order.
    fn breakers(&self) -> Vec<BreakerView>;
}

/// A breaker of one node and traffic class, as of one read.
#[derive(Debug, Clone)]
pub struct BreakerView {
    pub class: String,
    pub state: BreakerState,
    pub open_remaining: Option<Duration>,
    pub window: WindowStats,
    pub consecutive_failures: u32,
    pub opened_total: u64,
    pub ejections_refused: u64,
    /// Moves by reason, indexed like [`TransitionReason::ALL`].
    pub transitions: [u64; TransitionReason::ALL.len()],
    /// The latest move, if it ever moved: why, with the figures it saw.
    pub last_move: Option<BreakerMove>,
}

/// A breaker's move and how long ago it was made.
#[derive(Debug, Clone)]
pub struct BreakerMove {
    pub transition: Transition,
    pub ago: Duration,
}

impl BreakerView {
    pub fn transitions(&self, reason: TransitionReason) -> u64 {
        TransitionReason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.transitions[i])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let c = h.cumulative();
        assert_eq!(c.first(), Some(&(0.001, 1)));
        assert_eq!(c.iter().find(|(b, _)| *b == 0.025).unwrap().1, 2);
        assert_eq!(c.last(), Some(&(f64::INFINITY, 3)));
        assert_eq!(h.count(), 3);
        assert!((h.sum_seconds() - 60.0205).abs() < 1e-9);
    }

    #[test]
    fn outcome_counters_split_by_class_and_reason() {
        let o = OutcomeCounters::default();
        o.record_status(200);
        o.record_status(204);
        o.record_status(503);
        o.record_error(ErrorReason::BulkheadFull);
        assert_eq!(o.class(StatusClass::Success), 2);
        assert_eq!(o.class(StatusClass::ServerError), 1);
        assert_eq!(o.reason(ErrorReason::BulkheadFull), 1);
        assert_eq!(o.total(), 3);
    }

    #[test]
    fn reason_strings_are_unique() {
        let mut seen: Vec<&str> = ErrorReason::ALL.iter().map(|r| r.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), ErrorReason::ALL.len());
        for (i, r) in ErrorReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
