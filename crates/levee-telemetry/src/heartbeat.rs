//! The data plane's pulse, read by the admin listener.
//!
//! A task on the data-plane runtime ticks every 100 ms. If that runtime is
//! wedged (every worker blocked or starved), ticks stop and the admin
//! listener, on its own runtime, sees the last tick age and reports it, so a
//! stuck proxy is never called healthy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Microseconds from `origin` to the last tick; `u64::MAX` before the first.
    last_tick_us: AtomicU64,
}

impl Heartbeat {
    pub const INTERVAL: Duration = Duration::from_millis(100);

    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_tick_us: AtomicU64::new(u64::MAX),
        }
    }

    /// Records a tick now.
    pub fn tick(&self) {
        let us = self.origin.elapsed().as_micros();
        self.last_tick_us
            .store(u64::try_from(us).unwrap_or(u64::MAX - 1), Ordering::Release);
    }

    /// Age of the last tick; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        let last = self.last_tick_us.load(Ordering::Acquire);
        if last == u64::MAX {
            return None;
        }
        let now = self.origin.elapsed();
        Some(now.saturating_sub(Duration::from_micros(last)))
    }

    /// Ticks forever; spawn it on the data-plane runtime.
    pub async fn run(&self) {
        let mut ticker = tokio::time::interval(Self::INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.tick();
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn age_grows_until_the_next_tick() {
        let hb = Heartbeat::new();
        assert_eq!(hb.age(), None);
        hb.tick();
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(hb.age(), Some(Duration::from_millis(2_500)));
        hb.tick();
        assert_eq!(hb.age(), Some(Duration::ZERO));
    }
}
