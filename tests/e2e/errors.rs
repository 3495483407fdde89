//! Every error levee answers itself: status, x-levee-error, body, Retry-After.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use levee_testkit::Behavior;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

fn assert_error(got: &Got, status: StatusCode, reason: &str) {
    assert_eq!(got.status, status, "{got:?}");
    assert_eq!(got.reason(), Some(reason), "{got:?}");
    let body = std::str::from_utf8(&got.body).unwrap();
    assert!(body.contains(reason), "body says the reason: {body}");
    assert!(got.headers.contains_key("x-request-id"));
    assert_eq!(
        got.headers.contains_key("retry-after"),
        status == StatusCode::SERVICE_UNAVAILABLE,
        "Retry-After on 503 only"
    );
}

const ROUTED: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "300ms"
timeout = "400ms"
max_in_flight = 8
max_queue = 0
queue_timeout = "50ms"

[[route]]
name = "api"
path_prefix = "/api/"
host = "api.example.com"
backend = "app"
"#;

#[tokio::test]
async fn no_route_is_404() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(ROUTED, &[&[app.addr()]]).await;
    let client = client();
    assert_error(
        &get(&client, &url(&levee, "/other")).await,
        StatusCode::NOT_FOUND,
        "no-route",
    );
    // Right path, wrong host.
    let got = get(&client, &url(&levee, "/api/x")).await;
    assert_error(&got, StatusCode::NOT_FOUND, "no-route");
    let req = Request::builder()
        .uri(url(&levee, "/api/x"))
        .header("host", "API.example.com:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        send(&client, req, Duration::from_secs(5)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.stats().requests,
        1,
        "unrouted requests never reach a node"
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn stuck_node_is_504_deadline_within_its_bound() {
    let app = node(Behavior::Stuck).await;
    let levee = start_levee(
        ONE_ROUTE
            .replace("timeout = \"2s\"", "timeout = \"300ms\"")
            .as_str(),
        &[&[app.addr()]],
    )
    .await;
    let got = get(&client(), &url(&levee, "/slow")).await;
    assert_error(&got, StatusCode::GATEWAY_TIMEOUT, "deadline");
    assert!(
        got.elapsed >= Duration::from_millis(280),
        "{:?}",
        got.elapsed
    );
    assert!(got.elapsed < Duration::from_secs(2), "{:?}", got.elapsed);
    assert!(
        eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await,
        "slot freed"
    );
    // The node connection that timed out is dropped, not put back in the pool.
    assert!(
        eventually(Duration::from_secs(3), || app.stats().open_connections == 0).await,
        "open node connections: {}",
        app.stats().open_connections
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn refused_connection_is_502_upstream_connect() {
    let app = node(Behavior::Refuse).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let got = get(&client(), &url(&levee, "/")).await;
    assert_error(&got, StatusCode::BAD_GATEWAY, "upstream-connect");
    levee.shutdown().await;
}

#[tokio::test]
async fn reset_before_headers_is_502_upstream_reset() {
    let app = node(Behavior::ResetMidHeaders).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let got = get(&client(), &url(&levee, "/")).await;
    assert_error(&got, StatusCode::BAD_GATEWAY, "upstream-reset");
    levee.shutdown().await;
}

#[tokio::test]
async fn reset_mid_body_cuts_the_client_connection() {
    let app = node(Behavior::ResetMidBody {
        total_bytes: 100_000,
        after_bytes: 10_000,
    })
    .await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let resp = client()
        .request(request(Method::GET, &url(&levee, "/")))
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "headers were already on their way"
    );
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(
        body.is_err(),
        "the client sees a cut body, not a short success"
    );
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await);
    let topo = levee.telemetry.topology();
    let route = &topo.routes[0];
    assert!(
        eventually(Duration::from_secs(2), || route
            .outcomes
            .reason(levee_telemetry::ErrorReason::UpstreamReset)
            == 1)
        .await
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(
        &ONE_ROUTE.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nmax_header_bytes = 4096",
        ),
        &[&[app.addr()]],
    )
    .await;
    let req = Request::builder()
        .uri(url(&levee, "/"))
        .header("x-big", "a".repeat(6000))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = send(&client(), req, Duration::from_secs(5)).await;
    assert_error(
        &got,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header-too-large",
    );
    assert_eq!(app.stats().requests, 0);
    levee.shutdown().await;
}

#[tokio::test]
async fn malformed_request_is_400_and_other_connections_are_unaffected() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let client = client();
    // A good keep-alive connection first.
    assert_eq!(get(&client, &url(&levee, "/")).await.status, StatusCode::OK);

    let mut raw = TcpStream::connect(levee.proxy_addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    let mut raw = TcpStream::connect(levee.proxy_addr).await.unwrap();
    raw.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.contains("x-levee-error: unsupported"), "{text}");

    assert_eq!(get(&client, &url(&levee, "/")).await.status, StatusCode::OK);
    levee.shutdown().await;
}

#[tokio::test]
async fn the_node_s_own_500_passes_through_without_a_levee_reason() {
    let app = node(Behavior::Status {
        code: 500,
        share: 1.0,
        methods: None,
    })
    .await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let got = get(&client(), &url(&levee, "/")).await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(got.reason(), None);
    levee.shutdown().await;
}
