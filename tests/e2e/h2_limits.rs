//! HTTP/2 limits against a client that misbehaves on purpose, mostly written
//! frame by frame: too many streams, rapid reset, an oversized header list,
//! and a peer that stops answering pings. Each time another connection keeps
//! getting its 200s.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use levee::Levee;
use levee_telemetry::ErrorReason;
use levee_testkit::Behavior;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// How long any single frame may take to arrive.
const FRAME_LIMIT: Duration = Duration::from_secs(10);

/// One frame as read off the wire.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The 32-bit word at `at` of the payload (an error code, a setting).
    fn word(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }

    fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                let id = u16::from_be_bytes([c[0], c[1]]);
                (id, u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
            })
            .collect()
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET for `path` as one HEADERS frame that also ends the stream. HPACK
/// without Huffman or indexing: indexed `:method GET` and `:scheme http`,
/// then literal `:path`, `:authority` and `extra` fields.
fn get_frame(stream: u32, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0x82, 0x86];
    literal(&mut block, Some(4), "", path);
    literal(&mut block, Some(1), "", "localhost");
    for (name, value) in extra {
        literal(&mut block, None, name, value);
    }
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
}

/// A literal field without indexing: a static-table name, or a new one.
fn literal(block: &mut Vec<u8>, name_index: Option<u8>, name: &str, value: &str) {
    match name_index {
        Some(i) => block.push(i),
        None => {
            block.push(0);
            string(block, name);
        }
    }
    string(block, value);
}

/// An HPACK string, raw octets, with its 7-bit-prefix length.
fn string(block: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    if n < 127 {
        block.push(u8::try_from(n).unwrap());
    } else {
        block.push(127);
        n -= 127;
        while n >= 128 {
            block.push(u8::try_from(n % 128).unwrap() | 0x80);
            n /= 128;
        }
        block.push(u8::try_from(n).unwrap());
    }
    block.extend_from_slice(s.as_bytes());
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// A prior-knowledge HTTP/2 client speaking raw frames.
struct RawH2 {
    s: TcpStream,
    buf: Vec<u8>,
    /// levee's SETTINGS, as first sent.
    settings: Vec<(u16, u32)>,
}

impl RawH2 {
    /// Preface and empty SETTINGS out, levee's SETTINGS in and acknowledged.
    async fn connect(addr: SocketAddr) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        s.write_all(&hello).await.unwrap();
        let mut me = Self {
            s,
            buf: Vec::new(),
            settings: Vec::new(),
        };
        let first = me.next().await.expect("levee's SETTINGS");
        assert_eq!((first.kind, first.flags), (SETTINGS, 0), "{first:?}");
        me.settings = first.settings();
        me.send(&frame(SETTINGS, ACK, 0, &[])).await;
        me
    }

    fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| *v)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next frame, or `None` once levee closed the connection (or did
    /// not send one within `FRAME_LIMIT`).
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = usize::from(self.buf[0]) << 16
                    | usize::from(self.buf[1]) << 8
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(FRAME_LIMIT, self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Frames until `want` matches one (returned), or the connection ends.
    async fn until(&mut self, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
        for _ in 0..10_000 {
            let f = self.next().await?;
            if want(&f) {
                return Some(f);
            }
        }
        panic!("no such frame among 10000");
    }
}

/// An HTTP/2 client with its own connection that answers pings.
/// Some requests on another connection, all 200.
async fn others_get_200(client: &HttpClient, levee: &Levee) {
    for _ in 0..5 {
        let got = get(client, &url(levee, "/")).await;
        assert_eq!(got.status, StatusCode::OK);
    }
}

/// `[server]` with `keys`; backend `slow` under /slow, `app` elsewhere.
fn config(keys: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{keys}

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
max_in_flight = 64

[[backend]]
name = "slow"
nodes = ["127.0.0.1:1"]
timeout = "30s"
max_in_flight = 64

[[route]]
path_prefix = "/slow"
backend = "slow"

[[route]]
path_prefix = "/"
backend = "app"
"#
    )
}

