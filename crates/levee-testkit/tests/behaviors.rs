//! Every behaviour, exercised over real loopback sockets with a hyper client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use levee_testkit::{AppNode, Behavior, NodeStats, NODE_HEADER, RECORDED_CAPACITY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type ReqBody = BoxBody<Bytes, Infallible>;

/// Bound on anything a test waits for that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// One HTTP/1.1 client connection.
async fn connect(addr: SocketAddr) -> SendRequest<ReqBody> {
    let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

fn empty() -> ReqBody {
    Empty::new().boxed()
}

fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).boxed()
}

fn request(method: Method, path: &str, body: ReqBody) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "node.test")
        .body(body)
        .unwrap()
}

async fn send(
    sender: &mut SendRequest<ReqBody>,
    request: Request<ReqBody>,
) -> Result<Response<Incoming>, hyper::Error> {
    within("ready", sender.ready()).await?;
    within("response head", sender.send_request(request)).await
}

/// A fresh connection, one request, the whole answer.
async fn fetch(addr: SocketAddr, method: Method, body: ReqBody) -> (StatusCode, Bytes) {
    let mut sender = connect(addr).await;
    let response = send(&mut sender, request(method, "/", body)).await.unwrap();
    let status = response.status();
    let body = within("body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, body)
}

/// Waits (bounded) until the node's stats satisfy `done`.
async fn stats_until(node: &AppNode, what: &str, done: impl Fn(&NodeStats) -> bool) -> NodeStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stats = node.stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads body frames until the end or an error: (bytes read, error if any).
async fn drain(response: Response<Incoming>) -> (usize, Option<hyper::Error>) {
    let mut body = response.into_body();
    let mut read = 0;
    loop {
        match within("body frame", body.frame()).await {
            None => return (read, None),
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return (read, Some(e)),
        }
    }
}

#[tokio::test]
async fn healthy_sends_the_configured_body() {
    let node = AppNode::start(
        "n1",
        Behavior::Healthy {
            body_bytes: 100_000,
        },
    )
    .await
    .unwrap();
    assert!(node.addr().ip().is_loopback());
    assert_eq!(node.name(), "n1");

    let mut sender = connect(node.addr()).await;
    let response = send(&mut sender, request(Method::GET, "/", empty()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[NODE_HEADER], "n1");
    assert_eq!(response.headers()["content-length"], "100000");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 100_000);
    assert!(body.iter().all(u8::is_ascii_lowercase));

    node.set_behavior(Behavior::Healthy { body_bytes: 0 })
        .await
        .unwrap();
    let (status, body) = fetch(node.addr(), Method::GET, empty()).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    node.shutdown().await;
}

#[tokio::test]
async fn echo_returns_a_1_mib_body() {
    let node = AppNode::start("echo", Behavior::Echo).await.unwrap();
    let payload: Bytes = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let (status, body) = fetch(node.addr(), Method::POST, full(payload.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), payload.len());
    assert!(body == payload, "echoed body differs");
    let stats = stats_until(&node, "completed echo", |s| s.completed == 1).await;
    assert_eq!(stats.body_bytes_received, 1 << 20);
    assert_eq!(stats.body_bytes_sent, 1 << 20);
    assert_eq!(stats.requests, 1);
}

#[tokio::test]
async fn echo_streams_each_chunk_as_it_arrives() {
    let node = AppNode::start("echo", Behavior::Echo).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut sender = connect(node.addr()).await;
    let pending = tokio::spawn(async move {
        sender
            .send_request(request(Method::POST, "/", StreamBody::new(stream).boxed()))
            .await
    });

    tx.send(Bytes::from_static(b"first")).await.unwrap();
    // The answer starts before the request body ends...
    let response = within("echo head", pending).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let frame = within("first chunk", body.frame()).await.unwrap().unwrap();
        seen.extend_from_slice(frame.data_ref().unwrap());
    }
    assert_eq!(seen, b"first");
    // ...and each chunk comes back while the client still holds the rest.
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    while seen.len() < 11 {
        let frame = within("second chunk", body.frame()).await.unwrap().unwrap();
        seen.extend_from_slice(frame.data_ref().unwrap());
    }
    assert_eq!(seen, b"firstsecond");
    drop(tx);
    assert!(within("end", body.frame()).await.is_none());
    let stats = stats_until(&node, "completed echo", |s| s.completed == 1).await;
    assert_eq!(stats.body_bytes_received, 11);
}

