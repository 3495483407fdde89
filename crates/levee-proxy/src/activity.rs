//! What a client connection knows of its own requests: how many are in
//! flight and when the last one ended, so it can close itself when idle,
//! or park. A response body carries an [`ActivityGuard`] until it ends. An upgraded connection's tunnel
//! carries a [`TunnelHold`], so the connection's task (and its slot under
//! `max_connections`) lasts as long as the tunnel.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Requests in flight on one connection and when it last changed.
#[derive(Debug)]
pub struct ConnActivity {
    origin: Instant,
    in_flight: AtomicU32,
    last_change_us: AtomicU64,
    tunnels: AtomicU32,
    tunnel_closed: Notify,
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnActivity {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicU32::new(0),
            last_change_us: AtomicU64::new(0),
            tunnels: AtomicU32::new(0),
            tunnel_closed: Notify::new(),
        }
    }

    /// When a request last ended (the connection's start if none has):
    /// while none is in flight, when the connection became idle.
    pub fn last_change(&self) -> Instant {
        self.origin + Duration::from_micros(self.last_change_us.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let since = crate::clock::now().saturating_duration_since(self.origin);
        let us = u64::try_from(since.as_micros()).unwrap_or(u64::MAX);
        self.last_change_us.store(us, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops. No clock read:
    /// [`Self::last_change`] matters only while none is in flight.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(Arc::clone(self))
    }

    /// When the connection becomes idle-expired, if nothing happens before.
    pub fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(self.last_change() + idle_timeout)
    }

    /// Returns once no tunnel holds the connection.
    pub async fn tunnels_closed(&self) {
        loop {
            let closed = self.tunnel_closed.notified();
            if self.tunnels.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// What a request that asks for an upgrade finds in its extensions: the
/// connection whose task a tunnel holds ([`Upgrading::hold_tunnel`], right
/// before the `101` is returned).
#[derive(Debug, Clone)]
pub struct Upgrading(Arc<ConnActivity>);

impl Upgrading {
    pub fn new(activity: Arc<ConnActivity>) -> Self {
        Self(activity)
    }

    /// Keeps the connection's task waiting, after the connection hands the
    /// socket over, until the guard drops.
    pub fn hold_tunnel(&self) -> TunnelHold {
        self.0.tunnels.fetch_add(1, Ordering::AcqRel);
        TunnelHold(Arc::clone(&self.0))
    }
}

/// A tunnel's claim on its client connection.
#[derive(Debug)]
pub struct TunnelHold(Arc<ConnActivity>);

impl Drop for TunnelHold {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::AcqRel);
        self.0.tunnel_closed.notify_waiters();
    }
}

/// A request's claim on its connection's activity.
#[derive(Debug)]
pub struct ActivityGuard(Arc<ConnActivity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}
