#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn policy() -> LimitPolicy {
    LimitPolicy {
        floor: 4.0,
        ceiling: 256.0,
        ramp_max: Duration::from_secs(30),
        tolerance: 2.0,
        window: Duration::from_millis(100),
        gradient: false,
        min_rtt_interval: Duration::from_secs(30),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Calls of `rtt` spread over exactly one window, as a steady stream of
/// traffic would record them; returns the new limit, if it moved.
async fn window_of(l: &AdaptiveLimit, rtt: Duration, failed_every: Option<u32>) -> Option<f64> {
    window_with(l, |i| (rtt, failed_every.is_some_and(|n| i % n == 0))).await
}

/// Ten calls (`call(i)`: latency, failed) spread so that the last one
/// closes the window: at least 100 ms and two round trips (the minimum RTT,
/// or the last window's mean if longer).
async fn window_with(l: &AdaptiveLimit, call: impl Fn(u32) -> (Duration, bool)) -> Option<f64> {
    let rtt = match l.min_rtt() {
        None => Duration::ZERO,
        Some(min) => min.max(l.sampled_rtt().unwrap_or_default()),
    };
    let step = ms(100).max(rtt * 2) / 10 + Duration::from_micros(1);
    let mut changed = None;
    for i in 0..10u32 {
        tokio::time::advance(step).await;
        let (rtt, failed) = call(i);
        if let Some(limit) = l.record(rtt, failed) {
            changed = Some(limit);
        }
    }
    changed
}

#[tokio::test(start_paused = true)]
async fn starts_steady_at_the_ceiling_and_ignores_calls_without_a_gradient() {
    let l = AdaptiveLimit::new(policy());
    assert_eq!(l.phase(), LimitPhase::Steady);
    assert_eq!(l.limit(), 256.0);
    assert_eq!(window_of(&l, ms(500), Some(1)).await, None);
    assert_eq!(l.limit(), 256.0);
    assert!(!l.under_pressure());
}

#[tokio::test(start_paused = true)]
async fn a_healthy_ramp_doubles_each_window_and_ends_at_the_ceiling() {
    let l = AdaptiveLimit::new(policy());
    l.mark_out();
    assert_eq!(l.phase(), LimitPhase::Out);
    assert!(
        l.resume(),
        "the first caller after the outage starts the ramp"
    );
    assert!(!l.resume(), "only once");
    assert!(l.is_ramping());
    assert_eq!(l.limit(), 4.0);
    let mut seen = vec![];
    for _ in 0..10 {
        if let Some(limit) = window_of(&l, ms(5), None).await {
            seen.push(limit);
        }
        if !l.is_ramping() {
            break;
        }
    }
    assert_eq!(seen, [8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
    assert_eq!(l.phase(), LimitPhase::Steady);
    assert_eq!(l.min_rtt(), Some(ms(5)));
    assert_eq!(l.sampled_rtt(), Some(ms(5)));
}

#[tokio::test(start_paused = true)]
async fn a_ramp_backs_off_when_latency_rises_over_the_baseline() {
    let l = AdaptiveLimit::new(policy());
    l.begin_ramp();
    assert_eq!(window_of(&l, ms(10), None).await, Some(8.0));
    assert_eq!(window_of(&l, ms(10), None).await, Some(16.0));
    assert!(!l.under_pressure());
    // 2 × 10 ms + 2 ms slack is the target; 44 ms is twice that: halved.
    assert_eq!(window_of(&l, ms(44), None).await, Some(8.0));
    assert!(l.under_pressure(), "held back by what the calls show");
    // 33 ms: the gradient 22/33 takes a third off.
    let limit = window_of(&l, ms(33), None).await.unwrap();
    assert!((limit - 8.0 * 22.0 / 33.0).abs() < 1e-9, "{limit}");
    // Never below the floor.
    for _ in 0..5 {
        window_of(&l, ms(100), None).await;
    }
    assert_eq!(l.limit(), 4.0);
    assert!(l.is_ramping());
    // Healthy again: it grows again.
    window_of(&l, ms(12), None).await;
    assert_eq!(l.limit(), 8.0);
    assert!(!l.under_pressure());
}

#[tokio::test(start_paused = true)]
async fn a_ramp_halves_when_calls_fail() {
    let l = AdaptiveLimit::new(LimitPolicy {
        floor: 1.0,
        ..policy()
    });
    l.begin_ramp();
    window_of(&l, ms(5), None).await;
    window_of(&l, ms(5), None).await;
    assert_eq!(l.limit(), 4.0);
    // One failure in five is over the 10% a healthy window may have.
    assert_eq!(window_of(&l, ms(5), Some(5)).await, Some(2.0));
    assert!(l.under_pressure());
}

#[tokio::test(start_paused = true)]
async fn slow_start_bounds_the_ramp_length() {
    let l = AdaptiveLimit::new(LimitPolicy {
        ramp_max: Duration::from_secs(2),
        ..policy()
    });
    l.begin_ramp();
    window_of(&l, ms(5), None).await;
    // Struggling nodes hold the ramp back...
    for _ in 0..15 {
        window_of(&l, ms(50), None).await;
    }
    assert!(l.is_ramping());
    assert_eq!(l.limit(), 4.0);
    // ...until its upper bound: then the ceiling.
    for _ in 0..5 {
        window_of(&l, ms(50), None).await;
    }
    assert_eq!(l.phase(), LimitPhase::Steady);
    assert_eq!(l.limit(), 256.0);
}

#[tokio::test(start_paused = true)]
async fn a_zero_ramp_max_returns_at_once() {
    let l = AdaptiveLimit::new(LimitPolicy {
        ramp_max: Duration::ZERO,
        ..policy()
    });
    l.mark_out();
    assert!(l.resume());
    assert_eq!(l.phase(), LimitPhase::Steady);
    assert_eq!(l.limit(), 256.0);
}

#[tokio::test(start_paused = true)]
async fn windows_last_at_least_two_minimum_rtts_and_need_a_call() {
    let l = AdaptiveLimit::new(policy());
    l.begin_ramp();
    tokio::time::advance(ms(100)).await;
    // The first window's baseline: 300 ms.
    assert_eq!(l.record(ms(300), false), Some(8.0));
    // 100 ms later is not a window yet: two RTTs are 600 ms.
    tokio::time::advance(ms(100)).await;
    assert_eq!(l.record(ms(300), false), None);
    tokio::time::advance(ms(500)).await;
    assert_eq!(l.record(ms(300), false), Some(16.0));
    // A long silence closes no window by itself; the next call does.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(l.record(ms(300), false), Some(32.0));
}

#[tokio::test(start_paused = true)]
async fn the_gradient_shrinks_with_latency_and_grows_back() {
    let l = AdaptiveLimit::new(LimitPolicy {
        gradient: true,
        ceiling: 100.0,
        ..policy()
    });
    // The baseline: 10 ms; target 22 ms.
    assert_eq!(window_of(&l, ms(10), None).await, None, "at the ceiling");
    assert_eq!(l.min_rtt(), Some(ms(10)));
    assert_eq!(window_of(&l, ms(44), None).await, Some(50.0));
    assert!(l.under_pressure(), "below its ceiling");
    assert_eq!(
        window_of(&l, ms(88), None).await,
        Some(25.0),
        "at most halved"
    );
    // Back near the baseline: + √limit a window.
    assert_eq!(window_of(&l, ms(12), None).await, Some(30.0));
    let mut last = 30.0;
    for _ in 0..20 {
        if let Some(limit) = window_of(&l, ms(12), None).await {
            assert!(limit > last);
            last = limit;
        }
    }
    assert_eq!(l.limit(), 100.0);
    assert!(!l.under_pressure());
}

#[tokio::test(start_paused = true)]
async fn the_minimum_rtt_is_measured_afresh_at_the_floor_each_interval() {
    let l = AdaptiveLimit::new(LimitPolicy {
        gradient: true,
        ceiling: 100.0,
        min_rtt_interval: Duration::from_secs(1),
        ..policy()
    });
    window_of(&l, ms(10), None).await;
    assert_eq!(l.min_rtt(), Some(ms(10)));
    // Near the target (22 ms): the limit stays at its ceiling.
    let mut probed = false;
    for _ in 0..12 {
        if window_of(&l, ms(20), None).await == Some(4.0) {
            probed = true;
            break;
        }
    }
    assert!(probed, "a window at the floor once the interval is over");
    assert_eq!(l.phase(), LimitPhase::Probing);
    assert!(l.under_pressure());
    // The floor's window sets the baseline, and the limit comes back.
    assert_eq!(window_of(&l, ms(30), None).await, Some(100.0));
    assert_eq!(l.phase(), LimitPhase::Steady);
    assert_eq!(
        l.min_rtt(),
        Some(ms(30)),
        "measured afresh, not the old 10 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_policy_keeps_the_state_within_the_new_bounds() {
    let l = AdaptiveLimit::new(policy());
    l.begin_ramp();
    window_of(&l, ms(5), None).await;
    window_of(&l, ms(5), None).await;
    assert_eq!(l.limit(), 16.0);
    l.set_policy(LimitPolicy {
        floor: 20.0,
        ..policy()
    });
    assert!(l.is_ramping(), "the ramp goes on");
    assert_eq!(l.limit(), 20.0);
    assert_eq!(l.min_rtt(), Some(ms(5)));
    // Steady without a gradient: the new ceiling.
    let steady = AdaptiveLimit::new(policy());
    steady.set_policy(LimitPolicy {
        ceiling: 64.0,
        ..policy()
    });
    assert_eq!(steady.limit(), 64.0);
}

#[tokio::test(start_paused = true)]
async fn a_ramp_follows_the_median_call_not_a_stalled_one() {
    let l = AdaptiveLimit::new(policy());
    l.begin_ramp();
    assert_eq!(window_of(&l, ms(10), None).await, Some(8.0));
    // A window with one call stalled for half a second: still doubles.
    let changed = window_with(&l, |i| (if i == 3 { ms(500) } else { ms(10) }, false)).await;
    assert_eq!(changed, Some(16.0));
    // Most calls over the target: held back.
    let changed = window_with(&l, |i| (if i < 3 { ms(10) } else { ms(30) }, false)).await;
    assert!(changed.is_some_and(|limit| limit < 16.0), "{changed:?}");
    assert!(l.under_pressure());
}

#[tokio::test(start_paused = true)]
async fn with_a_gradient_the_ramp_ends_at_its_first_back_off() {
    let l = AdaptiveLimit::new(LimitPolicy {
        gradient: true,
        ..policy()
    });
    l.begin_ramp();
    assert_eq!(window_of(&l, ms(10), None).await, Some(8.0));
    assert_eq!(window_of(&l, ms(10), None).await, Some(16.0));
    // 33 ms against a 22 ms target: a third off, and the gradient from here.
    let limit = window_of(&l, ms(33), None).await.unwrap();
    assert!((limit - 16.0 * 22.0 / 33.0).abs() < 1e-9, "{limit}");
    assert_eq!(l.phase(), LimitPhase::Steady);
    assert!(l.under_pressure(), "below its ceiling");
}