#[tokio::test]
async fn status_fails_only_the_listed_methods() {
    let node = AppNode::start(
        "replica",
        Behavior::Status {
            code: 500,
            share: 1.0,
            methods: Some(vec![Method::POST]),
        },
    )
    .await
    .unwrap();
    let mut sender = connect(node.addr()).await;
    for _ in 0..3 {
        let post = send(&mut sender, request(Method::POST, "/write", full("x")))
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(post.headers()[NODE_HEADER], "replica");
        post.into_body().collect().await.unwrap();

        let get = send(&mut sender, request(Method::GET, "/read", empty()))
            .await
            .unwrap();
        assert_eq!(get.status(), StatusCode::OK);
        let body = get.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 2);
    }
    // All on one keep-alive connection.
    assert_eq!(node.stats().connections, 1);
    assert_eq!(node.stats().requests, 6);
}

#[tokio::test]
async fn status_share_zero_never_fails_and_a_half_share_mixes() {
    let node = AppNode::start(
        "n",
        Behavior::Status {
            code: 503,
            share: 0.0,
            methods: None,
        },
    )
    .await
    .unwrap();
    let mut sender = connect(node.addr()).await;
    for _ in 0..100 {
        let response = send(&mut sender, request(Method::GET, "/", empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }

    node.set_behavior(Behavior::Status {
        code: 503,
        share: 0.5,
        methods: None,
    })
    .await
    .unwrap();
    let mut failed = 0;
    for _ in 0..200 {
        let response = send(&mut sender, request(Method::GET, "/", empty()))
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            failed += 1;
        } else {
            assert_eq!(response.status(), StatusCode::OK);
        }
        response.into_body().collect().await.unwrap();
    }
    assert!((1..200).contains(&failed), "{failed} of 200 failed");
}

#[tokio::test]
async fn stuck_reads_the_request_but_never_answers() {
    let node = AppNode::start("db-wait", Behavior::Stuck).await.unwrap();
    let mut sender = connect(node.addr()).await;
    let mut answer = Box::pin(sender.send_request(request(Method::POST, "/", full("payload"))));
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut answer).await;
    assert!(waited.is_err(), "a stuck node answered");
    let stats = stats_until(&node, "the request read", |s| s.body_bytes_received == 7).await;
    assert_eq!((stats.requests, stats.completed), (1, 0));
    assert_eq!(stats.open_connections, 1);

    // Stopping the node releases the connection: the client sees it close.
    node.shutdown().await;
    let outcome = within("connection closed by shutdown", answer).await;
    assert!(outcome.is_err(), "got an answer after shutdown");
}

#[tokio::test]
async fn stuck_on_hangs_only_the_listed_methods() {
    let node = AppNode::start(
        "read-only-db",
        Behavior::StuckOn {
            methods: vec![Method::POST],
        },
    )
    .await
    .unwrap();
    let mut reads = connect(node.addr()).await;
    let got = within(
        "a read",
        reads.send_request(request(Method::GET, "/", empty())),
    )
    .await;
    assert_eq!(got.unwrap().status(), StatusCode::OK);
    let mut writes = connect(node.addr()).await;
    let answer = writes.send_request(request(Method::POST, "/", full("w")));
    let waited = tokio::time::timeout(Duration::from_millis(300), answer).await;
    assert!(waited.is_err(), "a stuck write answered");
}

