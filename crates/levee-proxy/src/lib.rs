//! levee-proxy: the data plane.
//!
//! It owns the client listener, routing, forwarding, the per-node connection
//! pools and node selection, and it is the one place where failures become
//! HTTP responses (see [`error`]). It never blocks on anything but its own
//! bulkheads and deadlines, and it publishes what it sees through
//! `levee-telemetry` only.
//!
//! A request's life:
//! ```text
//! client ──accept (max_connections)──> connection task (header read / idle timeouts)
//!   │ route table: host, method, path prefix ──no match──> 404 no-route
//!   │ deadline starts (route timeout, else backend timeout)
//!   │ route bulkhead ─┐ wait ≤ queue_timeout ──full──> 503 bulkhead-full + Retry-After
//!   │ backend bulkhead┘
//!   │ pick node (round robin) ── connect (connect_timeout) ──fail──> 502 upstream-connect
//!   │ send headers + stream request body (body idle timeout)
//!   │ wait for response headers until the deadline ──late──> 504 deadline (node conn dropped)
//!   │                                             ──reset──> 502 upstream-reset / upstream-protocol
//!   └ stream response body (body idle timeout; a failure now cuts the client connection)
//!     slots, in-flight gauges and the connection's activity are released when the body ends or is dropped
//! ```

pub mod activity;
pub mod balancer;
pub mod body;
pub mod classes;
pub mod connection;
pub mod error;
pub mod forward;
pub mod headers;
pub mod health;
pub mod nodes;
pub mod routing;
pub mod server;
pub mod state;
pub mod upstream;

pub use server::{bind_workers, shutdown_channel, ProxyServer, ServerHandle};
pub use state::{ProxyState, Shared};
