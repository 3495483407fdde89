//! `NodeCall`: one call to a real node over loopback, in real time, and
//! how each way it can fail is named.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use levee_resilience::Deadline;
use levee_telemetry::ErrorReason;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::body::RequestBody;
use crate::error::ProxyError;
use crate::pool::NodeBody;
use crate::stack::node::{NodeCall, NodeRequest};
use crate::stack::testing;
use crate::state::ProxyState;

fn state_for(addr: SocketAddr) -> Arc<ProxyState> {
    testing::state(&format!(
        r#"
[[backend]]
name = "app"
nodes = ["{addr}"]
connect_timeout = "500ms"
timeout = "5s"
[[route]]
path_prefix = "/"
backend = "app"
"#
    ))
}

fn node_request(
    state: &ProxyState,
    method: Method,
    path: &str,
    body: &'static str,
    deadline: Deadline,
) -> NodeRequest {
    let node = Arc::clone(&state.backends[0].nodes.nodes()[0]);
    // Aimed as `Balance` aims it.
    let target = if node.speaks_http2() {
        format!("http://{}{path}", node.addr)
    } else {
        path.to_owned()
    };
    let request = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "test")
        .body(RequestBody::kept(Bytes::from_static(body.as_bytes())))
        .unwrap();
    NodeRequest {
        node,
        request,
        forwarded: None,
        deadline,
        head_back: false,
    }
}

async fn call(req: NodeRequest) -> Result<Response<NodeBody>, ProxyError> {
    let mut svc = NodeCall::new(0);
    let svc = svc.ready().await.map_err(|e| e.error)?;
    svc.call(req).await.map(|r| r.response).map_err(|e| e.error)
}

/// A node that accepts, then holds its connections open without a word.
async fn silent_node() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

/// A port on loopback with nothing listening on it.
async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test]
async fn a_node_that_never_answers_runs_into_the_deadline() {
    let (addr, silent) = silent_node().await;
    let state = state_for(addr);
    let budget = Duration::from_millis(150);
    let req = node_request(&state, Method::GET, "/", "", Deadline::after(budget));
    let started = Instant::now();
    let err = call(req).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.reason, ErrorReason::Deadline, "{err}");
    assert!(err.detail.contains(&addr.to_string()), "{}", err.detail);
    assert!(
        waited >= budget && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    silent.abort();
}

#[tokio::test]
async fn a_port_with_nothing_listening_is_upstream_connect() {
    let addr = free_port().await;
    let state = state_for(addr);
    let req = node_request(
        &state,
        Method::GET,
        "/",
        "",
        Deadline::after(Duration::from_secs(5)),
    );
    let started = Instant::now();
    let err = call(req).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::UpstreamConnect, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// What the node received.
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    uri: http::Uri,
    host: Option<String>,
    body: Bytes,
}

#[tokio::test]
async fn a_node_that_answers_gives_its_response() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::<Received>::new()));
    let server = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let received = Arc::clone(&received);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let received = Arc::clone(&received);
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            received.lock().unwrap().push(Received {
                                method: parts.method,
                                uri: parts.uri,
                                host: parts
                                    .headers
                                    .get("host")
                                    .map(|h| h.to_str().unwrap().to_owned()),
                                body,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"hi there",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        })
    };
    let state = state_for(addr);
    let req = node_request(
        &state,
        Method::POST,
        "/hello?x=1",
        "payload",
        Deadline::after(Duration::from_secs(5)),
    );
    let resp = call(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(testing::text(resp.into_body()).await, "hi there");
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].method, Method::POST);
    assert_eq!(received[0].uri, "/hello?x=1");
    assert_eq!(received[0].host.as_deref(), Some("test"), "Host as given");
    assert_eq!(received[0].body, Bytes::from_static(b"payload"));
    server.abort();
}

/// A node that reads the request head, then does `then` with the socket.
async fn raw_node(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = socket.write_all(reply).await;
            let _ = socket.shutdown().await;
            drop(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_node_that_sends_garbage_is_upstream_protocol() {
    let (addr, node) = raw_node(b"NOT HTTP AT ALL\r\n\r\n").await;
    let state = state_for(addr);
    let req = node_request(
        &state,
        Method::GET,
        "/",
        "",
        Deadline::after(Duration::from_secs(5)),
    );
    let err = call(req).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::UpstreamProtocol, "{err}");
    node.abort();
}

#[tokio::test]
async fn a_node_that_closes_without_answering_is_upstream_reset() {
    let (addr, node) = raw_node(b"").await;
    let state = state_for(addr);
    let req = node_request(
        &state,
        Method::GET,
        "/",
        "",
        Deadline::after(Duration::from_secs(5)),
    );
    let err = call(req).await.unwrap_err();
    assert_eq!(err.reason, ErrorReason::UpstreamReset, "{err}");
    node.abort();
}

/// A connection's calls share one deadline timer: each call still gets its
/// own deadline, whether the timer last fired (reset after a 504), was left
/// set later (an answer before a long deadline), or is set earlier or later.
#[tokio::test]
async fn calls_on_one_connection_each_keep_their_own_deadline() {
    let (silent_addr, silent) = silent_node().await;
    let (answering_addr, answering) =
        raw_node(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
    let silent_state = state_for(silent_addr);
    let answering_state = state_for(answering_addr);
    // One service, as one client connection has.
    let mut svc = NodeCall::new(0);
    times_out(&mut svc, &silent_state, Duration::from_millis(150)).await;
    // The timer fired: it is set afresh, not found fired already.
    times_out(&mut svc, &silent_state, Duration::from_millis(300)).await;
    let req = node_request(
        &answering_state,
        Method::GET,
        "/",
        "",
        Deadline::after(Duration::from_secs(30)),
    );
    let resp = svc.call(req).await.map_err(|e| e.error).unwrap();
    assert_eq!(resp.response.status(), 200);
    // Set for 30 s when given back: moved earlier, it fires on time.
    times_out(&mut svc, &silent_state, Duration::from_millis(150)).await;
    silent.abort();
    answering.abort();
}

/// A call through `svc` to a silent node answers 504 once `budget` is up,
/// not before and not long after.
async fn times_out(svc: &mut NodeCall, silent: &ProxyState, budget: Duration) {
    let started = Instant::now();
    let req = node_request(silent, Method::GET, "/", "", Deadline::after(budget));
    let err = svc.call(req).await.map(|_| ()).unwrap_err().error;
    assert_eq!(err.reason, ErrorReason::Deadline, "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= budget && waited < budget + Duration::from_secs(2),
        "{budget:?}: {waited:?}"
    );
}
