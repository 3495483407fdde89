//! A bulkhead is a concurrency limit that fails instead of waiting forever.
//!
//! A request takes a slot; when none is free it may wait in a bounded queue
//! until a caller-given instant. A full queue or an expired wait is refused at
//! once, so stuck work behind one bulkhead cannot hold memory or callers
//! elsewhere. The permit is an owned value: it is released when dropped, on
//! every path (success, error, deadline, client gone).
//!
//! A free slot is one atomic compare-and-swap; the waiter queue is locked
//! only when a slot frees while someone waits. Waiters are ordered by
//! [`Precedence`] (a freed slot goes to a critical waiter before a normal
//! one, and to a normal one before a sheddable one), first come first served
//! within a precedence.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
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

/// Which waiters a freed slot goes to first: every critical waiter before
/// any normal one, every normal one before any sheddable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precedence {
    Critical,
    Normal,
    Sheddable,
}

/// Bounded concurrency plus a bounded, timed queue, resizable while in use
/// (a config reload changes the limits of a live bulkhead).
#[derive(Debug)]
pub struct Bulkhead {
    slots: Arc<Slots>,
}

/// The counts a permit's drop reaches, and the waiters it may wake.
#[derive(Debug)]
struct Slots {
    /// Slots held; above `max` for a while after a shrink, never raised
    /// past it.
    in_flight: AtomicUsize,
    max: AtomicUsize,
    max_queue: AtomicUsize,
    /// Callers waiting for a slot (from joining the queue to leaving it,
    /// on every path); `max_queue` bounds it.
    queued: AtomicUsize,
    waiters: Mutex<Waiters>,
}

/// One first-come-first-served line per [`Precedence`]. A waiter that gave
/// up stays in its line (its receiver closed) until it reaches the front or
/// the lines are compacted.
#[derive(Debug, Default)]
struct Waiters {
    lines: [VecDeque<oneshot::Sender<BulkheadPermit>>; 3],
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

impl Slots {
    /// Takes a slot if fewer than `max` are held.
    fn take(&self) -> bool {
        self.take_below(usize::MAX)
    }

    /// Takes a slot if fewer than `max` and fewer than `cap` are held.
    fn take_below(&self, cap: usize) -> bool {
        let max = self.max.load(Ordering::SeqCst).min(cap);
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back and, if anyone waits, hands the freed slot to the
    /// first waiter. (The decrement and the `queued` read, like a joining
    /// waiter's increment and its own take, are sequentially consistent: one
    /// of the two sees the other, so no waiter sleeps beside a free slot.)
    fn release(self: &Arc<Self>) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.dispatch();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands free slots to waiters, first precedence first, while there are
    /// both. A slot a vanished waiter could not take is given back after
    /// the lock is let go (its drop may dispatch again).
    fn dispatch(self: &Arc<Self>) {
        let mut unclaimed = None;
        {
            let mut waiters = self.lock();
            while waiters.any_waiting() && self.take() {
                let mut permit = BulkheadPermit {
                    slots: Arc::clone(self),
                };
                loop {
                    let Some(waiter) = waiters.pop_first() else {
                        unclaimed = Some(permit);
                        break;
                    };
                    match waiter.send(permit) {
                        Ok(()) => break,
                        Err(back) => permit = back,
                    }
                }
                if unclaimed.is_some() {
                    break;
                }
            }
        }
        drop(unclaimed);
    }
}

impl Waiters {
    /// Whether a live waiter is in any line (dropping those that gave up
    /// from the fronts).
    fn any_waiting(&mut self) -> bool {
        self.lines.iter_mut().any(|line| {
            while line.front().is_some_and(oneshot::Sender::is_closed) {
                line.pop_front();
            }
            !line.is_empty()
        })
    }

    fn pop_first(&mut self) -> Option<oneshot::Sender<BulkheadPermit>> {
        self.lines.iter_mut().find_map(VecDeque::pop_front)
    }

