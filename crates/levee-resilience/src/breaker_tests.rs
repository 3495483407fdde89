#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        window_buckets: 10,
        min_calls: 10,
        failure_rate: 0.5,
        slow_call_rate: 0.8,
        slow_call_duration: Duration::from_millis(500),
        consecutive_failures: 0,
        open_for: Duration::from_secs(5),
        open_for_max: Duration::from_secs(40),
        half_open_calls: 2,
        jitter: 0.0,
    }
}

const OK: CallOutcome = CallOutcome {
    failed: false,
    elapsed: Duration::from_millis(10),
    unreachable: false,
};
const FAIL: CallOutcome = CallOutcome {
    failed: true,
    elapsed: Duration::from_millis(10),
    unreachable: false,
};
const SLOW: CallOutcome = CallOutcome {
    failed: false,
    elapsed: Duration::from_millis(600),
    unreachable: false,
};
const REFUSED: CallOutcome = CallOutcome {
    failed: true,
    elapsed: Duration::from_millis(1),
    unreachable: true,
};

/// A faster usable peer exists, so slow calls count against the node.
fn peer() -> bool {
    true
}

/// The node is the last usable one, or no slower than its peers.
fn no_peer() -> bool {
    false
}

fn budget() -> EjectionBudget {
    EjectionBudget::new(10, 100)
}

fn moved(r: Recorded) -> Transition {
    match r {
        Recorded::Moved(t) => t,
        other => panic!("expected a transition, got {other:?}"),
    }
}

/// Records `n` outcomes (a faster peer exists) and returns the
/// transition, if any.
fn feed(
    b: &Breaker,
    budget: &EjectionBudget,
    outcome: CallOutcome,
    n: usize,
) -> Option<Transition> {
    feed_with(b, budget, outcome, n, peer)
}

