//! End-to-end tests: levee and fault-injecting app nodes over real loopback
//! sockets. Time bounds are generous; every loop is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod abuse;
mod access_log;
mod admin;
mod admission;
mod bulkheads;
mod cli;
mod common;
mod defaults;
mod dns;
mod errors;
mod failover;
mod forwarding;
mod framing;
mod h2_limits;
mod hygiene;
mod node_responses;
mod parking;
mod pki;
mod pool;
mod rate_limits;
mod reload;
mod resilience;
mod shutdown;
mod timeouts;
mod tls;
mod total_timeout;
mod upstream_tls;
mod websocket;
