//! The gate: malformed request heads and bodies (RFC 9112 §2-§7) are
//! levee's answers with a reason, the connection closes, and the node never
//! gets them. Every case is raw bytes on a `TcpStream`.

use std::time::Duration;

use levee_telemetry::ErrorReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::hygiene::{
    assert_nothing_forwarded, assert_refused, exchange, healthy, read_response, Raw, READ_LIMIT,
};

/// Asserts levee's own answer, and that it closed the connection.
fn assert_refused_and_closed(got: &Raw, status: u16, reason: &str, what: &str) {
    assert_refused(got, status, reason, what);
    assert!(got.closed, "{what}: the connection closes: {got:?}");
    assert_eq!(got.header("connection"), Some("close"), "{what}: {got:?}");
}

/// Reads a `100 Continue` interim response.
async fn read_continue(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    tokio::time::timeout(READ_LIMIT, async {
        while buf.len() < CONTINUE.len() {
            let mut chunk = [0u8; 256];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before 100 Continue");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("100 Continue within the read limit");
    assert_eq!(&buf[..CONTINUE.len()], CONTINUE);
    buf.drain(..CONTINUE.len());
}

/// Malformed heads: 400 `bad-request`, nothing forwarded.
const BAD_HEADS: &[(&str, &[u8])] = &[
    ("bare LF everywhere", b"GET /x HTTP/1.1\nHost: a.example\n\n"),
    (
        "bare LF on one line",
        b"GET /x HTTP/1.1\r\nHost: a.example\nX-A: 1\r\n\r\n",
    ),
    (
        "obs-fold",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\n  more\r\n\r\n",
    ),
    (
        "NUL in a value",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-A: a\0b\r\n\r\n",
    ),
    (
        "CR in a value",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-A: a\rb\r\n\r\n",
    ),
    (
        "space before the colon",
        b"GET /x HTTP/1.1\r\nHost : a.example\r\n\r\n",
    ),
    (
        "tab before the colon",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-A\t: 1\r\n\r\n",
    ),
    (
        "invalid field name",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nX(A): 1\r\n\r\n",
    ),
    (
        "empty field name",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\n: 1\r\n\r\n",
    ),
    (
        "no colon",
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-A 1\r\n\r\n",
    ),
    ("two spaces", b"GET  /x HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("HTTP/1.2", b"GET /x HTTP/1.2\r\nHost: a.example\r\n\r\n"),
    ("lowercase version", b"GET /x http/1.1\r\nHost: a.example\r\n\r\n"),
    ("bad method", b"G(T /x HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("space in target", b"GET /x y HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    ("raw byte in target", b"GET /\xff HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    (
        "Transfer-Encoding on HTTP/1.0",
        b"POST /x HTTP/1.0\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "Content-Length with Transfer-Encoding",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "two identical Content-Length",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
    ),
    (
        "two different Content-Length",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
    ),
    (
        "a Content-Length list",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2, 2\r\n\r\nab",
    ),
    (
        "a signed Content-Length",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: +2\r\n\r\nab",
    ),
    (
        "a negative Content-Length",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: -1\r\n\r\n",
    ),
    (
        "a Content-Length that is not digits",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0x2\r\n\r\nab",
    ),
    (
        "an empty Content-Length",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: \r\n\r\n",
    ),
    (
        "a Content-Length over 64 bits",
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 18446744073709551616\r\n\r\nab",
    ),
];

#[tokio::test]
async fn malformed_heads_are_400_and_never_reach_the_node() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    for (what, bytes) in BAD_HEADS {
        let got = exchange(&levee, bytes).await;
        assert_refused_and_closed(&got, 400, "bad-request", what);
    }
    assert_nothing_forwarded(&app, "malformed heads");
    let unrouted = &levee.telemetry.topology().unrouted;
    assert_eq!(
        unrouted.reason(ErrorReason::BadRequest),
        BAD_HEADS.len() as u64
    );
    // The connection and the gate still serve a valid request.
    let got = exchange(&levee, b"GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(got.status, 200, "{got:?}");
    levee.shutdown().await;
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_501() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "gzip",
            b"POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
        (
            "gzip, chunked",
            b"POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked, chunked",
            b"POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "two lines",
            b"POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "empty",
            b"POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: \r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let got = exchange(&levee, bytes).await;
        assert_refused_and_closed(&got, 501, "unsupported-transfer-encoding", what);
    }
    assert_nothing_forwarded(&app, "transfer codings");
    let unrouted = &levee.telemetry.topology().unrouted;
    assert_eq!(
        unrouted.reason(ErrorReason::UnsupportedTransferEncoding),
        cases.len() as u64
    );
    let metrics = metrics_text(&client(), &levee).await;
    assert!(
        metrics.contains(&format!(
            "levee_errors_total{{route=\"\",backend=\"\",reason=\"unsupported-transfer-encoding\"}} {}",
            cases.len()
        )),
        "{metrics}"
    );
    // `chunked`, in any case, is the one coding.
    let got = exchange(
        &levee,
        b"POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: ChunKed\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    levee.shutdown().await;
}

#[tokio::test]
async fn a_head_over_the_limits_is_answered_by_the_gate() {
    let app = healthy().await;
    let cfg = crate::hygiene::with_server_keys(ONE_ROUTE, "max_header_bytes = 2048");
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let head = format!(
        "GET /x HTTP/1.1\r\nHost: a.example\r\nX-Big: {}\r\n\r\n",
        "v".repeat(3000)
    );
    let got = exchange(&levee, head.as_bytes()).await;
    assert_refused_and_closed(&got, 431, "header-too-large", "3 KiB head");
    // A head that never ends is cut at the limit, not waited for.
    let mut stream = TcpStream::connect(levee.proxy_addr).await.unwrap();
    stream
        .write_all(format!("GET /x HTTP/1.1\r\nX-Big: {}", "v".repeat(4000)).as_bytes())
        .await
        .unwrap();
    let got = read_response(&mut stream, &mut Vec::new()).await;
    assert_refused_and_closed(&got, 431, "header-too-large", "unfinished head");
    assert_nothing_forwarded(&app, "heads over the limits");
    levee.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_before_a_bad_one_get_their_responses_first() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let mut stream = TcpStream::connect(levee.proxy_addr).await.unwrap();
    stream
        .write_all(
            b"GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n\
              POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc\
              GET /x HTTP/1.1\r\nHost : a.example\r\n\r\n\
              GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n",
        )
        .await
        .unwrap();
    // levee closes after the refusal: everything it answered, in order.
    let mut all = Vec::new();
    tokio::time::timeout(READ_LIMIT, stream.read_to_end(&mut all))
        .await
        .expect("levee closes the connection")
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    let statuses: Vec<&str> = all
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &all[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{all}");
    assert!(all.contains("x-levee-error: bad-request"), "{all}");
    assert_eq!(app.recorded().len(), 2, "only the two valid ones");
    assert_eq!(app.stats().body_bytes_received, 3);
    levee.shutdown().await;
}

#[tokio::test]
async fn keep_alive_and_expect_continue_pass_the_gate() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let mut stream = TcpStream::connect(levee.proxy_addr).await.unwrap();
    let mut buf = Vec::new();
    // Leading empty lines are skipped (RFC 9112 §2.2).
    stream
        .write_all(b"\r\nGET /x HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let got = read_response(&mut stream, &mut buf).await;
    assert_eq!(got.status, 200, "{got:?}");
    stream
        .write_all(
            b"POST /x HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        )
        .await
        .unwrap();
    read_continue(&mut stream, &mut buf).await;
    stream.write_all(b"abcd").await.unwrap();
    let got = read_response(&mut stream, &mut buf).await;
    assert_eq!(got.status, 200, "{got:?}");
    // A head written a byte at a time.
    for b in b"GET /x HTTP/1.1\r\nHost: a.example\r\nX-A: 1\r\n\r\n" {
        stream.write_all(&[*b]).await.unwrap();
    }
    let got = read_response(&mut stream, &mut buf).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(!got.closed);
    assert_eq!(app.recorded().len(), 3);
    assert_eq!(app.stats().body_bytes_received, 4);
    levee.shutdown().await;
}

/// `config` (with one `[[backend]]`) with the backend's `buffer_bytes`.
pub(crate) fn with_buffer_bytes(config: &str, bytes: usize) -> String {
    config.replace(
        "[[route]]",
        &format!("[backend.retry]\nbuffer_bytes = {bytes}\n\n[[route]]"),
    )
}

const CHUNKED_HEAD: &[u8] =
    b"POST /x HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Chunked bodies whose framing is invalid.
const BAD_BODIES: &[(&str, &[u8])] = &[
    ("a size that is not hex", b"5\r\nhello\r\nzz\r\n"),
    ("a signed size", b"-5\r\nhello\r\n0\r\n\r\n"),
    (
        "a size over 64 bits",
        b"10000000000000000\r\nhello\r\n0\r\n\r\n",
    ),
    ("an empty extension", b"5;\r\nhello\r\n0\r\n\r\n"),
    (
        "an extension value that is not a token",
        b"5;a=b c\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "an unterminated quoted extension",
        b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
    ),
    ("data past the size", b"5\r\nhello!\r\n0\r\n\r\n"),
    ("no CRLF after the data", b"5\r\nhello0\r\n\r\n"),
    ("a bare LF after the size", b"5\nhello\r\n0\r\n\r\n"),
    (
        "a malformed trailer",
        b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    ),
    ("a bare LF at the end", b"5\r\nhello\r\n0\r\n\n"),
];

#[tokio::test]
async fn small_invalid_chunked_bodies_are_400_and_never_reach_the_node() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    for (what, body) in BAD_BODIES {
        let got = exchange(&levee, &[CHUNKED_HEAD, body].concat()).await;
        assert_refused_and_closed(&got, 400, "bad-request", what);
    }
    assert_nothing_forwarded(&app, "invalid chunked bodies");
    let route = &levee.telemetry.topology().routes[0];
    assert_eq!(
        route.outcomes.reason(ErrorReason::BadRequest),
        BAD_BODIES.len() as u64
    );
    // A valid one goes to the node whole, with its length.
    let got = exchange(
        &levee,
        &[
            CHUNKED_HEAD,
            b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        ]
        .concat(),
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    let seen = app.recorded().pop().unwrap();
    assert_eq!(seen.headers["content-length"], "11");
    assert!(!seen.headers.contains_key("transfer-encoding"));
    assert_eq!(app.stats().body_bytes_received, 11);
    levee.shutdown().await;
}

#[tokio::test]
async fn a_large_chunked_body_turning_invalid_aborts_the_node_connection() {
    let app = healthy().await; // reads the whole body before answering
    let cfg = with_buffer_bytes(ONE_ROUTE, 1024);
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let mut req = CHUNKED_HEAD.to_vec();
    for _ in 0..3 {
        req.extend_from_slice(b"258\r\n"); // 600 bytes
        req.extend_from_slice(&[b'x'; 600]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"258\r\n");
    req.extend_from_slice(&[b'x'; 601]); // data past its size
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let got = exchange(&levee, &req).await;
    assert_refused_and_closed(&got, 400, "bad-request", "invalid after 1800 bytes");
    // The node got at most the head and part of the body, never its end.
    assert!(
        eventually(Duration::from_secs(3), || app.stats().open_connections == 0).await,
        "the node connection is aborted"
    );
    let stats = app.stats();
    assert!(stats.requests <= 1, "{stats:?}");
    assert!(stats.body_bytes_received <= 2400, "{stats:?}");
    assert_eq!(stats.completed, 0, "the node never saw a complete request");
    let topo = levee.telemetry.topology();
    assert_eq!(topo.routes[0].outcomes.reason(ErrorReason::BadRequest), 1);
    let node_stats = &topo.backends[0].nodes[0].stats.outcomes;
    for reason in ErrorReason::ALL {
        assert_eq!(node_stats.reason(reason), 0, "{reason:?} is not the node's");
    }
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await);
    levee.shutdown().await;
}
