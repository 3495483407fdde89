#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Duration;

use levee_telemetry::{Telemetry, Topology};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

fn shared() -> Arc<Shared> {
    let state = crate::stack::testing::state(
        "[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:1\"]\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
    );
    Arc::new(Shared::new(state, Telemetry::new(Topology::default(), 1)))
}

/// A gate over one end of a pipe; the test writes as the client.
fn new_gate() -> (Gate<DuplexStream>, DuplexStream, Arc<ConnActivity>) {
    let (client, server) = duplex(64 * 1024);
    let activity = Arc::new(ConnActivity::new());
    (
        Gate::new(
            server,
            shared(),
            Arc::clone(&activity),
            "127.0.0.1:40000".parse().unwrap(),
        ),
        client,
        activity,
    )
}

/// What hyper would read, in reads of at most `chunk` bytes, until it
/// would wait (or the end of the stream).
async fn read_now(gate: &mut Gate<DuplexStream>, chunk: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        match tokio::time::timeout(Duration::from_millis(50), gate.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn heads_pass_whole_only_and_in_pieces_of_any_size() {
    let (mut gate, mut client, _) = new_gate();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a")
        .await
        .unwrap();
    assert!(read_now(&mut gate, 24).await.unwrap().is_empty());
    assert!(!gate.held.is_empty(), "the partial head is held");
    client
        .write_all(b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET")
        .await
        .unwrap();
    let got = read_now(&mut gate, 24).await.unwrap();
    assert_eq!(
        got,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    );
    assert_eq!(gate.heads, 2);
}

#[tokio::test(start_paused = true)]
async fn an_idle_gate_holds_no_buffer() {
    let (mut gate, mut client, _) = new_gate();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_now(&mut gate, 8192).await.unwrap().len(), 18);
    assert_eq!(gate.held.capacity(), 0);
    client.write_all(b"GET / HT").await.unwrap();
    assert!(read_now(&mut gate, 8192).await.unwrap().is_empty());
    client.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_now(&mut gate, 8192).await.unwrap().len(), 18);
    assert_eq!(gate.held.capacity(), 0, "freed once given to hyper");
}

#[tokio::test(start_paused = true)]
async fn the_http2_preface_switches_to_passthrough() {
    let (mut gate, mut client, _) = new_gate();
    client.write_all(&H2_PREFACE[..10]).await.unwrap();
    assert!(read_now(&mut gate, 24).await.unwrap().is_empty());
    client.write_all(&H2_PREFACE[10..]).await.unwrap();
    client.write_all(b"\0\0\x12\x04garbage\n").await.unwrap();
    let got = read_now(&mut gate, 8192).await.unwrap();
    assert_eq!(&got[..24], H2_PREFACE);
    assert_eq!(&got[24..], b"\0\0\x12\x04garbage\n");
}

#[tokio::test(start_paused = true)]
async fn a_bad_head_waits_for_earlier_responses_then_is_answered_at_shutdown() {
    let (mut gate, mut client, activity) = new_gate();
    client
        .write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nBad Name: 1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_now(&mut gate, 8192).await.unwrap().len(), 18);
    // The first request is in flight: the bad head is held, no end of stream.
    let guard = activity.begin();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(1), gate.read(&mut buf)).await;
    assert!(read.is_err(), "waits while a response is under way");
    drop(guard);
    assert_eq!(
        gate.read(&mut buf).await.unwrap(),
        0,
        "then the end of the stream"
    );
    gate.shutdown().await.unwrap();
    drop(gate);
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nx-levee-error: bad-request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n400 bad-request: the request is malformed\n"),
        "{answer}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bad_chunked_body_fails_the_read_with_its_violation() {
    let (mut gate, mut client, _) = new_gate();
    client
        .write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nxyz")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let err = loop {
        match gate.read(&mut buf).await {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert!(got.ends_with(b"2\r\nxy"), "valid bytes pass first");
    let inner = err.get_ref().unwrap();
    assert_eq!(Violation::find(inner), Some(Violation::MissingChunkCrlf));
    assert_eq!(Violation::find(&err), Some(Violation::MissingChunkCrlf));
}