#[tokio::test]
async fn stuck_connections_end_when_the_node_is_dropped_or_the_client_leaves() {
    let node = AppNode::start("db-wait", Behavior::Stuck).await.unwrap();

    // The client goes away: the node notices and closes its side.
    let mut leaving = TcpStream::connect(node.addr()).await.unwrap();
    leaving
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    stats_until(&node, "request", |s| s.requests == 1).await;
    assert_eq!(node.stats().open_connections, 1);
    drop(leaving);
    stats_until(&node, "client gone", |s| s.open_connections == 0).await;

    // The node is dropped: its connection tasks are aborted.
    let mut sender = connect(node.addr()).await;
    let answer = sender.send_request(request(Method::GET, "/", empty()));
    let addr = node.addr();
    stats_until(&node, "request", |s| s.requests == 2).await;
    drop(node);
    assert!(within("connection closed by drop", answer).await.is_err());
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "a dropped node still accepts connections");
}

#[tokio::test]
async fn slow_answers_after_the_delay() {
    let delay = Duration::from_millis(200);
    let node = AppNode::start(
        "slow",
        Behavior::Slow {
            delay,
            body_bytes: 10,
        },
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (status, body) = fetch(node.addr(), Method::GET, empty()).await;
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!((status, body.len()), (StatusCode::OK, 10));
}

#[tokio::test]
async fn loaded_answers_later_the_more_requests_are_in_flight() {
    let base = Duration::from_millis(50);
    let per_in_flight = Duration::from_millis(100);
    let node = AppNode::start(
        "loaded",
        Behavior::Loaded {
            base,
            per_in_flight,
            body_bytes: 10,
        },
    )
    .await
    .unwrap();

    // Alone: the base latency, and the peak shows one request.
    let started = Instant::now();
    let (status, body) = fetch(node.addr(), Method::GET, empty()).await;
    let alone = started.elapsed();
    assert_eq!((status, body.len()), (StatusCode::OK, 10));
    assert!(alone >= base, "{alone:?}");
    assert_eq!(node.stats().peak_in_flight, 1);

    // Three requests held in flight (stuck), then one more, which must
    // wait base + 3 × per_in_flight.
    let loaded = node.behavior();
    node.set_behavior(Behavior::Stuck).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut sender = connect(node.addr()).await;
        held.push(tokio::spawn(async move {
            sender
                .send_request(request(Method::GET, "/", empty()))
                .await
        }));
    }
    stats_until(&node, "three in flight", |s| s.in_flight == 3).await;
    node.set_behavior(loaded).await.unwrap();
    let started = Instant::now();
    let (status, _) = fetch(node.addr(), Method::GET, empty()).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(waited >= base + 3 * per_in_flight, "{waited:?}");
    assert_eq!(node.stats().peak_in_flight, 4);

    for request in held {
        request.abort();
    }
    let stats = stats_until(&node, "none in flight", |s| s.in_flight == 0).await;
    assert_eq!(stats.requests, 5);
}

#[tokio::test]
async fn stuck_requests_stay_in_flight_until_the_client_leaves() {
    let node = AppNode::start("stuck", Behavior::Stuck).await.unwrap();
    let mut sender = connect(node.addr()).await;
    let pending = tokio::spawn(async move {
        sender
            .send_request(request(Method::GET, "/", empty()))
            .await
    });
    stats_until(&node, "one in flight", |s| s.in_flight == 1).await;
    pending.abort();
    let stats = stats_until(&node, "none in flight", |s| s.in_flight == 0).await;
    assert_eq!(stats.peak_in_flight, 1);
}

#[tokio::test]
async fn drip_sends_headers_then_spaced_chunks() {
    let interval = Duration::from_millis(150);
    let node = AppNode::start(
        "drip",
        Behavior::Drip {
            chunks: 3,
            chunk_bytes: 1000,
            interval,
        },
    )
    .await
    .unwrap();
    let mut sender = connect(node.addr()).await;
    let started = Instant::now();
    let response = send(&mut sender, request(Method::GET, "/", empty()))
        .await
        .unwrap();
    let head_at = started.elapsed();
    assert_eq!(response.headers()["content-length"], "3000");

    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    let mut read = 0;
    while let Some(frame) = within("drip frame", body.frame()).await {
        let frame = frame.unwrap();
        read += frame.data_ref().map_or(0, Bytes::len);
        arrivals.push((started.elapsed(), read));
    }
    assert_eq!(read, 3000);
    let first_byte = arrivals[0].0;
    // Headers come at once, the first chunk an interval later.
    assert!(
        head_at + interval / 2 <= first_byte,
        "head {head_at:?}, first chunk {first_byte:?}"
    );
    // The whole body takes about chunks × interval.
    let total = started.elapsed();
    assert!(
        total >= interval * 3 - Duration::from_millis(20),
        "{total:?}"
    );
    // Each 1000-byte chunk arrives in its own burst: at least 3 separate moments.
    let chunk_ends: Vec<Duration> = arrivals
        .iter()
        .filter(|(_, read)| read % 1000 == 0)
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(chunk_ends.len(), 3, "{arrivals:?}");
    for pair in chunk_ends.windows(2) {
        assert!(pair[1] - pair[0] >= interval / 2, "{arrivals:?}");
    }
}

