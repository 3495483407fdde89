//! Client-side timeouts and limits: slow headers, idle keep-alive, body
//! idle, and max_connections.

use std::time::Duration;

use http::StatusCode;
use levee_testkit::Behavior;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

fn with_server(extra: &str) -> String {
    ONE_ROUTE.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{extra}"),
    )
}

/// Reads until the peer closes; returns what arrived and how long it took.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    (buf, started.elapsed())
}

/// Slowloris: clients dripping their heads a byte at a time are cut at
/// `header_read_timeout` (a deadline for the whole head, not per read),
/// while another client's requests keep being answered at once.
#[tokio::test]
async fn clients_dripping_their_headers_are_cut_off_and_others_are_served() {
    const DRIPPERS: usize = 20;
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(
        &with_server("header_read_timeout = \"1s\""),
        &[&[app.addr()]],
    )
    .await;
    let drippers: Vec<_> = (0..DRIPPERS)
        .map(|_| {
            let addr = levee.proxy_addr;
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
                // One byte every 50 ms: the head never ends, but every
                // read brings something. Bounded: 200 bytes, 10 s.
                for _ in 0..200 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if s.write_all(b"a").await.is_err() {
                        break;
                    }
                    let mut probe = [0u8; 1];
                    let closed = tokio::time::timeout(Duration::ZERO, s.read(&mut probe)).await;
                    if matches!(closed, Ok(Ok(0) | Err(_))) {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    // Meanwhile another client's requests are each answered in less
    // than header_read_timeout: none waits behind a dripping client.
    let c = client();
    let mut answered = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        let got = get(&c, &url(&levee, "/")).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(
            got.elapsed < Duration::from_millis(900),
            "not delayed: {:?}",
            got.elapsed
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered >= 5, "{answered}");
    for d in drippers {
        let took = d.await.unwrap();
        assert!(
            took >= Duration::from_millis(900),
            "cut too early: {took:?}"
        );
        assert!(
            took < Duration::from_secs(5),
            "cut at the timeout: {took:?}"
        );
    }
    assert_eq!(app.stats().requests, answered);
    levee.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(&with_server("idle_timeout = \"300ms\""), &[&[app.addr()]]).await;
    let mut s = TcpStream::connect(levee.proxy_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (buf, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        took >= Duration::from_millis(250),
        "kept alive for a while: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "then closed: {took:?}");
    assert!(
        eventually(Duration::from_secs(2), || levee
            .telemetry
            .connections_open()
            == 0)
        .await
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn an_http2_connection_idles_out_too() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(&with_server("idle_timeout = \"300ms\""), &[&[app.addr()]]).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    assert_eq!(get(&h2, &url(&levee, "/")).await.status, StatusCode::OK);
    assert_eq!(levee.telemetry.connections_open(), 1);
    assert!(
        eventually(Duration::from_secs(3), || levee
            .telemetry
            .connections_open()
            == 0)
        .await,
        "idle HTTP/2 connection closed"
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn a_response_body_that_goes_silent_is_cut_and_charged_to_the_node() {
    let app = node(Behavior::Drip {
        chunks: 3,
        chunk_bytes: 10,
        interval: Duration::from_millis(1500),
    })
    .await;
    let cfg = ONE_ROUTE.replace(
        "queue_timeout = \"100ms\"",
        "queue_timeout = \"100ms\"\nbody_idle_timeout = \"300ms\"",
    );
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let started = tokio::time::Instant::now();
    let resp = client()
        .request(request(http::Method::GET, &url(&levee, "/")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(body.is_err(), "the client sees the body cut");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let topo = levee.telemetry.topology();
    let node_stats = &topo.backends[0].nodes[0].stats;
    assert!(
        eventually(Duration::from_secs(1), || node_stats
            .outcomes
            .reason(levee_telemetry::ErrorReason::Deadline)
            == 1)
        .await
    );
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await);
    levee.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_in_the_backlog() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(&with_server("max_connections = 1"), &[&[app.addr()]]).await;
    let mut first = TcpStream::connect(levee.proxy_addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The kernel completes the second handshake, but levee does not serve it
    // while the first connection is open.
    let mut second = TcpStream::connect(levee.proxy_addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(early.is_err(), "the second connection waits");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(3), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    levee.shutdown().await;
}
