//! A backend's nodes and the state the data plane keeps for each of them:
//! a breaker per traffic class, health, its return ramp, a load estimate and a
//! keep-alive connection pool per worker.
//!
//! Selection asks one question, [`NodeSet::pick`] ("which node may take this
//! request of this class now?"), and every call's outcome comes back through
//! one call, [`NodeSet::record`]. The state is kept in `Arc`s so that a
//! reload can carry it over to the new config for each node that stays
//! ([`NodeSet::build`]): an open breaker stays open, a ramp keeps ramping,
//! idle connections stay warm.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use http::uri::Authority;
use levee_config::{
    BackendConfig, BreakerConfig, LoadBalancing, UpstreamProtocol, UpstreamTlsConfig,
};
use levee_resilience::moves::moves;
use levee_resilience::{
    AdaptiveLimit, Admission, Breaker, BreakerPolicy, BreakerState, CallOutcome, EjectionBudget,
    HealthTracker, LimitPhase, LimitPolicy, Recorded, Transition, TransitionReason,
};
use levee_telemetry::{BreakerMove, BreakerView, ErrorReason, NodeStats, NodeView};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::balancer::{pick, LoadEstimate, NamedFailures, Pool};
use crate::classes::ClassTable;
use crate::dns::Endpoint;
use crate::node_io::NodeConnector;
use crate::pool::{NodePool, PoolConfig};

/// A node whose decaying failure score is at least this is failing.
const STRAINED_FAILURE_SCORE: f64 = 0.1;
/// The weight a returning node starts from, so it sees traffic at once
/// (the calls that show it is fine).
pub const MIN_WEIGHT: f64 = 0.1;

/// One node's breaker for one traffic class, with counts that explain it.
/// The breaker comes first, at the start of an aligned pair of cache lines
/// (which the adjacent-line prefetcher loads together): what a request
/// reads of it then costs one miss. Requests never clone its `Arc`, whose
/// counts the alignment puts on lines of their own.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct ClassBreaker {
    pub breaker: Breaker,
    pub class: String,
    transitions: [AtomicU64; TransitionReason::ALL.len()],
    ejections_refused: AtomicU64,
    /// The latest move and when it happened, so `/status` can say why a
    /// node is out. Written on a move only, never on a plain call.
    last_move: ArcSwapOption<(Transition, Instant)>,
}

impl ClassBreaker {
    fn new(class: &str, policy: BreakerPolicy) -> Self {
        Self {
            class: class.to_owned(),
            breaker: Breaker::new(policy),
            transitions: Default::default(),
            ejections_refused: AtomicU64::new(0),
            last_move: ArcSwapOption::empty(),
        }
    }

    fn count_transition(&self, t: &Transition) {
        if let Some(i) = TransitionReason::ALL.iter().position(|r| *r == t.reason) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
        self.last_move
            .store(Some(Arc::new((t.clone(), Instant::now()))));
    }

    fn view(&self) -> BreakerView {
        BreakerView {
            class: self.class.clone(),
            state: self.breaker.state(),
            open_remaining: self.breaker.open_remaining(),
            window: self.breaker.window(),
            consecutive_failures: self.breaker.consecutive_failures(),
            opened_total: self.breaker.opened_total(),
            ejections_refused: self.ejections_refused.load(Ordering::Relaxed),
            transitions: std::array::from_fn(|i| self.transitions[i].load(Ordering::Relaxed)),
            last_move: self.last_move.load().as_deref().map(|(t, at)| BreakerMove {
                transition: t.clone(),
                ago: at.elapsed(),
            }),
        }
    }
}

/// The settings a node's connection pools are built with; pools are kept
/// across a reload only while these stay the same.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolSettings {
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    workers: usize,
    protocol: UpstreamProtocol,
    /// Compared by the files' contents too: a renewed CA or client
    /// certificate rebuilds the pools.
    tls: Option<UpstreamTlsConfig>,
}

/// One connection pool per data-plane worker, so a request and its node
/// connection live on the same runtime.
#[derive(Debug)]
struct Pools {
    settings: PoolSettings,
    workers: Box<[NodePool]>,
}

impl Pools {
    fn new(settings: PoolSettings, node: &Endpoint) -> Self {
        let connector = NodeConnector::new(
            node.addr,
            node.host.as_deref(),
            settings.connect_timeout,
            settings.tls.as_ref(),
        );
        let config = PoolConfig {
            idle_timeout: settings.idle_timeout,
            max_idle: settings.max_idle,
            http2: settings.protocol == UpstreamProtocol::Http2,
        };
        let workers = (0..settings.workers.max(1))
            .map(|_| NodePool::new(connector.clone(), config))
            .collect();
        Self { settings, workers }
    }
}

/// One app node and the data plane's state for it.
///
/// In declared order: what a request reads of the node it was given (its
/// connection pools, its counters and load, its breaker, its protocol)
/// fits with the `Arc`'s counts, which it also touches, in the first 64
/// bytes (`REQUEST_FIELDS_END` checks it at compile time). Its address is
/// read only for messages.
#[derive(Debug)]
#[repr(C)]
pub struct Node {
    /// `pools`' per-worker pools, held here so that a request reaches its
    /// idle connections without another pointer to follow.
    worker_pools: Box<[NodePool]>,
    /// Its load estimate (in flight, latency, failure scores, slow-start
    /// weight) and the counters the admin listener reads.
    pub stats: Arc<NodeHot>,
    /// `breakers`' first two, of the `safe` and `unsafe` classes, held here
    /// so that a request reaches its breaker without the list between.
    first_breakers: [Option<Arc<ClassBreaker>>; 2],
    /// Its pools' protocol, here so that aiming a request at the node
    /// reads none of them.
    http2: bool,
    health_checked: bool,
    named: Arc<NamedFailures>,
    /// Indexed by traffic class.
    breakers: Box<[Arc<ClassBreaker>]>,
    pub addr: SocketAddr,
    /// The name `addr` was found by, if the node was given by name.
    pub host: Option<String>,
    /// `addr` as a URI authority, built once so each request only clones it.
    pub authority: Authority,
    health: Arc<HealthTracker>,
    /// Its share of traffic: ramps back in on observed health after it
    /// returns (weight `MIN_WEIGHT..=1`).
    ramp: Arc<AdaptiveLimit>,
    pools: Arc<Pools>,
}

