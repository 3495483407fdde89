//! Programmable HTTP app nodes for levee's tests, benchmarks, demo and
//! docker-compose.
//!
//! # What this crate owns
//!
//! - [`AppNode`]: a small HTTP/1.1 server (hyper 1, keep-alive on) whose
//!   [`Behavior`] can be switched at run time, from healthy to the ways
//!   production app nodes fail: error statuses, hung writes, slow or
//!   trickling answers, answers that slow down with every request
//!   already in flight, crashes mid-answer, a port that refuses connections;
//!   or a WebSocket echo endpoint. [`NodeOptions`] make it serve TLS (a
//!   rustls config the test builds) and/or HTTP/2 instead.
//! - [`RawNode`]: answers every request head with fixed bytes, for the
//!   broken responses no HTTP library writes, and counts whether the client
//!   closed or reused the connection after them.
//! - What a node received, so tests can assert what reached it: atomic
//!   counters ([`NodeStats`]) and the last request heads ([`RecordedRequest`]).
//! - The `--mode` grammar ([`Behavior`]'s `FromStr`/`Display`) and the
//!   `levee-node` binary that serves one node until Ctrl-C (or SIGTERM),
//!   its mode switchable while it runs through a [`ControlServer`] on a
//!   port of its own.
//!
//! # What it must never do
//!
//! - Be used in levee's data plane: only tests, benchmarks, the demo and
//!   docker-compose depend on it. It trades robustness for control (no
//!   timeouts of its own, unbounded keep-alive, deliberate resets).
//! - Listen beyond loopback on its own: [`AppNode::start`] binds
//!   `127.0.0.1:0`; only an explicit address ([`AppNode::start_on`], the
//!   binary's `--listen`, e.g. inside a container) binds anything else.
//! - Outlive its handle: dropping an [`AppNode`] closes its listener and
//!   aborts its connection tasks, stuck ones included.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use levee_testkit::{AppNode, Behavior};
//!
//! let node = AppNode::start("n1", Behavior::Healthy { body_bytes: 1024 }).await?;
//! // ... send requests to node.addr() through the proxy under test ...
//! // A node writing to a read-only replica: POSTs fail, reads still work.
//! node.set_behavior(Behavior::Status {
//!     code: 500,
//!     share: 1.0,
//!     methods: Some(vec![http::Method::POST]),
//! })
//! .await?;
//! assert_eq!(node.stats().open_connections, 0);
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod behavior;
mod body;
mod control;
mod io;
mod node;
mod raw;
mod stats;
mod websocket;

pub use behavior::{share_hits, Behavior, ParseBehaviorError, DEFAULT_BODY_BYTES};
pub use control::ControlServer;
pub use node::{AppNode, NodeOptions, NODE_HEADER};
pub use raw::{RawNode, RawStats};
pub use stats::{NodeStats, RecordedRequest, RECORDED_CAPACITY};