#[tokio::test]
async fn reset_mid_headers_is_a_client_error() {
    let node = AppNode::start("crash", Behavior::ResetMidHeaders)
        .await
        .unwrap();
    let mut sender = connect(node.addr()).await;
    let result = send(&mut sender, request(Method::POST, "/", full("body"))).await;
    assert!(result.is_err(), "a crashing node answered: {result:?}");
    let stats = stats_until(&node, "connection closed", |s| s.open_connections == 0).await;
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.body_bytes_received, 4);
    assert_eq!(stats.completed, 0);

    // The node still takes new connections, and resets each of them.
    for _ in 0..5 {
        let mut sender = connect(node.addr()).await;
        assert!(send(&mut sender, request(Method::GET, "/", empty()))
            .await
            .is_err());
    }

    // On a raw socket the partial head (or a reset) is all there is.
    let mut raw = TcpStream::connect(node.addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = within("raw read", raw.read_to_end(&mut got)).await;
    assert!(
        read.is_err() || !got.ends_with(b"\r\n\r\n"),
        "a complete head arrived: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        b"HTTP/1.1 200 OK\r\nContent-Le".starts_with(&got),
        "{got:?}"
    );
}

#[tokio::test]
async fn reset_mid_body_cuts_the_body_short() {
    let node = AppNode::start(
        "crash",
        Behavior::ResetMidBody {
            total_bytes: 100_000,
            after_bytes: 30_000,
        },
    )
    .await
    .unwrap();
    for _ in 0..5 {
        let mut sender = connect(node.addr()).await;
        let response = send(&mut sender, request(Method::GET, "/", empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-length"], "100000");
        let (read, err) = drain(response).await;
        assert!(err.is_some(), "the body ended cleanly after {read} bytes");
        // A prompt reader on loopback gets exactly what was sent before the reset.
        assert_eq!(read, 30_000);
    }
    let stats = stats_until(&node, "connections closed", |s| s.open_connections == 0).await;
    assert_eq!((stats.requests, stats.completed), (5, 0));
}

#[tokio::test]
async fn refuse_closes_the_port_and_switching_back_reopens_it() {
    let node = AppNode::start("down", Behavior::Healthy { body_bytes: 2 })
        .await
        .unwrap();
    let addr = node.addr();
    let mut kept_alive = connect(addr).await;
    let response = send(&mut kept_alive, request(Method::GET, "/", empty()))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();

    node.set_behavior(Behavior::Refuse).await.unwrap();
    assert_eq!(node.behavior(), Behavior::Refuse);
    let err = TcpStream::connect(addr)
        .await
        .expect_err("connected to a refusing node");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Connections open before the switch are closed too.
    assert!(send(&mut kept_alive, request(Method::GET, "/", empty()))
        .await
        .is_err());
    assert_eq!(node.stats().open_connections, 0);

    node.set_behavior(Behavior::Healthy { body_bytes: 5 })
        .await
        .unwrap();
    assert_eq!(node.addr(), addr);
    let (status, body) = fetch(addr, Method::GET, empty()).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 5));
    assert_eq!(node.stats().requests, 2);
}

#[tokio::test]
async fn a_node_can_start_refusing() {
    let node = AppNode::start("down", Behavior::Refuse).await.unwrap();
    let err = TcpStream::connect(node.addr()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    node.set_behavior(Behavior::Echo).await.unwrap();
    let (status, body) = fetch(node.addr(), Method::PUT, full("up")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"up"[..]));
}

