//! Request hygiene at the edge: Host rules, target forms, and the limits on
//! target length, header count and body size. HTTP/1 requests are written
//! as raw bytes on a `TcpStream`, so the test controls the exact framing;
//! each asserts the status, the `x-levee-error` reason, and what the node
//! recorded (nothing, for a refused request). HTTP/2 cases use hyper's
//! HTTP/2 client connection, which sends exactly the pseudo-headers and
//! headers it is given.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use levee::Levee;
use levee_telemetry::ErrorReason;
use levee_testkit::{AppNode, Behavior};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// Bound on every read of a response, so no test can hang.
pub(crate) const READ_LIMIT: Duration = Duration::from_secs(10);

/// One route for host api.example.com under /api/; nothing else matches.
const API_ONLY: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "300ms"
timeout = "5s"

[[route]]
name = "api"
path_prefix = "/api/"
host = "api.example.com"
backend = "app"
"#;

/// A response read off a raw connection.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// The connection was closed by levee right after this response.
    pub(crate) closed: bool,
}

impl Raw {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn reason(&self) -> Option<&str> {
        self.header("x-levee-error")
    }
}

/// Reads one response head and its body (by Content-Length, chunked, or up
/// to the close), within [`READ_LIMIT`]. `buf` holds bytes read but not yet
/// consumed.
pub(crate) async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Raw {
    tokio::time::timeout(READ_LIMIT, async {
        let mut chunk = [0u8; 16 * 1024];
        let mut eof = false;
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            assert!(
                n > 0,
                "connection closed before a full response head: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1."), "{status_line}");
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if let Some(len) = find("content-length") {
            let len: usize = len.parse().unwrap();
            while buf.len() < len {
                let n = stream.read(&mut chunk).await.unwrap_or(0);
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..len).collect()
        } else if find("transfer-encoding").is_some() {
            // Chunked: kept raw, up to the last chunk or the close.
            while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => {
                        eof = true;
                        break;
                    }
                }
            }
            std::mem::take(buf)
        } else {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            buf.extend_from_slice(&rest);
            eof = true;
            std::mem::take(buf)
        };
        if !eof {
            // Closed now (a 0-byte read), or kept open (nothing within 300 ms)?
            eof = matches!(
                tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await,
                Ok(Ok(0) | Err(_))
            );
        }
        Raw {
            status,
            headers,
            body,
            closed: eof,
        }
    })
    .await
    .expect("a response within the read limit")
}

/// Sends `bytes` on a fresh connection to levee and reads one response.
pub(crate) async fn exchange(levee: &Levee, bytes: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(levee.proxy_addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_response(&mut stream, &mut Vec::new()).await
}

/// Asserts levee's own answer: status, reason, and a body naming the reason.
pub(crate) fn assert_refused(got: &Raw, status: u16, reason: &str, what: &str) {
    assert_eq!(got.status, status, "{what}: {got:?}");
    assert_eq!(got.reason(), Some(reason), "{what}: {got:?}");
    let body = String::from_utf8_lossy(&got.body);
    assert!(
        body.contains(reason),
        "{what}: body names the reason: {body}"
    );
    assert!(got.header("x-request-id").is_some(), "{what}: {got:?}");
}

pub(crate) fn assert_nothing_forwarded(app: &AppNode, what: &str) {
    assert!(
        app.recorded().is_empty(),
        "{what}: the node received {:?}",
        app.recorded()
    );
    assert_eq!(app.stats().requests, 0, "{what}");
}

pub(crate) async fn healthy() -> AppNode {
    node(Behavior::Healthy { body_bytes: 2 }).await
}

pub(crate) fn with_server_keys(toml: &str, keys: &str) -> String {
    toml.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{keys}"),
    )
}

// ------------------------------------------------------------------ Host

#[tokio::test]
async fn http11_without_host_is_400_bad_host() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let got = exchange(&levee, b"GET /x HTTP/1.1\r\n\r\n").await;
    assert_refused(&got, 400, "bad-host", "no Host");
    // Also with an absolute-form target: HTTP/1.1 requires Host regardless.
    let got = exchange(&levee, b"GET http://example.com/x HTTP/1.1\r\n\r\n").await;
    assert_refused(&got, 400, "bad-host", "absolute-form, no Host");
    assert_nothing_forwarded(&app, "no Host");
    let unrouted = &levee.telemetry.topology().unrouted;
    assert_eq!(unrouted.reason(ErrorReason::BadHost), 2);
    levee.shutdown().await;
}

