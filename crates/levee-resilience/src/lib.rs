//! levee-resilience: the mechanisms levee decides with, free of HTTP and I/O.
//!
//! Bulkheads (bounded concurrency with a bounded, timed queue, resizable on
//! reload), deadlines, circuit breakers with their ejection budget, health
//! thresholds, adaptive limits (the return ramp of a pool or a node, and
//! the latency-gradient concurrency limit), the retry budget, route rate
//! limits (token buckets), and the drift detector. It never knows about HTTP (no hyper, no headers, no
//! status codes) and holds no per-node registry: the data plane owns the
//! instances. Time comes only from `tokio::time`, so every mechanism is
//! unit-tested in microseconds with `start_paused`.

pub mod adaptive;
pub mod breaker;
pub mod bulkhead;
pub mod deadline;

pub use adaptive::{AdaptiveLimit, LimitPhase, LimitPolicy};
pub use breaker::{
    Admission, Breaker, BreakerPolicy, BreakerState, CallOutcome, EjectionBudget, Recorded,
    Transition, TransitionReason, WindowStats,
};
pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit, Precedence};
pub use deadline::{Deadline, DeadlineExceeded, Phase};

pub mod drift;
pub mod health;
pub mod moves;
pub mod rate_limit;
pub mod retry_budget;

pub use drift::{DriftChange, DriftConfig, DriftDetector, DriftFigures, DriftReason, NodeSample};
pub use health::{jittered, HealthTracker, HealthTransition};
pub use rate_limit::{ClientKey, RateLimit, RateLimited};
pub use retry_budget::{RetryBudget, RetryBudgetStats};