    /// Joins `precedence`'s line. Lines are compacted when the waiters who
    /// gave up outnumber the `queued` live ones, so they stay bounded by
    /// the queue's bound even while no slot frees.
    fn push(
        &mut self,
        precedence: Precedence,
        waiter: oneshot::Sender<BulkheadPermit>,
        queued: usize,
    ) {
        let held: usize = self.lines.iter().map(VecDeque::len).sum();
        if held > 2 * queued + 16 {
            for line in &mut self.lines {
                line.retain(|w| !w.is_closed());
            }
        }
        self.lines[precedence as usize].push_back(waiter);
    }
}

impl Bulkhead {
    /// `max_in_flight` must be at least 1 (the config validates it); a zero
    /// would refuse everything, so it is raised to 1 rather than trusted.
    pub fn new(max_in_flight: usize, max_queue: usize) -> Self {
        Self {
            slots: Arc::new(Slots {
                in_flight: AtomicUsize::new(0),
                max: AtomicUsize::new(max_in_flight.max(1)),
                max_queue: AtomicUsize::new(max_queue),
                queued: AtomicUsize::new(0),
                waiters: Mutex::new(Waiters::default()),
            }),
        }
    }

    /// Takes a slot, waiting in `precedence`'s line of the queue no later
    /// than `wait_until`.
    pub async fn acquire(
        &self,
        precedence: Precedence,
        wait_until: Instant,
    ) -> Result<BulkheadPermit, BulkheadFull> {
        if let Some(permit) = self.take_free() {
            return Ok(permit);
        }
        let slots = &self.slots;
        if slots.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queue() {
            slots.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(self.queue_full());
        }
        let _in_queue = QueuedGuard(&slots.queued);
        let (tx, rx) = oneshot::channel();
        slots.lock().push(precedence, tx, self.queued());
        // A slot may have freed before this waiter was in line.
        slots.dispatch();
        match timeout_at(wait_until, rx).await {
            Ok(Ok(permit)) => Ok(permit),
            // The line never drops a live waiter; this is unreachable in
            // practice, and refusing is the safe answer.
            Ok(Err(_dropped)) => Err(self.queue_full()),
            Err(_elapsed) => Err(BulkheadFull::QueueTimeout {
                max_in_flight: self.max_in_flight(),
            }),
        }
    }

    /// Takes a free slot without waiting. `Ok(None)`: none is free but the
    /// queue has room, so the caller may wait with [`Bulkhead::acquire`];
    /// `Err`: none is free and the queue is full.
    pub fn try_acquire(&self) -> Result<Option<BulkheadPermit>, BulkheadFull> {
        match self.take_free() {
            Some(permit) => Ok(Some(permit)),
            None if self.queued() < self.max_queue() => Ok(None),
            None => Err(self.queue_full()),
        }
    }

    /// Takes a free slot only while fewer than `cap` are held (and nobody
    /// waits), in one atomic step. A share of the limit checked first and
    /// taken later lets every caller between the two pass it.
    pub fn try_acquire_below(&self, cap: usize) -> Option<BulkheadPermit> {
        (self.slots.queued.load(Ordering::SeqCst) == 0 && self.slots.take_below(cap)).then(|| {
            BulkheadPermit {
                slots: Arc::clone(&self.slots),
            }
        })
    }

    /// A free slot, if there is one and nobody is waiting for it (a caller
    /// never passes the queue).
    fn take_free(&self) -> Option<BulkheadPermit> {
        self.try_acquire_below(usize::MAX)
    }

    /// Applies new limits now. Requests in flight keep their slots and count
    /// against the new limit: after a shrink, new requests wait until the
    /// in-flight count is below it.
    pub fn resize(&self, max_in_flight: usize, max_queue: usize) {
        self.slots.max_queue.store(max_queue, Ordering::Release);
        self.set_max_in_flight(max_in_flight);
    }

    /// Applies a new concurrency limit now (an adaptive limit moving), as
    /// [`Bulkhead::resize`] does; waiters in the queue take the slots a
    /// growth frees.
    pub fn set_max_in_flight(&self, max_in_flight: usize) {
        let new = max_in_flight.max(1);
        let old = self.slots.max.swap(new, Ordering::SeqCst);
        if new > old && self.slots.queued.load(Ordering::SeqCst) > 0 {
            self.slots.dispatch();
        }
    }

    /// Slots taken right now.
    pub fn in_flight(&self) -> usize {
        self.slots.in_flight.load(Ordering::Acquire)
    }

    /// Requests waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.slots.queued.load(Ordering::Acquire)
    }

    pub fn max_in_flight(&self) -> usize {
        self.slots.max.load(Ordering::Acquire)
    }

    pub fn max_queue(&self) -> usize {
        self.slots.max_queue.load(Ordering::Acquire)
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
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[path = "bulkhead_tests.rs"]
mod tests;
