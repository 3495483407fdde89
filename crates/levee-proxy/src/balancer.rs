//! Node selection: round robin, least request, and power of two choices over
//! peak-EWMA latency, all failure-aware and slow-start aware.
//!
//! A node that answers errors fast must lose traffic, not win it because it
//! looks fast: every outcome also feeds a decaying failure score that
//! multiplies its cost. The penalty is strong enough that a node failing a
//! fifth of its calls four times faster than its peers loses, but it never
//! starves a node completely (`EXPLORE`): the breaker, which needs calls to
//! judge, is what ejects. Scores are lower-is-better: `latency × (in_flight + 1) ×
//! (1 + FAILURE_WEIGHT × failure odds) / slow-start weight`.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use levee_config::LoadBalancing;
use tokio::time::Instant;

/// Decay time of the estimates: old observations fade over ~10 s.
const DECAY: Duration = Duration::from_secs(10);
/// How strongly the failure score multiplies a node's cost.
const FAILURE_WEIGHT: f64 = 50.0;
/// Share of picks that ignore cost and take a random usable node, so a
/// penalised node still gets the few calls its breaker needs to judge it
/// (and a recovered node gets the calls that prove it).
const EXPLORE: f64 = 0.02;
/// Latency assumed for a node with no observations yet.
const DEFAULT_LATENCY_US: f64 = 1_000.0;

/// A node's load: its requests in flight, its latency estimate and, per
/// traffic class, its failure score, updated with atomics (a lost update
/// under a race only blurs an estimate). Failures are kept per class so
/// that a node failing its writes loses write traffic while keeping its
/// share of reads.
///
/// It is what selection reads of a node, in one cache line: with 1,000
/// nodes every pick meets cold nodes, and each further allocation it read
/// would be a further miss. So the node's slow-start weight is copied here
/// from its ramp ([`LoadEstimate::mirror_ramp`]), the scores of the
/// classes routes name, which a new class list starts afresh while the
/// slot stays (its in-flight count must), are apart ([`NamedFailures`]),
/// and its time stamps count from one origin for all ([`origin`]).
#[derive(Debug)]
#[repr(C, align(64))]
pub struct LoadEstimate {
    in_flight: AtomicI64,
    ramp: RampMirror,
    latency: Decaying,
    /// The `safe` and `unsafe` classes' scores (their indices never change).
    failure: [Decaying; 2],
}

const _: () = assert!(std::mem::size_of::<LoadEstimate>() == 64);

/// Where every estimate's time stamps count from: an hour before the first
/// estimate was made, so that no clock an estimate is fed from reads
/// earlier (tokio's paused clock, in tests, starts at its runtime's start).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

/// Microseconds from [`origin`] to `at`.
fn stamp(at: Instant) -> u64 {
    at.saturating_duration_since(origin()).as_micros() as u64
}

/// A node's failure scores of the traffic classes routes name (class 2 on).
#[derive(Debug, Default)]
pub struct NamedFailures(Box<[Decaying]>);

impl NamedFailures {
    /// Scores for `classes`, as if last updated at `since`: when the node's
    /// load estimate was made, whose own scores start there too.
    pub fn new(classes: usize, since: Instant) -> Self {
        let since = stamp(since);
        Self((2..classes).map(|_| Decaying::new(0.0, since)).collect())
    }
}

/// A node ramp's weight and whether it is ramping, in one word: the
/// weight's bits, negated while it ramps (a weight is always positive).
#[derive(Debug)]
struct RampMirror(AtomicU64);

