//! Forwarding, header hygiene, HTTP/2 from clients, and streaming.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use levee_testkit::Behavior;
use tokio::sync::mpsc;

use crate::common::*;

#[tokio::test]
async fn forwards_with_hop_by_hop_removed_and_forwarded_headers_set() {
    let app = node(Behavior::Healthy { body_bytes: 10 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let client = client();
    let req = Request::builder()
        .uri(url(&levee, "/items?x=1"))
        .header("host", "shop.example:8080")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&client, req, Duration::from_secs(5)).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), 10);
    let id = got.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "a request id is generated and returned");

    let seen = app.recorded();
    let head = seen.last().expect("the node got the request");
    assert_eq!(head.method, Method::GET);
    assert_eq!(head.uri.path_and_query().unwrap().as_str(), "/items?x=1");
    let h = &head.headers;
    for hop in ["x-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(!h.contains_key(hop), "{hop} must not be forwarded");
    }
    assert_ne!(
        h.get("connection").map(|v| v.as_bytes()),
        Some(&b"keep-alive, x-hop"[..])
    );
    assert_eq!(h["host"], "shop.example:8080", "Host is kept");
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example:8080");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-request-id"].to_str().unwrap(), id);
    levee.shutdown().await;
}

#[tokio::test]
async fn a_client_request_id_is_kept_end_to_end() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let req = Request::builder()
        .uri(url(&levee, "/"))
        .header("x-request-id", "req-42")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&client(), req, Duration::from_secs(5)).await;
    assert_eq!(got.headers["x-request-id"], "req-42");
    assert_eq!(
        app.recorded().last().unwrap().headers["x-request-id"],
        "req-42"
    );
    levee.shutdown().await;
}

/// A client that sends no `X-Forwarded-*` line (levee then writes its own
/// after the request's lines instead of putting them in the header map):
/// every try the nodes get, a retry's included, carries each line once, from
/// HTTP/1 and HTTP/2 clients alike.
#[tokio::test]
async fn forwarded_lines_reach_every_try_once_when_the_client_sent_none() {
    let failing = node(Behavior::Status {
        code: 503,
        share: 1.0,
        methods: None,
    })
    .await;
    let healthy = node(Behavior::Healthy { body_bytes: 3 }).await;
    // Each node in turn: p2c_ewma may shun the failing node for long.
    let cfg = ONE_ROUTE.replace(
        "name = \"app\"",
        "name = \"app\"\nload_balancing = \"round_robin\"",
    );
    assert_ne!(cfg, ONE_ROUTE);
    let levee = start_levee(&cfg, &[&[failing.addr(), healthy.addr()]]).await;
    let authority = levee.proxy_addr.to_string();
    let h1 = client();
    // Until the failing node has had a try (then retried on the other):
    // round robin gives it the first or the second.
    for i in 0..10 {
        let got = send(
            &h1,
            request(Method::GET, &url(&levee, &format!("/h1/{i}"))),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(got.status, StatusCode::OK, "retried on the healthy node");
        if !failing.recorded().is_empty() {
            break;
        }
    }
    assert!(
        !failing.recorded().is_empty(),
        "a try reached the failing node"
    );
    let h2 = h2_client();
    let got = send(
        &h2,
        request(Method::GET, &url(&levee, "/h2")),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);

    let tries: Vec<_> = failing
        .recorded()
        .into_iter()
        .chain(healthy.recorded())
        .collect();
    assert!(tries.iter().any(|t| t.uri.path() == "/h2"));
    for t in &tries {
        let h = &t.headers;
        for (name, value) in [
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", authority.as_str()),
        ] {
            let values: Vec<_> = h.get_all(name).iter().collect();
            assert_eq!(values, [value], "{name} on {}", t.uri);
        }
    }
    levee.shutdown().await;
}

#[tokio::test]
async fn serves_http2_prior_knowledge_clients_and_speaks_http1_to_nodes() {
    let app = node(Behavior::Healthy { body_bytes: 5 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let h2 = h2_client();
    let got = send(
        &h2,
        request(Method::GET, &url(&levee, "/h2")),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), 5);
    let head = app.recorded().pop().unwrap();
    assert_eq!(head.version, Version::HTTP_11);
    assert!(
        head.headers.contains_key("host"),
        "the :authority becomes Host for HTTP/1.1"
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let app = node(Behavior::Echo).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<tokio_stream_shim::Receiver>>();

    // The client sends one chunk and waits for it to come back before sending
    // the next: this only completes if levee streams both directions.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let req = Request::builder()
        .method(Method::POST)
        .uri(url(&levee, "/echo"))
        .body(StreamBody::new(tokio_stream_shim::Receiver(rx)))
        .unwrap();
    let run = async {
        let chunk = Bytes::from(vec![7u8; 256 * 1024]);
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut received = 0usize;
        let mut sent = chunk.len();
        let rounds = 64; // 64 × 256 KiB = 16 MiB each way
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            if let Some(data) = frame.data_ref() {
                received += data.len();
            }
            if received == sent {
                if sent / chunk.len() == rounds {
                    // Close the request body; the echo ends.
                    break;
                }
                tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
                sent += chunk.len();
            }
        }
        (sent, received)
    };
    let (sent, received) = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("echo completes: bodies stream in both directions");
    assert_eq!(sent, received);
    assert_eq!(sent, 16 * 1024 * 1024);
    drop(tx);
    levee.shutdown().await;
}

#[tokio::test]
async fn a_dripping_response_reaches_the_client_before_it_ends() {
    let app = node(Behavior::Drip {
        chunks: 5,
        chunk_bytes: 100,
        interval: Duration::from_millis(200),
    })
    .await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let client = client();
    let started = tokio::time::Instant::now();
    let resp = client
        .request(request(Method::GET, &url(&levee, "/drip")))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = loop {
        let frame = body.frame().await.unwrap().unwrap();
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            break started.elapsed();
        }
    };
    let mut total = 100;
    while let Some(frame) = body.frame().await {
        total += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    let all = started.elapsed();
    assert_eq!(total, 500);
    assert!(
        first + Duration::from_millis(500) < all,
        "first chunk at {first:?}, all at {all:?}: levee must not buffer the body"
    );
    levee.shutdown().await;
}

/// A body stream over an mpsc receiver, without pulling in tokio-stream.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::Frame;
    use tokio::sync::mpsc;

    pub struct Receiver(pub mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

    impl futures_util::Stream for Receiver {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

#[tokio::test]
async fn several_workers_share_the_listener_and_all_report_healthy() {
    let app = node(Behavior::Healthy { body_bytes: 3 }).await;
    let cfg = ONE_ROUTE.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nworkers = 3",
    );
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    // New connections each time, so the kernel spreads them over the workers.
    for _ in 0..30 {
        let fresh = client();
        assert_eq!(get(&fresh, &url(&levee, "/w")).await.status, StatusCode::OK);
    }
    let health = get(&client(), &admin_url(&levee, "/healthz")).await;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "every worker's heartbeat is fresh"
    );
    assert_eq!(app.stats().requests, 30);
    assert_eq!(levee.shutdown().await, 0);
}
