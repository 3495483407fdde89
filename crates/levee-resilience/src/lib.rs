//! levee-resilience: the mechanisms that keep stuck work from clogging the proxy.
//!
//! It owns bulkheads (bounded concurrency with a bounded, timed queue) and
//! deadlines (an absolute instant carried with a request, one error per phase).
//! It must never know about HTTP: no hyper, no headers, no status codes. That
//! keeps every mechanism unit-testable in microseconds with paused tokio time.
//! Time comes only from `tokio::time`, so tests drive it with `start_paused`.

pub mod bulkhead;
pub mod deadline;

pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit};
pub use deadline::{Deadline, DeadlineExceeded, Phase};
