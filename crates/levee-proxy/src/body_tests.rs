//! The response body's bounds, with paused time: the total deadline cuts a
//! dripping body once, frees what the request holds and counts the cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use levee_resilience::Bulkhead;
use levee_telemetry::{ErrorReason, RouteStats};
use tokio::time::Instant;

use super::*;
use crate::nodes::Node;

/// A node response whose body is `chunks` one-byte frames, one every
/// `interval` (the first after one interval too), as hyper's `Incoming`.
async fn dripping(chunks: usize, interval: Duration) -> Response<Incoming> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let service = service_fn(move |_req: Request<Incoming>| async move {
            let frames = stream::unfold(0, move |sent| async move {
                if sent == chunks {
                    return None;
                }
                tokio::time::sleep(interval).await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x"))),
                    sent + 1,
                ))
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap()
}

/// What a request holds, with a route slot taken from `bulkhead`.
fn scope(bulkhead: &Bulkhead, node: &Arc<Node>, route: &Arc<RouteStats>) -> RequestScope {
    RequestScope {
        route_slot: bulkhead.try_acquire().unwrap(),
        backend_slot: None,
        node_in_flight: node.enter(),
        route: Arc::clone(route),
        client_body: None,
    }
}

fn stats() -> (Bulkhead, Arc<Node>, Arc<RouteStats>) {
    let state = crate::stack::testing::state(
        "[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:1\"]\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
    );
    (
        Bulkhead::new(4, 0),
        Arc::clone(&state.backends[0].nodes.nodes()[0]),
        Arc::new(RouteStats::new("all", "app", None, 1)),
    )
}

/// Reads `body` frame by frame until it ends or fails: the data bytes, and
/// the error if it failed.
async fn drain(body: &mut UpstreamBody) -> (usize, Option<UpstreamBodyError>) {
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => read += f.data_ref().map_or(0, Bytes::len),
            Err(e) => return (read, Some(e)),
        }
    }
    (read, None)
}

#[tokio::test(start_paused = true)]
async fn a_dripping_body_is_cut_at_the_total_deadline() {
    let (bulkhead, node, route) = stats();
    let started = Instant::now();
    let end = started + Duration::from_secs(1);
    let resp = dripping(20, Duration::from_millis(150)).await;
    let mut body = UpstreamBody::new(
        resp.into_body().into(),
        Duration::from_secs(30),
        Some((end, Duration::from_secs(1))),
        scope(&bulkhead, &node, &route),
    );
    assert_eq!(bulkhead.in_flight(), 1);
    let (read, error) = drain(&mut body).await;
    assert!(
        matches!(error, Some(UpstreamBodyError::Total(d)) if d == Duration::from_secs(1)),
        "{error:?}"
    );
    assert_eq!(Instant::now(), end, "cut at the deadline, not at a frame");
    assert_eq!(read, 6, "the frames before the deadline went through");
    assert_eq!(bulkhead.in_flight(), 0, "the slot is freed at the cut");
    assert_eq!(node.in_flight(), 0);
    assert_eq!(node.stats.outcomes.reason(ErrorReason::Deadline), 1);
    assert_eq!(route.outcomes.reason(ErrorReason::Deadline), 1);
}

#[tokio::test(start_paused = true)]
async fn a_body_through_before_the_deadline_is_untouched() {
    let (bulkhead, node, route) = stats();
    let end = Instant::now() + Duration::from_secs(1);
    let resp = dripping(5, Duration::from_millis(150)).await;
    let mut body = UpstreamBody::new(
        resp.into_body().into(),
        Duration::from_secs(30),
        Some((end, Duration::from_secs(1))),
        scope(&bulkhead, &node, &route),
    );
    let (read, error) = drain(&mut body).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(read, 5);
    assert_eq!(bulkhead.in_flight(), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(body.frame().await.is_none(), "no cut after the end");
    assert_eq!(route.outcomes.reason(ErrorReason::Deadline), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_ready_at_once_but_read_late_is_cut_before_its_next_frame() {
    let (bulkhead, node, route) = stats();
    let end = Instant::now() + Duration::from_millis(100);
    // Every frame is ready as soon as it is asked for.
    let resp = dripping(3, Duration::ZERO).await;
    let mut body = UpstreamBody::new(
        resp.into_body().into(),
        Duration::from_secs(30),
        Some((end, Duration::from_millis(100))),
        scope(&bulkhead, &node, &route),
    );
    tokio::time::advance(Duration::from_millis(200)).await;
    let (read, error) = drain(&mut body).await;
    assert_eq!(read, 0);
    assert!(
        matches!(error, Some(UpstreamBodyError::Total(_))),
        "{error:?}"
    );
    assert_eq!(bulkhead.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_total_timeout_only_the_idle_bound_applies() {
    let (bulkhead, node, route) = stats();
    let resp = dripping(20, Duration::from_millis(150)).await;
    let mut body = UpstreamBody::new(
        resp.into_body().into(),
        Duration::from_secs(30),
        None,
        scope(&bulkhead, &node, &route),
    );
    let (read, error) = drain(&mut body).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(read, 20);
}

/// The sizes the layout of these bodies is chosen for: a response that is
/// moved inline (at most 128 bytes), a request that memcpy moves by its
/// path for up to 256.
#[test]
fn a_response_and_a_request_stay_within_their_move_sizes() {
    assert!(std::mem::size_of::<Response<ProxyBody>>() <= 128);
    assert!(std::mem::size_of::<Request<RequestBody>>() <= 256);
}