impl RampMirror {
    fn encode(weight: f64, ramping: bool) -> u64 {
        let w = weight.abs();
        if ramping { -w } else { w }.to_bits()
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A value and the time (µs from [`origin`]) it was last updated.
#[derive(Debug)]
struct Decaying {
    value: AtomicU64,
    stamp_us: AtomicU64,
}

impl Decaying {
    fn new(value: f64, now_us: u64) -> Self {
        Self {
            value: AtomicU64::new(value.to_bits()),
            stamp_us: AtomicU64::new(now_us),
        }
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.value.load(Ordering::Relaxed))
    }

    /// The weight of the old value: `exp(-dt / DECAY)` since the last update.
    fn keep(&self, now_us: u64) -> f64 {
        let last = self.stamp_us.swap(now_us, Ordering::Relaxed);
        let dt = now_us.saturating_sub(last) as f64;
        (-dt / DECAY.as_micros() as f64).exp()
    }

    /// Moves the stamp to `now_us` where the decay would not change the
    /// value (no `exp()` to compute).
    fn touch(&self, now_us: u64) {
        self.stamp_us.store(now_us, Ordering::Relaxed);
    }

    fn set(&self, v: f64) {
        self.value.store(v.to_bits(), Ordering::Relaxed);
    }
}

impl Default for LoadEstimate {
    /// A new node's: its first observation decays the defaults by the time
    /// since it was made.
    fn default() -> Self {
        let now = stamp(Instant::now());
        Self {
            in_flight: AtomicI64::new(0),
            ramp: RampMirror(AtomicU64::new(RampMirror::encode(1.0, false))),
            latency: Decaying::new(DEFAULT_LATENCY_US, now),
            failure: [Decaying::new(0.0, now), Decaying::new(0.0, now)],
        }
    }
}

impl LoadEstimate {
    fn failure<'a>(&'a self, named: &'a NamedFailures, class: usize) -> Option<&'a Decaying> {
        match self.failure.get(class) {
            Some(f) => Some(f),
            None => named.0.get(class - self.failure.len()),
        }
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in; [`LoadEstimate::exit`] counts it out.
    pub fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn exit(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Copies the weight and phase of the node's ramp (which it asks for
    /// again after storing them, so that of two racing copies the last one
    /// stored is current). Called after every change of the ramp.
    pub fn mirror_ramp(&self, weight: impl Fn() -> (f64, bool)) {
        let mut now = weight();
        // Whoever changes the ramp copies it after: a copy that keeps
        // seeing changes may leave the last one to that caller.
        for _ in 0..4 {
            self.ramp
                .0
                .store(RampMirror::encode(now.0, now.1), Ordering::Relaxed);
            let again = weight();
            if again == now {
                return;
            }
            now = again;
        }
    }

    /// The node's slow-start weight, in (0, 1].
    pub fn weight(&self) -> f64 {
        self.ramp.get().abs()
    }

    /// Whether the node is ramping back in.
    pub fn ramping(&self) -> bool {
        self.ramp.get().is_sign_negative()
    }

    /// Feeds one call of `class` that ended at `now`: its time to response
    /// headers and whether it failed.
    pub fn observe(
        &self,
        named: &NamedFailures,
        now: Instant,
        class: usize,
        rtt: Duration,
        failed: bool,
    ) {
        let now = stamp(now);
        let prev = self.latency.get();
        let rtt_us = rtt.as_micros() as f64;
        // Peak EWMA: jump up to a worse latency at once, decay down slowly.
        let next = if rtt_us > prev {
            self.latency.touch(now);
            rtt_us
        } else {
            let keep = self.latency.keep(now);
            prev * keep + rtt_us * (1.0 - keep)
        };
        self.latency.set(next);
        let Some(f) = self.failure(named, class) else {
            return;
        };
        // A zero score stays zero on a success, whatever the decay.
        if !failed && f.get() == 0.0 {
            f.touch(now);
            return;
        }
        let keep = f.keep(now);
        // Failures move the score faster than successes bring it down.
        let (keep, hit) = if failed {
            (keep.min(0.9), 1.0)
        } else {
            (keep, 0.0)
        };
        f.set(f.get() * keep + hit * (1.0 - keep));
    }

    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency.get() as u64)
    }

    /// 0.0 (no recent failures of `class`) to 1.0 (every recent call failed).
    pub fn failure_score(&self, named: &NamedFailures, class: usize) -> f64 {
        self.failure(named, class).map_or(0.0, Decaying::get)
    }

