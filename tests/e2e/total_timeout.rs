//! `total_timeout`: a deadline from a request's arrival to its last
//! response byte. Before the headers it is a 504 `deadline`; after, the
//! response is cut where the client can see it, and the slots are freed.

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt as _;
use levee_telemetry::ErrorReason;
use levee_testkit::Behavior;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// `ONE_ROUTE` with `total_timeout` on the route (`None`: not set).
fn config(total: Option<&str>) -> String {
    match total {
        Some(t) => ONE_ROUTE.replace(
            "backend = \"app\"\n",
            &format!("backend = \"app\"\ntotal_timeout = \"{t}\"\n"),
        ),
        None => ONE_ROUTE.to_owned(),
    }
}

/// One byte every 150 ms for 40 bytes (6 s), with a Content-Length of 40.
fn dripping() -> Behavior {
    Behavior::Drip {
        chunks: 40,
        chunk_bytes: 1,
        interval: Duration::from_millis(150),
    }
}

/// Sends a GET over a raw HTTP/1.1 connection and reads until levee closes
/// it: what arrived and when the close came.
async fn raw_get(levee: &levee::Levee) -> (String, Duration) {
    let mut s = TcpStream::connect(levee.proxy_addr).await.unwrap();
    let started = tokio::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "levee closed the connection within 10 s");
    (
        String::from_utf8_lossy(&buf).into_owned(),
        started.elapsed(),
    )
}

/// The route's in-flight count on `/status`.
async fn route_in_flight(levee: &levee::Levee) -> u64 {
    let status = status_json(&client(), levee).await;
    status["backends"][0]["in_flight"].as_u64().unwrap()
}

#[tokio::test]
async fn a_dripping_body_is_cut_at_total_timeout_and_the_http1_connection_closed() {
    let app = node(dripping()).await;
    let levee = start_levee(&config(Some("1s")), &[&[app.addr()]]).await;
    let (text, took) = raw_get(&levee).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 40"),
        "{text}"
    );
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(body.len() < 40, "a short body: {} bytes", body.len());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut at about 1 s: {took:?}"
    );
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await);
    assert_eq!(
        route_in_flight(&levee).await,
        0,
        "/status in flight back to 0"
    );
    let topo = levee.telemetry.topology();
    assert_eq!(
        topo.routes[0].outcomes.reason(ErrorReason::Deadline),
        1,
        "counted on the route"
    );
    assert_eq!(
        topo.backends[0].nodes[0]
            .stats
            .outcomes
            .reason(ErrorReason::Deadline),
        1,
        "and on the node"
    );
    assert!(
        eventually(Duration::from_secs(3), || app.stats().open_connections == 0).await,
        "the node connection is dropped, not pooled"
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn a_dripping_body_is_cut_at_total_timeout_by_an_http2_stream_reset() {
    let app = node(dripping()).await;
    let levee = start_levee(&config(Some("1s")), &[&[app.addr()]]).await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let started = tokio::time::Instant::now();
    let resp = h2
        .request(request(http::Method::GET, &url(&levee, "/")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the body ends within 10 s");
    assert!(body.is_err(), "the client sees the stream cut");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The stream was reset, not the connection: it serves the next request.
    app.set_behavior(Behavior::Healthy { body_bytes: 3 })
        .await
        .unwrap();
    let got = get(&h2, &url(&levee, "/")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body.len(), 3);
    assert_eq!(levee.telemetry.connections_total(), 1, "same connection");
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await);
    levee.shutdown().await;
}

#[tokio::test]
async fn slow_headers_past_total_timeout_get_504_deadline() {
    let app = node(Behavior::Slow {
        delay: Duration::from_secs(4),
        body_bytes: 2,
    })
    .await;
    // The header deadline (`timeout`) is 2 s; total_timeout is shorter.
    let levee = start_levee(&config(Some("700ms")), &[&[app.addr()]]).await;
    let got = get(&client(), &url(&levee, "/")).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(got.reason(), Some("deadline"));
    assert!(
        got.elapsed >= Duration::from_millis(600) && got.elapsed < Duration::from_millis(1900),
        "the earlier deadline: {:?}",
        got.elapsed
    );
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await);
    levee.shutdown().await;
}

#[tokio::test]
async fn a_reload_sets_total_timeout() {
    let app = node(Behavior::Drip {
        chunks: 10,
        chunk_bytes: 1,
        interval: Duration::from_millis(150),
    })
    .await;
    let mut levee = start_levee(&config(None), &[&[app.addr()]]).await;
    let got = send(
        &client(),
        request(http::Method::GET, &url(&levee, "/")),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        got.body.len(),
        10,
        "without total_timeout the drip completes"
    );

    levee
        .reload(test_config(&config(Some("500ms")), &[&[app.addr()]]))
        .await
        .unwrap();
    let (text, took) = raw_get(&levee).await;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(body.len() < 10, "now cut: {text}");
    assert!(took < Duration::from_millis(1400), "{took:?}");
    levee.shutdown().await;
}

/// A node that answers every request with a chunked body of one-byte
/// chunks, one every 150 ms, for 6 s.
async fn chunked_dripper() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..40 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    if s.write_all(b"1\r\nx\r\n").await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_cut_chunked_body_ends_without_its_last_chunk() {
    let node = chunked_dripper().await;
    let levee = start_levee(&config(Some("1s")), &[&[node]]).await;
    let (text, took) = raw_get(&levee).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    assert!(
        text.contains("1\r\nx\r\n"),
        "some chunks went through: {text}"
    );
    assert!(!text.ends_with("0\r\n\r\n"), "no final chunk: {text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    levee.shutdown().await;
}
