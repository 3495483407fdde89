//! A retry budget keeps retries from multiplying load on a struggling backend.
//!
//! Unbounded retries turn a backend's bad minute into a flood: every failure
//! sends more traffic exactly when it can take the least. The budget lets
//! retries add at most `percent` of the original requests seen in a 10 s
//! sliding window, plus a floor per second so a quiet backend can still
//! retry. A retry counts from the moment it is granted, so retries still
//! waiting in backoff hold their share.
//!
//! Both calls run per request, so the window is ten 1 s buckets, each one
//! packed `AtomicU64` changed with `fetch_update`: no lock. A grant is checked
//! against its own bucket inside the update, so grants within a second are
//! exact. At a second boundary a grant re-reads the window and the clock after
//! taking its slot and gives it back if it raced a later second, so grants
//! never exceed the cap (a race can cost a grant, never add one). Bucket
//! operations are `SeqCst` because that argument compares a write to one
//! bucket with a read of another.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

/// Seconds in the sliding window, one bucket each.
pub const WINDOW_SECS: u64 = 10;

const BUCKETS: usize = WINDOW_SECS as usize;

// One bucket packs a 24-bit second tag and two saturating 20-bit counters
// (requests, retries). 24 bits of seconds is ~194 days, so a tag does not
// alias within any plausible gap; 20 bits is a million per second.
const TAG_BITS: u32 = 24;
const COUNT_BITS: u32 = 20;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

fn pack(tag: u64, requests: u64, retries: u64) -> u64 {
    (tag & TAG_MASK)
        | (requests.min(COUNT_MAX) << TAG_BITS)
        | (retries.min(COUNT_MAX) << (TAG_BITS + COUNT_BITS))
}

fn unpack(v: u64) -> (u64, u64, u64) {
    (
        v & TAG_MASK,
        (v >> TAG_BITS) & COUNT_MAX,
        (v >> (TAG_BITS + COUNT_BITS)) & COUNT_MAX,
    )
}

/// Seconds `tag` lies behind `now_tag`, modulo the tag width.
fn age(now_tag: u64, tag: u64) -> u64 {
    now_tag.wrapping_sub(tag) & TAG_MASK
}

/// Whether `tag` reads as a later second than `now_tag`.
fn is_ahead(now_tag: u64, tag: u64) -> bool {
    age(now_tag, tag) > TAG_MASK / 2
}

fn index(second: u64) -> usize {
    (second % WINDOW_SECS) as usize
}

/// What a writer at `tag` may build on in its own bucket: the counts to keep
/// (zero for an older second), or `None` when the bucket holds a later second,
/// meaning the writer's clock reading is stale and it must read it again.
/// A later tag seen again after that fresh reading cannot come from a real
/// later clock: it is a leftover from months ago and is overwritten.
fn claim(v: u64, tag: u64, ahead_seen: &mut Option<u64>) -> Option<(u64, u64)> {
    let (t, requests, retries) = unpack(v);
    if t == tag {
        return Some((requests, retries));
    }
    if (requests == 0 && retries == 0) || !is_ahead(tag, t) || *ahead_seen == Some(t) {
        return Some((0, 0));
    }
    *ahead_seen = Some(t);
    None
}

/// The window's figures at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryBudgetStats {
    /// Original requests in the window.
    pub requests: u64,
    /// Retries granted in the window.
    pub retries: u64,
    /// The cap `retries` is held to now.
    pub allowed: u64,
}

/// One backend's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_sec: u32,
    origin: Instant,
    buckets: [AtomicU64; BUCKETS],
}

impl RetryBudget {
    /// `percent`: retries may add at most this share of the requests in the
    /// window. `min_per_sec`: a floor of retries per second allowed
    /// regardless, so low traffic can still retry.
    pub fn new(percent: u32, min_per_sec: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min_per_sec,
            origin: Instant::now(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one original request (not a retry).
    pub fn record_request(&self) {
        self.record_request_at(Instant::now());
    }

    /// Counts one original request in the second of `at`, a clock reading
    /// the caller has just made; should a later second hold its bucket
    /// already, the reading was stale and the clock is read again.
    pub fn record_request_at(&self, at: Instant) {
        let mut ahead_seen = None;
        let mut now_s = at.saturating_duration_since(self.origin).as_secs();
        loop {
            let tag = now_s & TAG_MASK;
            let done =
                self.buckets[index(now_s)].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                    claim(v, tag, &mut ahead_seen).map(|(req, ret)| pack(tag, req + 1, ret))
                });
            if done.is_ok() {
                return;
            }
            now_s = self.now_s();
        }
    }

    /// Takes permission for one retry now; false when the budget is spent.
    /// The retry counts from this moment, so one waiting in backoff counts.
    pub fn try_retry(&self) -> bool {
        let mut ahead_seen = None;
        loop {
            let now_s = self.now_s();
            let tag = now_s & TAG_MASK;
            let idx = index(now_s);
            let (others_req, others_ret) = self.window_at(now_s, Some(idx));
            let mut stale = false;
            let granted = self.buckets[idx].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                let Some((req, ret)) = claim(v, tag, &mut ahead_seen) else {
                    stale = true;
                    return None;
                };
                let fits =
                    ret < COUNT_MAX && others_ret + ret < self.cap(others_req.saturating_add(req));
                fits.then(|| pack(tag, req, ret + 1))
            });
            if stale {
                continue;
            }
            if granted.is_err() {
                return false;
            }
            // The slot is taken. Re-read the whole window, then the clock: a
            // grant for a later second that this one's check could have
            // missed is visible by now, and the clock has moved past our
            // second if one exists.
            let (req, ret) = self.window_at(now_s, None);
            if self.now_s() != now_s {
                self.give_back(idx, tag);
                continue;
            }
            if ret > self.cap(req) {
                self.give_back(idx, tag);
                return false;
            }
            return true;
        }
    }

    /// The window's figures now.
    pub fn stats(&self) -> RetryBudgetStats {
        let (requests, retries) = self.window_at(self.now_s(), None);
        RetryBudgetStats {
            requests,
            retries,
            allowed: self.cap(requests),
        }
    }

    pub fn percent(&self) -> u32 {
        u32::try_from(self.percent).unwrap_or(u32::MAX)
    }

    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// Most retries a window holding `requests` allows.
    fn cap(&self, requests: u64) -> u64 {
        (requests.saturating_mul(self.percent) / 100)
            .saturating_add(u64::from(self.min_per_sec).saturating_mul(WINDOW_SECS))
    }

    /// Sums the buckets of the window ending at `now_s`, leaving out `skip`.
    fn window_at(&self, now_s: u64, skip: Option<usize>) -> (u64, u64) {
        let now_tag = now_s & TAG_MASK;
        let mut sum = (0u64, 0u64);
        for (i, bucket) in self.buckets.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            let (t, req, ret) = unpack(bucket.load(Ordering::SeqCst));
            let a = age(now_tag, t);
            // A bucket counts when it is one of the last 10 seconds and sits
            // where that second belongs (a leftover cannot pass both).
            if a < WINDOW_SECS && now_s >= a && index(now_s - a) == i {
                sum.0 += req;
                sum.1 += ret;
            }
        }
        sum
    }

    fn give_back(&self, idx: usize, tag: u64) {
        let _ = self.buckets[idx].fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            let (t, req, ret) = unpack(v);
            (t == tag && ret > 0).then(|| pack(tag, req, ret - 1))
        });
    }

    fn now_s(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }
}

#[cfg(test)]
#[path = "retry_budget_tests.rs"]
mod tests;