#[tokio::test]
async fn switching_applies_to_the_next_request_on_a_kept_alive_connection() {
    let node = AppNode::start("n", Behavior::Healthy { body_bytes: 3 })
        .await
        .unwrap();
    let mut sender = connect(node.addr()).await;
    let first = send(&mut sender, request(Method::GET, "/", empty()))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.into_body().collect().await.unwrap();

    let failing = Behavior::Status {
        code: 502,
        share: 1.0,
        methods: None,
    };
    node.set_behavior(failing.clone()).await.unwrap();
    assert_eq!(node.behavior(), failing);
    let second = send(&mut sender, request(Method::GET, "/", empty()))
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::BAD_GATEWAY);
    second.into_body().collect().await.unwrap();
    assert_eq!(node.stats().connections, 1);
}

#[tokio::test]
async fn stats_count_requests_bytes_and_connections() {
    let node = AppNode::start("n", Behavior::Healthy { body_bytes: 64 })
        .await
        .unwrap();
    assert_eq!(node.stats(), NodeStats::default());

    let mut a = connect(node.addr()).await;
    let mut b = connect(node.addr()).await;
    for (on_b, body) in [(false, "12345"), (false, "678"), (true, "90")] {
        let sender = if on_b { &mut b } else { &mut a };
        let response = send(sender, request(Method::POST, "/", full(body)))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
    }
    let stats = stats_until(&node, "three completed", |s| s.completed == 3).await;
    assert_eq!(
        stats,
        NodeStats {
            requests: 3,
            completed: 3,
            body_bytes_received: 10,
            body_bytes_sent: 3 * 64,
            connections: 2,
            open_connections: 2,
            in_flight: 0,
            peak_in_flight: 1,
        }
    );

    drop(a);
    drop(b);
    let stats = stats_until(&node, "connections closed", |s| s.open_connections == 0).await;
    assert_eq!(stats.connections, 2);
}

#[tokio::test]
async fn recorded_keeps_the_last_request_heads() {
    let node = AppNode::start("n", Behavior::Healthy { body_bytes: 0 })
        .await
        .unwrap();
    let mut sender = connect(node.addr()).await;
    let total = RECORDED_CAPACITY + 10;
    for i in 0..total {
        let mut req = request(Method::GET, &format!("/item/{i}?q=1"), empty());
        req.headers_mut()
            .insert("x-request-id", format!("req-{i}").parse().unwrap());
        let response = send(&mut sender, req).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let mut req = request(Method::DELETE, "/last", full("bye"));
    req.headers_mut()
        .insert("x-custom", "levee".parse().unwrap());
    send(&mut sender, req).await.unwrap();

    let recorded = node.recorded();
    assert_eq!(recorded.len(), RECORDED_CAPACITY);
    // Oldest first: the first 11 requests were pushed out.
    assert_eq!(
        recorded[0].uri,
        format!("/item/{}?q=1", total + 1 - RECORDED_CAPACITY).as_str()
    );
    assert_eq!(
        recorded[0].headers["x-request-id"],
        format!("req-{}", total + 1 - RECORDED_CAPACITY).as_str()
    );
    let last = recorded.last().unwrap();
    assert_eq!(last.method, Method::DELETE);
    assert_eq!(last.uri, "/last");
    assert_eq!(last.version, http::Version::HTTP_11);
    assert_eq!(last.headers["x-custom"], "levee");
    assert_eq!(last.headers["host"], "node.test");
}

#[tokio::test]
async fn nodes_can_be_started_on_a_given_address() {
    let probe = AppNode::start("probe", Behavior::Refuse).await.unwrap();
    let addr = probe.addr();
    drop(probe);
    let node = AppNode::start_on(addr, "fixed", Behavior::Healthy { body_bytes: 1 })
        .await
        .unwrap();
    assert_eq!(node.addr(), addr);
    let (status, body) = fetch(addr, Method::GET, empty()).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 1));

    let err = AppNode::start("bad\nname", Behavior::Echo)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
