//! Graceful shutdown: in-flight requests finish, new connections are refused.

use std::time::Duration;

use http::StatusCode;
use levee_testkit::Behavior;

use crate::common::*;

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