/// What a request reads and writes of its node, in one aligned pair of
/// cache lines: the load estimate, which selection reads of each
/// candidate, then the counters the chosen node's call adds to. With 1,000
/// nodes the node a request is given is cold; what a call answered within
/// a millisecond counts (status class, latency sum, fastest bucket) lies
/// on the line after the load estimate, slower buckets on the next. A
/// reload carries it over
/// with the node (as it did each part). It derefs to the counters, which is
/// what all but selection read of it.
#[derive(Debug)]
#[repr(C, align(128))]
pub struct NodeHot {
    load: LoadEstimate,
    stats: NodeStats,
    /// When `load` was made: where a new class list's scores start.
    created: Instant,
}

const _: () = assert!(std::mem::offset_of!(NodeHot, stats) == 64);

impl NodeHot {
    fn new(backend: &str, addr: &str) -> Self {
        Self {
            load: LoadEstimate::default(),
            stats: NodeStats::new(backend, addr),
            created: Instant::now(),
        }
    }
}

impl std::ops::Deref for NodeHot {
    type Target = NodeStats;

    fn deref(&self) -> &NodeStats {
        &self.stats
    }
}

impl AsRef<NodeStats> for NodeHot {
    fn as_ref(&self) -> &NodeStats {
        &self.stats
    }
}

/// Where the fields a request reads of its node end, counted from the start
/// of its `Arc`'s allocation (two counts, then the node).
const REQUEST_FIELDS_END: usize =
    2 * std::mem::size_of::<usize>() + std::mem::offset_of!(Node, http2) + 1;
const _: () = assert!(REQUEST_FIELDS_END <= 64);

impl Node {
    /// The connection pool of data-plane worker `worker`.
    pub fn pool(&self, worker: usize) -> &NodePool {
        let pools = &self.worker_pools;
        &pools[worker % pools.len()]
    }

    /// Whether requests go to this node over HTTP/2.
    pub fn speaks_http2(&self) -> bool {
        self.http2
    }

    /// Copies its ramp's weight and phase to the slot selection reads;
    /// after every change of the ramp.
    fn mirror_ramp(&self) {
        self.load()
            .mirror_ramp(|| (self.ramp.limit(), self.ramp.is_ramping()));
    }

    fn load(&self) -> &LoadEstimate {
        &self.stats.load
    }

    pub fn health(&self) -> &HealthTracker {
        &self.health
    }

    pub fn ramp(&self) -> &AdaptiveLimit {
        &self.ramp
    }

    pub fn breaker(&self, class: usize) -> Option<&ClassBreaker> {
        match self.first_breakers.get(class) {
            Some(b) => b.as_deref(),
            None => self.breakers.get(class).map(|b| &**b),
        }
    }

    /// One per traffic class, in class order.
    pub fn breakers(&self) -> &[Arc<ClassBreaker>] {
        &self.breakers
    }

    /// Healthy and its breaker for `class` admits calls; reads only.
    pub fn usable(&self, class: usize) -> bool {
        self.health.is_healthy()
            && self
                .breakers
                .get(class)
                .is_none_or(|b| b.breaker.would_admit())
    }

    /// Counts a request in flight to this node until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.load().enter();
        InFlightGuard(Arc::clone(self))
    }

    /// Requests in flight to this node.
    pub fn in_flight(&self) -> i64 {
        self.load().in_flight()
    }

    /// Whether this node serves `endpoint`: same address, same name.
    pub fn is(&self, endpoint: &Endpoint) -> bool {
        self.addr == endpoint.addr && self.stats.addr == endpoint.label
    }
}

impl NodeView for Node {
    fn healthy(&self) -> bool {
        self.health.is_healthy()
    }

    fn health_checked(&self) -> bool {
        self.health_checked
    }

    fn weight(&self) -> f64 {
        self.ramp.limit()
    }

    fn ramping(&self) -> bool {
        self.ramp.is_ramping()
    }

    fn usable(&self, class: usize) -> bool {
        Node::usable(self, class)
    }

    fn in_flight(&self) -> i64 {
        Node::in_flight(self)
    }

    fn breakers(&self) -> Vec<BreakerView> {
        self.breakers.iter().map(|b| b.view()).collect()
    }
}

/// Counts a request out of its node's in-flight count when it drops,
/// however the request ends. It holds the node (whose `Arc` a request
/// holds anyway), not the load slot: one cache line fewer to touch.
#[derive(Debug)]
pub struct InFlightGuard(Arc<Node>);

impl InFlightGuard {
    /// The node the request is in flight to.
    pub fn node(&self) -> &Node {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.load().exit();
    }
}

/// A chosen node. A half-open trial slot it holds is given back if it is
/// dropped without an outcome (for example because the client went away).
#[derive(Debug)]
pub struct Pick {
    pub index: usize,
    pub node: Arc<Node>,
    class: usize,
    probe: bool,
}

impl Pick {
    /// Whether this is a half-open trial call.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if self.probe {
            if let Some(b) = self.node.breakers.get(self.class) {
                b.breaker.cancel_probe();
            }
        }
    }
}

