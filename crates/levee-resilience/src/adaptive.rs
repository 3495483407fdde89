//! An adaptive limit: how much a pool (admitted concurrency) or a node (its
//! share of traffic) is given, following what the calls show rather than the
//! clock.
//!
//! One state, two phases. **Ramp**: after an outage the limit restarts from
//! its floor and doubles each sample window while the calls look healthy
//! (most calls within `tolerance` of the no-load baseline, few failures),
//! like TCP slow start; when they do not, it backs off multiplicatively. It
//! ends at the ceiling, or after `ramp_max` at the latest: slow start bounds
//! the ramp's length, it is not its schedule. With a gradient it also ends
//! at its first back-off, as TCP leaves slow start at its first loss. **Steady**: the limit stays at
//! the ceiling, or, with `gradient`, follows `tolerance × min RTT / sampled
//! RTT` (Envoy's adaptive concurrency, Netflix's gradient limiter): it
//! shrinks as latency rises over the baseline and grows back by `√limit` a
//! window while latency stays near it.
//!
//! Calls are recorded with a few atomic adds; the one caller that closes a
//! window computes the next limit and returns it, so the data plane can
//! apply it (a bulkhead resize) at most once a window. The minimum RTT is
//! the lowest call seen since it was last measured. A gradient limit
//! measures it afresh every `min_rtt_interval`, as Envoy does: one window
//! at the floor (**probing**), whose fastest call is the new baseline, then
//! back to the limit it had, so the baseline cannot creep up with load.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

/// A window whose calls fail more often than this is unhealthy.
pub const MAX_FAILURE_RATE: f64 = 0.1;
/// Latency within this much over `tolerance × min RTT` still counts as
/// near the baseline: scheduler and loopback noise, not load.
pub const LATENCY_SLACK: Duration = Duration::from_millis(2);
/// The most one window may take off the limit.
const MIN_GRADIENT: f64 = 0.5;
const UNKNOWN: u64 = u64::MAX;

/// What the limit is bounded by and how it moves.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitPolicy {
    /// Where a ramp starts and the least the limit may be (> 0).
    pub floor: f64,
    /// The most it may be (>= floor).
    pub ceiling: f64,
    /// Longest a ramp may last; `Duration::ZERO`: no ramp, a return gets
    /// the ceiling (or, with `gradient`, the steady phase) at once.
    pub ramp_max: Duration,
    /// Latency up to `tolerance ×` the minimum RTT is near the baseline (>= 1).
    pub tolerance: f64,
    /// Shortest sample window; a window also lasts at least two round trips
    /// (the minimum RTT, or the last window's mean if longer) and holds at
    /// least one call.
    pub window: Duration,
    /// Follow the latency gradient in the steady phase (else: the ceiling).
    pub gradient: bool,
    /// How often the minimum RTT is measured afresh.
    pub min_rtt_interval: Duration,
}

/// Where a limit is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPhase {
    /// At the ceiling, or following the gradient.
    Steady,
    /// Growing back after an outage.
    Ramping,
    /// Everything it limits is out; the next [`AdaptiveLimit::resume`] ramps.
    Out,
    /// One window at the floor to measure the minimum RTT afresh.
    Probing,
}

impl LimitPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitPhase::Steady => "steady",
            LimitPhase::Ramping => "ramping",
            LimitPhase::Out => "out",
            LimitPhase::Probing => "probing",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => LimitPhase::Ramping,
            2 => LimitPhase::Out,
            3 => LimitPhase::Probing,
            _ => LimitPhase::Steady,
        }
    }
}

/// A limit that ramps on observed health and, optionally, follows the
/// latency gradient. Shared (`Arc`) and kept across reloads; the policy is
/// swapped in place.
#[derive(Debug)]
pub struct AdaptiveLimit {
    policy: ArcSwap<LimitPolicy>,
    /// The policy's `gradient`, so that a steady limit without one answers
    /// [`AdaptiveLimit::record_at`] without loading the policy.
    gradient: AtomicBool,
    origin: Instant,
    limit: AtomicU64,
    phase: AtomicU8,
    /// The last window was judged unhealthy (latency or failures).
    pressed: AtomicBool,
    ramp_started_us: AtomicU64,
    window_started_us: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    /// Calls over the latency target (`tolerance × min RTT + slack`), of
    /// those recorded while the minimum RTT was known (`judged`).
    slow: AtomicU64,
    judged: AtomicU64,
    rtt_sum_us: AtomicU64,
    window_min_us: AtomicU64,
    min_rtt_us: AtomicU64,
    min_rtt_since_us: AtomicU64,
    sampled_us: AtomicU64,
    /// The limit to go back to after probing.
    restore: AtomicU64,
}