    /// Grows with the odds of failure, so a node that fails nearly every
    /// call loses even to a slow node that succeeds.
    pub fn penalty(&self, named: &NamedFailures, class: usize) -> f64 {
        let s = self.failure_score(named, class).clamp(0.0, 0.99);
        1.0 + FAILURE_WEIGHT * s / (1.0 - s)
    }
}

/// What selection needs to know about a backend's nodes, by index.
pub trait Pool {
    fn size(&self) -> usize;
    /// Healthy, breaker admits, not excluded.
    fn usable(&self, i: usize) -> bool;
    /// The usable nodes in index order, when they are known without asking
    /// each one (a set kept between breaker and health moves): a pick then
    /// draws among them and asks its candidates only whether they are
    /// [`Pool::excluded`].
    fn known_usable(&self) -> Option<&[usize]>;
    /// Not to be picked by this request (tried already, or refused).
    fn excluded(&self, i: usize) -> bool;
    fn in_flight(&self, i: usize) -> i64;
    fn latency(&self, i: usize) -> Duration;
    /// Cost multiplier for recent failures of this request's class.
    fn penalty(&self, i: usize) -> f64;
    /// Slow-start share in (0, 1].
    fn weight(&self, i: usize) -> f64;
}

/// Random draws a pick makes before it falls back to counting the usable
/// nodes: enough that a backend with most of its nodes usable never counts.
const DRAWS: usize = 8;

/// Picks a node index, or `None` when none is usable. This costs the same
/// for 3 nodes as for 1,000: random candidates are drawn from the usable
/// set where the pool knows it (else from the whole list, the unusable ones
/// drawn again), which picks uniformly among the usable nodes as counting
/// them would.
pub fn pick(policy: LoadBalancing, pool: &impl Pool, cursor: &AtomicUsize) -> Option<usize> {
    let known = pool.known_usable();
    let candidates = Candidates {
        pool,
        known,
        every: known.is_some_and(|k| k.len() == pool.size()),
    };
    match policy {
        LoadBalancing::RoundRobin => {
            candidates.iter().next()?;
            round_robin(pool, cursor)
        }
        LoadBalancing::LeastRequest => two_choices(&candidates, |i| {
            (pool.in_flight(i).max(0) as f64 + 1.0) * pool.penalty(i) / pool.weight(i)
        }),
        LoadBalancing::P2cEwma => two_choices(&candidates, |i| {
            let latency = pool.latency(i).as_micros().max(1) as f64;
            latency * (pool.in_flight(i).max(0) as f64 + 1.0) * pool.penalty(i) / pool.weight(i)
        }),
    }
}

/// What a pick draws from: the known usable set, else every node.
struct Candidates<'a, P> {
    pool: &'a P,
    known: Option<&'a [usize]>,
    /// The known set holds every node, so position `k` is node `k`: a draw
    /// reads no list (with 1,000 nodes, a cache miss per draw).
    every: bool,
}

impl<P: Pool> Candidates<'_, P> {
    fn drawable(&self) -> usize {
        self.known.map_or_else(|| self.pool.size(), <[usize]>::len)
    }

    /// The node at draw position `k`.
    fn node(&self, k: usize) -> usize {
        match self.known {
            Some(known) if !self.every => known[k],
            _ => k,
        }
    }

    /// Whether drawn node `i` may take the request.
    fn fits(&self, i: usize) -> bool {
        if self.known.is_some() {
            !self.pool.excluded(i)
        } else {
            self.pool.usable(i)
        }
    }

    /// The nodes that may take the request, in order.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.drawable())
            .map(|k| self.node(k))
            .filter(|i| self.fits(*i))
    }
}

