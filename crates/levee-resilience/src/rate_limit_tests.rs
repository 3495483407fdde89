#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};

use tokio::time::advance;

use super::*;

const TENTH: Duration = Duration::from_millis(100);

fn burst(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn addr(last: u8) -> ClientKey {
    ClientKey::Addr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
}

#[tokio::test(start_paused = true)]
async fn a_burst_passes_then_refusals_say_when_the_next_token_comes() {
    let limit = Arc::new(RateLimit::new(TENTH, burst(3), None));
    assert!(!limit.is_keyed());
    for _ in 0..3 {
        limit.check(ClientKey::Anonymous).unwrap();
    }
    let refused = limit.check(ClientKey::Anonymous).unwrap_err();
    assert_eq!(refused.retry_after, TENTH);
    advance(Duration::from_millis(40)).await;
    let refused = limit.check(ClientKey::Anonymous).unwrap_err();
    assert_eq!(refused.retry_after, Duration::from_millis(60));
    // One shared bucket: the key does not matter.
    assert!(limit.check(addr(9)).is_err());

    advance(Duration::from_millis(60)).await;
    limit.check(ClientKey::Anonymous).unwrap();
    assert!(
        limit.check(ClientKey::Anonymous).is_err(),
        "one token earned"
    );

    advance(TENTH * 10).await;
    for _ in 0..3 {
        limit.check(ClientKey::Anonymous).unwrap();
    }
    assert!(
        limit.check(ClientKey::Anonymous).is_err(),
        "refills to the burst, no more"
    );
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_bucket() {
    let limit = Arc::new(RateLimit::new(TENTH, burst(2), Some(100)));
    assert!(limit.is_keyed());
    let (a, b) = (limit.token_key(b"key-a"), limit.token_key(b"key-b"));
    assert_eq!(a, limit.token_key(b"key-a"));
    assert_ne!(a, b);
    for _ in 0..2 {
        limit.check(a).unwrap();
    }
    assert!(limit.check(a).is_err());
    for key in [b, addr(1), ClientKey::Anonymous] {
        limit.check(key).unwrap();
        limit.check(key).unwrap();
        assert!(limit.check(key).is_err());
    }
    assert_eq!(limit.tracked_keys(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_sweep_drops_the_keys_whose_buckets_refilled() {
    let limit = Arc::new(RateLimit::new(TENTH, burst(2), Some(100)));
    limit.check(addr(1)).unwrap();
    // A bucket is forgotten once it has been full for a token's time.
    advance(Duration::from_millis(250)).await;
    limit.check(addr(2)).unwrap();
    limit.check(addr(2)).unwrap();
    limit.sweep();
    assert_eq!(limit.tracked_keys(), 1, "addr 1 refilled, addr 2 did not");
    assert!(limit.check(addr(2)).is_err(), "a kept key keeps its state");
    advance(TENTH * 4).await;
    limit.sweep();
    assert_eq!(limit.tracked_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn requests_start_a_sweep_at_most_once_an_interval() {
    let limit = Arc::new(RateLimit::new(TENTH, burst(1), Some(100)));
    for i in 0..10 {
        limit.check(addr(i)).unwrap();
    }
    advance(SWEEP_EVERY - Duration::from_millis(300)).await;
    limit.check(addr(100)).unwrap();
    tokio::task::yield_now().await;
    assert_eq!(limit.tracked_keys(), 11, "not due yet");
    advance(Duration::from_millis(300)).await;
    limit.check(addr(101)).unwrap();
    tokio::task::yield_now().await;
    assert_eq!(limit.tracked_keys(), 1, "only the key just used stays");
}

#[tokio::test(start_paused = true)]
async fn past_the_cap_new_keys_share_one_bucket_until_a_sweep() {
    let limit = Arc::new(RateLimit::new(Duration::from_secs(60), burst(1), Some(2)));
    limit.check(addr(1)).unwrap();
    limit.check(addr(2)).unwrap();
    limit.check(addr(3)).unwrap();
    assert!(
        limit.check(addr(4)).is_err(),
        "addr 3 took the overflow bucket's token"
    );
    assert_eq!(limit.tracked_keys(), 3, "two keys and the overflow bucket");
    assert!(limit.check(addr(1)).is_err(), "known keys keep their own");

    // While keys overflow, a sweep comes after a second, not ten.
    advance(SWEEP_WHEN_FULL_EVERY).await;
    assert!(limit.check(addr(5)).is_err());
    tokio::task::yield_now().await;
    assert_eq!(limit.tracked_keys(), 3, "every bucket still draining");
    advance(Duration::from_secs(120)).await;
    limit.sweep();
    assert_eq!(limit.tracked_keys(), 0);
    limit.check(addr(5)).unwrap();
}