async fn start(
    keys: &str,
    slow: Behavior,
) -> (Levee, levee_testkit::AppNode, levee_testkit::AppNode) {
    let app = node(Behavior::Healthy { body_bytes: 2 }).await;
    let slow = node(slow).await;
    let levee = start_levee(&config(keys), &[&[app.addr()], &[slow.addr()]]).await;
    (levee, app, slow)
}

#[tokio::test]
async fn streams_over_the_cap_are_refused_and_the_cap_is_advertised() {
    let (levee, app, slow) = start(
        "h2_max_concurrent_streams = 4",
        Behavior::Slow {
            delay: Duration::from_secs(2),
            body_bytes: 2,
        },
    )
    .await;
    let mut h2 = RawH2::connect(levee.proxy_addr).await;
    assert_eq!(h2.setting(SETTINGS_MAX_CONCURRENT_STREAMS), Some(4));
    let mut burst = Vec::new();
    for id in [1, 3, 5, 7, 9, 11] {
        burst.extend(get_frame(id, "/slow", &[]));
    }
    h2.send(&burst).await;
    let mut refused = Vec::new();
    let mut answered = Vec::new();
    let mut checked_others = false;
    while refused.len() + answered.len() < 6 {
        let f = h2.next().await.expect("an answer for every stream");
        match f.kind {
            RST_STREAM => {
                assert_eq!(f.word(0), REFUSED_STREAM, "{f:?}");
                refused.push(f.stream);
            }
            HEADERS => answered.push(f.stream),
            _ => {}
        }
        if refused.len() == 2 && !checked_others {
            checked_others = true;
            // While four streams hold the slow node, another connection is served.
            others_get_200(&h2_client(), &levee).await;
            others_get_200(&client(), &levee).await;
        }
    }
    refused.sort_unstable();
    answered.sort_unstable();
    assert_eq!(refused, [9, 11]);
    assert_eq!(answered, [1, 3, 5, 7]);
    assert_eq!(slow.stats().requests, 4);
    assert_eq!(app.stats().requests, 10);
    // A raw peer does not answer the ping of a graceful GOAWAY.
    drop(h2);
    levee.shutdown().await;
}

#[tokio::test]
async fn too_many_refused_streams_get_goaway_enhance_your_calm() {
    let (levee, app, slow) = start(
        "h2_max_concurrent_streams = 1\nh2_max_local_error_reset_streams = 2",
        Behavior::Slow {
            delay: Duration::from_secs(2),
            body_bytes: 2,
        },
    )
    .await;
    let mut h2 = RawH2::connect(levee.proxy_addr).await;
    // One stream holds the slow node; the next ones are refused by levee,
    // and the third refusal is one too many.
    let mut burst = Vec::new();
    for id in [1, 3, 5, 7, 9] {
        burst.extend(get_frame(id, "/slow", &[]));
    }
    let _ = h2.s.write_all(&burst).await;
    let goaway = h2
        .until(|f| f.kind == GOAWAY && f.word(4) != 0)
        .await
        .expect("a GOAWAY with an error");
    assert_eq!(goaway.word(4), ENHANCE_YOUR_CALM, "{goaway:?}");
    others_get_200(&h2_client(), &levee).await;
    assert_eq!(app.stats().requests, 5);
    assert!(slow.stats().requests <= 1);
    drop(h2);
    levee.shutdown().await;
}

