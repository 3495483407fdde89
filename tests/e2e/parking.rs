//! Idle HTTP/1 connections parked in their worker's lot: served again on
//! their next request, closed at `idle_timeout` or by a drain, counted
//! under `max_connections` while parked.

use std::time::Duration;

use levee_testkit::Behavior;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::hygiene::{read_response, READ_LIMIT};

/// Comfortably longer than levee's `PARK_AFTER` (100 ms): the connection
/// has parked by then.
const PARKED: Duration = Duration::from_millis(400);

fn with_server(extra: &str) -> String {
    ONE_ROUTE.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{extra}"),
    )
}

/// Sends a GET and reads its answer, as soon as it is whole.
async fn get_kept_alive(stream: &mut TcpStream, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_statuses(stream, 1).await, [200], "{path}");
}

/// Reads `n` responses framed by Content-Length, returning as soon as the
/// last is whole (no wait for a close), with their statuses.
async fn read_statuses(stream: &mut TcpStream, n: usize) -> Vec<u16> {
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    let read = tokio::time::timeout(READ_LIMIT, async {
        let mut chunk = [0u8; 4096];
        while statuses.len() < n {
            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
            let whole = head_end.and_then(|end| {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                (buf.len() >= end + 4 + len).then(|| (head[9..12].parse().unwrap(), end + 4 + len))
            });
            if let Some((status, used)) = whole {
                statuses.push(status);
                buf.drain(..used);
                continue;
            }
            let got = stream.read(&mut chunk).await.unwrap();
            assert!(
                got > 0,
                "closed after {statuses:?}: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..got]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "{n} answers within the read limit, got {statuses:?}"
    );
    statuses
}

/// Reads until levee closes; true if it did within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(limit, stream.read_to_end(&mut rest)).await,
        Ok(Ok(_) | Err(_))
    )
}

/// A keep-alive connection idle past the park is served again on its next
/// request, as often as it parks, and stays one connection.
#[tokio::test]
async fn a_parked_connection_is_served_again_on_its_next_request() {
    let app = node(Behavior::Healthy { body_bytes: 3 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let mut s = TcpStream::connect(levee.proxy_addr).await.unwrap();
    for i in 0..3 {
        get_kept_alive(&mut s, &format!("/{i}")).await;
        tokio::time::sleep(PARKED).await;
        assert_eq!(levee.telemetry.connections_open(), 1);
    }
    get_kept_alive(&mut s, "/last").await;
    assert_eq!(app.recorded().len(), 4);
    levee.shutdown().await;
}

/// Requests sent around the moment the connection parks (just before,
/// during, just after `PARK_AFTER`) are all answered.
#[tokio::test]
async fn requests_arriving_while_the_connection_parks_are_answered() {
    let app = node(Behavior::Healthy { body_bytes: 3 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let mut s = TcpStream::connect(levee.proxy_addr).await.unwrap();
    get_kept_alive(&mut s, "/first").await;
    for pause_ms in (80..=140).step_by(5) {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        // Two pipelined requests: the second arrives with the first.
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_statuses(&mut s, 2).await,
            [200, 200],
            "after {pause_ms} ms"
        );
    }
    assert_eq!(levee.telemetry.connections_open(), 1);
    levee.shutdown().await;
}

/// A parked connection closes `idle_timeout` after its last request, not
/// its first.
#[tokio::test]
async fn idle_timeout_closes_a_parked_connection_after_its_last_request() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(&with_server("idle_timeout = \"2s\""), &[&[app.addr()]]).await;
    let mut s = TcpStream::connect(levee.proxy_addr).await.unwrap();
    get_kept_alive(&mut s, "/one").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let last = tokio::time::Instant::now();
    get_kept_alive(&mut s, "/two").await;
    assert!(
        closed_within(&mut s, Duration::from_secs(8)).await,
        "closed"
    );
    let after = last.elapsed();
    assert!(
        after >= Duration::from_millis(1900),
        "idle_timeout counts from the last request: {after:?}"
    );
    assert!(
        eventually(Duration::from_secs(2), || levee
            .telemetry
            .connections_open()
            == 0)
        .await
    );
    levee.shutdown().await;
}

/// A parked connection keeps its place under `max_connections`: the next
/// client waits in the backlog until it closes.
#[tokio::test]
async fn a_parked_connection_counts_under_max_connections() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(&with_server("max_connections = 1"), &[&[app.addr()]]).await;
    let mut first = TcpStream::connect(levee.proxy_addr).await.unwrap();
    get_kept_alive(&mut first, "/first").await;
    tokio::time::sleep(PARKED).await;

    let mut second = TcpStream::connect(levee.proxy_addr).await.unwrap();
    second
        .write_all(b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut byte)).await;
    assert!(early.is_err(), "the second connection waits");
    assert_eq!(levee.telemetry.connections_open(), 1);

    drop(first);
    assert_eq!(read_statuses(&mut second, 1).await, [200]);
    levee.shutdown().await;
}

/// A drain closes a parked connection at once, and answers one whose
/// client had just sent a request, then closes it.
#[tokio::test]
async fn a_drain_closes_parked_connections_and_answers_those_that_sent() {
    let app = node(Behavior::Healthy { body_bytes: 2 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let mut idle = TcpStream::connect(levee.proxy_addr).await.unwrap();
    let mut sending = TcpStream::connect(levee.proxy_addr).await.unwrap();
    get_kept_alive(&mut idle, "/idle").await;
    get_kept_alive(&mut sending, "/sending").await;
    tokio::time::sleep(PARKED).await;

    sending
        .write_all(b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(levee.shutdown());
    assert!(
        closed_within(&mut idle, READ_LIMIT).await,
        "the parked connection is closed"
    );
    let got = read_response(&mut sending, &mut Vec::new()).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        closed_within(&mut sending, READ_LIMIT).await,
        "closed after its answer"
    );
    let left = tokio::time::timeout(READ_LIMIT, stopping)
        .await
        .expect("the drain ends")
        .unwrap();
    assert_eq!(left, 0, "every connection drained");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
