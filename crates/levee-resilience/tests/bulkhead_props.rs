//! Properties of the resizable bulkhead under generated interleavings of
//! acquires, releases, queue timeouts, cancelled waiters and resizes.
//!
//! Each case runs on its own current-thread runtime with paused time, so a
//! case is deterministic: waiters are spawned tasks, time moves only when an
//! operation advances it, and "settling" (yielding until every woken task has
//! run) is an explicit step.
//!
//! * [`settled_interleavings_match_the_model`] settles after every operation
//!   and checks the bulkhead against an exact model: who holds a slot (a
//!   freed slot goes to the first waiter of the first precedence), who
//!   waits, who was refused or timed out, and the limits.
//! * [`unsettled_interleavings_never_over_admit_or_leak`] lets operations pile
//!   up before woken waiters run (a slot handed to a waiter that has not run
//!   yet, a shrink or a timeout in between) and checks what must hold whatever
//!   the order: no acquisition above the limit, counts that add up whenever
//!   things settle, and no leaked slot at the end. It found a waiter that
//!   was handed a slot, then cancelled before it ran, lifting a shrunk limit
//!   (the unit test `a_cancelled_waiter_handed_a_slot_cannot_lift_a_shrunk_limit`
//!   in `bulkhead_tests.rs` keeps that case).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use levee_resilience::{Bulkhead, BulkheadFull, BulkheadPermit, Precedence};
use proptest::prelude::*;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest limits generated; small, so that limits are hit often.
const MAX_LIMIT: usize = 5;
const MAX_QUEUE: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// `acquire(now)`: take a free slot, never wait.
    AcquireNow,
    /// `try_acquire()`.
    TryAcquire,
    /// A spawned waiter: `acquire(precedence, now + wait_ms + 0.5 ms)`.
    /// The half millisecond keeps deadlines off the whole milliseconds time
    /// advances by, so "timed out" never depends on timer rounding.
    Queue {
        wait_ms: u64,
        precedence: Precedence,
    },
    /// Drop a held permit, picked by index.
    Release(usize),
    /// Advance paused time: waiters past their deadline time out.
    Advance { ms: u64 },
    /// Abort a waiting task, picked by index.
    Cancel(usize),
    Resize {
        max_in_flight: usize,
        max_queue: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::AcquireNow),
        2 => Just(Op::TryAcquire),
        4 => (0u64..400, 0..3usize).prop_map(|(wait_ms, p)| Op::Queue {
            wait_ms,
            precedence: [Precedence::Critical, Precedence::Normal, Precedence::Sheddable][p],
        }),
        4 => any::<usize>().prop_map(Op::Release),
        2 => (1u64..300).prop_map(|ms| Op::Advance { ms }),
        2 => any::<usize>().prop_map(Op::Cancel),
        // 0 checks the documented clamp to 1.
        2 => (0..=MAX_LIMIT, 0..=MAX_QUEUE).prop_map(|(max_in_flight, max_queue)| Op::Resize {
            max_in_flight,
            max_queue,
        }),
    ]
}

/// How a waiter ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Granted,
    TimedOut,
    QueueFull,
    Cancelled,
}

struct Waiter {
    id: usize,
    deadline: Instant,
    task: JoinHandle<Result<BulkheadPermit, BulkheadFull>>,
}

/// The real bulkhead, the permits the test holds and the waiting tasks.
struct Rig {
    b: Arc<Bulkhead>,
    permits: Vec<BulkheadPermit>,
    waiters: Vec<Waiter>,
    next_id: usize,
    start: Instant,
}

impl Rig {
    fn new(max_in_flight: usize, max_queue: usize) -> Self {
        Self {
            b: Arc::new(Bulkhead::new(max_in_flight, max_queue)),
            permits: Vec::new(),
            waiters: Vec::new(),
            next_id: 0,
            start: Instant::now(),
        }
    }

