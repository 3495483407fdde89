//! The breaker's sliding window against a naive model.
//!
//! The window is `window_buckets` buckets of one second each, seconds counted
//! from the breaker's creation (`now_s = elapsed / 1 s`, rounded down). A
//! call recorded in second `s` is in the window at `now_s` while
//! `now_s - s < window_buckets`: the current second and the
//! `window_buckets - 1` before it. The model keeps every (second, outcome)
//! in a `Vec` and counts those, so bucket reuse, roll-over and expiry are
//! all checked against plain arithmetic.
//!
//! The policy is one that can never open the gate (no consecutive-failure
//! trigger, more calls than can happen before the rates count, rates above
//! 1), and the ejection budget is zero besides, so every outcome is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use levee_resilience::{
    Breaker, BreakerPolicy, BreakerState, CallOutcome, EjectionBudget, Recorded, WindowStats,
};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
struct Step {
    /// Paused time moves this much before the call is recorded.
    advance_ms: u64,
    failed: bool,
    elapsed_ms: u64,
    unreachable: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![3 => 0u64..3_000, 1 => Just(0u64), 1 => Just(1_000u64)],
        any::<bool>(),
        0u64..4_000,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(advance_ms, failed, elapsed_ms, unreachable)| Step {
            advance_ms,
            failed,
            elapsed_ms,
            unreachable,
        })
}

/// Every call recorded: (second since the start, failed, slow).
struct Model {
    buckets: u64,
    calls: Vec<(u64, bool, bool)>,
}

impl Model {
    fn window(&self, now_s: u64) -> WindowStats {
        let mut w = WindowStats::default();
        for &(s, failed, slow) in &self.calls {
            if now_s - s < self.buckets {
                w.calls += 1;
                w.failures += u32::from(failed);
                w.slow += u32::from(slow);
            }
        }
        w
    }
}

fn never_opens(window_buckets: u32, slow_call_duration: Duration) -> BreakerPolicy {
    BreakerPolicy {
        window_buckets,
        min_calls: u32::MAX,
        failure_rate: 2.0,
        slow_call_rate: 2.0,
        slow_call_duration,
        consecutive_failures: 0,
        open_for: Duration::from_secs(5),
        open_for_max: Duration::from_secs(60),
        half_open_calls: 3,
        jitter: 0.0,
    }
}

fn window_case(window_buckets: u32, slow_ms: u64, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let slow_call_duration = Duration::from_millis(slow_ms);
        let breaker = Breaker::new(never_opens(window_buckets, slow_call_duration));
        let budget = EjectionBudget::new(1, 0);
        let mut model = Model {
            buckets: u64::from(window_buckets),
            calls: Vec::new(),
        };
        let mut now_ms = 0u64;
        prop_assert_eq!(breaker.window(), WindowStats::default());
        for (i, s) in steps.into_iter().enumerate() {
            tokio::time::advance(Duration::from_millis(s.advance_ms)).await;
            now_ms += s.advance_ms;
            let now_s = now_ms / 1_000;
            // Old seconds leave the window as time passes, with no call.
            prop_assert_eq!(
                breaker.window(),
                model.window(now_s),
                "step {}: before the call, at {} ms",
                i,
                now_ms
            );
            let outcome = CallOutcome {
                failed: s.failed,
                elapsed: Duration::from_millis(s.elapsed_ms),
                unreachable: s.unreachable,
            };
            let recorded = breaker.record(false, outcome, &budget, || true);
            prop_assert!(
                matches!(recorded, Recorded::Nothing),
                "step {}: the policy moved: {:?}",
                i,
                recorded
            );
            prop_assert_eq!(breaker.state(), BreakerState::Closed);
            let slow = outcome.elapsed >= slow_call_duration;
            model.calls.push((now_s, s.failed, slow));
            prop_assert_eq!(
                breaker.window(),
                model.window(now_s),
                "step {}: after the call, at {} ms",
                i,
                now_ms
            );
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn window_counts_the_calls_of_the_last_window_buckets_seconds(
        window_buckets in prop_oneof![1u32..=4, 1u32..=60],
        slow_ms in 1u64..3_000,
        steps in prop::collection::vec(step(), 1..200),
    ) {
        window_case(window_buckets, slow_ms, steps)?;
    }
}