impl AdaptiveLimit {
    /// Steady at the ceiling: what exists at startup is not ramped.
    pub fn new(policy: LimitPolicy) -> Self {
        let ceiling = policy.ceiling;
        Self {
            gradient: AtomicBool::new(policy.gradient),
            policy: ArcSwap::from_pointee(policy),
            origin: Instant::now(),
            limit: AtomicU64::new(ceiling.to_bits()),
            phase: AtomicU8::new(LimitPhase::Steady as u8),
            pressed: AtomicBool::new(false),
            ramp_started_us: AtomicU64::new(0),
            window_started_us: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            judged: AtomicU64::new(0),
            rtt_sum_us: AtomicU64::new(0),
            window_min_us: AtomicU64::new(UNKNOWN),
            min_rtt_us: AtomicU64::new(UNKNOWN),
            min_rtt_since_us: AtomicU64::new(0),
            sampled_us: AtomicU64::new(UNKNOWN),
            restore: AtomicU64::new(ceiling.to_bits()),
        }
    }

    /// A reload's new policy; the phase, the RTTs and the limit (kept within
    /// the new bounds) carry over. A steady limit without a gradient takes
    /// the new ceiling.
    pub fn set_policy(&self, policy: LimitPolicy) {
        let steady_fixed =
            matches!(self.phase(), LimitPhase::Steady | LimitPhase::Probing) && !policy.gradient;
        let limit = if steady_fixed {
            self.phase
                .store(LimitPhase::Steady as u8, Ordering::Release);
            policy.ceiling
        } else {
            self.limit().clamp(policy.floor, policy.ceiling)
        };
        self.set_limit(limit);
        self.gradient.store(policy.gradient, Ordering::Release);
        self.policy.store(Arc::new(policy));
    }

    pub fn policy(&self) -> Arc<LimitPolicy> {
        self.policy.load_full()
    }

    /// The limit now, in `floor..=ceiling`.
    pub fn limit(&self) -> f64 {
        f64::from_bits(self.limit.load(Ordering::Acquire))
    }

    pub fn phase(&self) -> LimitPhase {
        LimitPhase::from_u8(self.phase.load(Ordering::Acquire))
    }

    pub fn is_ramping(&self) -> bool {
        self.phase() == LimitPhase::Ramping
    }

    /// Whether the limit is holding traffic back because of what the calls
    /// show: a ramp whose last window backed off, or a gradient limit below
    /// its ceiling.
    pub fn under_pressure(&self) -> bool {
        match self.phase() {
            LimitPhase::Ramping => self.pressed.load(Ordering::Acquire),
            LimitPhase::Steady => {
                let p = self.policy.load();
                p.gradient && self.limit() < p.ceiling
            }
            LimitPhase::Probing => true,
            LimitPhase::Out => false,
        }
    }

    /// The no-load baseline, once measured.
    pub fn min_rtt(&self) -> Option<Duration> {
        known(self.min_rtt_us.load(Ordering::Acquire))
    }

    /// The last closed window's mean latency.
    pub fn sampled_rtt(&self) -> Option<Duration> {
        known(self.sampled_us.load(Ordering::Acquire))
    }

    /// Everything this limits is out (no usable node).
    pub fn mark_out(&self) {
        if self.phase() != LimitPhase::Out {
            self.phase.store(LimitPhase::Out as u8, Ordering::Release);
        }
    }

