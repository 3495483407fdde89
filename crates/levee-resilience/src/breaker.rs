//! A circuit breaker is a gate plus a policy.
//!
//! The request path asks the gate "may I pass?" with one atomic load
//! ([`Breaker::admit`]). Outcomes feed the policy ([`Breaker::record`]): a
//! sliding window of 1 s buckets (a second tag and packed counters, so
//! recording takes no lock) plus a consecutive-failure count. When the window
//! holds at least `min_calls` and its failure or slow rate crosses its
//! threshold, or failures run `consecutive_failures` in a row, the gate opens
//! for `open_for`, doubled for each re-open that follows soon after a close
//! (up to `open_for_max`, with jitter) so a flapping node stays out longer.
//! After that, `half_open_calls` trial calls are let through: all succeed and
//! the gate closes; any fails (or is slow) and it re-opens.
//!
//! Slowness is relative: a slow-rate trip, or a slow trial call, counts
//! against a node only when the caller says a faster usable peer could take
//! its traffic. Ejecting the last usable node, or one no slower than its
//! peers (as when the proxy itself is starved of CPU and reads every call
//! slow), sends its traffic nowhere better. Failures always count.
//!
//! An [`EjectionBudget`] shared by a backend's breakers caps how many nodes
//! error rates alone may eject, so one shared cause cannot empty a pool.
//! Time comes from `tokio::time`, so tests run with paused time.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Most buckets a window may have (one per second).
pub const MAX_WINDOW_BUCKETS: usize = 60;

/// What a breaker trips on and how it recovers. The defaults are
/// levee-config's (`[backend.breaker]`): this mechanism has none of its own.
///
/// In declared order: what recording a call reads first (see [`Breaker`]).
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct BreakerPolicy {
    pub slow_call_duration: Duration,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    /// Window length in 1 s buckets (1..=60).
    pub window_buckets: u32,
    /// 0 turns this trigger off.
    pub consecutive_failures: u32,
    pub min_calls: u32,
    pub open_for: Duration,
    pub open_for_max: Duration,
    pub half_open_calls: u32,
    /// Share of random spread on each open period (0 = none).
    pub jitter: f64,
}

/// The gate's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the gate moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionReason {
    FailureRate,
    SlowRate,
    Consecutive,
    OpenElapsed,
    ProbeFailed,
    ProbesSucceeded,
}

impl TransitionReason {
    pub const ALL: [TransitionReason; 6] = [
        TransitionReason::FailureRate,
        TransitionReason::SlowRate,
        TransitionReason::Consecutive,
        TransitionReason::OpenElapsed,
        TransitionReason::ProbeFailed,
        TransitionReason::ProbesSucceeded,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TransitionReason::FailureRate => "failure-rate",
            TransitionReason::SlowRate => "slow-rate",
            TransitionReason::Consecutive => "consecutive-failures",
            TransitionReason::OpenElapsed => "open-elapsed",
            TransitionReason::ProbeFailed => "probe-failed",
            TransitionReason::ProbesSucceeded => "probes-succeeded",
        }
    }
}

/// The window's figures at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowStats {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

impl WindowStats {
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    pub fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

/// A move of the gate, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: TransitionReason,
    pub window: WindowStats,
    pub consecutive_failures: u32,
    /// How long the gate stays open, for moves to `Open`.
    pub open_for: Option<Duration>,
}

/// The gate's answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: a normal call.
    Pass,
    /// Half-open: a trial call. Report it with `record(true, ..)`, or give the
    /// slot back with [`Breaker::cancel_probe`] if it is never sent.
    Probe,
    /// Open, or half-open with every trial slot taken.
    Reject,
}

/// How a call went, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallOutcome {
    /// Connect error, reset, deadline, or a failure status.
    pub failed: bool,
    pub elapsed: Duration,
    /// The node could not be reached at all (connect refused or timed out).
    /// A trip on such a call is not bound by the ejection budget: an
    /// unreachable node is not an error rate, and keeping it in helps no one.
    pub unreachable: bool,
}