    /// Microseconds since the case started (paused time).
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap()
    }

    fn spawn_waiter(&mut self, wait_ms: u64, precedence: Precedence) -> (usize, u64) {
        let deadline = Instant::now() + Duration::from_micros(wait_ms * 1_000 + 500);
        let id = self.next_id;
        self.next_id += 1;
        let b = Arc::clone(&self.b);
        let task = tokio::spawn(async move { b.acquire(precedence, deadline).await });
        self.waiters.push(Waiter { id, deadline, task });
        let deadline_us = u64::try_from((deadline - self.start).as_micros()).unwrap();
        (id, deadline_us)
    }

    /// Takes in every finished waiter: a granted slot joins `permits`.
    async fn collect(&mut self) -> Vec<(usize, End)> {
        let mut ended = Vec::new();
        let mut i = 0;
        while i < self.waiters.len() {
            if !self.waiters[i].task.is_finished() {
                i += 1;
                continue;
            }
            let w = self.waiters.remove(i);
            let end = match w.task.await {
                Ok(Ok(permit)) => {
                    self.permits.push(permit);
                    End::Granted
                }
                Ok(Err(BulkheadFull::QueueTimeout { .. })) => {
                    assert!(
                        Instant::now() >= w.deadline,
                        "waiter {} timed out before its deadline",
                        w.id
                    );
                    End::TimedOut
                }
                Ok(Err(BulkheadFull::QueueFull { .. })) => End::QueueFull,
                Err(e) if e.is_cancelled() => End::Cancelled,
                Err(e) => panic!("waiter {} panicked: {e}", w.id),
            };
            ended.push((w.id, end));
        }
        ended.sort_unstable();
        ended
    }

    fn release(&mut self, pick: usize) -> bool {
        if self.permits.is_empty() {
            return false;
        }
        let i = pick % self.permits.len();
        drop(self.permits.swap_remove(i));
        true
    }

    /// Aborts the waiter at `pick` (among those still running).
    fn cancel(&mut self, pick: usize) -> Option<usize> {
        if self.waiters.is_empty() {
            return None;
        }
        let w = &self.waiters[pick % self.waiters.len()];
        w.task.abort();
        Some(w.id)
    }

    /// Releases everything, times every waiter out, then checks that no slot
    /// leaked: the counters are back at zero and exactly `max_in_flight()`
    /// fresh acquisitions succeed.
    async fn drain_and_check_no_leak(&mut self) -> Result<(), TestCaseError> {
        tokio::time::advance(Duration::from_secs(3_600)).await;
        settle().await;
        self.collect().await;
        // Slots freed now may reach waiters that had not run yet; let them
        // finish and free theirs too.
        while !self.permits.is_empty() || !self.waiters.is_empty() {
            self.permits.clear();
            for w in &self.waiters {
                w.task.abort();
            }
            settle().await;
            self.collect().await;
        }
        prop_assert_eq!(self.b.in_flight(), 0, "a slot leaked");
        prop_assert_eq!(self.b.queued(), 0, "a queue place leaked");
        let limit = self.b.max_in_flight();
        let mut fresh = Vec::new();
        for i in 0..limit {
            match self.b.try_acquire() {
                Ok(Some(p)) => fresh.push(p),
                other => {
                    return Err(TestCaseError::fail(format!(
                        "fresh acquisition {} of {limit} failed: {other:?}",
                        i + 1
                    )))
                }
            }
        }
        prop_assert!(
            !matches!(self.b.try_acquire(), Ok(Some(_))),
            "acquisition {} succeeded above the limit {limit}",
            limit + 1
        );
        prop_assert!(self
            .b
            .acquire(Precedence::Normal, Instant::now())
            .await
            .is_err());
        prop_assert_eq!(self.b.in_flight(), limit);
        drop(fresh);
        prop_assert_eq!(self.b.in_flight(), 0);
        Ok(())
    }
}

/// Lets every woken task run until nothing is left to do. No task here needs
/// more than a couple of polls to reach its next wait, so a fixed number of
/// yields is plenty; each yield also turns the (paused) timer.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// What the bulkhead should do when every woken task runs before the next
/// operation.
struct Model {
    limit: usize,
    max_queue: usize,
    /// Slots held.
    held: usize,
    /// Slots still held above the limit since a shrink (they end as their
    /// requests end and are not given to anyone else).
    over_limit: usize,
    /// Waiters still in the queue above `max_queue` since it shrank.
    over_queue: usize,
    /// Waiting, oldest first: (id, deadline in µs since the start,
    /// precedence).
    waiting: VecDeque<(usize, u64, Precedence)>,
}

impl Model {
    fn new(max_in_flight: usize, max_queue: usize) -> Self {
        Self {
            limit: max_in_flight.max(1),
            max_queue,
            held: 0,
            over_limit: 0,
            over_queue: 0,
            waiting: VecDeque::new(),
        }
    }

    fn free(&self) -> bool {
        self.held < self.limit
    }

    fn queue_room(&self) -> bool {
        self.waiting.len() < self.max_queue
    }

    fn leave_queue(&mut self, id: usize) {
        self.waiting.retain(|&(w, _, _)| w != id);
        self.over_queue = self.over_queue.saturating_sub(1);
    }

    /// Hands free slots to the oldest waiters of the first precedence.
    fn grant(&mut self, ended: &mut Vec<(usize, End)>) {
        while self.free() {
            let first = self.waiting.iter().map(|w| w.2).min();
            let Some(at) = first.and_then(|p| self.waiting.iter().position(|w| w.2 == p)) else {
                break;
            };
            let Some((id, _, _)) = self.waiting.remove(at) else {
                break;
            };
            self.held += 1;
            ended.push((id, End::Granted));
            self.over_queue = self.over_queue.saturating_sub(1);
        }
    }

