//! Each layer of the stack on its own, over mock inner services.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backend;
mod balance;
mod bulkhead;
mod edge;
mod failover;
mod node;
mod request_id;
mod retry;
mod serve;
mod tunnel;