/// What recording an outcome did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Nothing,
    Moved(Transition),
    /// The policy would have opened the gate, but the backend's ejection
    /// budget is spent: the node stays in.
    EjectionRefused(WindowStats),
    /// The window is past its slow-call rate, but no faster usable peer
    /// could take the node's traffic: the node stays in.
    NoFasterPeer(WindowStats),
}

/// Caps how many of a backend's nodes error rates may eject at once.
#[derive(Debug)]
pub struct EjectionBudget {
    ejected: AtomicU32,
    max: u32,
}

impl EjectionBudget {
    /// `percent` of `nodes`, but at least one node when `percent > 0`.
    pub fn new(nodes: usize, percent: u8) -> Self {
        let nodes = u32::try_from(nodes).unwrap_or(u32::MAX);
        let max = if percent == 0 {
            0
        } else {
            (nodes.saturating_mul(u32::from(percent.min(100))) / 100).max(1)
        };
        Self {
            ejected: AtomicU32::new(0),
            max,
        }
    }

    fn try_eject(&self) -> bool {
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// The budget for a resized backend (a reload): ejections in force
    /// still count against it.
    pub fn resized(&self, nodes: usize, percent: u8) -> Self {
        let next = Self::new(nodes, percent);
        next.ejected.store(self.ejected(), Ordering::Release);
        next
    }

    pub fn ejected(&self) -> u32 {
        self.ejected.load(Ordering::Acquire)
    }

    pub fn max(&self) -> u32 {
        self.max
    }
}

// A bucket is a full-width second tag plus three saturating 21-bit
// counters packed in one word, so adding to it is one atomic add.
const COUNT_BITS: u32 = 21;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

fn pack(calls: u64, failures: u64, slow: u64) -> u64 {
    calls.min(COUNT_MAX)
        | (failures.min(COUNT_MAX) << COUNT_BITS)
        | (slow.min(COUNT_MAX) << (2 * COUNT_BITS))
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (
        v & COUNT_MAX,
        (v >> COUNT_BITS) & COUNT_MAX,
        (v >> (2 * COUNT_BITS)) & COUNT_MAX,
    )
}

/// One second of outcomes.
#[derive(Debug, Default)]
struct Bucket {
    /// The second (from the breaker's origin) these counts belong to, plus one
    /// (0 = never written).
    second: AtomicU64,
    counts: AtomicU64,
}

impl Bucket {
    /// Counts a call at `now_s`, a later second than the bucket's starting
    /// it over (a call that comes in late counts in the bucket's second).
    /// Returns the second and packed counts it started over from, if any.
    fn add(&self, now_s: u64, failed: bool, slow: bool) -> Option<(u64, u64)> {
        let tag = now_s + 1;
        let seen = self.second.load(Ordering::Acquire);
        if seen < tag
            && self
                .second
                .compare_exchange(seen, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This caller rolled the bucket over to the new second. A
            // concurrent add in between may count in the old one: the
            // window is an estimate.
            let ended = self.counts.swap(
                pack(1, u64::from(failed), u64::from(slow)),
                Ordering::AcqRel,
            );
            return seen.checked_sub(1).map(|second| (second, ended));
        }
        let _ = self
            .counts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (c, f, s) = unpack(v);
                Some(pack(c + 1, f + u64::from(failed), s + u64::from(slow)))
            });
        None
    }

    /// Holds `counts` (packed) of second `second`.
    fn set(&self, second: u64, counts: u64) {
        self.counts.store(counts, Ordering::Release);
        self.second.store(second + 1, Ordering::Release);
    }

    /// The counts if they belong to the `n` seconds ending at `now_s`.
    fn read(&self, now_s: u64, n: u64) -> (u64, u64, u64) {
        let tag = self.second.load(Ordering::Acquire);
        if tag == 0 || tag > now_s + 1 || now_s + 1 - tag >= n {
            return (0, 0, 0);
        }
        unpack(self.counts.load(Ordering::Acquire))
    }

    fn clear(&self) {
        self.second.store(0, Ordering::Release);
        self.counts.store(0, Ordering::Release);
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
const NEVER: u64 = u64::MAX;

/// One node's breaker for one traffic class.
///
/// In declared order: what admitting a call and recording one read and
/// write (88 bytes, the latest second's counts among them; the first 64
/// for a call that went well while the window holds no bad one), so that
/// a breaker met cold costs few cache misses.
#[derive(Debug)]
#[repr(C)]
pub struct Breaker {
    state: AtomicU8,
    /// The policy's `failure_rate` and `slow_call_rate` are both above
    /// zero: a window holding no failed or slow call is below both.
    calm_when_clean: bool,
    /// The policy's `window_buckets`, beside the state (in what would be
    /// padding), so that recording a call that went well reads no policy.
    window_len: u16,
    consecutive: AtomicU32,
    /// The second (plus one; 0 = never) of the latest failed or slow call:
    /// while it is out of the window, a call that is neither cannot move
    /// the gate, and recording it reads no bucket but the latest.
    last_bad_s: AtomicU64,
    origin: Instant,
    /// The latest second's outcomes. Here rather than in `buckets`, where
    /// each second would be a further cache line to meet cold; a call in a
    /// later second moves them to their place there.
    latest: Bucket,
    policy: BreakerPolicy,
    /// Microseconds from `origin` at which an open gate may half-open.
    open_until_us: AtomicU64,
    /// The seconds before `latest`, each at its index modulo the window.
    buckets: [Bucket; MAX_WINDOW_BUCKETS],
    probes_started: AtomicU32,
    probes_passed: AtomicU32,
    /// How many times in a row the gate re-opened soon after closing.
    reopen_level: AtomicU32,
    closed_at_us: AtomicU64,
    opened_total: AtomicU64,
    /// Whether the open gate counts against the ejection budget.
    holds_ejection: AtomicBool,
}

impl Breaker {
    pub fn new(policy: BreakerPolicy) -> Self {
        let mut policy = policy;
        policy.window_buckets = policy.window_buckets.clamp(1, MAX_WINDOW_BUCKETS as u32);
        policy.half_open_calls = policy.half_open_calls.max(1);
        policy.min_calls = policy.min_calls.max(1);
        Self {
            calm_when_clean: policy.failure_rate > 0.0 && policy.slow_call_rate > 0.0,
            window_len: policy.window_buckets as u16,
            policy,
            origin: Instant::now(),
            state: AtomicU8::new(CLOSED),
            open_until_us: AtomicU64::new(0),
            latest: Bucket::default(),
            buckets: std::array::from_fn(|_| Bucket::default()),
            last_bad_s: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            probes_started: AtomicU32::new(0),
            probes_passed: AtomicU32::new(0),
            reopen_level: AtomicU32::new(0),
            closed_at_us: AtomicU64::new(NEVER),
            opened_total: AtomicU64::new(0),
            holds_ejection: AtomicBool::new(false),
        }
    }

    pub fn policy(&self) -> &BreakerPolicy {
        &self.policy
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Times the gate has opened.
    pub fn opened_total(&self) -> u64 {
        self.opened_total.load(Ordering::Relaxed)
    }

    /// Time left before an open gate half-opens.
    pub fn open_remaining(&self) -> Option<Duration> {
        (self.state() == BreakerState::Open).then(|| {
            let until = self.open_until_us.load(Ordering::Acquire);
            Duration::from_micros(until.saturating_sub(self.now_us()))
        })
    }

    /// Whether a call would be admitted now, without taking a trial slot.
    pub fn would_admit(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => self.now_us() >= self.open_until_us.load(Ordering::Acquire),
            _ => self.probes_started.load(Ordering::Acquire) < self.policy.half_open_calls,
        }
    }

    /// May a call pass? A half-open gate hands out `half_open_calls` trial
    /// slots. The second value is set when this call moved the gate.
    pub fn admit(&self) -> (Admission, Option<Transition>) {
        let mut moved = None;
        match self.state.load(Ordering::Acquire) {
            CLOSED => return (Admission::Pass, None),
            OPEN => {
                if self.now_us() < self.open_until_us.load(Ordering::Acquire) {
                    return (Admission::Reject, None);
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.probes_started.store(0, Ordering::Release);
                    self.probes_passed.store(0, Ordering::Release);
                    moved = Some(self.transition(
                        BreakerState::Open,
                        BreakerState::HalfOpen,
                        TransitionReason::OpenElapsed,
                        None,
                    ));
                }
            }
            _ => {}
        }
        let taken = self
            .probes_started
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.policy.half_open_calls).then_some(n + 1)
            });
        match taken {
            Ok(_) => (Admission::Probe, moved),
            Err(_) => (Admission::Reject, moved),
        }
    }

    /// Gives back a trial slot whose call was never sent.
    pub fn cancel_probe(&self) {
        if self.state.load(Ordering::Acquire) == HALF_OPEN {
            let _ = self
                .probes_started
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Feeds one outcome to the policy. `probe` says whether the call was
    /// admitted as a trial; outcomes of calls admitted before the gate opened
    /// are ignored while it is open. `faster_peer` says whether a usable
    /// peer answers faster than the slow-call duration; it is asked only
    /// when a slow call would move the gate.
    pub fn record(
        &self,
        probe: bool,
        outcome: CallOutcome,
        budget: &EjectionBudget,
        faster_peer: impl FnOnce() -> bool,
    ) -> Recorded {
        self.record_at(Instant::now(), probe, outcome, budget, faster_peer)
    }

    /// [`Breaker::record`] of an outcome known at `now`: the request path
    /// has just read the clock for the call's time, and passes it on.
    pub fn record_at(
        &self,
        now: Instant,
        probe: bool,
        outcome: CallOutcome,
        budget: &EjectionBudget,
        faster_peer: impl FnOnce() -> bool,
    ) -> Recorded {
        let slow = outcome.elapsed >= self.policy.slow_call_duration;
        match self.state.load(Ordering::Acquire) {
            HALF_OPEN if probe => {
                self.record_probe(outcome.failed || (slow && faster_peer()), budget)
            }
            CLOSED => self.record_closed(self.us_at(now), outcome, slow, budget, faster_peer),
            _ => Recorded::Nothing,
        }
    }

    fn record_probe(&self, failed: bool, budget: &EjectionBudget) -> Recorded {
        if failed {
            if self
                .state
                .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Recorded::Nothing;
            }
            let level = self.reopen_level.fetch_add(1, Ordering::AcqRel) + 1;
            let open_for = self.open_now(level);
            return Recorded::Moved(self.transition(
                BreakerState::HalfOpen,
                BreakerState::Open,
                TransitionReason::ProbeFailed,
                Some(open_for),
            ));
        }
        let passed = self.probes_passed.fetch_add(1, Ordering::AcqRel) + 1;
        if passed < self.policy.half_open_calls {
            return Recorded::Nothing;
        }
        if self
            .state
            .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Recorded::Nothing;
        }
        if self.holds_ejection.swap(false, Ordering::AcqRel) {
            budget.release();
        }
        self.clear_window();
        self.consecutive.store(0, Ordering::Release);
        self.closed_at_us.store(self.now_us(), Ordering::Release);
        Recorded::Moved(self.transition(
            BreakerState::HalfOpen,
            BreakerState::Closed,
            TransitionReason::ProbesSucceeded,
            None,
        ))
    }

    fn record_closed(
        &self,
        now_us: u64,
        outcome: CallOutcome,
        slow: bool,
        budget: &EjectionBudget,
        faster_peer: impl FnOnce() -> bool,
    ) -> Recorded {
        let CallOutcome {
            failed,
            unreachable,
            ..
        } = outcome;
        let now_s = now_us / 1_000_000;
        self.add_to_window(now_s, failed, slow);
        let consecutive = if failed {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            if self.consecutive.load(Ordering::Acquire) != 0 {
                self.consecutive.store(0, Ordering::Release);
            }
            0
        };
        if failed || slow {
            self.last_bad_s.store(now_s + 1, Ordering::Release);
        } else if self.clean_window(now_s) {
            return Recorded::Nothing;
        }
        let cf = self.policy.consecutive_failures;
        let window = self.window_at(now_s);
        let reason = if cf > 0 && consecutive >= cf {
            TransitionReason::Consecutive
        } else if window.calls >= self.policy.min_calls
            && window.failure_rate() >= self.policy.failure_rate
        {
            TransitionReason::FailureRate
        } else if window.calls >= self.policy.min_calls
            && window.slow_rate() >= self.policy.slow_call_rate
        {
            if !faster_peer() {
                return Recorded::NoFasterPeer(window);
            }
            TransitionReason::SlowRate
        } else {
            return Recorded::Nothing;
        };
        let counted = !unreachable;
        if counted && !budget.try_eject() {
            return Recorded::EjectionRefused(window);
        }
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            if counted {
                budget.release();
            }
            return Recorded::Nothing;
        }
        self.holds_ejection.store(counted, Ordering::Release);
        // Re-opening soon after a close escalates the open period.
        let closed_at = self.closed_at_us.load(Ordering::Acquire);
        let recently_closed = closed_at != NEVER
            && now_us.saturating_sub(closed_at) < duration_us(self.policy.open_for_max);
        let level = if recently_closed {
            self.reopen_level.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.reopen_level.store(0, Ordering::Release);
            0
        };
        let open_for = self.open_now(level);
        Recorded::Moved(self.transition(
            BreakerState::Closed,
            BreakerState::Open,
            reason,
            Some(open_for),
        ))
    }

    /// The window's figures now.
    pub fn window(&self) -> WindowStats {
        self.window_at(self.now_us() / 1_000_000)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Acquire)
    }

    fn open_now(&self, level: u32) -> Duration {
        let base = self.policy.open_for.as_secs_f64() * 2f64.powi(level.min(30) as i32);
        let capped = base.min(self.policy.open_for_max.as_secs_f64());
        let spread = self.policy.jitter.clamp(0.0, 1.0);
        let factor = if spread > 0.0 {
            1.0 + spread * (fastrand::f64() * 2.0 - 1.0)
        } else {
            1.0
        };
        let open_for = Duration::from_secs_f64((capped * factor).max(0.0));
        self.open_until_us.store(
            self.now_us().saturating_add(duration_us(open_for)),
            Ordering::Release,
        );
        self.opened_total.fetch_add(1, Ordering::Relaxed);
        open_for
    }

    fn add_to_window(&self, now_s: u64, failed: bool, slow: bool) {
        let Some((second, counts)) = self.latest.add(now_s, failed, slow) else {
            return;
        };
        // This call began a new second: the one it ended takes its place.
        let n = u64::from(self.window_len);
        self.buckets[(second % n) as usize].set(second, counts);
    }

    /// Whether the window ending at `now_s` holds no failed or slow call,
    /// so that its failure and slow rates are zero (a rate threshold of
    /// zero, met by any window, is never clean).
    fn clean_window(&self, now_s: u64) -> bool {
        let n = u64::from(self.window_len);
        let tag = self.last_bad_s.load(Ordering::Acquire);
        self.calm_when_clean && (tag == 0 || (tag <= now_s + 1 && now_s + 1 - tag >= n))
    }

    fn window_at(&self, now_s: u64) -> WindowStats {
        let n = u64::from(self.policy.window_buckets);
        let mut w = WindowStats::default();
        for bucket in std::iter::once(&self.latest).chain(&self.buckets[..n as usize]) {
            let (c, f, s) = bucket.read(now_s, n);
            w.calls = w.calls.saturating_add(c as u32);
            w.failures = w.failures.saturating_add(f as u32);
            w.slow = w.slow.saturating_add(s as u32);
        }
        w
    }

    fn clear_window(&self) {
        self.latest.clear();
        for b in &self.buckets {
            b.clear();
        }
    }

    /// The record of a move that has just happened; counted in
    /// [`crate::moves`].
    fn transition(
        &self,
        from: BreakerState,
        to: BreakerState,
        reason: TransitionReason,
        open_for: Option<Duration>,
    ) -> Transition {
        crate::moves::moved();
        Transition {
            from,
            to,
            reason,
            window: self.window(),
            consecutive_failures: self.consecutive.load(Ordering::Acquire),
            open_for,
        }
    }

    fn now_us(&self) -> u64 {
        self.us_at(Instant::now())
    }

    /// Microseconds from the origin to `at`.
    fn us_at(&self, at: Instant) -> u64 {
        duration_us(at.saturating_duration_since(self.origin))
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
