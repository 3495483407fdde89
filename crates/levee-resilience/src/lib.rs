//! levee-resilience: the mechanisms that keep stuck work from clogging the proxy.
//!
//! It owns bulkheads (bounded concurrency with a bounded, timed queue) and
//! deadlines (an absolute instant carried with a request, one error per phase).
//! It must never know about HTTP: no hyper, no headers, no status codes. That
//! keeps every mechanism unit-testable in microseconds with paused tokio time.
//! Time comes only from `tokio::time`, so tests drive it with `start_paused`.

pub mod breaker;
pub mod bulkhead;
pub mod deadline;

pub use breaker::{
    Admission, Breaker, BreakerPolicy, BreakerState, CallOutcome, EjectionBudget, Recorded,
    Transition, TransitionReason, WindowStats,
};
pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit};
pub use deadline::{Deadline, DeadlineExceeded, Phase};

pub mod drift;
pub mod health;
pub mod retry_budget;
pub mod slow_start;

pub use drift::{DriftChange, DriftConfig, DriftDetector, DriftFigures, DriftReason, NodeSample};
pub use health::{jittered, HealthTracker, HealthTransition};
pub use retry_budget::{RetryBudget, RetryBudgetStats};
pub use slow_start::{admit_share, pool_admission, SlowStart};