#[tokio::test]
async fn a_rapid_reset_loop_gets_goaway_enhance_your_calm() {
    let (levee, app, _slow) = start(
        "h2_max_pending_accept_reset_streams = 5",
        Behavior::default(),
    )
    .await;
    let other = h2_client();
    others_get_200(&other, &levee).await;
    let mut h2 = RawH2::connect(levee.proxy_addr).await;
    // Open and cancel 15 streams in one burst: levee reads them all before
    // it has accepted any. 15 is under the default of 20, so only the
    // configured 5 closes the connection.
    let mut burst = Vec::new();
    for i in 0..15 {
        let id = 2 * i + 1;
        burst.extend(get_frame(id, "/", &[]));
        burst.extend(rst(id, CANCEL));
    }
    // levee may close before it has read all of it.
    let _ = h2.s.write_all(&burst).await;
    let goaway = h2
        .until(|f| f.kind == GOAWAY)
        .await
        .expect("a GOAWAY before the connection closes");
    assert_eq!(goaway.word(4), ENHANCE_YOUR_CALM, "{goaway:?}");
    assert!(
        h2.until(|_| false).await.is_none(),
        "then the connection closes"
    );
    assert!(
        app.stats().requests <= 5 + 5,
        "most cancelled streams never reached the node: {}",
        app.stats().requests
    );
    others_get_200(&other, &levee).await;
    others_get_200(&h2_client(), &levee).await;
    assert!(
        eventually(Duration::from_secs(5), || slots_held(&levee) == 0).await,
        "no slot left held"
    );
    levee.shutdown().await;
}

/// Sends `req` on (a handle to) a connection and reads the whole answer.
async fn exchange_h2(
    mut sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let fut = async {
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    };
    tokio::time::timeout(FRAME_LIMIT, fut).await.unwrap()
}

fn h2_request(
    method: Method,
    uri: &str,
    header: (&str, String),
    body: &'static [u8],
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header.0, header.1)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap()
}

#[tokio::test]
async fn an_oversized_header_list_gets_levees_431_and_the_node_nothing() {
    let dir = TempDir::new("h2-header-list");
    let log = dir.path("access.log");
    // The list limit is twice max_header_bytes, at least 8 KiB.
    let (levee, app, slow) = start(
        &format!(
            "max_header_bytes = 1024\n\n[log]\naccess = \"{}\"",
            log.display()
        ),
        Behavior::Slow {
            delay: Duration::from_secs(1),
            body_bytes: 2,
        },
    )
    .await;
    let h2 = RawH2::connect(levee.proxy_addr).await;
    assert_eq!(h2.setting(SETTINGS_MAX_HEADER_LIST_SIZE), Some(8192));
    drop(h2);

    let stream = TcpStream::connect(levee.proxy_addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // A stream under way on the same connection while the others are refused.
    let under_way = tokio::spawn(exchange_h2(
        sender.clone(),
        h2_request(
            Method::GET,
            &url(&levee, "/slow"),
            ("x-small", "a".into()),
            b"",
        ),
    ));
    let big = "a".repeat(12 * 1024);
    let over_the_list_limit = [
        // A field past the limit: h2 keeps the method and path.
        h2_request(
            Method::GET,
            &url(&levee, "/kept"),
            ("x-big", big.clone()),
            b"",
        ),
        // A body still to come after the head.
        h2_request(
            Method::POST,
            &url(&levee, "/kept"),
            ("x-big", big.clone()),
            b"body",
        ),
        // The path itself past the limit: h2 kept neither it nor the fields.
        h2_request(
            Method::GET,
            &url(&levee, &format!("/{big}")),
            ("x-small", "a".into()),
            b"",
        ),
    ];
    let mut ids = Vec::new();
    for (i, req) in over_the_list_limit.into_iter().enumerate() {
        let (status, headers, _) = exchange_h2(sender.clone(), req).await;
        assert_eq!(
            status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "case {i}"
        );
        assert_eq!(headers["x-levee-error"], "header-too-large", "case {i}");
        ids.push(headers["x-request-id"].to_str().unwrap().to_owned());
    }
    // Each gets an access log line, with the method and path h2 kept.
    let logged = |id: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["request_id"] == id)
    };
    assert!(
        eventually(Duration::from_secs(10), || ids
            .iter()
            .all(|id| logged(id).is_some()))
        .await,
        "a line for each of {ids:?}"
    );
    for (id, (method, path)) in ids
        .iter()
        .zip([("GET", "/kept"), ("POST", "/kept"), ("GET", "/")])
    {
        let line = logged(id).unwrap();
        assert_eq!(line["status"], 431, "{line}");
        assert_eq!(line["error"], "header-too-large", "{line}");
        assert_eq!(
            (line["method"].as_str(), line["path"].as_str()),
            (Some(method), Some(path)),
            "{line}"
        );
    }
    // Between max_header_bytes and the list limit: the same answer.
    let mid = h2_request(
        Method::GET,
        &url(&levee, "/"),
        ("x-mid", "a".repeat(2 * 1024)),
        b"",
    );
    let (status, headers, _) = exchange_h2(sender.clone(), mid).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(headers["x-levee-error"], "header-too-large");
    assert_eq!(app.stats().requests, 0);
    // Each is counted, by reason.
    let unrouted = &levee.telemetry.topology().unrouted;
    assert_eq!(unrouted.reason(ErrorReason::HeaderTooLarge), 4);
    let metrics = metrics_text(&client(), &levee).await;
    let line = "levee_errors_total{route=\"\",backend=\"\",reason=\"header-too-large\"} 4";
    assert!(metrics.contains(line), "missing `{line}`:\n{metrics}");
    // The stream under way, the same connection and others are served.
    let (status, _, _) = under_way.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(slow.stats().requests, 1);
    let ok = h2_request(Method::GET, &url(&levee, "/"), ("x-small", "a".into()), b"");
    let (status, _, _) = exchange_h2(sender.clone(), ok).await;
    assert_eq!(status, StatusCode::OK);
    others_get_200(&h2_client(), &levee).await;
    levee.shutdown().await;
}

