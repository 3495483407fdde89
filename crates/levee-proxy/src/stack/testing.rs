//! Test support for the layers: client requests with bodies fed as
//! levee's HTTP/1 connection feeds them, node responses with real hyper
//! bodies over in-memory connections, a config version built from TOML,
//! and requests already routed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use levee_resilience::Deadline;
use levee_telemetry::ErrorReason;

use super::balance::Answer;
use super::{Routed, RoutedRequest};
use crate::body::{ClientBody, ProxyBody};
use crate::h1::{self, server::Want};
use crate::nodes::Outcome;
use crate::pool::NodeBody;
use crate::state::ProxyState;
use crate::upstream::Backend;

/// A request as a client sent it over HTTP/1, its body (with its
/// Content-Length) fed as levee's connection feeds it.
pub async fn client_request(method: Method, path: &str, body: &'static str) -> Request<ClientBody> {
    client_request_with(method, path, &[], body).await
}

/// [`client_request`] with extra request headers (sent after `host: test`).
pub async fn client_request_with(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Request<ClientBody> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let chunked = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"));
    if !body.is_empty() && !chunked {
        req = req.header("content-length", body.len());
    }
    req.body(client_body(body, !chunked)).unwrap()
}

/// `data` as a client's HTTP/1 body, one frame when asked for; `sized`:
/// its length is declared.
fn client_body(data: &'static str, sized: bool) -> ClientBody {
    if data.is_empty() {
        return ClientBody::Empty;
    }
    let (reader, body) = h1::server::channel(sized.then_some(data.len() as u64));
    tokio::spawn(async move {
        let mut data = Some(Bytes::from_static(data.as_bytes()));
        let done = poll_fn(|cx| match reader.want(cx) {
            Want::Gone => Poll::Ready(false),
            Want::Nothing => Poll::Pending,
            Want::Frame => match data.take() {
                Some(d) => {
                    reader.send(d);
                    Poll::Pending
                }
                None => Poll::Ready(true),
            },
        })
        .await;
        if done {
            reader.end(Ok(()));
        }
    });
    ClientBody::H1(body)
}

/// A node's response with `status`, its body hyper's `Incoming` (as an
/// HTTP/2 node's).
pub async fn node_response(status: u16, body: &'static str) -> Response<NodeBody> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let service = service_fn(move |_req: Request<Incoming>| async move {
            let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
    sender.send_request(req).await.unwrap().map(NodeBody::from)
}

/// A config version built from `toml` (`[server] listen` is added).
pub fn state(toml: &str) -> Arc<ProxyState> {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{toml}");
    let config = levee_config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    Arc::new(ProxyState::build(Arc::new(config), 1, None))
}

/// `req` routed on `state` as the edge would route it.
pub fn routed(state: &Arc<ProxyState>, req: Request<ClientBody>) -> Routed {
    let route = state
        .route_index(None, req.method(), req.uri().path())
        .expect("a route");
    let r = &state.routes[route];
    let (parts, body) = req.into_parts();
    Routed::new(RoutedRequest {
        class: r.class_of(&parts.method),
        deadline: Deadline::within(r.timeout, r.total_timeout),
        backend: r.backend_index,
        route,
        parts,
        forwarded: None,
        body,
        peer: "127.0.0.1:5555".parse().unwrap(),
        state: Arc::clone(state),
        route_slot: None,
        backend_slot: None,
        websocket: false,
        queued: false,
        ignore_state: false,
    })
}

/// A response levee's own layers would pass up, with a short local body.
pub fn local_response(status: u16, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    resp
}

/// The whole of a body, as text.
pub async fn text<B>(body: B) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = body.collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Opens the breaker of `class` on every node of `backend`. The backend
/// needs `[backend.breaker] consecutive_failures = 1`; a connect failure
/// does not count against `max_ejected_percent`, so every node can open.
pub fn open_every_node(backend: &Backend, class: usize) {
    for _ in 0..backend.nodes.len() {
        let Some(mut pick) = backend.nodes.pick(class, &[], true, false) else {
            break;
        };
        backend.nodes.record(
            &mut pick,
            tokio::time::Instant::now(),
            Duration::from_millis(1),
            Outcome::Failed(ErrorReason::UpstreamConnect),
        );
    }
    assert!(
        !backend.nodes.any_usable(class),
        "every node of {} is open",
        backend.name
    );
}

/// Opens the breaker of `class` on node `index` of `backend` (the backend
/// needs `consecutive_failures = 1`).
pub fn open_node(backend: &Backend, class: usize, index: usize) {
    let tried: Vec<usize> = (0..backend.nodes.len()).filter(|i| *i != index).collect();
    let mut pick = backend
        .nodes
        .pick(class, &tried, true, false)
        .expect("the node is usable");
    assert_eq!(pick.index, index);
    backend.nodes.record(
        &mut pick,
        tokio::time::Instant::now(),
        Duration::from_millis(1),
        Outcome::Failed(ErrorReason::UpstreamConnect),
    );
    assert!(
        !backend.nodes.nodes()[index].usable(class),
        "node {index} is open"
    );
}

/// What node `index` of `backend` answered, as [`Balance`](super::balance::Balance)
/// passes it up.
pub async fn answer(
    backend: &Backend,
    index: usize,
    status: u16,
    body: &'static str,
    failed: bool,
) -> Answer {
    let node = Arc::clone(&backend.nodes.nodes()[index]);
    Answer {
        response: node_response(status, body).await,
        failed,
        index,
        in_flight: node.enter(),
        node,
        elapsed: std::time::Duration::ZERO,
        head: None,
    }
}
