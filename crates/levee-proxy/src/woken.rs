//! A future polled again only once one of its own wakers fired.
//!
//! A connection's `closing` future (its idle timer, and its place among the
//! shutdown signal's waiters) is looked at when each answer is ready and
//! before each request waits. Each look polled the timer and the shutdown
//! watch again (the watch's waiter list is one lock for every connection
//! of every worker), about 750 instructions a request, to learn nothing:
//! once polled, the future has registered a waker for all it waits on.
//! [`PolledOnWake`] hands it a waker of its own, and polls it only after
//! that waker fired; in between, a poll costs an atomic load and keeps the
//! task's waker current.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// What `F`'s wakers wake: the flag that `F` has news, and the task.
#[derive(Debug)]
struct Woken {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pin_project_lite::pin_project! {
    /// `F`, polled on its first poll and then only once it was woken.
    pub struct PolledOnWake<F> {
        #[pin]
        inner: F,
        woken: Arc<Woken>,
        waker: Waker,
    }
}

impl<F> PolledOnWake<F> {
    pub fn new(inner: F) -> Self {
        let woken = Arc::new(Woken {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            inner,
            waker: Waker::from(Arc::clone(&woken)),
            woken,
        }
    }
}

impl<F: Future> Future for PolledOnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.woken.task.register(cx.waker());
        if !this.woken.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared before the poll: a wake from now on is news for the
        // next one.
        this.woken.woken.store(false, Ordering::Release);
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::future::poll_fn;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    use super::*;

    /// A task waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_once_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let inner_waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let fut = {
            let (polls, inner_waker, done) = (
                Arc::clone(&polls),
                Arc::clone(&inner_waker),
                Arc::clone(&done),
            );
            poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                *inner_waker.lock().unwrap() = Some(cx.waker().clone());
                if done.load(Ordering::Relaxed) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        };
        let mut fut = std::pin::pin!(PolledOnWake::new(fut));
        let task = Arc::new(Count::default());
        let task_waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&task_waker);
        for _ in 0..3 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once until woken");
        let wake = inner_waker.lock().unwrap().take().unwrap();
        done.store(true, Ordering::Relaxed);
        wake.wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task was woken");
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_inside_fires_on_time() {
        let start = tokio::time::Instant::now();
        let at = start + std::time::Duration::from_secs(5);
        PolledOnWake::new(tokio::time::sleep_until(at)).await;
        assert_eq!(tokio::time::Instant::now(), at);
    }
}