#[tokio::test]
async fn more_than_one_host_is_400_bad_host() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    for (what, head) in [
        (
            "two different",
            "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "the same twice",
            "GET /x HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n",
        ),
    ] {
        let got = exchange(&levee, head.as_bytes()).await;
        assert_refused(&got, 400, "bad-host", what);
    }
    assert_nothing_forwarded(&app, "two Hosts");
    levee.shutdown().await;
}

#[tokio::test]
async fn a_host_that_is_not_host_port_is_400_bad_host() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    for host in [
        "",
        "exa mple.com",
        "user@example.com",
        "example.com/path",
        "example.com:http",
        "example.com:70000",
        "example.com:80:80",
        "a..example.com",
        "[::1",
        "exa%41mple.com",
        "a,b.example",
    ] {
        let head = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let got = exchange(&levee, head.as_bytes()).await;
        assert_refused(&got, 400, "bad-host", &format!("Host {host:?}"));
    }
    assert_nothing_forwarded(&app, "invalid Hosts");
    // Valid forms pass: a name with a port, an IPv4 and a bracketed IPv6.
    for host in ["Example.com:8080", "127.0.0.1", "[::1]:80"] {
        let head = format!("GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let got = exchange(&levee, head.as_bytes()).await;
        assert_eq!(got.status, 200, "Host {host:?}: {got:?}");
        let seen = app.recorded().pop().unwrap();
        assert_eq!(seen.headers["host"], host, "Host is forwarded as sent");
    }
    levee.shutdown().await;
}

