//! What a node received: atomic counters and a small ring of request heads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How many request heads [`AppNode::recorded`](crate::AppNode::recorded) keeps.
pub const RECORDED_CAPACITY: usize = 256;

/// A snapshot of a node's counters, from [`AppNode::stats`](crate::AppNode::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Request heads received (every behaviour except `Refuse`).
    pub requests: u64,
    /// Responses fully handed to the connection (a reset or stuck answer never completes).
    pub completed: u64,
    /// Request body bytes read, over all requests.
    pub body_bytes_received: u64,
    /// Response body bytes handed to the connection, over all responses: what
    /// a client that stops reading holds back shows here.
    pub body_bytes_sent: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// TCP connections currently open.
    pub open_connections: u64,
    /// Requests being answered now: head received, response head not yet
    /// handed to the connection (a stuck request stays in flight).
    pub in_flight: u64,
    /// The most requests that were ever in flight at once: what a proxy's
    /// concurrency limit let through to this node.
    pub peak_in_flight: u64,
}

/// The head of a request a node received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub version: http::Version,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    body_bytes_received: AtomicU64,
    body_bytes_sent: AtomicU64,
    connections: AtomicU64,
    open_connections: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> NodeStats {
        NodeStats {
            requests: self.requests.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            body_bytes_received: self.body_bytes_received.load(Ordering::Relaxed),
            body_bytes_sent: self.body_bytes_sent.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            open_connections: self.open_connections.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
        }
    }

    /// Counts a request received and in flight until the guard is dropped;
    /// also returns how many others were in flight when it arrived.
    pub(crate) fn request(self: &Arc<Self>) -> (InFlight, u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let others = self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.peak_in_flight.fetch_max(others + 1, Ordering::Relaxed);
        (InFlight(self.clone()), others)
    }

    pub(crate) fn completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn body_bytes(&self, n: usize) {
        self.body_bytes_received
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn body_bytes_sent(&self, n: usize) {
        self.body_bytes_sent
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight: counted in [`NodeStats::in_flight`] until dropped
/// (when its response head is handed over, or its task is dropped).
pub(crate) struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The last [`RECORDED_CAPACITY`] request heads, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    ring: Mutex<VecDeque<RecordedRequest>>,
}

impl Recorder {
    pub(crate) fn push(&self, request: RecordedRequest) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() >= RECORDED_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(request);
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().cloned().collect()
    }
}