/// The next usable node in turn; a ramping node is passed over with
/// probability `1 - weight` (but never all of them).
fn round_robin(pool: &impl Pool, cursor: &AtomicUsize) -> Option<usize> {
    let n = pool.size();
    let start = cursor.fetch_add(1, Ordering::Relaxed);
    let mut first_usable = None;
    for step in 0..n {
        let i = (start + step) % n;
        if !pool.usable(i) {
            continue;
        }
        first_usable.get_or_insert(i);
        let w = pool.weight(i);
        if w >= 1.0 || fastrand::f64() < w {
            return Some(i);
        }
    }
    first_usable
}

/// Power of two choices: two distinct usable nodes at random, the lower
/// cost wins. Each is drawn at random until one that fits comes up;
/// whether both come up within [`DRAWS`] does not depend on which node
/// came first, so the pair is as uniform as a counted one.
fn two_choices<P: Pool>(c: &Candidates<'_, P>, cost: impl Fn(usize) -> f64) -> Option<usize> {
    let Some(a) = draw(c, None) else {
        return two_choices_counted(c, cost);
    };
    // With one node to draw from there is no second choice to look for
    // (a backend of one node: every request would make all its draws).
    if c.drawable() == 1 || fastrand::f64() < EXPLORE {
        return Some(a);
    }
    let Some(b) = draw(c, Some(a)) else {
        return two_choices_counted(c, cost);
    };
    if cost(b) < cost(a) {
        Some(b)
    } else {
        Some(a)
    }
}

/// A node drawn uniformly from those that fit, other than `other`, if one
/// comes up within [`DRAWS`] draws.
fn draw<P: Pool>(c: &Candidates<'_, P>, other: Option<usize>) -> Option<usize> {
    let n = c.drawable();
    if n == 0 {
        return None;
    }
    (0..DRAWS)
        .map(|_| c.node(fastrand::usize(..n)))
        .find(|i| Some(*i) != other && c.fits(*i))
}

