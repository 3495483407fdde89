//! Token buckets that bound how fast requests may arrive: one bucket for
//! a whole route, or one per client key (an address, or a hash of a header
//! value such as an API key).
//!
//! The buckets are governor's GCRA (one atomic word per bucket) on levee's
//! clock, `tokio::time`, so tests run on paused time. Per-key state is
//! bounded twice: a key whose bucket has been full again for a token's time
//! is indistinguishable from a new one and is dropped by a sweep (at most one every [`SWEEP_EVERY`],
//! started by a request, run on its own task); and past `max_keys` tracked
//! keys, new keys share one overflow bucket until a sweep makes room.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{NotUntil, Quota, RateLimiter};
use tokio::time::Instant;

/// Keys whose buckets are full again are swept at most this often.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How soon a sweep may follow another while new keys overflow the cap.
pub const SWEEP_WHEN_FULL_EVERY: Duration = Duration::from_secs(1);

/// The request is over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over the rate limit; the next token in {retry_after:?}")]
pub struct RateLimited {
    /// How long until the bucket holds a token again.
    pub retry_after: Duration,
}

/// Whose bucket a request draws from, when buckets are per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Addr(IpAddr),
    /// A header value, by [`RateLimit::token_key`].
    Token(u64),
    /// A request without the header: all such share one bucket.
    Anonymous,
}

/// One route's rate limit.
#[derive(Debug)]
pub struct RateLimit {
    buckets: Buckets,
    /// Hashes header values: seeded at random, so clients cannot aim two
    /// values at one bucket; kept with the limit across reloads.
    hasher: RandomState,
    /// Clock reading (ns) of the last sweep.
    last_sweep: AtomicU64,
}

#[derive(Debug)]
enum Buckets {
    Shared(RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>),
    PerKey {
        limiter: RateLimiter<Slot, BoundedStore, TokioClock, NoOpMiddleware<Nanos>>,
        /// The store's: a new key went to the overflow bucket since the
        /// last sweep.
        overflowed: Arc<AtomicBool>,
    },
}

impl RateLimit {
    /// `per_token`: time to earn one token (the inverse of the rate);
    /// `burst`: the bucket's size; `max_keys`: `None` for one bucket,
    /// else buckets per key, at most about this many.
    pub fn new(per_token: Duration, burst: NonZeroU32, max_keys: Option<usize>) -> Self {
        let quota = Quota::with_period(per_token.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let clock = TokioClock {
            origin: Instant::now(),
        };
        let buckets = match max_keys {
            None => Buckets::Shared(RateLimiter::direct_with_clock(quota, clock)),
            Some(max_keys) => {
                let overflowed = Arc::new(AtomicBool::new(false));
                let store = BoundedStore {
                    map: DashMapStateStore::default(),
                    max_keys,
                    overflowed: Arc::clone(&overflowed),
                };
                Buckets::PerKey {
                    limiter: RateLimiter::new(quota, store, clock),
                    overflowed,
                }
            }
        };
        Self {
            buckets,
            hasher: RandomState::new(),
            last_sweep: AtomicU64::new(0),
        }
    }

    /// Whether [`RateLimit::check`] looks at the key.
    pub fn is_keyed(&self) -> bool {
        matches!(self.buckets, Buckets::PerKey { .. })
    }

    /// The key of a header value.
    pub fn token_key(&self, value: &[u8]) -> ClientKey {
        ClientKey::Token(self.hasher.hash_one(value))
    }

    /// Takes a token from the bucket of `key` (ignored with one bucket).
    pub fn check(self: &Arc<Self>, key: ClientKey) -> Result<(), RateLimited> {
        let refused = |not_until: NotUntil<Nanos>, now: Nanos| RateLimited {
            retry_after: not_until.wait_time_from(now),
        };
        match &self.buckets {
            Buckets::Shared(limiter) => limiter
                .check()
                .map_err(|n| refused(n, limiter.clock().now())),
            Buckets::PerKey { limiter, .. } => {
                let result = limiter.check_key(&Slot::Key(key));
                let now = limiter.clock().now();
                self.sweep_if_due(now);
                result.map_err(|n| refused(n, now))
            }
        }
    }

    /// Per-key buckets tracked now (0 with one bucket).
    pub fn tracked_keys(&self) -> usize {
        match &self.buckets {
            Buckets::Shared(_) => 0,
            Buckets::PerKey { limiter, .. } => limiter.len(),
        }
    }

    /// Drops the keys whose buckets have been full again for a token's time.
    pub fn sweep(&self) {
        if let Buckets::PerKey { limiter, .. } = &self.buckets {
            limiter.retain_recent();
        }
    }

    /// Starts a sweep on its own task when one is due: the one caller that
    /// moves `last_sweep` on starts it, so at most one runs per interval.
    fn sweep_if_due(self: &Arc<Self>, now: Nanos) {
        let Buckets::PerKey { overflowed, .. } = &self.buckets else {
            return;
        };
        let every = if overflowed.load(Ordering::Relaxed) {
            SWEEP_WHEN_FULL_EVERY
        } else {
            SWEEP_EVERY
        };
        let last = self.last_sweep.load(Ordering::Relaxed);
        let now = now.as_u64();
        if now.saturating_sub(last) < duration_ns(every) {
            return;
        }
        if self
            .last_sweep
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let limit = Arc::clone(self);
            tokio::spawn(async move { limit.sweep() });
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// governor's clock over `tokio::time`: nanoseconds since the limit was made.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.origin.elapsed())
    }
}

/// A key's bucket, or the one that keys past the cap share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Key(ClientKey),
    Overflow,
}

/// governor's DashMap store with a cap on the keys it tracks.
#[derive(Debug)]
struct BoundedStore {
    map: DashMapStateStore<Slot>,
    max_keys: usize,
    /// A new key went to the overflow bucket since the last sweep.
    overflowed: Arc<AtomicBool>,
}

impl StateStore for BoundedStore {
    type Key = Slot;

    fn measure_and_replace<T, F, E>(&self, key: &Slot, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A known key keeps its bucket; a new one gets its own while there
        // is room (racing inserts may pass the cap by a few).
        if self.map.contains_key(key) || self.map.len() < self.max_keys {
            return self.map.measure_and_replace(key, f);
        }
        self.overflowed.store(true, Ordering::Relaxed);
        self.map.measure_and_replace(&Slot::Overflow, f)
    }
}

impl ShrinkableKeyedStateStore<Slot> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.overflowed.store(false, Ordering::Relaxed);
        self.map.retain_recent(drop_below);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
#[path = "rate_limit_tests.rs"]
mod tests;