    /// Something usable again after [`AdaptiveLimit::mark_out`]: start the
    /// ramp. Only the first caller after an outage does; returns whether it
    /// did.
    pub fn resume(&self) -> bool {
        if self.phase() != LimitPhase::Out {
            return false;
        }
        let won = self
            .phase
            .compare_exchange(
                LimitPhase::Out as u8,
                LimitPhase::Ramping as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if won {
            self.begin_ramp();
        }
        won
    }

    /// Ramp from the floor now (restarting any ramp). The baseline is
    /// measured afresh by the ramp's first calls, at low load.
    pub fn begin_ramp(&self) {
        let p = self.policy.load();
        let now = self.now_us();
        self.reset_window(now);
        self.min_rtt_us.store(UNKNOWN, Ordering::Release);
        self.sampled_us.store(UNKNOWN, Ordering::Release);
        self.pressed.store(false, Ordering::Release);
        if p.ramp_max.is_zero() {
            self.end_ramp(&p);
            return;
        }
        self.ramp_started_us.store(now, Ordering::Release);
        self.set_limit(p.floor);
        self.phase
            .store(LimitPhase::Ramping as u8, Ordering::Release);
    }

    /// Ends a ramp now, as if it had run its course: the steady phase at
    /// the ceiling (or, with a gradient, at the limit reached). For a node
    /// whose pool's own ramp takes over pacing it.
    pub fn cancel_ramp(&self) {
        if self.is_ramping() {
            self.end_ramp(&self.policy.load());
        }
    }

    /// Feeds one call: its time to response headers and whether it failed.
    /// Returns the new limit when this call closed a window that changed it
    /// or ended a ramp.
    pub fn record(&self, rtt: Duration, failed: bool) -> Option<f64> {
        self.record_at(Instant::now(), rtt, failed)
    }

    /// [`AdaptiveLimit::record`] of a call that ended at `now` (the request
    /// path has just read the clock for its time). A steady limit without a
    /// gradient returns at once, without loading the policy.
    pub fn record_at(&self, now: Instant, rtt: Duration, failed: bool) -> Option<f64> {
        let phase = self.phase();
        if phase == LimitPhase::Out
            || (phase == LimitPhase::Steady && !self.gradient.load(Ordering::Acquire))
        {
            return None;
        }
        let p = self.policy.load();
        if phase == LimitPhase::Steady && !p.gradient {
            return None;
        }
        let rtt_us = duration_us(rtt);
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.rtt_sum_us.fetch_add(rtt_us, Ordering::AcqRel);
        self.window_min_us.fetch_min(rtt_us, Ordering::AcqRel);
        if failed {
            self.failures.fetch_add(1, Ordering::AcqRel);
        }
        let min_rtt = self.min_rtt_us.load(Ordering::Acquire);
        if min_rtt != UNKNOWN {
            self.judged.fetch_add(1, Ordering::AcqRel);
            if rtt_us as f64 > target_us(&p, min_rtt) {
                self.slow.fetch_add(1, Ordering::AcqRel);
            }
        }
        let now = self.us_at(now);
        let started = self.window_started_us.load(Ordering::Acquire);
        // Long enough that most calls judged were admitted at the limit
        // being judged: two round trips, loaded or not.
        let rtt = match (min_rtt, self.sampled_us.load(Ordering::Acquire)) {
            (UNKNOWN, _) => 0,
            (m, UNKNOWN) => m,
            (m, sampled) => m.max(sampled),
        };
        let length = duration_us(p.window).max(rtt.saturating_mul(2));
        if now.saturating_sub(started) < length {
            return None;
        }
        // One caller closes the window; the others' calls go to the next.
        self.window_started_us
            .compare_exchange(started, now, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        let calls = self.calls.swap(0, Ordering::AcqRel);
        let failures = self.failures.swap(0, Ordering::AcqRel);
        let sum = self.rtt_sum_us.swap(0, Ordering::AcqRel);
        let window_min = self.window_min_us.swap(UNKNOWN, Ordering::AcqRel);
        let slow = self.slow.swap(0, Ordering::AcqRel);
        let judged = self.judged.swap(0, Ordering::AcqRel);
        if calls == 0 {
            return None;
        }
        let window = Window {
            calls,
            failures,
            sampled: sum / calls,
            min: window_min,
            slow,
            judged,
        };
        self.close_window(&p, now, &window)
    }

    fn close_window(&self, p: &LimitPolicy, now: u64, w: &Window) -> Option<f64> {
        let sampled = w.sampled;
        self.sampled_us.store(sampled, Ordering::Release);
        let old = self.limit();
        if self.phase() == LimitPhase::Probing {
            // A window at the floor: its fastest call is the baseline.
            self.min_rtt_us.store(w.min, Ordering::Release);
            self.min_rtt_since_us.store(now, Ordering::Release);
            let back = f64::from_bits(self.restore.load(Ordering::Acquire));
            self.set_limit(back.clamp(p.floor, p.ceiling));
            self.phase
                .store(LimitPhase::Steady as u8, Ordering::Release);
            return (self.limit() != old).then(|| self.limit());
        }
        let min_rtt = match self.min_rtt_us.load(Ordering::Acquire) {
            UNKNOWN => {
                self.min_rtt_since_us.store(now, Ordering::Release);
                w.min
            }
            known => known.min(w.min),
        };
        self.min_rtt_us.store(min_rtt, Ordering::Release);
        let since = self.min_rtt_since_us.load(Ordering::Acquire);
        if !self.is_ramping() && now.saturating_sub(since) >= duration_us(p.min_rtt_interval) {
            self.restore.store(old.to_bits(), Ordering::Release);
            self.set_limit(p.floor);
            self.phase
                .store(LimitPhase::Probing as u8, Ordering::Release);
            return (p.floor != old).then_some(p.floor);
        }
        let gradient = (target_us(p, min_rtt) / sampled.max(1) as f64).clamp(MIN_GRADIENT, 1.0);
        let failing = w.failures as f64 > w.calls as f64 * MAX_FAILURE_RATE;
        let next = if self.is_ramping() {
            let ramp_over = now.saturating_sub(self.ramp_started_us.load(Ordering::Acquire))
                >= duration_us(p.ramp_max);
            // The median call, not the mean: one stalled call (a busy
            // host) must not hold back a pool that is fine.
            let fast = if w.judged == 0 {
                gradient >= 1.0
            } else {
                w.slow * 2 <= w.judged
            };
            let healthy = !failing && fast;
            self.pressed.store(!healthy, Ordering::Release);
            if ramp_over {
                self.end_ramp(p);
                return Some(self.limit());
            }
            let next = if failing {
                old * MIN_GRADIENT
            } else if healthy {
                old * 2.0
            } else {
                old * gradient
            };
            if !healthy && p.gradient {
                // As TCP leaves slow start at its first loss: the gradient
                // takes over from the level just found.
                self.set_limit(next.clamp(p.floor, p.ceiling));
                self.end_ramp(p);
                return Some(self.limit());
            }
            if next >= p.ceiling {
                self.end_ramp(p);
                return Some(self.limit());
            }
            next
        } else if gradient >= 1.0 {
            old + old.sqrt()
        } else {
            old * gradient
        };
        let next = next.clamp(p.floor, p.ceiling);
        self.set_limit(next);
        (next != old).then_some(next)
    }

    /// The steady phase: the ceiling, or, with a gradient, the limit reached.
    fn end_ramp(&self, p: &LimitPolicy) {
        self.pressed.store(false, Ordering::Release);
        if !p.gradient {
            self.set_limit(p.ceiling);
        }
        self.phase
            .store(LimitPhase::Steady as u8, Ordering::Release);
    }

    fn reset_window(&self, now: u64) {
        self.window_started_us.store(now, Ordering::Release);
        self.calls.store(0, Ordering::Release);
        self.failures.store(0, Ordering::Release);
        self.slow.store(0, Ordering::Release);
        self.judged.store(0, Ordering::Release);
        self.rtt_sum_us.store(0, Ordering::Release);
        self.window_min_us.store(UNKNOWN, Ordering::Release);
    }

    fn set_limit(&self, limit: f64) {
        self.limit.store(limit.to_bits(), Ordering::Release);
    }

    fn now_us(&self) -> u64 {
        self.us_at(Instant::now())
    }

    /// Microseconds from the origin to `at`.
    fn us_at(&self, at: Instant) -> u64 {
        duration_us(at.saturating_duration_since(self.origin))
    }
}

/// What one closed window saw.
struct Window {
    calls: u64,
    failures: u64,
    /// Mean latency, µs.
    sampled: u64,
    min: u64,
    slow: u64,
    judged: u64,
}

/// Latency near the baseline: up to `tolerance × min RTT + slack`, µs.
fn target_us(p: &LimitPolicy, min_rtt_us: u64) -> f64 {
    min_rtt_us as f64 * p.tolerance + duration_us(LATENCY_SLACK) as f64
}

fn known(us: u64) -> Option<Duration> {
    (us != UNKNOWN).then(|| Duration::from_micros(us))
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(UNKNOWN - 1)
}

#[cfg(test)]
#[path = "adaptive_tests.rs"]
mod tests;
