//! A deadline is an absolute instant carried with a request.
//!
//! Every phase of a request (waiting for a slot, connecting, waiting for the
//! response headers, streaming a body) runs against the same instant or its
//! own idle bound, and a miss says which phase ran out, so the edge can answer
//! and log precisely.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};

/// Which phase of a request ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting to the node.
    Connect,
    /// Waiting for the node's response headers.
    Headers,
    /// A body (either way) made no progress for its idle bound.
    BodyIdle,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Headers => "response headers",
            Phase::BodyIdle => "body idle",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A phase missed its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded while waiting for {phase} (after {after:?})")]
pub struct DeadlineExceeded {
    pub phase: Phase,
    pub after: Duration,
}

/// The instant by which a request must have its response headers, and the
/// one (if any) by which its whole response must be through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    start: Instant,
    at: Instant,
    end: Option<Instant>,
}

impl Deadline {
    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Self::within(budget, None)
    }

    /// Headers within `headers`, and the whole exchange within `total` when
    /// set; the headers deadline is the earlier of the two, since headers
    /// after the end could not be followed by a body in time.
    pub fn within(headers: Duration, total: Option<Duration>) -> Self {
        Self::within_from(Instant::now(), headers, total)
    }

    /// [`Deadline::within`] counted from `start`, a clock reading the
    /// caller already has (one fewer per request).
    pub fn within_from(start: Instant, headers: Duration, total: Option<Duration>) -> Self {
        let end = total.map(|t| start + t);
        let at = start + headers;
        Self {
            start,
            at: end.map_or(at, |end| at.min(end)),
            end,
        }
    }

    /// When the request started: the clock reading it was counted from.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// When the response headers are due.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// When the last response byte is due (`total_timeout`), if bounded.
    pub fn end(&self) -> Option<Instant> {
        self.end
    }

    /// The whole time allowed from start to [`Deadline::end`].
    pub fn total_budget(&self) -> Option<Duration> {
        self.end
            .map(|end| end.saturating_duration_since(self.start))
    }

    /// The whole time this deadline allowed.
    pub fn budget(&self) -> Duration {
        self.at.saturating_duration_since(self.start)
    }

    /// Time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The earlier of this deadline and `now + bound`, for waits (like a queue)
    /// that have their own, shorter bound.
    pub fn capped(&self, bound: Duration) -> Instant {
        self.at.min(Instant::now() + bound)
    }

    /// Runs `fut` until the deadline; a miss names `phase`.
    pub async fn run<F: Future>(
        &self,
        phase: Phase,
        fut: F,
    ) -> Result<F::Output, DeadlineExceeded> {
        timeout_at(self.at, fut)
            .await
            .map_err(|_| DeadlineExceeded {
                phase,
                after: self.at.saturating_duration_since(self.start),
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_and_names_the_phase() {
        let d = Deadline::after(Duration::from_millis(200));
        let started = Instant::now();
        let err = d
            .run(Phase::Headers, std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(err.phase, Phase::Headers);
        assert_eq!(err.after, Duration::from_millis(200));
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        assert!(d.is_expired());
        assert_eq!(d.remaining(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_in_time_passes_through() {
        let d = Deadline::after(Duration::from_secs(1));
        let out = d
            .run(Phase::Connect, async {
                tokio::time::sleep(Duration::from_millis(999)).await;
                7
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_total_bound_shorter_than_the_headers_bound_moves_the_headers_deadline() {
        let now = Instant::now();
        let d = Deadline::within(Duration::from_secs(5), Some(Duration::from_secs(1)));
        assert_eq!(d.at(), now + Duration::from_secs(1));
        assert_eq!(d.end(), Some(now + Duration::from_secs(1)));
        assert_eq!(d.budget(), Duration::from_secs(1));

        let d = Deadline::within(Duration::from_secs(1), Some(Duration::from_secs(5)));
        assert_eq!(d.at(), now + Duration::from_secs(1));
        assert_eq!(d.end(), Some(now + Duration::from_secs(5)));
        assert_eq!(d.total_budget(), Some(Duration::from_secs(5)));

        assert_eq!(Deadline::after(Duration::from_secs(1)).end(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn capped_takes_the_earlier_instant() {
        let d = Deadline::after(Duration::from_secs(1));
        assert_eq!(
            d.capped(Duration::from_millis(100)),
            Instant::now() + Duration::from_millis(100)
        );
        assert_eq!(d.capped(Duration::from_secs(5)), d.at());
    }
}
