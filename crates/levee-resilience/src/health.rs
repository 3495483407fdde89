//! Active health checks decide on runs of probe results, not on single ones.
//!
//! One failed probe is noise (a dropped packet, a pause) and one good probe
//! does not prove a node is back. A node flips to unhealthy after
//! `unhealthy_after` failures in a row and back after `healthy_after`
//! successes in a row; either result breaks the other's run. The state and
//! both runs live in one packed `AtomicU64`, so the request path reads health
//! with a single load while the prober records results. [`jittered`] spreads
//! probe intervals so many proxies do not probe a node in lockstep.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// The word packs the success run (bits 0..31), the failure run (bits 31..62),
// each saturating, and the healthy flag (bit 62).
const RUN_BITS: u32 = 31;
const RUN_MAX: u64 = (1 << RUN_BITS) - 1;
const HEALTHY: u64 = 1 << (2 * RUN_BITS);

fn pack(healthy: bool, oks: u64, fails: u64) -> u64 {
    (if healthy { HEALTHY } else { 0 }) | oks.min(RUN_MAX) | (fails.min(RUN_MAX) << RUN_BITS)
}

fn runs(v: u64) -> (u32, u32) {
    ((v & RUN_MAX) as u32, ((v >> RUN_BITS) & RUN_MAX) as u32)
}

/// A node changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTransition {
    /// The state the node moved to.
    pub healthy: bool,
    /// The consecutive results that caused it.
    pub after: u32,
}

/// One node's health, fed by its prober.
#[derive(Debug)]
pub struct HealthTracker {
    state: AtomicU64,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl HealthTracker {
    /// A node starts healthy. Zero thresholds are raised to 1 rather than
    /// trusted (a zero would flip on no evidence).
    pub fn new(unhealthy_after: u32, healthy_after: u32) -> Self {
        Self {
            state: AtomicU64::new(pack(true, 0, 0)),
            unhealthy_after: unhealthy_after.max(1),
            healthy_after: healthy_after.max(1),
        }
    }

    /// New thresholds for a node whose tracker already ran (a reload): its
    /// state and current runs carry over.
    pub fn with_thresholds(&self, unhealthy_after: u32, healthy_after: u32) -> Self {
        Self {
            state: AtomicU64::new(self.state.load(Ordering::Acquire)),
            unhealthy_after: unhealthy_after.max(1),
            healthy_after: healthy_after.max(1),
        }
    }

    /// Whether the node should get traffic: one atomic load.
    pub fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Acquire) & HEALTHY != 0
    }

    /// Feeds one probe result; returns the transition when the node changed
    /// state.
    pub fn record(&self, ok: bool) -> Option<HealthTransition> {
        let prev = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(self.step(v, ok))
            })
            .unwrap_or_else(|v| v);
        let next = self.step(prev, ok);
        let healthy = next & HEALTHY != 0;
        if healthy == (prev & HEALTHY != 0) {
            return None;
        }
        crate::moves::moved();
        let (oks, fails) = runs(next);
        Some(HealthTransition {
            healthy,
            after: if ok { oks } else { fails },
        })
    }

    /// The current runs: (successes in a row, failures in a row). One of them
    /// is always zero.
    pub fn consecutive(&self) -> (u32, u32) {
        runs(self.state.load(Ordering::Acquire))
    }

    pub fn unhealthy_after(&self) -> u32 {
        self.unhealthy_after
    }

    pub fn healthy_after(&self) -> u32 {
        self.healthy_after
    }

    fn step(&self, v: u64, ok: bool) -> u64 {
        let (oks, fails) = runs(v);
        let healthy = v & HEALTHY != 0;
        if ok {
            let oks = u64::from(oks) + 1;
            pack(healthy || oks >= u64::from(self.healthy_after), oks, 0)
        } else {
            let fails = u64::from(fails) + 1;
            pack(healthy && fails < u64::from(self.unhealthy_after), 0, fails)
        }
    }
}