    /// A slot freed: it retires an over-limit one first, else goes to the
    /// first waiter, else becomes free.
    fn release(&mut self, ended: &mut Vec<(usize, End)>) {
        self.held -= 1;
        self.over_limit = self.over_limit.saturating_sub(1);
        self.grant(ended);
    }

    fn time_out(&mut self, now_us: u64, ended: &mut Vec<(usize, End)>) {
        let expired: Vec<usize> = self
            .waiting
            .iter()
            .filter(|&&(_, deadline, _)| deadline <= now_us)
            .map(|&(id, _, _)| id)
            .collect();
        for id in expired {
            self.leave_queue(id);
            ended.push((id, End::TimedOut));
        }
    }

    fn resize(&mut self, max_in_flight: usize, max_queue: usize, ended: &mut Vec<(usize, End)>) {
        self.limit = max_in_flight.max(1);
        self.max_queue = max_queue;
        self.over_limit = self.held.saturating_sub(self.limit);
        self.over_queue = self.waiting.len().saturating_sub(max_queue);
        self.grant(ended);
    }

    /// The outcome of an immediate acquisition.
    fn immediate(&self) -> Result<(), BulkheadFull> {
        if self.free() {
            Ok(())
        } else if self.queue_room() {
            // It joins the queue and its deadline (now) has passed.
            Err(BulkheadFull::QueueTimeout {
                max_in_flight: self.limit,
            })
        } else {
            Err(BulkheadFull::QueueFull {
                max_in_flight: self.limit,
                max_queue: self.max_queue,
            })
        }
    }
}

fn check_against_model(rig: &Rig, m: &Model, step: usize) -> Result<(), TestCaseError> {
    let b = &rig.b;
    prop_assert_eq!(b.max_in_flight(), m.limit, "step {}: limit", step);
    prop_assert_eq!(b.max_queue(), m.max_queue, "step {}: queue limit", step);
    prop_assert_eq!(rig.permits.len(), m.held, "step {}: slots held", step);
    prop_assert_eq!(b.in_flight(), m.held, "step {}: in_flight()", step);
    prop_assert_eq!(b.queued(), m.waiting.len(), "step {}: queued()", step);
    let running: Vec<usize> = rig.waiters.iter().map(|w| w.id).collect();
    let mut waiting: Vec<usize> = m.waiting.iter().map(|&(id, _, _)| id).collect();
    waiting.sort_unstable();
    prop_assert_eq!(running, waiting, "step {}: waiting tasks", step);
    // Never above the limit, except slots held since a shrink.
    prop_assert!(
        m.held <= m.limit + m.over_limit,
        "step {}: {} held, limit {} (+{} from before a shrink)",
        step,
        m.held,
        m.limit,
        m.over_limit
    );
    // Never more waiting than the queue limit, except waiters queued before
    // the queue shrank (they keep their place).
    prop_assert!(b.queued() <= m.max_queue + m.over_queue, "step {}", step);
    // Nobody waits while a slot is free.
    prop_assert!(m.waiting.is_empty() || m.held >= m.limit, "step {}", step);
    Ok(())
}

fn settled_case(initial: (usize, usize), ops: Vec<Op>) -> Result<(), TestCaseError> {
    paused_runtime().block_on(async move {
        let mut rig = Rig::new(initial.0, initial.1);
        let mut m = Model::new(initial.0, initial.1);
        for (step, op) in ops.into_iter().enumerate() {
            let mut expected: Vec<(usize, End)> = Vec::new();
            match op {
                Op::AcquireNow => {
                    let want = m.immediate();
                    match rig.b.acquire(Precedence::Normal, Instant::now()).await {
                        Ok(p) => {
                            prop_assert!(want.is_ok(), "step {step}: acquired, expected {want:?}");
                            rig.permits.push(p);
                            m.held += 1;
                        }
                        Err(e) => prop_assert_eq!(Err(e), want, "step {}", step),
                    }
                }
                Op::TryAcquire => match rig.b.try_acquire() {
                    Ok(Some(p)) => {
                        prop_assert!(m.free(), "step {step}: try_acquire above the limit");
                        rig.permits.push(p);
                        m.held += 1;
                    }
                    Ok(None) => prop_assert!(!m.free() && m.queue_room(), "step {}", step),
                    Err(_) => prop_assert!(!m.free() && !m.queue_room(), "step {}", step),
                },
                Op::Queue {
                    wait_ms,
                    precedence,
                } => {
                    let (id, deadline) = rig.spawn_waiter(wait_ms, precedence);
                    if m.free() {
                        m.held += 1;
                        expected.push((id, End::Granted));
                    } else if m.queue_room() {
                        m.waiting.push_back((id, deadline, precedence));
                    } else {
                        expected.push((id, End::QueueFull));
                    }
                }
                Op::Release(pick) => {
                    if rig.release(pick) {
                        m.release(&mut expected);
                    }
                }
                Op::Advance { ms } => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    m.time_out(rig.now_us(), &mut expected);
                }
                Op::Cancel(pick) => {
                    if let Some(id) = rig.cancel(pick) {
                        m.leave_queue(id);
                        expected.push((id, End::Cancelled));
                    }
                }
                Op::Resize {
                    max_in_flight,
                    max_queue,
                } => {
                    rig.b.resize(max_in_flight, max_queue);
                    m.resize(max_in_flight, max_queue, &mut expected);
                }
            }
            settle().await;
            let ended = rig.collect().await;
            expected.sort_unstable();
            prop_assert_eq!(ended, expected, "step {}: waiters that ended", step);
            check_against_model(&rig, &m, step)?;
        }
        rig.drain_and_check_no_leak().await
    })
}