/// How a call to a node went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered with this status.
    Status(u16),
    /// The call failed for a reason that blames the node.
    Failed(ErrorReason),
}

/// A backend's nodes, their state, and the rules for choosing among them.
#[derive(Debug)]
pub struct NodeSet {
    backend: String,
    nodes: Vec<Arc<Node>>,
    /// By node index, what a request reads of each node to pick it and
    /// record its call, so that it follows fewer pointers to cold memory.
    slots: Box<[Slot]>,
    policy: LoadBalancing,
    breakers_enabled: bool,
    breaker_policy: BreakerPolicy,
    failure_statuses: Vec<u16>,
    /// The traffic classes this set was built for, in index order.
    classes: Box<[String]>,
    /// Per traffic class: how many nodes error rates may eject at once.
    budgets: Box<[EjectionBudget]>,
    /// Which nodes are usable for each class, rebuilt after a breaker or
    /// health move rather than asked of every node per request.
    usable: ArcSwap<UsableNodes>,
    /// The backend's admitted concurrency. While the whole pool ramps back
    /// (or is out), that ramp paces every node alike: a node back a moment
    /// before its peers must not get more than its share.
    pool: Arc<AdaptiveLimit>,
    cursor: AtomicUsize,
}

impl NodeSet {
    /// Builds the node set of `cfg`, one node per endpoint (its nodes'
    /// addresses, names resolved), carrying over the state of every node
    /// that `previous` (the same backend in the config being replaced)
    /// already had under the same label. New nodes of a backend that keeps
    /// some of its nodes ramp in. `pool` is the backend's admission limit.
    pub fn build(
        cfg: &BackendConfig,
        endpoints: &[Endpoint],
        classes: &ClassTable,
        workers: usize,
        previous: Option<&NodeSet>,
        pool: &Arc<AdaptiveLimit>,
    ) -> Self {
        let breaker_policy = breaker_policy(&cfg.breaker);
        let settings = PoolSettings {
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool_idle_timeout,
            max_idle: cfg.pool_max_idle_per_node,
            workers,
            protocol: cfg.protocol,
            tls: cfg.tls.clone(),
        };
        let health_cfg = cfg
            .health_check
            .as_ref()
            .map(|h| (h.unhealthy_after, h.healthy_after));
        let kept_policy = previous.filter(|p| p.breaker_policy == breaker_policy);
        let kept = |e: &Endpoint| previous.and_then(|p| p.nodes.iter().find(|n| n.is(e)));
        let keeps_any = endpoints.iter().any(|e| kept(e).is_some());
        let nodes = endpoints
            .iter()
            .map(|endpoint| {
                let old = kept(endpoint);
                let breakers: Box<[Arc<ClassBreaker>]> = classes
                    .names()
                    .iter()
                    .map(|class| {
                        let kept = old
                            .filter(|_| kept_policy.is_some())
                            .and_then(|n| n.breakers.iter().find(|b| b.class == *class));
                        match kept {
                            Some(b) => Arc::clone(b),
                            None => Arc::new(ClassBreaker::new(class, breaker_policy.clone())),
                        }
                    })
                    .collect();
                let (unhealthy_after, healthy_after) = health_cfg.unwrap_or((1, 1));
                let health = match old {
                    Some(n)
                        if n.health_checked == health_cfg.is_some()
                            && n.health.unhealthy_after() == unhealthy_after
                            && n.health.healthy_after() == healthy_after =>
                    {
                        Arc::clone(&n.health)
                    }
                    // Without checks a node is simply healthy.
                    Some(n) if health_cfg.is_some() => {
                        Arc::new(n.health.with_thresholds(unhealthy_after, healthy_after))
                    }
                    _ => Arc::new(HealthTracker::new(unhealthy_after, healthy_after)),
                };
                let ramp = match old {
                    Some(n) => {
                        n.ramp.set_policy(node_ramp_policy(cfg));
                        Arc::clone(&n.ramp)
                    }
                    None => {
                        let r = AdaptiveLimit::new(node_ramp_policy(cfg));
                        if keeps_any && pool.phase() == LimitPhase::Steady {
                            r.begin_ramp();
                        }
                        Arc::new(r)
                    }
                };
                // The slot stays with the node (its in-flight count must);
                // the scores of named classes start afresh with a new list.
                let stats = old.map_or_else(
                    || Arc::new(NodeHot::new(&cfg.name, &endpoint.label)),
                    |n| Arc::clone(&n.stats),
                );
                let named = match old {
                    Some(n) if n.breakers.len() == classes.names().len() => Arc::clone(&n.named),
                    _ => Arc::new(NamedFailures::new(classes.names().len(), stats.created)),
                };
                let pools = match old {
                    Some(n) if n.pools.settings == settings => Arc::clone(&n.pools),
                    _ => Arc::new(Pools::new(settings.clone(), endpoint)),
                };
                let first_breakers = std::array::from_fn(|class| breakers.get(class).cloned());
                let node = Node {
                    addr: endpoint.addr,
                    host: endpoint.host.clone(),
                    authority: authority_of(endpoint.addr),
                    stats,
                    breakers,
                    health,
                    health_checked: health_cfg.is_some(),
                    http2: pools.settings.protocol == UpstreamProtocol::Http2,
                    ramp,
                    named,
                    first_breakers,
                    worker_pools: pools.workers.clone(),
                    pools,
                };
                node.mirror_ramp();
                Arc::new(node)
            })
            .collect::<Vec<_>>();
        let slots = nodes.iter().map(Slot::of).collect();
        let budgets = classes
            .names()
            .iter()
            .map(|class| match kept_policy.and_then(|p| p.budget_of(class)) {
                Some(b) => b.resized(nodes.len(), cfg.max_ejected_percent),
                None => EjectionBudget::new(nodes.len(), cfg.max_ejected_percent),
            })
            .collect();
        let usable = ArcSwap::from_pointee(UsableNodes::scan(&nodes, classes.names().len()));
        Self {
            backend: cfg.name.clone(),
            usable,
            nodes,
            slots,
            policy: cfg.load_balancing,
            breakers_enabled: cfg.breaker.enabled,
            breaker_policy,
            failure_statuses: cfg.breaker.failure_statuses.clone(),
            classes: classes.names().into(),
            budgets,
            pool: Arc::clone(pool),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The budget of the class called `class` (a reload may have changed
    /// class indices).
    fn budget_of(&self, class: &str) -> Option<&EjectionBudget> {
        let i = self.classes.iter().position(|c| c == class)?;
        self.budgets.get(i)
    }

    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The usable nodes as of the latest breaker or health move, rebuilt
    /// here if one has happened since.
    fn usable_now(&self) -> Guard<Arc<UsableNodes>> {
        let cached = self.usable.load();
        if cached.moves == moves() {
            return cached;
        }
        drop(cached);
        self.usable
            .store(Arc::new(UsableNodes::scan(&self.nodes, self.classes.len())));
        self.usable.load()
    }

    /// Whether any node is usable for `class` now.
    pub fn any_usable(&self, class: usize) -> bool {
        match self.usable_now().of(class) {
            Some(known) => !known.is_empty(),
            None => self.nodes.iter().any(|n| n.usable(class)),
        }
    }

    /// Whether a node other than those in `tried` could take a retry now.
    pub fn has_alternative(&self, class: usize, tried: &[usize], ignore_state: bool) -> bool {
        if !ignore_state {
            if let Some(known) = self.usable_now().of(class) {
                return known.iter().any(|i| !tried.contains(i));
            }
        }
        self.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| !tried.contains(&i) && (ignore_state || n.usable(class)))
    }

    /// Whether the backend shows trouble for `class`: a node out (breaker
    /// not closed, or unhealthy), failing (a recent failure score of 10% or
    /// more), or slow (its latency estimate at the breaker's slow-call
    /// duration) while a usable peer is not. Shedding uses it to tell a
    /// busy healthy backend, whose normal traffic may queue, from one in
    /// trouble. Slowness is relative, as for breakers: every node reading
    /// slow alike is as likely levee's own starvation as the nodes'.
    pub fn strained(&self, class: usize) -> bool {
        let slow = self.breaker_policy.slow_call_duration;
        let mut any_slow = false;
        let out_or_failing = self.nodes.iter().any(|n| {
            any_slow |= n.load().latency() >= slow;
            !n.usable(class)
                || n.breakers
                    .get(class)
                    .is_some_and(|b| b.breaker.state() != BreakerState::Closed)
                || n.load().failure_score(&n.named, class) >= STRAINED_FAILURE_SCORE
        });
        out_or_failing || (any_slow && self.faster_peer(usize::MAX, class))
    }

    /// Whether a usable node other than `index` answers faster than the
    /// breaker's slow-call duration: somewhere a slow node's traffic could
    /// go. Without one, ejecting a node for slowness sends its traffic
    /// nowhere better.
    fn faster_peer(&self, index: usize, class: usize) -> bool {
        let slow = self.breaker_policy.slow_call_duration;
        self.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| i != index && n.usable(class) && n.load().latency() < slow)
    }

    /// A node is back (breaker closed, health passes): its share ramps on
    /// observed health, unless the whole pool is ramping back (or still
    /// out): then the pool's ramp paces it with its peers.
    pub fn ramp_in(&self, node: &Node) {
        if self.pool.phase() == LimitPhase::Steady {
            node.ramp.begin_ramp();
            node.mirror_ramp();
        }
    }

    /// The pool is back after an outage: its ramp starts from its floor and
    /// paces every node alike, so a node that was still ramping in when the
    /// pool went out starts level with its peers instead of keeping the
    /// partial weight it had. Only the first call after an outage starts
    /// the ramp; returns whether this one did.
    pub fn resume(&self) -> bool {
        if !self.pool.resume() {
            return false;
        }
        for node in self.nodes.iter() {
            node.ramp.cancel_ramp();
            node.mirror_ramp();
        }
        true
    }

    /// The share of nodes usable for some traffic class.
    pub fn back_share(&self) -> f64 {
        let classes = self.classes.len().max(1);
        let back = self
            .nodes
            .iter()
            .filter(|n| (0..classes).any(|c| n.usable(c)))
            .count();
        back as f64 / self.nodes.len().max(1) as f64
    }

    /// Whether no node is usable for any traffic class: the whole pool is
    /// out (one class's breakers open is not an outage of the pool).
    pub fn all_out(&self) -> bool {
        (0..self.classes.len().max(1)).all(|class| !self.any_usable(class))
    }

    /// Which node may take a request of `class` now, skipping `tried`.
    /// Trial (half-open) calls are allowed only when `allow_probe`;
    /// `ignore_state` is `try_all`.
    pub fn pick(
        &self,
        class: usize,
        tried: &[usize],
        allow_probe: bool,
        ignore_state: bool,
    ) -> Option<Pick> {
        let usable = self.usable_now();
        let known = usable.of(class).filter(|_| !ignore_state);
        // A known set means every breaker of the class was closed when it
        // was built and none has moved since: a closed breaker passes every
        // call, so the chosen node's is not asked again (with many nodes, a
        // cold cache line per request).
        if ignore_state || !self.breakers_enabled || known.is_some() {
            let view = self.view(class, tried, &[], known, ignore_state);
            return pick(self.policy, &view, &self.cursor).map(|i| self.chosen(i, class, false));
        }
        // A node whose breaker refuses (or would only take a trial call a
        // retry may not make) is passed over; after a few, the rest are
        // scanned in order, so a usable node is never missed.
        let mut refused = [usize::MAX; 4];
        for round in 0..self.nodes.len() {
            let view = self.view(class, tried, &refused, None, false);
            let index = pick(self.policy, &view, &self.cursor)?;
            if let Some(p) = self.admit(index, class, allow_probe) {
                return Some(p);
            }
            match refused.get_mut(round) {
                Some(slot) => *slot = index,
                None => break,
            }
        }
        let view = self.view(class, tried, &refused, None, false);
        (0..self.nodes.len())
            .filter(|i| view.usable(*i))
            .find_map(|i| self.admit(i, class, allow_probe))
    }

    fn view<'a>(
        &'a self,
        class: usize,
        tried: &'a [usize],
        refused: &'a [usize],
        known: Option<&'a [usize]>,
        ignore_state: bool,
    ) -> PoolView<'a> {
        PoolView {
            set: self,
            class,
            tried,
            refused,
            known,
            ignore_state,
        }
    }

    /// Asks node `index`'s breaker for `class` to take the call.
    fn admit(&self, index: usize, class: usize, allow_probe: bool) -> Option<Pick> {
        let node = &self.nodes[index];
        let Some(b) = node.breaker(class) else {
            return Some(self.chosen(index, class, false));
        };
        let (admission, moved) = b.breaker.admit();
        if let Some(t) = moved {
            b.count_transition(&t);
            info!(backend = %self.backend, node = %node.addr, class = %b.class, reason = t.reason.as_str(), "breaker half-open: sending trial calls");
        }
        match admission {
            Admission::Pass => Some(self.chosen(index, class, false)),
            Admission::Probe if allow_probe => Some(self.chosen(index, class, true)),
            Admission::Probe => {
                b.breaker.cancel_probe();
                None
            }
            Admission::Reject => None,
        }
    }

    fn chosen(&self, index: usize, class: usize, probe: bool) -> Pick {
        Pick {
            index,
            node: Arc::clone(&self.nodes[index]),
            class,
            probe,
        }
    }

    /// Feeds one call's outcome, known at `now`, back: the node's counters,
    /// its load estimate and its breaker for the pick's class (logging and
    /// counting any move). Returns whether the call counts as a failure.
    pub fn record(
        &self,
        pick: &mut Pick,
        now: Instant,
        elapsed: Duration,
        outcome: Outcome,
    ) -> bool {
        let node = &pick.node;
        let (failed, unreachable) = match outcome {
            Outcome::Status(status) => {
                node.stats.latency.observe(elapsed);
                node.stats.outcomes.record_status(status);
                (self.failure_statuses.contains(&status), false)
            }
            Outcome::Failed(reason) => {
                node.stats.outcomes.record_error(reason);
                (
                    true,
                    matches!(
                        reason,
                        ErrorReason::UpstreamConnect | ErrorReason::UpstreamTls
                    ),
                )
            }
        };
        // The named classes' scores through the slot selection read.
        let named = self
            .slots
            .get(pick.index)
            .filter(|slot| Arc::ptr_eq(&slot.hot, &node.stats))
            .map_or(&node.named, |slot| &slot.named);
        node.load().observe(named, now, pick.class, elapsed, failed);
        // A node's ramp has no gradient limit: steady, it has nothing to
        // learn from a call (and neither it nor its policy is read).
        if node.load().ramping() {
            node.ramp.record_at(now, elapsed, failed);
            node.mirror_ramp();
        }
        let probe = std::mem::take(&mut pick.probe);
        if !self.breakers_enabled {
            return failed;
        }
        let (Some(b), Some(budget)) = (node.breaker(pick.class), self.budgets.get(pick.class))
        else {
            return failed;
        };
        let call = CallOutcome {
            failed,
            elapsed,
            unreachable,
        };
        let faster_peer = || self.faster_peer(pick.index, pick.class);
        match b.breaker.record_at(now, probe, call, budget, faster_peer) {
            Recorded::Nothing => {}
            Recorded::NoFasterPeer(w) => {
                debug!(backend = %self.backend, node = %node.addr, class = %b.class, calls = w.calls, slow = w.slow, "breaker would open on slow calls but no faster usable peer could take them: the node stays in");
            }
            Recorded::EjectionRefused(w) => {
                b.ejections_refused.fetch_add(1, Ordering::Relaxed);
                debug!(backend = %self.backend, node = %node.addr, class = %b.class, calls = w.calls, failures = w.failures, "breaker would open but max_ejected_percent keeps the node in");
            }
            Recorded::Moved(t) => {
                b.count_transition(&t);
                if t.to == BreakerState::Closed {
                    self.ramp_in(node);
                }
                warn!(
                    backend = %self.backend,
                    node = %node.addr,
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
        failed
    }
}

/// What selection reads of one node, by the pointers it follows: its
/// load estimate and, for a class that routes name, that class's failure
/// score. The slots lie packed (16 bytes each), so that with 1,000 nodes
/// the list stays in cache while the nodes it points to do not: a
/// candidate costs the one cold line its load estimate starts. The node
/// chosen is read through the node list, as compact.
#[derive(Debug)]
struct Slot {
    hot: Arc<NodeHot>,
    named: Arc<NamedFailures>,
}

impl Slot {
    fn of(node: &Arc<Node>) -> Self {
        Self {
            hot: Arc::clone(&node.stats),
            named: Arc::clone(&node.named),
        }
    }
}

/// Which nodes of a set are usable for each traffic class, as of a count
/// of gate moves ([`levee_resilience::moves`]).
#[derive(Debug)]
struct UsableNodes {
    moves: u64,
    /// By class: the usable nodes' indices, or `None` while a breaker of
    /// that class is open or half-open. An open breaker admits again once
    /// its time is up, and a half-open one as its trial calls end, neither
    /// with a move to count: selection then asks each node as it goes.
    by_class: Box<[Option<Box<[usize]>>]>,
}

impl UsableNodes {
    fn scan(nodes: &[Arc<Node>], classes: usize) -> Self {
        // Read before the gates: a move meanwhile leaves this set stale
        // under a count that has moved on, so the next pick rebuilds it.
        let moves = moves();
        let by_class = (0..classes.max(1))
            .map(|class| {
                let settled = nodes.iter().all(|n| {
                    n.breakers
                        .get(class)
                        .is_none_or(|b| b.breaker.state() == BreakerState::Closed)
                });
                settled.then(|| {
                    (0..nodes.len())
                        .filter(|i| nodes[*i].usable(class))
                        .collect()
                })
            })
            .collect();
        Self { moves, by_class }
    }

    fn of(&self, class: usize) -> Option<&[usize]> {
        self.by_class.get(class)?.as_deref()
    }
}

/// The nodes of one backend as selection sees them for one request.
struct PoolView<'a> {
    set: &'a NodeSet,
    class: usize,
    tried: &'a [usize],
    refused: &'a [usize],
    known: Option<&'a [usize]>,
    ignore_state: bool,
}

impl Pool for PoolView<'_> {
    fn size(&self) -> usize {
        self.set.nodes.len()
    }

    fn usable(&self, i: usize) -> bool {
        if self.excluded(i) {
            return false;
        }
        self.ignore_state || self.set.nodes[i].usable(self.class)
    }

    fn known_usable(&self) -> Option<&[usize]> {
        self.known
    }

    fn excluded(&self, i: usize) -> bool {
        self.tried.contains(&i) || self.refused.contains(&i)
    }

    fn in_flight(&self, i: usize) -> i64 {
        self.set.slots[i].hot.load.in_flight()
    }

    fn latency(&self, i: usize) -> Duration {
        self.set.slots[i].hot.load.latency()
    }

    fn penalty(&self, i: usize) -> f64 {
        let slot = &self.set.slots[i];
        slot.hot.load.penalty(&slot.named, self.class)
    }

    fn weight(&self, i: usize) -> f64 {
        self.set.slots[i].hot.load.weight()
    }
}

