//! Graceful shutdown: in-flight requests finish, new connections are refused.

use std::time::Duration;

use http::StatusCode;
use levee_testkit::Behavior;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::hygiene::{read_response, READ_LIMIT};

#[tokio::test]
async fn in_flight_requests_finish_and_new_connections_are_refused() {
    let app = node(Behavior::Slow {
        delay: Duration::from_millis(500),
        body_bytes: 1000,
    })
    .await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let addr = levee.proxy_addr;
    let client = client();
    let inflight = {
        let client = client.clone();
        let u = url(&levee, "/slow");
        tokio::spawn(async move { get(&client, &u).await })
    };
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 1).await);
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(levee.shutdown());

    let got = inflight.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), 1000);
    let left = stopping.await.unwrap();
    assert_eq!(left, 0, "every connection drained");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let app = node(Behavior::Stuck).await;
    let cfg = ONE_ROUTE
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nshutdown_grace = \"300ms\"",
        )
        .replace("timeout = \"2s\"", "timeout = \"30s\"");
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let client = client();
    let u = url(&levee, "/");
    let _hung = tokio::spawn(async move { client.request(request(http::Method::GET, &u)).await });
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 1).await);
    let started = tokio::time::Instant::now();
    let left = levee.shutdown().await;
    assert_eq!(left, 1, "the stuck connection outlived the grace period");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A drain closes an idle keep-alive connection at once; a client that had
/// begun sending a head (its first, or one after others) gets to finish it
/// and is answered with `Connection: close` rather than cut.
#[tokio::test]
async fn a_head_under_way_when_a_drain_starts_is_answered_and_idle_connections_close() {
    let app = node(Behavior::Healthy { body_bytes: 2 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let addr = levee.proxy_addr;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut again = TcpStream::connect(addr).await.unwrap();
    for stream in [&mut idle, &mut again] {
        stream
            .write_all(b"GET /a HTTP/1.1\r\nHost: a.example\r\n\r\n")
            .await
            .unwrap();
        let got = read_response(stream, &mut Vec::new()).await;
        assert_eq!(got.status, 200, "{got:?}");
        assert!(!got.closed, "kept alive: {got:?}");
    }
    again
        .write_all(b"GET /b HTTP/1.1\r\nHost: a.exa")
        .await
        .unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(b"GET /c HTT").await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || levee
            .telemetry
            .connections_open()
            == 3)
        .await
    );

    let stopping = tokio::spawn(levee.shutdown());
    // The idle connection closes first: the drain has begun.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(READ_LIMIT, idle.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the idle connection is closed: {read:?}"
    );
    again.write_all(b"mple\r\n\r\n").await.unwrap();
    first
        .write_all(b"P/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    for (stream, what) in [(&mut again, "a later head"), (&mut first, "a first head")] {
        let got = read_response(stream, &mut Vec::new()).await;
        assert_eq!(got.status, 200, "{what}: {got:?}");
        assert_eq!(got.header("connection"), Some("close"), "{what}: {got:?}");
        assert!(got.closed, "{what}: closed after its answer: {got:?}");
    }
    let left = tokio::time::timeout(READ_LIMIT, stopping)
        .await
        .expect("the drain ends")
        .unwrap();
    assert_eq!(left, 0, "every connection drained");
    let mut paths: Vec<String> = app
        .recorded()
        .iter()
        .map(|r| r.uri.path().to_owned())
        .collect();
    paths.sort();
    assert_eq!(paths, ["/a", "/a", "/b", "/c"]);
}
