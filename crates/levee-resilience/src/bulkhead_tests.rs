#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::Precedence::*;
use super::*;
use std::time::Duration;

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn admits_up_to_max_in_flight_then_refuses_without_a_queue() {
    let b = Bulkhead::new(2, 0);
    let p1 = b.acquire(Normal, soon(100)).await.unwrap();
    let _p2 = b.acquire(Normal, soon(100)).await.unwrap();
    assert_eq!(b.in_flight(), 2);
    let err = b.acquire(Normal, soon(100)).await.unwrap_err();
    assert!(matches!(err, BulkheadFull::QueueFull { .. }));
    drop(p1);
    assert_eq!(b.in_flight(), 1);
    b.acquire(Normal, soon(100)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn queued_request_times_out_at_its_wait_deadline() {
    let b = Bulkhead::new(1, 1);
    let _held = b.acquire(Normal, soon(10)).await.unwrap();
    let started = Instant::now();
    let err = b.acquire(Normal, soon(100)).await.unwrap_err();
    assert!(matches!(err, BulkheadFull::QueueTimeout { .. }));
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(b.queued(), 0, "a timed-out waiter leaves the queue");
}

#[tokio::test(start_paused = true)]
async fn queued_request_gets_the_slot_when_it_frees() {
    let b = Arc::new(Bulkhead::new(1, 1));
    let held = b.acquire(Normal, soon(10)).await.unwrap();
    let waiter = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.acquire(Normal, soon(1_000)).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(b.queued(), 1);
    // The queue holds one: the next caller is refused at once.
    let err = b.acquire(Normal, soon(1_000)).await.unwrap_err();
    assert!(matches!(err, BulkheadFull::QueueFull { .. }));
    drop(held);
    waiter.await.unwrap().unwrap();
    assert_eq!(b.queued(), 0);
    assert_eq!(b.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_caller_leaves_the_queue() {
    let b = Arc::new(Bulkhead::new(1, 4));
    let _held = b.acquire(Normal, soon(10)).await.unwrap();
    let waiter = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.acquire(Normal, soon(60_000)).await.map(|_| ()) })
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
    let _held = b.acquire(Normal, soon(10)).await.unwrap();
    let waiter = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.acquire(Normal, soon(1_000)).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(b.queued(), 1);
    b.resize(3, 4);
    waiter.await.unwrap().unwrap();
    let _p2 = b.acquire(Normal, soon(10)).await.unwrap();
    let _p3 = b.acquire(Normal, soon(10)).await.unwrap();
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
    assert!(
        b.acquire(Normal, soon(10)).await.is_err(),
        "still at the new limit"
    );
    drop(held.next());
    assert_eq!(b.in_flight(), 1);
    let again = b.acquire(Normal, soon(10)).await.unwrap();
    assert!(
        b.acquire(Normal, soon(10)).await.is_err(),
        "never above the new limit"
    );
    drop(again);
    drop(held.next());
    assert_eq!(b.in_flight(), 0);
    // Growing back while debt is outstanding never over-admits.
    let a = b.acquire(Normal, soon(10)).await.unwrap();
    let c = b.acquire(Normal, soon(10)).await.unwrap();
    b.resize(1, 0);
    b.resize(3, 0);
    let d = b.acquire(Normal, soon(10)).await.unwrap();
    assert!(b.acquire(Normal, soon(10)).await.is_err());
    assert_eq!(b.in_flight(), 3);
    drop((a, c, d));
    assert_eq!(b.in_flight(), 0);
    let all = futures_join(&b, 3).await;
    assert_eq!(all.len(), 3);
}

async fn futures_join(b: &Bulkhead, n: usize) -> Vec<BulkheadPermit> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(b.acquire(Normal, soon(10)).await.unwrap());
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
    let first = b.acquire(Normal, soon(10)).await.unwrap();
    let _second = b.acquire(Normal, soon(10)).await.unwrap();
    let waiter = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.acquire(Normal, soon(60_000)).await.map(|_| ()) })
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