/// [`two_choices`] by counting the nodes that fit: for a backend with few
/// of them left.
fn two_choices_counted<P: Pool>(
    c: &Candidates<'_, P>,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let usable = c.iter().count();
    if usable == 0 {
        return None;
    }
    if usable == 1 {
        return c.iter().next();
    }
    if fastrand::f64() < EXPLORE {
        return c.iter().nth(fastrand::usize(..usable));
    }
    let a = fastrand::usize(..usable);
    let mut b = fastrand::usize(..usable - 1);
    if b >= a {
        b += 1;
    }
    let ia = c.iter().nth(a)?;
    let ib = c.iter().nth(b)?;
    if cost(ib) < cost(ia) {
        Some(ib)
    } else {
        Some(ia)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    struct Fake {
        usable: bool,
        in_flight: i64,
        load: LoadEstimate,
        weight: f64,
    }

    fn fake() -> Fake {
        Fake {
            usable: true,
            in_flight: 0,
            load: LoadEstimate::default(),
            weight: 1.0,
        }
    }

    impl Pool for Vec<Fake> {
        fn size(&self) -> usize {
            self.as_slice().len()
        }
        fn usable(&self, i: usize) -> bool {
            self[i].usable
        }
        fn known_usable(&self) -> Option<&[usize]> {
            None
        }
        fn excluded(&self, _: usize) -> bool {
            false
        }
        fn in_flight(&self, i: usize) -> i64 {
            self[i].in_flight
        }
        fn latency(&self, i: usize) -> Duration {
            self[i].load.latency()
        }
        fn penalty(&self, i: usize) -> f64 {
            self[i].load.penalty(&NamedFailures::default(), 0)
        }
        fn weight(&self, i: usize) -> f64 {
            self[i].weight
        }
    }

    fn shares(policy: LoadBalancing, nodes: &Vec<Fake>, rounds: usize) -> Vec<usize> {
        let cursor = AtomicUsize::new(0);
        let mut counts = vec![0; nodes.len()];
        for _ in 0..rounds {
            counts[pick(policy, nodes, &cursor).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn unusable_nodes_are_never_picked_and_none_usable_is_none() {
        for policy in [
            LoadBalancing::RoundRobin,
            LoadBalancing::LeastRequest,
            LoadBalancing::P2cEwma,
        ] {
            let mut nodes = vec![fake(), fake(), fake()];
            nodes[1].usable = false;
            let counts = shares(policy, &nodes, 300);
            assert_eq!(counts[1], 0, "{policy:?}");
            assert!(counts[0] > 0 && counts[2] > 0, "{policy:?}");
            for n in &mut nodes {
                n.usable = false;
            }
            assert_eq!(pick(policy, &nodes, &AtomicUsize::new(0)), None);
        }
    }

    #[test]
    fn two_choices_spread_evenly_over_the_usable_nodes() {
        for policy in [LoadBalancing::LeastRequest, LoadBalancing::P2cEwma] {
            let mut nodes: Vec<Fake> = (0..10).map(|_| fake()).collect();
            for i in [0, 4, 5] {
                nodes[i].usable = false;
            }
            let counts = shares(policy, &nodes, 7000);
            for (i, count) in counts.iter().enumerate() {
                if nodes[i].usable {
                    assert!((800..1200).contains(count), "{policy:?} {counts:?}");
                } else {
                    assert_eq!(*count, 0, "{policy:?} {counts:?}");
                }
            }
        }
    }

    #[test]
    fn a_backend_of_one_node_gets_it_or_none() {
        for policy in [
            LoadBalancing::RoundRobin,
            LoadBalancing::LeastRequest,
            LoadBalancing::P2cEwma,
        ] {
            let mut nodes = vec![fake()];
            assert_eq!(shares(policy, &nodes, 100), [100], "{policy:?}");
            nodes[0].usable = false;
            assert_eq!(pick(policy, &nodes, &AtomicUsize::new(0)), None);
        }
    }

    #[test]
    fn a_mostly_unusable_pool_still_finds_its_usable_nodes() {
        for policy in [LoadBalancing::LeastRequest, LoadBalancing::P2cEwma] {
            let mut nodes: Vec<Fake> = (0..1000).map(|_| fake()).collect();
            for n in &mut nodes {
                n.usable = false;
            }
            nodes[7].usable = true;
            nodes[500].usable = true;
            let counts = shares(policy, &nodes, 400);
            assert_eq!(counts[7] + counts[500], 400, "{policy:?}");
            assert!(counts[7] > 100 && counts[500] > 100, "{policy:?}");
            nodes[500].usable = false;
            assert_eq!(shares(policy, &nodes, 50)[7], 50, "{policy:?}");
        }
    }

    /// `nodes` with a known usable set and some excluded.
    struct Known {
        nodes: Vec<Fake>,
        known: Vec<usize>,
        excluded: Vec<usize>,
    }

    impl Pool for Known {
        fn size(&self) -> usize {
            self.nodes.len()
        }
        fn usable(&self, i: usize) -> bool {
            !self.excluded(i) && self.known.contains(&i)
        }
        fn known_usable(&self) -> Option<&[usize]> {
            Some(&self.known)
        }
        fn excluded(&self, i: usize) -> bool {
            self.excluded.contains(&i)
        }
        fn in_flight(&self, i: usize) -> i64 {
            self.nodes.in_flight(i)
        }
        fn latency(&self, i: usize) -> Duration {
            self.nodes.latency(i)
        }
        fn penalty(&self, i: usize) -> f64 {
            self.nodes.penalty(i)
        }
        fn weight(&self, i: usize) -> f64 {
            self.nodes.weight(i)
        }
    }

    #[test]
    fn a_known_usable_set_is_drawn_from_evenly_without_its_excluded_nodes() {
        for policy in [LoadBalancing::LeastRequest, LoadBalancing::P2cEwma] {
            // The nodes' own flags say all usable: only the set counts.
            let pool = Known {
                nodes: (0..1000).map(|_| fake()).collect(),
                known: vec![3, 10, 500, 999],
                excluded: vec![500],
            };
            let cursor = AtomicUsize::new(0);
            let mut counts = [0usize; 1000];
            for _ in 0..3000 {
                counts[pick(policy, &pool, &cursor).unwrap()] += 1;
            }
            for (i, count) in counts.iter().enumerate() {
                if [3, 10, 999].contains(&i) {
                    assert!((800..1200).contains(count), "{policy:?} {i}: {count}");
                } else {
                    assert_eq!(*count, 0, "{policy:?} {i}");
                }
            }
            let none = Known {
                excluded: pool.known.clone(),
                ..pool
            };
            assert_eq!(pick(policy, &none, &cursor), None, "{policy:?}");
        }
    }

    #[test]
    fn round_robin_takes_turns() {
        let nodes = vec![fake(), fake(), fake()];
        assert_eq!(
            shares(LoadBalancing::RoundRobin, &nodes, 300),
            vec![100, 100, 100]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_ewma_avoids_a_slow_node_and_a_fast_failing_node() {
        let nodes = vec![fake(), fake(), fake()];
        for _ in 0..20 {
            nodes[0].load.observe(
                &NamedFailures::default(),
                Instant::now(),
                0,
                Duration::from_millis(5),
                false,
            );
            nodes[1].load.observe(
                &NamedFailures::default(),
                Instant::now(),
                0,
                Duration::from_millis(200),
                false,
            ); // slow
            nodes[2].load.observe(
                &NamedFailures::default(),
                Instant::now(),
                0,
                Duration::from_micros(300),
                true,
            ); // fast 500s
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        let counts = shares(LoadBalancing::P2cEwma, &nodes, 3000);
        assert!(counts[0] > 1900, "{counts:?}");
        assert!(
            counts[2] < 600,
            "a fast-failing node must not win: {counts:?}"
        );
        let counts = shares(LoadBalancing::LeastRequest, &nodes, 3000);
        assert!(
            counts[2] < 600,
            "least request is failure-aware too: {counts:?}"
        );
    }

    #[test]
    fn least_request_prefers_idle_nodes() {
        let mut nodes = vec![fake(), fake()];
        nodes[0].in_flight = 50;
        let counts = shares(LoadBalancing::LeastRequest, &nodes, 1000);
        assert!(
            counts[0] < 40,
            "only exploration picks the busy node: {counts:?}"
        );
    }

    #[test]
    fn a_ramping_node_gets_a_smaller_share() {
        let mut nodes = vec![fake(), fake()];
        nodes[1].weight = 0.1;
        let rr = shares(LoadBalancing::RoundRobin, &nodes, 2000);
        assert!(rr[1] < 400, "{rr:?}");
        let p2c = shares(LoadBalancing::P2cEwma, &nodes, 2000);
        assert!(p2c[1] < 200, "{p2c:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_one_class_do_not_penalise_another() {
        let l = LoadEstimate::default();
        // safe, unsafe and two classes routes name.
        let named = NamedFailures::new(4, Instant::now());
        for _ in 0..20 {
            l.observe(&named, Instant::now(), 1, Duration::from_millis(1), true);
            l.observe(&named, Instant::now(), 3, Duration::from_millis(1), true);
            l.observe(&named, Instant::now(), 0, Duration::from_millis(1), false);
            l.observe(&named, Instant::now(), 2, Duration::from_millis(1), false);
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        for class in [1, 3] {
            let p = l.penalty(&named, class);
            assert!(p > 100.0, "{class}: {p}");
        }
        for class in [0, 2] {
            let p = l.penalty(&named, class);
            assert!(p < 1.01, "{class}: {p}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failure_score_decays_after_recovery() {
        let l = LoadEstimate::default();
        let n = NamedFailures::default();
        for _ in 0..10 {
            l.observe(&n, Instant::now(), 0, Duration::from_millis(1), true);
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let high = l.failure_score(&n, 0);
        assert!(high > 0.5, "{high}");
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(500)).await;
            l.observe(&n, Instant::now(), 0, Duration::from_millis(1), false);
        }
        assert!(l.failure_score(&n, 0) < 0.05, "{}", l.failure_score(&n, 0));
        assert!(l.latency() < Duration::from_millis(20), "{:?}", l.latency());
    }
}