#[tokio::test(start_paused = true)]
async fn bytes_after_an_upgrade_request_wait_for_its_fate() {
    // Not upgraded: its response ends, and what follows is checked.
    let (mut gate, mut client, activity) = new_gate();
    client
        .write_all(b"GET / HTTP/1.1\r\nUpgrade: x\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_now(&mut gate, 8192).await.unwrap().len(), 30);
    let guard = activity.begin();
    assert!(read_now(&mut gate, 8192).await.unwrap().is_empty());
    drop(guard);
    assert_eq!(read_now(&mut gate, 8192).await.unwrap().len(), 18);

    // Upgraded: anything passes from then on.
    let (mut gate, mut client, activity) = new_gate();
    client
        .write_all(b"GET / HTTP/1.1\r\nUpgrade: x\r\n\r\n\x00\x01 not http\n")
        .await
        .unwrap();
    assert_eq!(read_now(&mut gate, 8192).await.unwrap().len(), 30);
    let guard = activity.begin();
    let _hold = crate::activity::Upgrading::new(Arc::clone(&activity)).hold_tunnel();
    drop(guard);
    assert_eq!(
        read_now(&mut gate, 8192).await.unwrap(),
        b"\x00\x01 not http\n"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_in_pieces_is_cut_at_header_read_timeout() {
    let (mut gate, mut client, _) = new_gate();
    let timeout = gate.head_timeout;
    assert!(timeout > Duration::ZERO);
    client
        .write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let err = gate.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), timeout);
}

/// A client gone before levee's answer to its refused head still gets its
/// access log line, marked incomplete, with no body bytes sent.
#[tokio::test]
async fn a_refused_head_is_logged_even_when_its_answer_never_went_out() {
    let dir = std::env::temp_dir().join(format!("levee-gate-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("access.log");
    let config = levee_config::parse(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:1\"]\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
        "test.toml",
    )
    .unwrap();
    let mut state = crate::ProxyState::build(Arc::new(config), 1, None);
    state.access_log = crate::access_log::AccessLog::open(
        &levee_config::AccessTarget::File(path.clone()),
        Arc::default(),
    )
    .unwrap();
    let shared = Arc::new(Shared::new(
        Arc::new(state),
        Telemetry::new(Topology::default(), 1),
    ));
    let (mut client, server) = duplex(64 * 1024);
    let mut gate = Gate::new(
        server,
        shared,
        Arc::new(ConnActivity::new()),
        "127.0.0.1:40000".parse().unwrap(),
    );
    client
        .write_all(b"DELETE /x?y HTTP/1.1\r\nBad Name: 1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(gate.read(&mut buf).await.unwrap(), 0, "refused");
    // The connection ends without hyper's shutdown: nothing was answered.
    drop(gate);

    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(line["status"], 400, "{line}");
    assert_eq!(line["error"], "bad-request");
    assert_eq!(line["client"], "127.0.0.1:40000");
    assert_eq!(line["method"], "DELETE");
    assert_eq!(line["path"], "/x");
    assert_eq!(line["bytes_out"], 0);
    assert_eq!(line["complete"], false);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_ends_hyper_stream_once_its_responses_are_out() {
    let (gate, mut client, activity) = new_gate();
    let mut gate = gate.park_when_idle();
    client
        .write_all(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_now(&mut gate, 8192).await.unwrap(),
        b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        "pipelined requests pass to the same hyper connection"
    );
    let first = activity.begin();
    let second = activity.begin();
    drop(first);
    gate.flush().await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(1), gate.read(&mut buf)).await;
    assert!(read.is_err(), "waits while a response is under way");
    drop(second);
    let read = tokio::time::timeout(Duration::from_secs(1), gate.read(&mut buf)).await;
    assert!(
        read.is_err(),
        "waits until the last response is written out"
    );
    // Written out, and idle for longer than PARK_AFTER: hyper reads an end
    // of stream that parks.
    gate.flush().await.unwrap();
    assert_eq!(gate.read(&mut buf).await.unwrap(), 0);
    assert!(gate.parked());
    assert!(gate.timer.is_none(), "a parked gate holds no timer");
    // hyper's shutdown then leaves the socket open.
    gate.shutdown().await.unwrap();
    gate.write_all(b"still open").await.unwrap();
    let mut got = [0u8; 10];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"still open");
    gate.resume();
    assert!(!gate.parked());
    assert_eq!(gate.held.capacity(), 0, "nothing held between requests");
}

#[tokio::test(start_paused = true)]
async fn a_request_within_park_after_keeps_hyper_connection() {
    let (gate, mut client, activity) = new_gate();
    let mut gate = gate.park_when_idle();
    client.write_all(b"GET /1 HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_now(&mut gate, 8192).await.unwrap().len(), 19);
    drop(activity.begin());
    gate.flush().await.unwrap();
    tokio::time::sleep(PARK_AFTER / 2).await;
    client.write_all(b"GET /2 HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        gate.read(&mut buf).await.unwrap(),
        19,
        "not an end of stream"
    );
    drop(activity.begin());
    gate.flush().await.unwrap();
    let idle = tokio::time::Instant::now();
    assert_eq!(gate.read(&mut buf).await.unwrap(), 0);
    assert_eq!(idle.elapsed(), PARK_AFTER, "parks once idle for PARK_AFTER");
    assert!(gate.parked());
}

#[tokio::test(start_paused = true)]
async fn the_first_bytes_tell_the_protocol_and_stay_for_hyper() {
    let (mut gate, mut client, _) = new_gate();
    client.write_all(&H2_PREFACE[..10]).await.unwrap();
    let polled = tokio::time::timeout(
        Duration::from_secs(1),
        std::future::poll_fn(|cx| gate.poll_protocol(cx)),
    )
    .await;
    assert!(polled.is_err(), "a part of the preface does not tell");
    client.write_all(&H2_PREFACE[10..]).await.unwrap();
    let protocol = std::future::poll_fn(|cx| gate.poll_protocol(cx)).await;
    assert_eq!(protocol.unwrap(), Protocol::Http2);
    assert_eq!(read_now(&mut gate, 8192).await.unwrap(), H2_PREFACE);

    let (mut gate, mut client, _) = new_gate();
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let protocol = std::future::poll_fn(|cx| gate.poll_protocol(cx)).await;
    assert_eq!(protocol.unwrap(), Protocol::Http1);
    assert_eq!(
        read_now(&mut gate, 8192).await.unwrap(),
        b"GET / HTTP/1.1\r\n\r\n"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_connection_is_looked_at_again_only_every_park_recheck() {
    let (gate, mut client, activity) = new_gate();
    let mut gate = gate.park_when_idle();
    client.write_all(b"GET /1 HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(read_now(&mut gate, 8192).await.unwrap().len(), 19);
    drop(activity.begin());
    gate.flush().await.unwrap();
    let mut buf = [0u8; 64];
    // The park timer is armed for PARK_AFTER; another request ends before
    // it fires.
    let read = tokio::time::timeout(PARK_AFTER / 2, gate.read(&mut buf)).await;
    assert!(read.is_err(), "not idle for PARK_AFTER yet");
    drop(activity.begin());
    let idle = tokio::time::Instant::now();
    assert_eq!(gate.read(&mut buf).await.unwrap(), 0);
    assert_eq!(
        idle.elapsed(),
        PARK_RECHECK + PARK_AFTER / 2,
        "the timer fired at PARK_AFTER, found the connection busy, and looked again PARK_RECHECK later"
    );
    assert!(gate.parked());
}