fn unsettled_case(initial: (usize, usize), ops: Vec<(Op, bool)>) -> Result<(), TestCaseError> {
    paused_runtime().block_on(async move {
        let mut rig = Rig::new(initial.0, initial.1);
        // An upper bound of the slots that may be held above the limit
        // because they were taken before a shrink.
        let mut over_limit = 0usize;
        for (step, (op, then_settle)) in ops.into_iter().enumerate() {
            match op {
                Op::AcquireNow | Op::TryAcquire => {
                    rig.collect().await;
                    // A lower bound of the slots held: waiters handed a slot
                    // that have not run yet are not counted.
                    let known = rig.permits.len();
                    let limit = rig.b.max_in_flight();
                    let got = if matches!(op, Op::AcquireNow) {
                        rig.b.acquire(Precedence::Normal, Instant::now()).await.ok()
                    } else {
                        rig.b.try_acquire().ok().flatten()
                    };
                    if let Some(p) = got {
                        prop_assert!(
                            known < limit,
                            "step {step}: acquired with {known} slots held, limit {limit}"
                        );
                        rig.permits.push(p);
                    }
                }
                Op::Queue {
                    wait_ms,
                    precedence,
                } => {
                    rig.spawn_waiter(wait_ms, precedence);
                }
                Op::Release(pick) => {
                    if rig.release(pick) {
                        over_limit = over_limit.saturating_sub(1);
                    }
                }
                Op::Advance { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
                // Possibly a waiter that was handed a slot and has not run.
                Op::Cancel(pick) => {
                    rig.cancel(pick);
                }
                Op::Resize {
                    max_in_flight,
                    max_queue,
                } => {
                    rig.collect().await;
                    let old = rig.b.max_in_flight();
                    let new = max_in_flight.max(1);
                    // Upper bound of the slots held now: ours plus one for
                    // every waiter that may have been handed one.
                    let held = rig.permits.len() + rig.waiters.len();
                    over_limit = if new < old {
                        (old + over_limit).min(held).saturating_sub(new)
                    } else {
                        (old + over_limit).saturating_sub(new)
                    };
                    rig.b.resize(max_in_flight, max_queue);
                }
            }
            if then_settle {
                settle().await;
            }
            rig.collect().await;
            if then_settle {
                let b = &rig.b;
                let held = rig.permits.len();
                prop_assert_eq!(b.in_flight(), held, "step {}: in_flight()", step);
                prop_assert_eq!(b.queued(), rig.waiters.len(), "step {}: queued()", step);
                prop_assert!(
                    held <= b.max_in_flight() + over_limit,
                    "step {}: {} held, limit {} (+{} from before a shrink)",
                    step,
                    held,
                    b.max_in_flight(),
                    over_limit
                );
                prop_assert!(
                    rig.waiters.is_empty() || held >= b.max_in_flight(),
                    "step {}: a waiter waits while a slot is free",
                    step
                );
            }
        }
        rig.drain_and_check_no_leak().await
    })
}

fn limits() -> impl Strategy<Value = (usize, usize)> {
    (0..=MAX_LIMIT, 0..=MAX_QUEUE)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn settled_interleavings_match_the_model(
        initial in limits(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        settled_case(initial, ops)?;
    }
}

proptest! {
    // The races it looks for need a few operations in a row without a
    // settle: more cases (about 2 s).
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn unsettled_interleavings_never_over_admit_or_leak(
        initial in limits(),
        ops in prop::collection::vec((op(), any::<bool>()), 1..80),
    ) {
        unsettled_case(initial, ops)?;
    }
}