/// Records `n` outcomes, `faster_peer` telling whether a faster usable
/// peer exists, and returns the transition, if any.
fn feed_with(
    b: &Breaker,
    budget: &EjectionBudget,
    outcome: CallOutcome,
    n: usize,
    faster_peer: fn() -> bool,
) -> Option<Transition> {
    let mut out = None;
    for _ in 0..n {
        if let Recorded::Moved(t) = b.record(false, outcome, budget, faster_peer) {
            out = Some(t);
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn opens_on_failure_rate_once_min_calls_are_in() {
    let b = Breaker::new(policy());
    let budget = budget();
    assert!(
        feed(&b, &budget, FAIL, 9).is_none(),
        "below min_calls: stays closed"
    );
    let t = feed(&b, &budget, OK, 1).expect("10 calls, 90% failed");
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            BreakerState::Closed,
            BreakerState::Open,
            TransitionReason::FailureRate
        )
    );
    assert_eq!(
        t.window,
        WindowStats {
            calls: 10,
            failures: 9,
            slow: 0
        }
    );
    assert_eq!(t.open_for, Some(Duration::from_secs(5)));
    assert_eq!(b.admit().0, Admission::Reject);
    assert_eq!(budget.ejected(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_healthy_mix_stays_closed() {
    let b = Breaker::new(policy());
    let budget = budget();
    for _ in 0..100 {
        feed(&b, &budget, OK, 3);
        feed(&b, &budget, FAIL, 1);
    }
    assert_eq!(b.state(), BreakerState::Closed, "25% failures < 50%");
}

#[tokio::test(start_paused = true)]
async fn opens_on_slow_rate() {
    let b = Breaker::new(policy());
    let budget = budget();
    feed(&b, &budget, OK, 2);
    let t = feed(&b, &budget, SLOW, 8).expect("8 of 10 slow");
    assert_eq!(t.reason, TransitionReason::SlowRate);
    assert_eq!(t.window.slow, 8);
}

#[tokio::test(start_paused = true)]
async fn slowness_without_a_faster_peer_keeps_the_node_in_but_failures_do_not() {
    let b = Breaker::new(policy());
    let budget = budget();
    let asked = std::cell::Cell::new(0);
    let ask = || {
        asked.set(asked.get() + 1);
        false
    };
    for _ in 0..9 {
        assert_eq!(b.record(false, SLOW, &budget, ask), Recorded::Nothing);
    }
    assert_eq!(asked.get(), 0, "asked only when a slow call would trip");
    match b.record(false, SLOW, &budget, ask) {
        Recorded::NoFasterPeer(w) => assert_eq!((w.calls, w.slow), (10, 10)),
        other => panic!("expected the node kept in, got {other:?}"),
    }
    assert_eq!(asked.get(), 1);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(budget.ejected(), 0);
    // Failures open it whatever its peers: 10 of 20 failed.
    let t = feed_with(&b, &budget, FAIL, 10, no_peer).expect("failure rate");
    assert_eq!(t.reason, TransitionReason::FailureRate);
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_without_a_faster_peer_passes_and_a_failed_one_reopens() {
    let b = Breaker::new(policy());
    let budget = budget();
    feed(&b, &budget, FAIL, 10);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(b.admit().0, Admission::Probe);
    assert_eq!(b.admit().0, Admission::Probe);
    assert_eq!(b.record(true, SLOW, &budget, no_peer), Recorded::Nothing);
    let t = moved(b.record(true, SLOW, &budget, no_peer));
    assert_eq!(
        (t.to, t.reason),
        (BreakerState::Closed, TransitionReason::ProbesSucceeded)
    );
    feed(&b, &budget, FAIL, 10);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(b.admit().0, Admission::Probe);
    let t = moved(b.record(true, FAIL, &budget, no_peer));
    assert_eq!(
        (t.to, t.reason),
        (BreakerState::Open, TransitionReason::ProbeFailed)
    );
}

#[tokio::test(start_paused = true)]
async fn opens_on_consecutive_failures_before_min_calls() {
    let b = Breaker::new(BreakerPolicy {
        consecutive_failures: 3,
        ..policy()
    });
    let budget = budget();
    feed(&b, &budget, FAIL, 2);
    feed(&b, &budget, OK, 1);
    assert!(
        feed(&b, &budget, FAIL, 2).is_none(),
        "the success reset the run"
    );
    let t = feed(&b, &budget, FAIL, 1).unwrap();
    assert_eq!(t.reason, TransitionReason::Consecutive);
    assert_eq!(t.consecutive_failures, 3);
}

#[tokio::test(start_paused = true)]
async fn old_buckets_slide_out_of_the_window() {
    let b = Breaker::new(policy());
    let budget = budget();
    feed(&b, &budget, FAIL, 8);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(
        b.window(),
        WindowStats::default(),
        "all 8 failures are older than 10 s"
    );
    assert!(feed(&b, &budget, OK, 2).is_none());
    assert_eq!(b.window().calls, 2);
    // Failures spread over time: only those within the last 10 s count.
    feed(&b, &budget, FAIL, 4);
    tokio::time::advance(Duration::from_secs(5)).await;
    feed(&b, &budget, OK, 4);
    assert_eq!(
        b.window(),
        WindowStats {
            calls: 10,
            failures: 4,
            slow: 0
        }
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(
        b.window(),
        WindowStats {
            calls: 4,
            failures: 0,
            slow: 0
        }
    );
}

/// A call that is neither failed nor slow reads the whole window only
/// while a failed or slow call is in it: it still trips the gate up to the
/// window's last second, and never after.
#[tokio::test(start_paused = true)]
async fn a_good_call_trips_a_window_that_still_holds_bad_calls() {
    for (bad, reason) in [
        (FAIL, TransitionReason::FailureRate),
        (SLOW, TransitionReason::SlowRate),
    ] {
        let b = Breaker::new(policy());
        let budget = budget();
        assert!(feed(&b, &budget, bad, 9).is_none());
        tokio::time::advance(Duration::from_secs(9)).await;
        let t = feed(&b, &budget, OK, 1).expect("the bad calls are 9 s old");
        assert_eq!(t.reason, reason);

        let b = Breaker::new(policy());
        assert!(feed(&b, &budget, bad, 9).is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(feed(&b, &budget, OK, 1).is_none(), "slid out");
        assert_eq!(b.window().calls, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_limited_probes_and_closes_when_they_pass() {
    let b = Breaker::new(policy());
    let budget = budget();
    feed(&b, &budget, FAIL, 10);
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(b.admit().0, Admission::Reject);
    assert!(!b.would_admit());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(b.would_admit());
    let (first, moved_now) = b.admit();
    assert_eq!(first, Admission::Probe);
    assert_eq!(moved_now.unwrap().to, BreakerState::HalfOpen);
    assert_eq!(b.admit().0, Admission::Probe);
    assert_eq!(
        b.admit().0,
        Admission::Reject,
        "only half_open_calls probes"
    );
    assert!(matches!(
        b.record(true, OK, &budget, peer),
        Recorded::Nothing
    ));
    let t = moved(b.record(true, OK, &budget, peer));
    assert_eq!(
        (t.to, t.reason),
        (BreakerState::Closed, TransitionReason::ProbesSucceeded)
    );
    assert_eq!(b.admit().0, Admission::Pass);
    assert_eq!(
        b.window(),
        WindowStats::default(),
        "a closed gate starts a fresh window"
    );
    assert_eq!(budget.ejected(), 0, "closing returns the ejection");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_returns_its_slot() {
    let b = Breaker::new(BreakerPolicy {
        half_open_calls: 1,
        ..policy()
    });
    let budget = budget();
    feed(&b, &budget, FAIL, 10);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(b.admit().0, Admission::Probe);
    assert_eq!(b.admit().0, Admission::Reject);
    b.cancel_probe();
    assert_eq!(b.admit().0, Admission::Probe);
}

#[tokio::test(start_paused = true)]
async fn a_failed_or_slow_probe_reopens_for_longer_each_time() {
    let b = Breaker::new(BreakerPolicy {
        half_open_calls: 1,
        ..policy()
    });
    let budget = budget();
    feed(&b, &budget, FAIL, 10);
    let mut expected = Duration::from_secs(5);
    for outcome in [FAIL, SLOW, FAIL, FAIL] {
        tokio::time::advance(expected).await;
        assert_eq!(b.admit().0, Admission::Probe);
        let t = moved(b.record(true, outcome, &budget, peer));
        assert_eq!(
            (t.to, t.reason),
            (BreakerState::Open, TransitionReason::ProbeFailed)
        );
        expected = (expected * 2).min(Duration::from_secs(40));
        assert_eq!(
            t.open_for,
            Some(expected),
            "doubling, capped at open_for_max"
        );
    }
    assert_eq!(budget.ejected(), 1, "re-opening holds the same ejection");
}

#[tokio::test(start_paused = true)]
async fn reopening_soon_after_closing_escalates_and_a_long_calm_resets() {
    let b = Breaker::new(BreakerPolicy {
        half_open_calls: 1,
        ..policy()
    });
    let budget = budget();
    let t = feed(&b, &budget, FAIL, 10).unwrap();
    assert_eq!(t.open_for, Some(Duration::from_secs(5)));
    tokio::time::advance(Duration::from_secs(5)).await;
    b.admit();
    moved(b.record(true, OK, &budget, peer));
    // Fails again right away: a flapping node.
    let t = feed(&b, &budget, FAIL, 10).unwrap();
    assert_eq!(t.open_for, Some(Duration::from_secs(10)));
    tokio::time::advance(Duration::from_secs(10)).await;
    b.admit();
    moved(b.record(true, OK, &budget, peer));
    // Calm for longer than open_for_max: back to the base period.
    tokio::time::advance(Duration::from_secs(41)).await;
    let t = feed(&b, &budget, FAIL, 10).unwrap();
    assert_eq!(t.open_for, Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn late_outcomes_while_open_are_ignored() {
    let b = Breaker::new(policy());
    let budget = budget();
    feed(&b, &budget, FAIL, 10);
    assert!(matches!(
        b.record(false, OK, &budget, peer),
        Recorded::Nothing
    ));
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_ejection_budget_keeps_nodes_in() {
    // 4 nodes at 50%: at most 2 ejected by error rates.
    let budget = EjectionBudget::new(4, 50);
    let breakers: Vec<Breaker> = (0..4).map(|_| Breaker::new(policy())).collect();
    let mut refused = 0;
    for b in &breakers {
        for _ in 0..10 {
            if let Recorded::EjectionRefused(w) = b.record(false, FAIL, &budget, peer) {
                assert!(w.failure_rate() >= 0.5);
                refused += 1;
            }
        }
    }
    let open = breakers
        .iter()
        .filter(|b| b.state() == BreakerState::Open)
        .count();
    assert_eq!(open, 2);
    assert_eq!(budget.ejected(), 2);
    assert!(refused > 0);
}

#[tokio::test(start_paused = true)]
async fn unreachable_nodes_are_ejected_beyond_the_budget() {
    let budget = EjectionBudget::new(2, 50);
    let breakers: Vec<Breaker> = (0..2)
        .map(|_| {
            Breaker::new(BreakerPolicy {
                consecutive_failures: 3,
                half_open_calls: 1,
                ..policy()
            })
        })
        .collect();
    for b in &breakers {
        feed(b, &budget, REFUSED, 3);
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "a whole pool that refuses is all out"
        );
    }
    assert_eq!(
        budget.ejected(),
        0,
        "unreachable ejections do not use the budget"
    );
    // Closing one does not free budget it never took.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(breakers[0].admit().0, Admission::Probe);
    moved(breakers[0].record(true, OK, &budget, peer));
    assert_eq!(budget.ejected(), 0);
    // An error-rate trip still counts.
    feed(&breakers[0], &budget, FAIL, 10);
    assert_eq!(budget.ejected(), 1);
}

#[test]
fn budget_keeps_at_least_one_when_percent_is_set() {
    assert_eq!(EjectionBudget::new(1, 50).max(), 1);
    assert_eq!(EjectionBudget::new(6, 50).max(), 3);
    assert_eq!(EjectionBudget::new(6, 0).max(), 0);
    assert_eq!(EjectionBudget::new(3, 100).max(), 3);
}

#[test]
fn bucket_packing_round_trips_and_saturates() {
    assert_eq!(unpack(pack(5, 3, 2)), (5, 3, 2));
    assert_eq!(unpack(pack(COUNT_MAX + 10, 0, 0)).0, COUNT_MAX);
}

#[tokio::test(start_paused = true)]
async fn sparse_traffic_never_revives_an_old_bucket() {
    let b = Breaker::new(policy());
    let budget = budget();
    feed(&b, &budget, FAIL, 9);
    tokio::time::advance(Duration::from_secs(10)).await;
    // One call every 5 s for a long time: bucket 0 is never written again,
    // but its old failures must never count.
    for _ in 0..2_100 {
        tokio::time::advance(Duration::from_secs(5)).await;
        if b.window().failures > 0 {
            panic!("stale failures counted: {:?}", b.window());
        }
        let _ = b.record(false, OK, &budget, peer);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_the_open_period_within_bounds() {
    let budget = EjectionBudget::new(100, 100);
    for _ in 0..50 {
        let b = Breaker::new(BreakerPolicy {
            jitter: 0.2,
            ..policy()
        });
        let t = feed(&b, &budget, FAIL, 10).unwrap();
        let d = t.open_for.unwrap();
        assert!(
            d >= Duration::from_secs(4) && d <= Duration::from_secs(6),
            "{d:?}"
        );
    }
}

/// What a call admitted and recorded in the closed state reads stays in
/// the breaker's first 88 bytes, as its layout says.
#[test]
fn the_fields_a_closed_call_reads_come_first() {
    use std::mem::offset_of;
    let hot_end = offset_of!(Breaker, policy) + offset_of!(BreakerPolicy, min_calls);
    assert_eq!(hot_end, 88);
    for field in [
        offset_of!(Breaker, state),
        offset_of!(Breaker, calm_when_clean),
        offset_of!(Breaker, window_len),
        offset_of!(Breaker, consecutive),
        offset_of!(Breaker, last_bad_s),
        offset_of!(Breaker, origin),
        offset_of!(Breaker, latest),
    ] {
        assert!(field < offset_of!(Breaker, policy));
    }
}