#[tokio::test]
async fn a_header_list_four_times_over_the_limit_gets_goaway_enhance_your_calm() {
    let (levee, app, _slow) = start("max_header_bytes = 1024", Behavior::default()).await;
    let other = h2_client();
    others_get_200(&other, &levee).await;
    let mut h2 = RawH2::connect(levee.proxy_addr).await;
    // One 40 KiB field, over 4 x 8 KiB, in a HEADERS frame and CONTINUATION
    // frames of at most 16 KiB (the default SETTINGS_MAX_FRAME_SIZE).
    let whole = get_frame(1, "/", &[("x-big", &"a".repeat(40 * 1024))]);
    let block = &whole[9..];
    let pieces: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut burst = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let (kind, first) = if i == 0 {
            (HEADERS, END_STREAM)
        } else {
            (CONTINUATION, 0)
        };
        let last = if i + 1 == pieces.len() {
            END_HEADERS
        } else {
            0
        };
        burst.extend(frame(kind, first | last, 1, piece));
    }
    let _ = h2.s.write_all(&burst).await;
    let goaway = h2
        .until(|f| f.kind == GOAWAY)
        .await
        .expect("a GOAWAY before the connection closes");
    assert_eq!(goaway.word(4), ENHANCE_YOUR_CALM, "{goaway:?}");
    assert_eq!(app.stats().requests, 5);
    others_get_200(&other, &levee).await;
    levee.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed() {
    let (levee, _app, _slow) = start(
        "h2_keep_alive_interval = \"300ms\"\nh2_keep_alive_timeout = \"300ms\"",
        Behavior::default(),
    )
    .await;
    // A connection that answers pings (hyper's client does) outlives it.
    let other = h2_client();
    others_get_200(&other, &levee).await;
    let started = tokio::time::Instant::now();
    let mut h2 = RawH2::connect(levee.proxy_addr).await;
    let ping = h2
        .until(|f| f.kind == PING)
        .await
        .expect("levee pings a silent peer");
    assert_eq!(ping.flags & ACK, 0);
    let pinged = started.elapsed();
    assert!(pinged >= Duration::from_millis(250), "{pinged:?}");
    // Never acknowledged: the connection ends within interval + timeout + margin.
    assert!(h2.until(|_| false).await.is_none());
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(550) && closed < Duration::from_secs(4),
        "closed after {closed:?}"
    );
    assert!(closed < FRAME_LIMIT, "closed, not timed out reading");
    others_get_200(&other, &levee).await;
    levee.shutdown().await;
}
