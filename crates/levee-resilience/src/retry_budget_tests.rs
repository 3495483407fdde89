#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use std::sync::Arc;
use std::time::Duration;

async fn advance_secs(secs: u64) {
    tokio::time::advance(Duration::from_secs(secs)).await;
}

/// Calls `try_retry` `n` times and counts the grants.
fn grants(b: &RetryBudget, n: u64) -> u64 {
    (0..n).filter(|_| b.try_retry()).count() as u64
}

fn requests(b: &RetryBudget, n: u64) {
    for _ in 0..n {
        b.record_request();
    }
}

#[tokio::test(start_paused = true)]
async fn the_floor_allows_retries_without_requests() {
    let b = RetryBudget::new(20, 2);
    assert_eq!(grants(&b, 25), 20, "2 per second over 10 s");
    assert!(!b.try_retry());
    assert_eq!(
        b.stats(),
        RetryBudgetStats {
            requests: 0,
            retries: 20,
            allowed: 20
        }
    );
}

#[tokio::test(start_paused = true)]
async fn retries_are_a_share_of_requests_plus_the_floor() {
    let b = RetryBudget::new(20, 0);
    requests(&b, 100);
    assert_eq!(grants(&b, 50), 20);

    let b = RetryBudget::new(20, 1);
    requests(&b, 100);
    assert_eq!(grants(&b, 50), 30, "20% of 100 plus 1/s over 10 s");
    assert_eq!(
        b.stats(),
        RetryBudgetStats {
            requests: 100,
            retries: 30,
            allowed: 30
        }
    );
}

#[tokio::test(start_paused = true)]
async fn more_requests_make_room_again() {
    let b = RetryBudget::new(10, 0);
    requests(&b, 50);
    assert_eq!(grants(&b, 10), 5);
    requests(&b, 9);
    assert!(!b.try_retry(), "59 requests at 10% is still 5");
    requests(&b, 1);
    assert!(b.try_retry());
    assert!(!b.try_retry());
}

#[tokio::test(start_paused = true)]
async fn zero_percent_and_zero_floor_allow_none() {
    let b = RetryBudget::new(0, 0);
    requests(&b, 1_000);
    assert_eq!(grants(&b, 10), 0);
    assert_eq!(b.stats().allowed, 0);
    assert_eq!(b.stats().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn the_window_slides() {
    let b = RetryBudget::new(20, 0);
    requests(&b, 100);
    assert_eq!(grants(&b, 30), 20);
    advance_secs(5).await;
    requests(&b, 50);
    assert_eq!(grants(&b, 30), 10, "150 requests allow 30; 20 are taken");
    advance_secs(4).await;
    assert_eq!(
        b.stats().requests,
        150,
        "9 s on, the first second still counts"
    );
    assert!(!b.try_retry());
    advance_secs(1).await;
    assert_eq!(
        b.stats(),
        RetryBudgetStats {
            requests: 50,
            retries: 10,
            allowed: 10
        },
        "10 s on, the first second's requests and retries are out"
    );
    assert!(!b.try_retry());
    advance_secs(5).await;
    assert_eq!(b.stats(), RetryBudgetStats::default());
    assert!(!b.try_retry(), "no requests, no floor");
    requests(&b, 10);
    assert_eq!(grants(&b, 5), 2);
}

#[tokio::test(start_paused = true)]
async fn retries_granted_over_several_seconds_add_up() {
    let b = RetryBudget::new(0, 1);
    for second in 0..10 {
        if second > 0 {
            advance_secs(1).await;
        }
        assert_eq!(grants(&b, 1), 1, "second {second}");
    }
    assert!(!b.try_retry(), "10 granted in the last 10 s is the floor");
    assert_eq!(b.stats().retries, 10);
    advance_secs(1).await;
    assert_eq!(b.stats().retries, 9, "the first second slid out");
    assert_eq!(grants(&b, 5), 1, "its slot is free again");
    advance_secs(10).await;
    assert_eq!(grants(&b, 20), 10, "a full window later, the floor is back");
}

#[tokio::test(start_paused = true)]
async fn long_silence_leaves_nothing_behind() {
    let b = RetryBudget::new(50, 0);
    requests(&b, 40);
    assert_eq!(grants(&b, 40), 20);
    // Far more than the window and a wrap of the bucket ring's index, but
    // the same index as second 0.
    advance_secs(3_600).await;
    assert_eq!(b.stats(), RetryBudgetStats::default());
    requests(&b, 2);
    assert_eq!(grants(&b, 5), 1);
    assert_eq!(b.stats().requests, 2);
}

#[test]
fn counters_saturate_and_keep_the_tag() {
    let v = pack(TAG_MASK + 5, COUNT_MAX + 10, u64::MAX);
    assert_eq!(unpack(v), (4, COUNT_MAX, COUNT_MAX));
}

#[test]
fn a_later_second_is_stale_once_then_overwritten() {
    let later = pack(7, 3, 1);
    let mut seen = None;
    assert_eq!(claim(later, 5, &mut seen), None, "re-read the clock");
    assert_eq!(claim(later, 5, &mut seen), Some((0, 0)), "a leftover");
    assert_eq!(claim(pack(5, 3, 1), 5, &mut None), Some((3, 1)));
    assert_eq!(claim(pack(2, 3, 1), 5, &mut None), Some((0, 0)), "older");
    assert_eq!(claim(pack(9, 0, 0), 5, &mut None), Some((0, 0)), "empty");
    assert!(is_ahead(TAG_MASK, 3), "wraps around the tag");
    assert!(!is_ahead(3, TAG_MASK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_retries_never_exceed_the_cap() {
    let b = Arc::new(RetryBudget::new(10, 3));
    requests(&b, 1_000);
    let cap = b.stats().allowed;
    assert_eq!(cap, 130);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                let mut won = 0u64;
                for _ in 0..100 {
                    if b.try_retry() {
                        won += 1;
                    }
                    tokio::task::yield_now().await;
                }
                won
            })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        granted += t.await.unwrap();
    }
    assert!(granted <= cap, "{granted} granted over a cap of {cap}");
    assert_eq!(b.stats().retries, granted, "no slot leaked");
    assert_eq!(granted, cap, "1600 tries fill the budget");
}