/// `interval` spread by up to `jitter` of itself either way:
/// `interval * (1 + jitter * (r * 2 - 1))` with `r` uniform in [0, 1).
/// `jitter` is clamped to 0..=1; 0 (or NaN) returns `interval` exactly.
pub fn jittered(interval: Duration, jitter: f64) -> Duration {
    let spread = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    if spread <= 0.0 {
        return interval;
    }
    let factor = 1.0 + spread * (fastrand::f64() * 2.0 - 1.0);
    Duration::try_from_secs_f64(interval.as_secs_f64() * factor).unwrap_or(interval)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn feed(h: &HealthTracker, ok: bool, n: u32) -> Option<HealthTransition> {
        let mut out = None;
        for _ in 0..n {
            if let Some(t) = h.record(ok) {
                assert!(out.is_none(), "one run moves the node once");
                out = Some(t);
            }
        }
        out
    }

    #[test]
    fn new_thresholds_keep_an_unhealthy_node_out() {
        let h = HealthTracker::new(1, 3);
        assert!(h.record(false).is_some());
        let h = h.with_thresholds(2, 2);
        assert!(!h.is_healthy());
        assert_eq!(h.record(true), None);
        assert!(h.record(true).is_some_and(|t| t.healthy));
    }

    #[test]
    fn starts_healthy_with_empty_runs() {
        let h = HealthTracker::new(3, 2);
        assert!(h.is_healthy());
        assert_eq!(h.consecutive(), (0, 0));
    }

    #[test]
    fn flips_unhealthy_after_the_failure_run() {
        let h = HealthTracker::new(3, 2);
        assert_eq!(feed(&h, false, 2), None);
        assert!(h.is_healthy(), "two failures of three");
        assert_eq!(
            h.record(false),
            Some(HealthTransition {
                healthy: false,
                after: 3
            })
        );
        assert!(!h.is_healthy());
        assert_eq!(feed(&h, false, 5), None, "already unhealthy");
        assert_eq!(h.consecutive(), (0, 8));
    }

    #[test]
    fn a_success_breaks_the_failure_run() {
        let h = HealthTracker::new(3, 2);
        feed(&h, false, 2);
        assert_eq!(h.record(true), None);
        assert_eq!(h.consecutive(), (1, 0));
        assert_eq!(feed(&h, false, 2), None, "the run started over");
        assert!(h.is_healthy());
        assert!(h.record(false).is_some());
    }

    #[test]
    fn flips_back_after_the_success_run_and_a_failure_breaks_it() {
        let h = HealthTracker::new(1, 3);
        assert_eq!(
            h.record(false),
            Some(HealthTransition {
                healthy: false,
                after: 1
            })
        );
        assert_eq!(feed(&h, true, 2), None);
        assert_eq!(h.record(false), None, "breaks the success run");
        assert_eq!(h.consecutive(), (0, 1));
        assert_eq!(feed(&h, true, 2), None);
        assert!(!h.is_healthy());
        assert_eq!(
            h.record(true),
            Some(HealthTransition {
                healthy: true,
                after: 3
            })
        );
        assert!(h.is_healthy());
        assert_eq!(feed(&h, true, 10), None, "already healthy");
    }

    #[test]
    fn zero_thresholds_are_raised_to_one() {
        let h = HealthTracker::new(0, 0);
        assert_eq!((h.unhealthy_after(), h.healthy_after()), (1, 1));
        assert_eq!(h.record(false).map(|t| t.healthy), Some(false));
        assert_eq!(h.record(true).map(|t| t.healthy), Some(true));
    }

    #[test]
    fn runs_saturate_instead_of_wrapping() {
        let h = HealthTracker::new(3, 2);
        let full = pack(false, 0, RUN_MAX);
        assert_eq!(runs(h.step(full, false)), (0, RUN_MAX as u32));
        assert_eq!(h.step(full, false) & HEALTHY, 0);
        let full_ok = pack(true, RUN_MAX, 0);
        assert_eq!(runs(h.step(full_ok, true)), (RUN_MAX as u32, 0));
    }

    #[test]
    fn zero_jitter_returns_the_interval_exactly() {
        let d = Duration::from_millis(1_234);
        assert_eq!(jittered(d, 0.0), d);
        assert_eq!(jittered(d, -0.5), d, "negative is clamped to 0");
        assert_eq!(jittered(d, f64::NAN), d);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        fastrand::seed(7);
        let d = Duration::from_secs(10);
        let (mut lo, mut hi) = (d, d);
        for _ in 0..2_000 {
            let j = jittered(d, 0.2);
            assert!(j >= Duration::from_secs(8) && j <= Duration::from_secs(12));
            lo = lo.min(j);
            hi = hi.max(j);
        }
        assert!(lo < Duration::from_millis(8_200) && hi > Duration::from_millis(11_800));
    }

    #[test]
    fn jitter_above_one_is_clamped() {
        fastrand::seed(11);
        let d = Duration::from_secs(1);
        for _ in 0..1_000 {
            assert!(jittered(d, 5.0) <= Duration::from_secs(2));
        }
    }
}