/// Spawns a caller waiting in `precedence`'s line that reports its name
/// once admitted, and lets it join the line.
async fn waiter(
    b: &Arc<Bulkhead>,
    precedence: Precedence,
    name: &'static str,
    admitted: &tokio::sync::mpsc::UnboundedSender<(&'static str, BulkheadPermit)>,
) {
    let (b, admitted) = (Arc::clone(b), admitted.clone());
    tokio::spawn(async move {
        if let Ok(permit) = b.acquire(precedence, soon(60_000)).await {
            let _ = admitted.send((name, permit));
        }
    });
    tokio::task::yield_now().await;
}

#[tokio::test(start_paused = true)]
async fn a_freed_slot_goes_to_a_critical_waiter_before_earlier_normal_ones() {
    let b = Arc::new(Bulkhead::new(1, 8));
    let held = b.acquire(Normal, soon(10)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    waiter(&b, Sheddable, "sheddable", &tx).await;
    waiter(&b, Normal, "normal 1", &tx).await;
    waiter(&b, Normal, "normal 2", &tx).await;
    waiter(&b, Critical, "critical", &tx).await;
    assert_eq!(b.queued(), 4);
    let mut order = Vec::new();
    drop(held);
    for _ in 0..4 {
        let (name, permit) = rx.recv().await.unwrap();
        assert_eq!(b.in_flight(), 1, "one slot, handed on");
        order.push(name);
        drop(permit);
    }
    assert_eq!(order, ["critical", "normal 1", "normal 2", "sheddable"]);
    assert_eq!((b.in_flight(), b.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn growing_hands_the_new_slots_out_by_precedence() {
    let b = Arc::new(Bulkhead::new(1, 8));
    let _held = b.acquire(Normal, soon(10)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    waiter(&b, Normal, "normal", &tx).await;
    waiter(&b, Sheddable, "sheddable", &tx).await;
    waiter(&b, Critical, "critical", &tx).await;
    b.set_max_in_flight(3);
    let first = rx.recv().await.unwrap();
    let second = rx.recv().await.unwrap();
    assert_eq!((first.0, second.0), ("critical", "normal"));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(rx.try_recv().is_err(), "the limit is three");
    assert_eq!((b.in_flight(), b.queued()), (3, 1));
}

/// A waiter that timed out is still in its line; a freed slot passes it by
/// and goes to the next one, and the line does not grow without bound
/// while no slot frees.
#[tokio::test(start_paused = true)]
async fn waiters_that_gave_up_are_passed_by_and_do_not_pile_up() {
    let b = Arc::new(Bulkhead::new(1, 4));
    let held = b.acquire(Normal, soon(10)).await.unwrap();
    for _ in 0..200 {
        let err = b.acquire(Critical, soon(5)).await.unwrap_err();
        assert!(matches!(err, BulkheadFull::QueueTimeout { .. }));
    }
    assert_eq!(b.queued(), 0);
    let lines: usize = b.slots.lock().lines.iter().map(VecDeque::len).sum();
    assert!(lines <= 20, "compacted: {lines}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    waiter(&b, Sheddable, "sheddable", &tx).await;
    drop(held);
    assert_eq!(rx.recv().await.unwrap().0, "sheddable");
}

/// A caller never passes someone already waiting, even a sheddable one.
#[tokio::test(start_paused = true)]
async fn a_new_caller_queues_behind_waiters_even_if_a_slot_just_freed() {
    let b = Arc::new(Bulkhead::new(1, 4));
    let held = b.acquire(Normal, soon(10)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    waiter(&b, Sheddable, "sheddable", &tx).await;
    drop(held);
    assert!(
        b.try_acquire().unwrap().is_none(),
        "the slot is the waiter's"
    );
    let (name, permit) = rx.recv().await.unwrap();
    assert_eq!(name, "sheddable");
    drop(permit);
    assert!(b.try_acquire().unwrap().is_some());
}

/// Callers on several threads taking and freeing slots: none is admitted
/// above the limit, and none sleeps beside a free slot (each would then
/// wait out its 10 s and fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_contention_no_waiter_is_forgotten_and_the_limit_holds() {
    let b = Arc::new(Bulkhead::new(3, 64));
    let peak = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (b, peak) = (Arc::clone(&b), Arc::clone(&peak));
            let precedence = [Critical, Normal, Sheddable][i % 3];
            tokio::spawn(async move {
                for _ in 0..200 {
                    let permit = b.acquire(precedence, soon(10_000)).await?;
                    peak.fetch_max(b.in_flight(), Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    drop(permit);
                }
                Ok::<_, BulkheadFull>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(peak.load(Ordering::Relaxed) <= 3);
    assert_eq!((b.in_flight(), b.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_capped_take_stops_at_the_cap_or_the_limit_and_never_passes_waiters() {
    let b = Arc::new(Bulkhead::new(4, 4));
    let held: Vec<_> = (0..2).filter_map(|_| b.try_acquire_below(2)).collect();
    assert_eq!(held.len(), 2);
    assert!(b.try_acquire_below(2).is_none(), "at the cap");
    let mut more: Vec<_> = (0..5).filter_map(|_| b.try_acquire_below(9)).collect();
    assert_eq!(more.len(), 2, "the limit bounds a larger cap");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    waiter(&b, Sheddable, "waiting", &tx).await;
    more.pop();
    assert!(
        b.try_acquire_below(9).is_none(),
        "the freed slot is the waiter's"
    );
    assert_eq!(rx.recv().await.unwrap().0, "waiting");
}