#[tokio::test]
async fn an_absolute_form_target_is_the_host_routed_on_and_sent_to_the_node() {
    let app = healthy().await;
    let levee = start_levee(API_ONLY, &[&[app.addr()]]).await;
    // The target's authority replaces Host (RFC 9112 §3.2.2); levee routes
    // on it and sends the route's node the origin form. api.example.com is
    // never connected to (it is not even resolvable here).
    let got = exchange(
        &levee,
        b"GET http://api.example.com/api/items?id=7 HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    let seen = app.recorded();
    assert_eq!(seen.len(), 1);
    let head = &seen[0];
    assert_eq!(head.uri.to_string(), "/api/items?id=7", "origin form");
    assert_eq!(head.headers.get_all("host").iter().count(), 1);
    assert_eq!(head.headers["host"], "api.example.com");
    assert_eq!(head.headers["x-forwarded-host"], "api.example.com");
    assert_eq!(head.version, Version::HTTP_11);

    // The authority wins over Host for routing too: a Host that matches the
    // route does not help a target that names another host.
    let got = exchange(
        &levee,
        b"GET http://other.example/api/items HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    )
    .await;
    assert_refused(&got, 404, "no-route", "target names another host");

    // Userinfo in the target is refused (RFC 9110 §4.2.4), as is a scheme
    // other than http or https.
    let got = exchange(
        &levee,
        b"GET http://user@api.example.com/api/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    )
    .await;
    assert_refused(&got, 400, "bad-host", "userinfo in the target");
    let got = exchange(
        &levee,
        b"GET ftp://api.example.com/api/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    )
    .await;
    assert_refused(&got, 400, "bad-request", "ftp scheme");
    assert_eq!(app.recorded().len(), 1, "only the first reached the node");
    levee.shutdown().await;
}

#[tokio::test]
async fn http10_needs_a_host_or_an_absolute_form_target() {
    let app = healthy().await;
    let levee = start_levee(API_ONLY, &[&[app.addr()]]).await;
    let got = exchange(&levee, b"GET /api/x HTTP/1.0\r\n\r\n").await;
    assert_refused(&got, 400, "bad-host", "HTTP/1.0 without Host");
    assert_nothing_forwarded(&app, "HTTP/1.0 without Host");

    let got = exchange(
        &levee,
        b"GET /api/x HTTP/1.0\r\nHost: api.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    let got = exchange(&levee, b"GET http://api.example.com/api/y HTTP/1.0\r\n\r\n").await;
    assert_eq!(got.status, 200, "{got:?}");
    let seen = app.recorded();
    assert_eq!(seen.len(), 2);
    for head in &seen {
        assert_eq!(head.version, Version::HTTP_11, "forwarded as HTTP/1.1");
        assert_eq!(head.headers["host"], "api.example.com");
    }
    assert_eq!(seen[1].uri.to_string(), "/api/y");
    levee.shutdown().await;
}

#[tokio::test]
async fn target_forms_asterisk_for_options_only_and_no_authority_form() {
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let got = exchange(&levee, b"GET * HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_refused(&got, 400, "bad-request", "GET *");
    let got = exchange(&levee, b"POST * HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_refused(&got, 400, "bad-request", "POST *");
    // OPTIONS * is well-formed; no route's path_prefix (always '/...')
    // matches "*", so it is levee's 404, not a malformed request.
    let got = exchange(&levee, b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_refused(&got, 404, "no-route", "OPTIONS *");
    // Authority-form is for CONNECT only.
    let got = exchange(
        &levee,
        b"GET a.example:80 HTTP/1.1\r\nHost: a.example\r\n\r\n",
    )
    .await;
    assert_refused(&got, 400, "bad-request", "authority-form GET");
    let got = exchange(
        &levee,
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
    )
    .await;
    assert_refused(&got, 405, "unsupported", "CONNECT");
    assert_nothing_forwarded(&app, "target forms");
    levee.shutdown().await;
}

// ------------------------------------------------------------------ HTTP/2

/// A request over one HTTP/2 prior-knowledge connection, sent as given.
async fn h2_send(levee: &Levee, req: Request<Full<Bytes>>) -> (StatusCode, Option<String>) {
    let run = async {
        let stream = TcpStream::connect(levee.proxy_addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.unwrap();
        let reason = resp
            .headers()
            .get("x-levee-error")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        (status, reason)
    };
    tokio::time::timeout(READ_LIMIT, run)
        .await
        .expect("an HTTP/2 answer within the limit")
}

fn h2_request(uri: &str, host: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(Method::GET).uri(uri);
    if let Some(h) = host {
        b = b.header("host", h);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn http2_needs_authority_or_host_and_they_must_agree() {
    let app = healthy().await;
    let levee = start_levee(API_ONLY, &[&[app.addr()]]).await;
    // A relative URI: hyper's HTTP/2 client sends :scheme and :path only.
    let got = h2_send(&levee, h2_request("/api/x", None)).await;
    assert_eq!(got, (StatusCode::BAD_REQUEST, Some("bad-host".into())));
    let got = h2_send(
        &levee,
        h2_request("http://api.example.com/api/x", Some("other.example")),
    )
    .await;
    assert_eq!(got, (StatusCode::BAD_REQUEST, Some("bad-host".into())));
    let got = h2_send(&levee, h2_request("/api/x", Some("bad host"))).await;
    assert_eq!(got, (StatusCode::BAD_REQUEST, Some("bad-host".into())));
    assert_nothing_forwarded(&app, "HTTP/2 refusals");

    // :authority alone, Host alone, and both agreeing (case aside) all pass.
    for (uri, host) in [
        ("http://api.example.com/api/a", None),
        ("/api/b", Some("api.example.com")),
        ("http://api.example.com/api/c", Some("API.example.com")),
    ] {
        let got = h2_send(&levee, h2_request(uri, host)).await;
        assert_eq!(got, (StatusCode::OK, None), "{uri} {host:?}");
        let head = app.recorded().pop().unwrap();
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers.get_all("host").iter().count(), 1);
        assert!(
            head.headers["host"]
                .to_str()
                .unwrap()
                .eq_ignore_ascii_case("api.example.com"),
            "{:?}",
            head.headers
        );
    }
    levee.shutdown().await;
}

// ------------------------------------------------------------------ limits

/// `n` header lines in all, Host first.
fn head_with_headers(n: usize) -> String {
    let mut head = String::from("GET /x HTTP/1.1\r\nHost: a.example\r\n");
    for i in 1..n {
        head.push_str(&format!("x-h-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    head
}

#[tokio::test]
async fn too_many_header_lines_are_431() {
    let app = healthy().await;
    // Default max_headers = 100. The node (hyper, also 100 by default) gets
    // levee's X-Forwarded-For/-Proto/-Host and x-request-id on top, so the
    // request that passes is kept to 96 lines here.
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let got = exchange(&levee, head_with_headers(96).as_bytes()).await;
    assert_eq!(got.status, 200, "96 lines pass: {got:?}");
    assert_eq!(app.recorded().len(), 1);
    // The gate counts the lines before hyper's own limit of 100 can answer.
    let got = exchange(&levee, head_with_headers(101).as_bytes()).await;
    assert_refused(&got, 431, "too-many-headers", "101 lines");
    assert_eq!(
        app.recorded().len(),
        1,
        "refused heads never reach the node"
    );
    levee.shutdown().await;

    // A larger limit (hyper's becomes twice levee's).
    let app = healthy().await;
    let cfg = with_server_keys(ONE_ROUTE, "max_headers = 110");
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let got = exchange(&levee, head_with_headers(111).as_bytes()).await;
    assert_refused(&got, 431, "too-many-headers", "111 lines, limit 110");
    let got = exchange(&levee, head_with_headers(221).as_bytes()).await;
    assert_refused(&got, 431, "too-many-headers", "221 lines");
    assert_eq!(
        app.recorded().len(),
        0,
        "refused heads never reach the node"
    );
    levee.shutdown().await;

    // A smaller limit (hyper keeps its default of 100 then).
    let app = healthy().await;
    let cfg = with_server_keys(ONE_ROUTE, "max_headers = 32");
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let got = exchange(&levee, head_with_headers(32).as_bytes()).await;
    assert_eq!(got.status, 200, "{got:?}");
    let got = exchange(&levee, head_with_headers(33).as_bytes()).await;
    assert_refused(&got, 431, "too-many-headers", "33 lines, limit 32");
    // A client's x-request-id line counts like any other line it sent.
    let with_id = |n: usize| head_with_headers(n).replace("x-h-1: 1", "x-request-id: req-1");
    let got = exchange(&levee, with_id(32).as_bytes()).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(
        app.recorded().last().unwrap().headers["x-request-id"],
        "req-1"
    );
    let got = exchange(&levee, with_id(33).as_bytes()).await;
    assert_refused(&got, 431, "too-many-headers", "33 lines with an id");
    let got = exchange(&levee, head_with_headers(101).as_bytes()).await;
    assert_refused(&got, 431, "too-many-headers", "101 lines");
    assert_eq!(app.recorded().len(), 2);
    levee.shutdown().await;
}

fn get_path(path_len: usize) -> String {
    format!(
        "GET /{} HTTP/1.1\r\nHost: a.example\r\n\r\n",
        "a".repeat(path_len - 1)
    )
}

#[tokio::test]
async fn a_target_over_max_uri_bytes_is_414() {
    let app = healthy().await;
    let cfg = with_server_keys(ONE_ROUTE, "max_uri_bytes = 1024");
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let got = exchange(&levee, get_path(1024).as_bytes()).await;
    assert_eq!(got.status, 200, "exactly at the limit: {got:?}");
    let got = exchange(&levee, get_path(1025).as_bytes()).await;
    assert_refused(&got, 414, "uri-too-long", "1025 bytes");
    // The query counts too.
    let head = format!(
        "GET /x?{} HTTP/1.1\r\nHost: a.example\r\n\r\n",
        "q".repeat(1100)
    );
    let got = exchange(&levee, head.as_bytes()).await;
    assert_refused(&got, 414, "uri-too-long", "long query");
    // Far over the limit: refused as soon as the target passes it.
    let got = exchange(&levee, get_path(70_000).as_bytes()).await;
    assert_refused(&got, 414, "uri-too-long", "70000 bytes");
    assert_eq!(app.recorded().len(), 1);
    levee.shutdown().await;

    // The default is 8192.
    let app = healthy().await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    assert_eq!(
        exchange(&levee, get_path(8192).as_bytes()).await.status,
        200
    );
    let got = exchange(&levee, get_path(8193).as_bytes()).await;
    assert_refused(&got, 414, "uri-too-long", "default limit");
    levee.shutdown().await;
}

/// `ONE_ROUTE` with a 1024-byte body limit on its route.
fn body_limited() -> String {
    ONE_ROUTE.replace(
        "backend = \"app\"\n",
        "backend = \"app\"\nmax_request_body_bytes = 1024\n",
    )
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_before_any_node_is_contacted() {
    let app = healthy().await;
    let levee = start_levee(&body_limited(), &[&[app.addr()]]).await;
    // Only the head is sent: the answer does not wait for the body.
    let got = exchange(
        &levee,
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1025\r\n\r\n",
    )
    .await;
    assert_refused(&got, 413, "body-too-large", "Content-Length 1025");
    assert!(got.closed, "the unread body makes the connection unusable");
    assert_nothing_forwarded(&app, "declared too large");
    assert_eq!(app.stats().connections, 0, "no node connection was opened");
    let route = &levee.telemetry.topology().routes[0];
    assert_eq!(
        route.outcomes.reason(ErrorReason::BodyTooLarge),
        1,
        "counted on the route"
    );

    // At the limit it is forwarded whole.
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1024\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'x'; 1024]);
    let got = exchange(&levee, &req).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(app.stats().body_bytes_received, 1024);
    levee.shutdown().await;
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_cut_and_answered_413() {
    // The node reads the whole body before answering. A chunked body over
    // buffer_bytes (256 here) streams to it.
    let app = healthy().await;
    let cfg = crate::framing::with_buffer_bytes(&body_limited(), 256);
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..2 {
        req.extend_from_slice(b"258\r\n"); // 600 bytes
        req.extend_from_slice(&[b'x'; 600]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let got = exchange(&levee, &req).await;
    assert_refused(&got, 413, "body-too-large", "chunked 1200 bytes");
    // The node got at most the head and the limit, never the end of the
    // request: it never answered.
    assert!(
        eventually(Duration::from_secs(3), || app.stats().open_connections == 0).await,
        "the node connection is aborted"
    );
    let stats = app.stats();
    assert!(stats.requests <= 1, "{stats:?}");
    assert!(stats.body_bytes_received <= 1024, "{stats:?}");
    assert_eq!(stats.completed, 0, "the node never saw a complete request");
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await);
    let topo = levee.telemetry.topology();
    assert_eq!(topo.routes[0].outcomes.reason(ErrorReason::BodyTooLarge), 1);
    let node_stats = &topo.backends[0].nodes[0].stats.outcomes;
    for reason in ErrorReason::ALL {
        assert_eq!(node_stats.reason(reason), 0, "{reason:?} is not the node's");
    }

    // Within the limit a chunked body is forwarded whole.
    let mut req =
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(b"400\r\n"); // 1024 bytes
    req.extend_from_slice(&[b'y'; 1024]);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let got = exchange(&levee, &req).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(app.stats().completed, 1);
    levee.shutdown().await;
}

#[tokio::test]
async fn a_body_passing_the_limit_after_the_response_started_cuts_the_connection() {
    let app = node(Behavior::Echo).await; // answers at once, echoing as it reads
                                          // Chunked bodies up to buffer_bytes are read whole first: 256 here, so
                                          // the first 600 bytes go on at once.
    let cfg = crate::framing::with_buffer_bytes(&body_limited(), 256);
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let mut stream = TcpStream::connect(levee.proxy_addr).await.unwrap();
    let mut first =
        b"POST /echo HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    first.extend_from_slice(b"258\r\n");
    first.extend_from_slice(&[b'x'; 600]);
    first.extend_from_slice(b"\r\n");
    stream.write_all(&first).await.unwrap();
    // The echo's response head (and the first 600 bytes) come back.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_seen = tokio::time::timeout(READ_LIMIT, async {
        for _ in 0..1000 {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() > 600 {
                return true;
            }
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        false
    })
    .await
    .unwrap();
    assert!(head_seen, "{:?}", String::from_utf8_lossy(&buf));
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // The next 600 bytes pass the limit: the node connection is aborted and
    // the client's connection is cut, without the last chunk.
    let mut second = b"258\r\n".to_vec();
    second.extend_from_slice(&[b'z'; 600]);
    second.extend_from_slice(b"\r\n0\r\n\r\n");
    stream.write_all(&second).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(READ_LIMIT, async {
        for _ in 0..1000 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        false
    })
    .await
    .expect("levee closes the client connection");
    assert!(closed);
    buf.extend_from_slice(&rest);
    assert!(
        !buf.windows(5).any(|w| w == b"0\r\n\r\n"),
        "the response must not look complete: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        !buf.windows(1).any(|w| w == b"z"),
        "no byte past the limit was echoed"
    );
    assert!(app.stats().body_bytes_received <= 1024);
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 0).await);
    // Charged to the client's body, not to the node.
    let topo = levee.telemetry.topology();
    let route = &topo.routes[0].outcomes;
    assert!(
        eventually(Duration::from_secs(2), || route
            .reason(ErrorReason::BodyTooLarge)
            == 1)
        .await
    );
    assert_eq!(route.reason(ErrorReason::UpstreamReset), 0);
    let node_stats = &topo.backends[0].nodes[0].stats;
    assert_eq!(node_stats.outcomes.reason(ErrorReason::UpstreamReset), 0);
    levee.shutdown().await;
}

#[tokio::test]
async fn body_limits_apply_to_http2_too() {
    let app = healthy().await;
    let levee = start_levee(&body_limited(), &[&[app.addr()]]).await;
    let stream = TcpStream::connect(levee.proxy_addr).await.unwrap();
    let run = async {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut statuses = Vec::new();
        for size in [1024usize, 1025] {
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("http://{}/upload", levee.proxy_addr))
                .body(Full::new(Bytes::from(vec![b'x'; size])))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let reason = resp
                .headers()
                .get("x-levee-error")
                .map(|v| v.to_str().unwrap().to_owned());
            statuses.push((resp.status(), reason));
            let _ = resp.into_body().collect().await;
        }
        statuses
    };
    let got = tokio::time::timeout(READ_LIMIT, run).await.unwrap();
    assert_eq!(got[0], (StatusCode::OK, None));
    assert_eq!(
        got[1],
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body-too-large".into()))
    );
    assert_eq!(app.recorded().len(), 1, "only the body within the limit");
    levee.shutdown().await;
}

#[tokio::test]
async fn the_new_reasons_exist_at_zero_and_are_counted() {
    let app = healthy().await;
    let levee = start_levee(&body_limited(), &[&[app.addr()]]).await;
    let client = client();
    let m = metrics_text(&client, &levee).await;
    for reason in [
        "bad-host",
        "uri-too-long",
        "too-many-headers",
        "body-too-large",
    ] {
        for labels in ["route=\"all\",backend=\"app\"", "route=\"\",backend=\"\""] {
            let line = format!("levee_errors_total{{{labels},reason=\"{reason}\"}} 0");
            assert!(m.contains(&line), "missing `{line}`");
        }
    }
    exchange(&levee, b"GET /x HTTP/1.1\r\n\r\n").await;
    exchange(
        &levee,
        b"PUT /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    let m = metrics_text(&client, &levee).await;
    for line in [
        "levee_errors_total{route=\"\",backend=\"\",reason=\"bad-host\"} 1",
        "levee_errors_total{route=\"all\",backend=\"app\",reason=\"body-too-large\"} 1",
    ] {
        assert!(m.contains(line), "missing `{line}`");
    }
    levee.shutdown().await;
}

#[tokio::test]
async fn limits_follow_a_reload() {
    let app = healthy().await;
    let mut levee = start_levee(&body_limited(), &[&[app.addr()]]).await;
    let head = "POST /x?q=12345 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2000\r\n\r\n";
    let got = exchange(&levee, head.as_bytes()).await;
    assert_refused(&got, 413, "body-too-large", "before the reload");
    let tighter = with_server_keys(
        &ONE_ROUTE.replace(
            "backend = \"app\"\n",
            "backend = \"app\"\nmax_request_body_bytes = 0\n",
        ),
        "max_uri_bytes = 256\nmax_headers = 32",
    );
    levee
        .reload(test_config(&tighter, &[&[app.addr()]]))
        .await
        .unwrap();
    let got = exchange(&levee, get_path(257).as_bytes()).await;
    assert_refused(&got, 414, "uri-too-long", "after the reload");
    let got = exchange(&levee, head_with_headers(33).as_bytes()).await;
    assert_refused(&got, 431, "too-many-headers", "after the reload");
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(&[b'x'; 2000]);
    let got = exchange(&levee, &req).await;
    assert_eq!(got.status, 200, "0 lifts the body limit: {got:?}");
    assert_eq!(app.stats().body_bytes_received, 2000);
    levee.shutdown().await;
}
