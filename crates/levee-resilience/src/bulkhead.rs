//! A bulkhead is a concurrency limit that fails instead of waiting forever.
//!
//! A request takes a slot; when none is free it may wait in a bounded queue
//! until a caller-given instant. A full queue or an expired wait is refused at
//! once, so stuck work behind one bulkhead cannot hold memory or callers
//! elsewhere. The permit is an owned value: it is released when dropped, on
//! every path (success, error, deadline, client gone).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Semaphore, TryAcquireError};
use tokio::time::{timeout_at, Instant};

/// Why a bulkhead refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadFull {
    /// Every slot was taken and the queue was full too.
    #[error("all {max_in_flight} slots are busy and the queue of {max_queue} is full")]
    QueueFull {
        max_in_flight: usize,
        max_queue: usize,
    },
    /// The request waited in the queue until its wait deadline.
    #[error("no slot of {max_in_flight} became free before the queue timeout")]
    QueueTimeout { max_in_flight: usize },
}

/// Bounded concurrency plus a bounded, timed queue, resizable while in use
/// (a config reload changes the limits of a live bulkhead).
#[derive(Debug)]
pub struct Bulkhead {
    slots: Arc<Slots>,
    max_queue: AtomicUsize,
    queued: AtomicUsize,
}

/// The semaphore and the limit it stands for. After a shrink, `debt` slots
/// are still held by requests above the new limit; they are retired as those
/// requests end instead of being given back.
#[derive(Debug)]
struct Slots {
    sem: Semaphore,
    max: AtomicUsize,
    debt: AtomicUsize,
}

impl Slots {
    fn release(&self) {
        let repaid = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if !repaid {
            self.sem.add_permits(1);
        }
    }
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct BulkheadPermit {
    slots: Arc<Slots>,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl Bulkhead {
    /// `max_in_flight` must be at least 1 (the config validates it); a zero
    /// would refuse everything, so it is raised to 1 rather than trusted.
    pub fn new(max_in_flight: usize, max_queue: usize) -> Self {
        let max_in_flight = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            slots: Arc::new(Slots {
                sem: Semaphore::new(max_in_flight),
                max: AtomicUsize::new(max_in_flight),
                debt: AtomicUsize::new(0),
            }),
            max_queue: AtomicUsize::new(max_queue),
            queued: AtomicUsize::new(0),
        }
    }

    /// Takes a slot, waiting in the queue no later than `wait_until`.
    pub async fn acquire(&self, wait_until: Instant) -> Result<BulkheadPermit, BulkheadFull> {
        if let Some(permit) = self.take_free()? {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(self.queue_full());
        }
        let _in_queue = QueuedGuard(&self.queued);
        loop {
            match timeout_at(wait_until, self.slots.sem.acquire()).await {
                Ok(Ok(slot)) => match self.claim(slot) {
                    Some(permit) => return Ok(permit),
                    // It repaid a shrink's debt: wait for the next one.
                    None => continue,
                },
                Ok(Err(_closed)) => return Err(self.queue_full()),
                Err(_elapsed) => {
                    return Err(BulkheadFull::QueueTimeout {
                        max_in_flight: self.max_in_flight(),
                    })
                }
            }
        }
    }

    /// Takes a free slot without waiting. `Ok(None)`: none is free but the
    /// queue has room, so the caller may wait with [`Bulkhead::acquire`];
    /// `Err`: none is free and the queue is full.
    pub fn try_acquire(&self) -> Result<Option<BulkheadPermit>, BulkheadFull> {
        match self.take_free()? {
            Some(permit) => Ok(Some(permit)),
            None if self.queued() < self.max_queue() => Ok(None),
            None => Err(self.queue_full()),
        }
    }

    /// A free slot, if there is one.
    fn take_free(&self) -> Result<Option<BulkheadPermit>, BulkheadFull> {
        loop {
            match self.slots.sem.try_acquire() {
                Ok(slot) => match self.claim(slot) {
                    Some(permit) => return Ok(Some(permit)),
                    None => continue,
                },
                Err(TryAcquireError::NoPermits) => return Ok(None),
                Err(TryAcquireError::Closed) => return Err(self.queue_full()),
            }
        }
    }

    /// Makes a semaphore permit a slot, unless a shrink still owes permits:
    /// then the permit repays that debt and `None` is returned. (A waiter
    /// that was handed a permit and then cancelled gives it back to the
    /// semaphore directly, past [`Slots::release`]; this catches it.)
    fn claim(&self, slot: tokio::sync::SemaphorePermit<'_>) -> Option<BulkheadPermit> {
        let repaid = self
            .slots
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if repaid {
            slot.forget();
            return None;
        }
        Some(self.held(slot))
    }

    /// Turns a semaphore permit into an owned slot that releases through
    /// [`Slots::release`] (so a shrink can retire it).
    fn held(&self, slot: tokio::sync::SemaphorePermit<'_>) -> BulkheadPermit {
        slot.forget();
        BulkheadPermit {
            slots: Arc::clone(&self.slots),
        }
    }

    /// Applies new limits now. Requests in flight keep their slots and count
    /// against the new limit: after a shrink, new requests wait until the
    /// in-flight count is below it.
    pub fn resize(&self, max_in_flight: usize, max_queue: usize) {
        self.max_queue.store(max_queue, Ordering::Release);
        self.set_max_in_flight(max_in_flight);
    }

    /// Applies a new concurrency limit now (an adaptive limit moving), as
    /// [`Bulkhead::resize`] does; waiters in the queue take the slots a
    /// growth frees.
    pub fn set_max_in_flight(&self, max_in_flight: usize) {
        let new = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let old = self.slots.max.swap(new, Ordering::AcqRel);
        if new > old {
            // Cancel debt first: those slots are still held and now fit.
            let mut grow = new - old;
            let _ = self
                .slots
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    let cancel = d.min(new - old);
                    grow = new - old - cancel;
                    Some(d - cancel)
                });
            self.slots.sem.add_permits(grow);
        } else if new < old {
            let shrink = old - new;
            let forgotten = self.slots.sem.forget_permits(shrink);
            self.slots
                .debt
                .fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }

