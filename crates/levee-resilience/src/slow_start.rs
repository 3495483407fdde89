//! Slow start ramps a returning node's share of traffic instead of flooding it.
//!
//! A node that just became usable (new, back from an open breaker, healthy
//! again) has cold caches and empty pools; its full share at once can knock
//! it straight back over. Its weight climbs linearly from [`MIN_WEIGHT`] to
//! 1.0 over the configured duration. The ramp start is one `AtomicU64`
//! (microseconds since an origin instant), so reading the weight on every pick
//! takes no lock. Weights are relative, so when a whole pool returns at once
//! they change nothing; [`pool_admission`] gives the share of the pool's
//! traffic to admit at all in that case.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The smallest share a ramping node gets, so it sees traffic from the start.
pub const MIN_WEIGHT: f64 = 0.1;

const NOT_RAMPING: u64 = u64::MAX;

/// One node's ramp.
#[derive(Debug)]
pub struct SlowStart {
    duration_us: u64,
    origin: Instant,
    /// Microseconds from `origin` at which the ramp began; `NOT_RAMPING` when
    /// the node has its full weight.
    started_us: AtomicU64,
}

impl SlowStart {
    /// `Duration::ZERO` turns ramping off (the weight is always 1.0). A node
    /// starts at full weight: nodes present at startup are not ramped.
    pub fn new(duration: Duration) -> Self {
        Self {
            duration_us: duration_us(duration),
            origin: Instant::now(),
            started_us: AtomicU64::new(NOT_RAMPING),
        }
    }

    /// A new ramp length for a node that may be ramping now (a reload): a
    /// ramp under way keeps its start.
    pub fn with_duration(&self, duration: Duration) -> Self {
        Self {
            duration_us: duration_us(duration),
            origin: self.origin,
            started_us: AtomicU64::new(self.started_us.load(Ordering::Acquire)),
        }
    }

    /// The node just became usable: ramp from now (restarting any ramp).
    pub fn begin(&self) {
        if self.duration_us > 0 {
            self.started_us.store(self.now_us(), Ordering::Release);
        }
    }

    /// Share of its normal traffic the node should get now, in
    /// [`MIN_WEIGHT`]..=1.0; 1.0 when not ramping.
    pub fn weight(&self) -> f64 {
        match self.elapsed_us() {
            Some(elapsed) => (elapsed as f64 / self.duration_us as f64).max(MIN_WEIGHT),
            None => 1.0,
        }
    }

    pub fn is_ramping(&self) -> bool {
        self.elapsed_us().is_some()
    }

    pub fn duration(&self) -> Duration {
        Duration::from_micros(self.duration_us)
    }

    /// Time into a ramp still under way.
    fn elapsed_us(&self) -> Option<u64> {
        let started = self.started_us.load(Ordering::Acquire);
        if started == NOT_RAMPING {
            return None;
        }
        let elapsed = self.now_us().saturating_sub(started);
        if elapsed < self.duration_us {
            return Some(elapsed);
        }
        // Done: later reads skip the arithmetic. A `begin` racing this keeps
        // its new start.
        let _ = self.started_us.compare_exchange(
            started,
            NOT_RAMPING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        None
    }

    fn now_us(&self) -> u64 {
        duration_us(self.origin.elapsed())
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Admission share for a whole pool, given each usable node's
/// `(weight, ramping)`. A pool that returns at once must not take the full
/// load in its first second: when every usable node is ramping this is their
/// mean weight; it is 1.0 if any usable node is not ramping, or there are
/// none.
pub fn pool_admission(weights: impl IntoIterator<Item = (f64, bool)>) -> f64 {
    let mut sum = 0.0;
    let mut count = 0u32;
    for (weight, ramping) in weights {
        if !ramping {
            return 1.0;
        }
        sum += weight;
        count += 1;
    }
    if count == 0 {
        return 1.0;
    }
    let mean = sum / f64::from(count);
    if mean.is_nan() {
        1.0
    } else {
        mean.clamp(0.0, 1.0)
    }
}

/// True with probability `share`: always for `share >= 1` (or NaN, failing
/// open), never for `share <= 0`.
pub fn admit_share(share: f64) -> bool {
    if share.is_nan() || share >= 1.0 {
        true
    } else if share <= 0.0 {
        false
    } else {
        fastrand::f64() < share
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    async fn advance_ms(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_full_weight_without_ramping() {
        let s = SlowStart::new(Duration::from_secs(10));
        assert!(!s.is_ramping());
        assert!(close(s.weight(), 1.0));
        advance_ms(3_000).await;
        assert!(close(s.weight(), 1.0), "startup nodes are never ramped");
    }

    #[tokio::test(start_paused = true)]
    async fn ramps_linearly_from_the_floor_to_full() {
        let s = SlowStart::new(Duration::from_secs(10));
        advance_ms(1_234).await;
        s.begin();
        assert!(s.is_ramping());
        assert!(close(s.weight(), MIN_WEIGHT), "floor at the start");
        advance_ms(500).await;
        assert!(close(s.weight(), MIN_WEIGHT), "5% is under the floor");
        advance_ms(1_500).await;
        assert!(close(s.weight(), 0.2));
        advance_ms(3_000).await;
        assert!(close(s.weight(), 0.5));
        advance_ms(4_999).await;
        assert!(s.is_ramping());
        assert!(close(s.weight(), 0.9999));
        advance_ms(1).await;
        assert!(!s.is_ramping(), "done at exactly the duration");
        assert!(close(s.weight(), 1.0));
        advance_ms(60_000).await;
        assert!(close(s.weight(), 1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn begin_restarts_a_ramp() {
        let s = SlowStart::new(Duration::from_secs(4));
        s.begin();
        advance_ms(3_000).await;
        assert!(close(s.weight(), 0.75));
        s.begin();
        assert!(close(s.weight(), MIN_WEIGHT));
        advance_ms(2_000).await;
        assert!(close(s.weight(), 0.5));
        advance_ms(2_000).await;
        assert!(!s.is_ramping());
        s.begin();
        assert!(s.is_ramping(), "a finished ramp can start again");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_duration_is_off() {
        let s = SlowStart::new(Duration::ZERO);
        s.begin();
        assert!(!s.is_ramping());
        assert!(close(s.weight(), 1.0));
        // Under a microsecond rounds to off as well.
        let s = SlowStart::new(Duration::from_nanos(10));
        s.begin();
        assert!(!s.is_ramping());
    }

    #[test]
    fn pool_admission_is_the_mean_only_when_everyone_ramps() {
        assert!(close(pool_admission([(0.1, true), (0.3, true)]), 0.2));
        assert!(close(
            pool_admission([(0.1, true), (1.0, false), (0.3, true)]),
            1.0
        ));
        assert!(close(pool_admission([]), 1.0), "nothing to ramp");
        assert!(close(pool_admission([(0.4, true)]), 0.4));
        assert!(close(pool_admission([(7.0, true)]), 1.0), "clamped");
        assert!(close(pool_admission([(f64::NAN, true)]), 1.0));
    }

    #[test]
    fn admit_share_is_exact_at_the_ends() {
        for _ in 0..1_000 {
            assert!(admit_share(1.0));
            assert!(admit_share(3.0));
            assert!(admit_share(f64::NAN));
            assert!(!admit_share(0.0));
            assert!(!admit_share(-1.0));
        }
    }

    #[test]
    fn admit_share_admits_about_its_share() {
        fastrand::seed(42);
        let admitted = (0..10_000).filter(|_| admit_share(0.3)).count();
        assert!((2_700..3_300).contains(&admitted), "{admitted} of 10000");
    }
}