/// A node's traffic weight: steady at 1, ramping back in from
/// [`MIN_WEIGHT`] on observed health within `slow_start`, with the
/// backend's `[backend.adaptive]` tolerance and window.
fn node_ramp_policy(cfg: &BackendConfig) -> LimitPolicy {
    LimitPolicy {
        floor: MIN_WEIGHT,
        ceiling: 1.0,
        ramp_max: cfg.slow_start,
        tolerance: cfg.adaptive.tolerance,
        window: cfg.adaptive.window,
        gradient: false,
        min_rtt_interval: cfg.adaptive.min_rtt_interval,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config(nodes: &str, extra: &str) -> levee_config::Config {
        levee_config::parse(
            &format!("[server]\nlisten = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\nnodes = [{nodes}]\nslow_start = \"10s\"\n{extra}\n[backend.breaker]\nconsecutive_failures = 3\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n"),
            "t",
        )
        .unwrap()
    }

    /// `cfg`'s node set, its nodes all `ip:port`.
    fn build(cfg: &BackendConfig, classes: &ClassTable, previous: Option<&NodeSet>) -> NodeSet {
        let endpoints = crate::dns::endpoints(cfg, &crate::dns::Resolved::default());
        NodeSet::build(
            cfg,
            &endpoints,
            classes,
            1,
            previous,
            &Arc::new(AdaptiveLimit::new(LimitPolicy {
                floor: 1.0,
                ceiling: 8.0,
                ramp_max: cfg.slow_start,
                tolerance: 2.0,
                window: Duration::from_millis(100),
                gradient: false,
                min_rtt_interval: Duration::from_secs(30),
            })),
        )
    }

    fn fail_three_times(set: &NodeSet, index: usize) {
        for _ in 0..3 {
            let mut pick = Pick {
                index,
                node: Arc::clone(&set.nodes[index]),
                class: ClassTable::SAFE,
                probe: false,
            };
            set.record(
                &mut pick,
                Instant::now(),
                Duration::from_millis(1),
                Outcome::Failed(ErrorReason::UpstreamReset),
            );
        }
    }

    /// `n` calls of node `index` answered 200 after `elapsed`.
    fn answer(set: &NodeSet, index: usize, elapsed: Duration, n: usize) {
        for _ in 0..n {
            let mut pick = set.chosen(index, ClassTable::SAFE, false);
            set.record(&mut pick, Instant::now(), elapsed, Outcome::Status(200));
        }
    }

    fn safe_state(set: &NodeSet, index: usize) -> BreakerState {
        set.nodes[index]
            .breaker(ClassTable::SAFE)
            .unwrap()
            .breaker
            .state()
    }

    /// Slow is past the default slow_call_duration of 2 s.
    const SLOW: Duration = Duration::from_secs(3);
    const FAST: Duration = Duration::from_millis(10);

    #[tokio::test(start_paused = true)]
    async fn slow_calls_eject_a_node_only_when_a_faster_peer_can_take_its_traffic() {
        let classes = ClassTable::new([]);
        // The only node, every call slow: it stays in, and the backend is
        // not in trouble for it.
        let one = build(&config("\"127.0.0.1:1\"", "").backends[0], &classes, None);
        answer(&one, 0, SLOW, 40);
        assert_eq!(safe_state(&one, 0), BreakerState::Closed);
        assert!(!one.strained(ClassTable::SAFE));
        // Failures still open it.
        fail_three_times(&one, 0);
        assert_eq!(safe_state(&one, 0), BreakerState::Open);

        // Two nodes read alike slow (levee starved, say): neither goes.
        let two = config("\"127.0.0.1:1\", \"127.0.0.1:2\"", "");
        let alike = build(&two.backends[0], &classes, None);
        answer(&alike, 1, SLOW, 1);
        answer(&alike, 0, SLOW, 40);
        answer(&alike, 1, SLOW, 40);
        assert_eq!(safe_state(&alike, 0), BreakerState::Closed);
        assert_eq!(safe_state(&alike, 1), BreakerState::Closed);
        assert!(!alike.strained(ClassTable::SAFE));

        // One slow beside a fast peer: that one is in trouble, and goes.
        let apart = build(&two.backends[0], &classes, None);
        answer(&apart, 1, FAST, 5);
        answer(&apart, 0, SLOW, 5);
        assert!(apart.strained(ClassTable::SAFE), "slower than its peer");
        answer(&apart, 0, SLOW, 15);
        assert_eq!(safe_state(&apart, 0), BreakerState::Open);
        let moved = apart.nodes[0].breaker(ClassTable::SAFE).unwrap().view();
        assert_eq!(
            moved.last_move.unwrap().transition.reason,
            TransitionReason::SlowRate
        );
        // The last usable node is never ejected for slowness alone.
        answer(&apart, 1, SLOW, 40);
        assert_eq!(safe_state(&apart, 1), BreakerState::Closed);
    }

    /// The nodes `n` picks for the safe class chose.
    fn picked(set: &NodeSet, n: usize) -> Vec<usize> {
        let mut seen: Vec<usize> = (0..n)
            .filter_map(|_| set.pick(ClassTable::SAFE, &[], true, false))
            .map(|p| p.index)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    /// The usable set selection draws from follows every health and
    /// breaker move, of this set's nodes or through another config
    /// version's set that shares them.
    #[tokio::test(start_paused = true)]
    async fn selection_follows_health_and_breaker_moves() {
        let classes = ClassTable::new([]);
        let cfg = config("\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"", "");
        let set = build(&cfg.backends[0], &classes, None);
        let same = build(&cfg.backends[0], &classes, Some(&set));
        assert_eq!(picked(&set, 200), [0, 1, 2]);

        set.nodes[1].health().record(false);
        assert_eq!(picked(&set, 200), [0, 2]);
        assert_eq!(picked(&same, 200), [0, 2], "the other version sees it");
        assert!(!set.has_alternative(ClassTable::SAFE, &[0, 2], false));

        fail_three_times(&same, 0);
        assert_eq!(picked(&set, 200), [2]);
        same.nodes[2].health().record(false);
        assert!(!set.any_usable(ClassTable::SAFE));
        assert!(set.pick(ClassTable::SAFE, &[], true, false).is_none());
        assert!(
            set.any_usable(ClassTable::UNSAFE),
            "node 0 is out for one class"
        );

        // An open breaker admits a trial once its time is up, with no move
        // to count until then.
        set.nodes[1].health().record(true);
        set.nodes[2].health().record(true);
        assert_eq!(picked(&set, 200), [1, 2]);
        assert!(set.pick(ClassTable::SAFE, &[1, 2], true, false).is_none());
        tokio::time::advance(Duration::from_secs(60)).await;
        let trial = set.pick(ClassTable::SAFE, &[1, 2], true, false).unwrap();
        assert!(trial.index == 0 && trial.is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_the_node_breaker() {
        let cfg = config("\"127.0.0.1:1\", \"127.0.0.1:2\"", "");
        let set = build(&cfg.backends[0], &ClassTable::new([]), None);
        fail_three_times(&set, 0);
        let br = set.nodes[0].breaker(ClassTable::SAFE).unwrap();
        assert_eq!(br.breaker.state(), BreakerState::Open);
        assert!(!set.nodes[0].usable(ClassTable::SAFE));
        assert!(
            set.nodes[0].usable(ClassTable::UNSAFE),
            "other class unaffected"
        );
        assert!(!set.nodes[0].ramp.is_ramping(), "startup nodes do not ramp");
    }

    /// A node still ramping in when the whole pool went out does not keep
    /// its partial weight when the pool returns: the pool's ramp, from its
    /// floor, paces it level with its peers.
    #[tokio::test(start_paused = true)]
    async fn a_node_ramping_when_the_pool_goes_out_returns_level_with_its_peers() {
        let cfg = config("\"127.0.0.1:1\", \"127.0.0.1:2\"", "");
        let set = build(&cfg.backends[0], &ClassTable::new([]), None);
        // Node 0 came back on its own and is part of the way in.
        set.ramp_in(&set.nodes[0]);
        let ramp = set.nodes[0].ramp();
        ramp.record(Duration::from_millis(1), false);
        for _ in 0..2 {
            tokio::time::advance(Duration::from_secs(1)).await;
            ramp.record(Duration::from_millis(1), false);
        }
        let partial = ramp.limit();
        assert!(
            ramp.is_ramping() && partial > MIN_WEIGHT && partial < 1.0,
            "{partial}"
        );

        // The whole pool goes out, then comes back.
        set.pool.mark_out();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(set.resume());
        assert_eq!(set.pool.phase(), LimitPhase::Ramping);
        assert_eq!(set.pool.limit(), 1.0, "the pool ramps from its floor");
        for node in set.nodes() {
            assert!(!node.ramp().is_ramping(), "{}", node.addr);
            assert_eq!(
                node.ramp().limit(),
                1.0,
                "{}: level with its peers",
                node.addr
            );
        }
        assert!(!set.resume(), "once per outage");
        // A node back while the pool still ramps is paced by the pool.
        set.ramp_in(&set.nodes[1]);
        assert!(!set.nodes[1].ramp().is_ramping());
    }

    /// Selection reads a node's slow-start weight from the slot it weighs
    /// nodes by: the copy follows the ramp from its start to its end.
    #[tokio::test(start_paused = true)]
    async fn selection_weighs_a_ramping_node_by_its_ramp() {
        let cfg = config("\"127.0.0.1:1\", \"127.0.0.1:2\"", "");
        let set = build(&cfg.backends[0], &ClassTable::new([]), None);
        set.ramp_in(&set.nodes[1]);
        let load = &set.slots[1].hot.load;
        assert!(load.ramping());
        assert_eq!(load.weight(), MIN_WEIGHT);
        let share = (0..2000)
            .filter_map(|_| set.pick(ClassTable::SAFE, &[], true, false))
            .filter(|p| p.index == 1)
            .count();
        assert!(share < 400, "a ramping node gets a smaller share: {share}");
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(1)).await;
            answer(&set, 0, FAST, 5);
            answer(&set, 1, FAST, 5);
        }
        assert!(!set.nodes[1].ramp().is_ramping(), "the ramp ran its course");
        assert!(!load.ramping());
        assert_eq!(load.weight(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebuild_keeps_state_of_kept_nodes_and_ramps_new_ones() {
        let classes = ClassTable::new([]);
        let before = config("\"127.0.0.1:1\", \"127.0.0.1:2\"", "");
        let old = build(&before.backends[0], &classes, None);
        fail_three_times(&old, 0);
        let after = config("\"127.0.0.1:1\", \"127.0.0.1:3\"", "max_in_flight = 99");
        let new = build(&after.backends[0], &classes, Some(&old));
        let kept = &new.nodes[0];
        assert_eq!(
            kept.breaker(ClassTable::SAFE).unwrap().breaker.state(),
            BreakerState::Open,
            "an open breaker stays open"
        );
        assert!(Arc::ptr_eq(&kept.stats, &old.nodes[0].stats));
        assert!(
            Arc::ptr_eq(&kept.pools, &old.nodes[0].pools),
            "idle connections kept"
        );
        assert!(new.nodes[1].ramp.is_ramping(), "a new node ramps in");
        assert!(!kept.ramp.is_ramping());

        // A changed breaker policy starts fresh breakers.
        let policy = config("\"127.0.0.1:1\"", "").backends[0].clone();
        let mut policy = policy;
        policy.breaker.consecutive_failures = 9;
        let fresh = build(&policy, &classes, Some(&new));
        assert_eq!(
            fresh.nodes[0]
                .breaker(ClassTable::SAFE)
                .unwrap()
                .breaker
                .state(),
            BreakerState::Closed
        );
    }

    /// A request counts in its node's load slot until its guard drops,
    /// also when a reload that changes the traffic classes has replaced
    /// the node set meanwhile: the slot stays with the node, the named
    /// classes' scores start afresh.
    #[tokio::test(start_paused = true)]
    async fn the_in_flight_count_follows_the_node_across_a_new_class_list() {
        let cfg = config("\"127.0.0.1:1\"", "");
        let old = build(&cfg.backends[0], &ClassTable::new([]), None);
        let node = Arc::clone(&old.nodes[0]);
        let guard = node.enter();
        assert_eq!(node.in_flight(), 1);
        let new = build(&cfg.backends[0], &ClassTable::new(["reports"]), Some(&old));
        assert_eq!(new.nodes[0].in_flight(), 1, "the slot is kept");
        assert!(!Arc::ptr_eq(&new.nodes[0].named, &old.nodes[0].named));
        drop(guard);
        assert_eq!(new.nodes[0].in_flight(), 0);
        assert_eq!(NodeView::in_flight(&*new.nodes[0]), 0);
    }

    #[tokio::test]
    async fn a_changed_protocol_or_tls_setting_rebuilds_the_pools() {
        let classes = ClassTable::new([]);
        let plain = config("\"127.0.0.1:1\"", "");
        let old = build(&plain.backends[0], &classes, None);
        let same = build(&plain.backends[0], &classes, Some(&old));
        assert!(Arc::ptr_eq(&same.nodes[0].pools, &old.nodes[0].pools));

        let h2 = config("\"127.0.0.1:1\"", "protocol = \"http2\"");
        let h2 = build(&h2.backends[0], &classes, Some(&same));
        assert!(!Arc::ptr_eq(&h2.nodes[0].pools, &same.nodes[0].pools));

        let tls = config("\"127.0.0.1:1\"", "tls = true");
        let tls = build(&tls.backends[0], &classes, Some(&same));
        assert!(!Arc::ptr_eq(&tls.nodes[0].pools, &same.nodes[0].pools));
        assert!(
            Arc::ptr_eq(&tls.nodes[0].stats, &same.nodes[0].stats),
            "the node's own state stays"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_pick_gives_its_trial_slot_back() {
        let cfg = config("\"127.0.0.1:1\"", "");
        let mut cfg = cfg;
        cfg.backends[0].breaker.half_open_calls = 1;
        let set = build(&cfg.backends[0], &ClassTable::new([]), None);
        fail_three_times(&set, 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        let pick = set.pick(ClassTable::SAFE, &[], true, false).unwrap();
        assert!(pick.is_probe());
        let again = set.pick(ClassTable::SAFE, &[], true, false);
        drop(pick);
        drop(again);
        let after = set.pick(ClassTable::SAFE, &[], true, false);
        assert!(after.is_some_and(|p| p.is_probe()), "the slot came back");
    }
}