    /// Slots taken right now.
    pub fn in_flight(&self) -> usize {
        let held = self.max_in_flight() + self.slots.debt.load(Ordering::Acquire);
        held.saturating_sub(self.slots.sem.available_permits())
    }

    /// Requests waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn max_in_flight(&self) -> usize {
        self.slots.max.load(Ordering::Acquire)
    }

    pub fn max_queue(&self) -> usize {
        self.max_queue.load(Ordering::Acquire)
    }

    fn queue_full(&self) -> BulkheadFull {
        BulkheadFull::QueueFull {
            max_in_flight: self.max_in_flight(),
            max_queue: self.max_queue(),
        }
    }
}

/// Leaves the queue on every path, including the waiting future being dropped.
struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn admits_up_to_max_in_flight_then_refuses_without_a_queue() {
        let b = Bulkhead::new(2, 0);
        let p1 = b.acquire(soon(100)).await.unwrap();
        let _p2 = b.acquire(soon(100)).await.unwrap();
        assert_eq!(b.in_flight(), 2);
        let err = b.acquire(soon(100)).await.unwrap_err();
        assert!(matches!(err, BulkheadFull::QueueFull { .. }));
        drop(p1);
        assert_eq!(b.in_flight(), 1);
        b.acquire(soon(100)).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn queued_request_times_out_at_its_wait_deadline() {
        let b = Bulkhead::new(1, 1);
        let _held = b.acquire(soon(10)).await.unwrap();
        let started = Instant::now();
        let err = b.acquire(soon(100)).await.unwrap_err();
        assert!(matches!(err, BulkheadFull::QueueTimeout { .. }));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(b.queued(), 0, "a timed-out waiter leaves the queue");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_request_gets_the_slot_when_it_frees() {
        let b = Arc::new(Bulkhead::new(1, 1));
        let held = b.acquire(soon(10)).await.unwrap();
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.acquire(soon(1_000)).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.queued(), 1);
        // The queue holds one: the next caller is refused at once.
        let err = b.acquire(soon(1_000)).await.unwrap_err();
        assert!(matches!(err, BulkheadFull::QueueFull { .. }));
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!(b.queued(), 0);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_waiting_caller_leaves_the_queue() {
        let b = Arc::new(Bulkhead::new(1, 4));
        let _held = b.acquire(soon(10)).await.unwrap();
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.acquire(soon(60_000)).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(b.queued(), 1);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(b.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn growing_admits_more_at_once_and_wakes_a_waiter() {
        let b = Arc::new(Bulkhead::new(1, 4));
        let _held = b.acquire(soon(10)).await.unwrap();
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.acquire(soon(1_000)).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(b.queued(), 1);
        b.resize(3, 4);
        waiter.await.unwrap().unwrap();
        let _p2 = b.acquire(soon(10)).await.unwrap();
        let _p3 = b.acquire(soon(10)).await.unwrap();
        assert_eq!(b.in_flight(), 3);
        assert_eq!(b.max_in_flight(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shrinking_below_in_flight_keeps_them_and_retires_their_slots() {
        let b = Bulkhead::new(4, 0);
        let held: Vec<_> = futures_join(&b, 4).await;
        b.resize(2, 0);
        assert_eq!(b.in_flight(), 4, "in-flight requests keep their slots");
        assert_eq!(b.max_in_flight(), 2);
        let mut held = held.into_iter();
        drop(held.next());
        drop(held.next());
        assert_eq!(b.in_flight(), 2);
        assert!(b.acquire(soon(10)).await.is_err(), "still at the new limit");
        drop(held.next());
        assert_eq!(b.in_flight(), 1);
        let again = b.acquire(soon(10)).await.unwrap();
        assert!(
            b.acquire(soon(10)).await.is_err(),
            "never above the new limit"
        );
        drop(again);
        drop(held.next());
        assert_eq!(b.in_flight(), 0);
        // Growing back while debt is outstanding never over-admits.
        let a = b.acquire(soon(10)).await.unwrap();
        let c = b.acquire(soon(10)).await.unwrap();
        b.resize(1, 0);
        b.resize(3, 0);
        let d = b.acquire(soon(10)).await.unwrap();
        assert!(b.acquire(soon(10)).await.is_err());
        assert_eq!(b.in_flight(), 3);
        drop((a, c, d));
        assert_eq!(b.in_flight(), 0);
        let all = futures_join(&b, 3).await;
        assert_eq!(all.len(), 3);
    }

    async fn futures_join(b: &Bulkhead, n: usize) -> Vec<BulkheadPermit> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(b.acquire(soon(10)).await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_takes_a_free_slot_or_says_whether_to_queue() {
        let b = Bulkhead::new(1, 1);
        let held = b.try_acquire().unwrap().unwrap();
        assert!(b.try_acquire().unwrap().is_none(), "may queue");
        let none = Bulkhead::new(1, 0);
        let _h = none.try_acquire().unwrap().unwrap();
        assert!(matches!(
            none.try_acquire(),
            Err(BulkheadFull::QueueFull { .. })
        ));
        drop(held);
        assert!(b.try_acquire().unwrap().is_some());
    }

    /// A waiter handed a slot and then cancelled gives it back to the
    /// semaphore directly; that slot must repay a shrink's debt, not admit a
    /// request above the new limit.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_handed_a_slot_cannot_lift_a_shrunk_limit() {
        let b = Arc::new(Bulkhead::new(2, 1));
        let first = b.acquire(soon(10)).await.unwrap();
        let _second = b.acquire(soon(10)).await.unwrap();
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move { b.acquire(soon(60_000)).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(b.queued(), 1);
        drop(first); // handed to the waiter, which has not run yet
        b.resize(1, 1);
        waiter.abort();
        let _ = waiter.await;
        assert!(
            b.try_acquire().unwrap().is_none(),
            "one slot is held and the limit is one"
        );
        assert_eq!(b.in_flight(), 1);
    }

    #[test]
    fn zero_slots_is_raised_to_one() {
        assert_eq!(Bulkhead::new(0, 0).max_in_flight(), 1);
    }
}
