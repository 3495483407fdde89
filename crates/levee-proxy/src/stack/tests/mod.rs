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

/// Every layer moves its inner future into its own, and the connection
/// moves the whole; a response is moved up through the layers. Both stay a
/// few cache lines: the retry layer keeps a request's tries in one box, and
/// a response boxes its node body.
#[test]
fn the_stack_future_and_its_response_stay_small() {
    use std::mem::size_of;
    type StackFuture =
        <super::Stack as tower::Service<http::Request<crate::body::ClientBody>>>::Future;
    let future = size_of::<StackFuture>();
    assert!(future <= 256, "stack future of {future} bytes");
    let response = size_of::<super::ProxyResult>();
    assert!(response <= 200, "response of {response} bytes");
}
