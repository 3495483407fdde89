//! A process-wide count of gate moves: every breaker transition and every
//! health flip adds one. The data plane caches which nodes are usable and
//! rebuilds that cache only when this count has changed, so selection does
//! not ask every node on every request. Breakers and health trackers are
//! shared by the node sets of old and new config versions, hence one count
//! for all of them rather than one per set.

use std::sync::atomic::{AtomicU64, Ordering};

static MOVES: AtomicU64 = AtomicU64::new(0);

/// Moves so far. Read it before reading the gates a cache is built from:
/// a move that lands meanwhile then shows as a changed count.
pub fn moves() -> u64 {
    MOVES.load(Ordering::Acquire)
}

/// Called after a gate's state has changed.
pub(crate) fn moved() {
    MOVES.fetch_add(1, Ordering::AcqRel);
}
