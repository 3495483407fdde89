//! One clock reading per poll of a connection's task.
//!
//! A request reads the clock at several points of one event: its start
//! (edge, then the node call's send), its response head (the node's
//! outcome, then the route's latency), its body's end (the node
//! connection's return to the pool, then the client connection's
//! activity). Each read costs a `clock_gettime` (tens of nanoseconds on a
//! VM). Inside [`OneReading`], [`now`] reads the clock once per poll and
//! gives every later caller of that poll the same instant: a poll does not
//! wait, so the instants differ from fresh reads by levee's own
//! microseconds at most. Under tokio's paused clock nothing changes: time
//! only moves between polls. Outside [`OneReading`] (other tasks, HTTP/2
//! streams that hyper spawns, tests that call a stack directly), [`now`]
//! is `Instant::now()`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Reading {
    /// No [`OneReading`] poll under way on this thread.
    Outside,
    /// In one, before the first read.
    Unread,
    Read(Instant),
}

thread_local! {
    static READING: Cell<Reading> = const { Cell::new(Reading::Outside) };
}

/// The clock, read once per poll of the [`OneReading`] under way.
pub fn now() -> Instant {
    READING.with(|r| match r.get() {
        Reading::Read(at) => at,
        Reading::Unread => {
            let at = Instant::now();
            r.set(Reading::Read(at));
            at
        }
        Reading::Outside => Instant::now(),
    })
}

pin_project_lite::pin_project! {
    /// Runs `F` with [`now`] read at most once per poll.
    pub struct OneReading<F> {
        #[pin]
        inner: F,
    }
}

impl<F> OneReading<F> {
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for OneReading<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Puts back the reading of an enclosing poll, also on unwind.
        struct Restore(Reading);
        impl Drop for Restore {
            fn drop(&mut self) {
                READING.with(|r| r.set(self.0));
            }
        }
        let _restore = Restore(READING.with(|r| r.replace(Reading::Unread)));
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_poll_reads_the_clock_once() {
        let start = Instant::now();
        let (a, b) = OneReading::new(async {
            let a = now();
            let mut advance = std::pin::pin!(tokio::time::advance(Duration::from_millis(5)));
            // Its first poll moves the clock, then yields; this poll goes on.
            poll_fn(|cx| {
                let _ = advance.as_mut().poll(cx);
                Poll::Ready(())
            })
            .await;
            (a, now())
        })
        .await;
        assert_eq!((a, b), (start, start));
        assert_eq!(Instant::now(), start + Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn each_poll_and_every_read_outside_reads_afresh() {
        let start = Instant::now();
        let (a, b) = OneReading::new(async {
            let a = now();
            // Moves the clock and yields: the next `now` is a later poll's.
            tokio::time::advance(Duration::from_millis(5)).await;
            (a, now())
        })
        .await;
        assert_eq!(a, start);
        assert_eq!(b, start + Duration::from_millis(5));
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(now(), start + Duration::from_millis(10));
    }
}
