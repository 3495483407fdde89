#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use http::{HeaderValue, Method, Version};
use http_body_util::BodyExt as _;
use levee_telemetry::{Telemetry, Topology};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::out::Out;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::request::Facts;
use super::*;

const PEER: &str = "127.0.0.1:40000";

fn shared_with(state: Arc<crate::ProxyState>) -> Arc<Shared> {
    Arc::new(Shared::new(state, Telemetry::new(Topology::default(), 1)))
}

fn shared() -> Arc<Shared> {
    shared_with(crate::stack::testing::state(
        "[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:1\"]\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
    ))
}

/// A connection served with `service` over one end of a pipe (the test
/// is the client at the other end), and the sender that drains it.
fn start<S>(
    shared: Arc<Shared>,
    service: S,
) -> (
    DuplexStream,
    JoinHandle<Ended<DuplexStream>>,
    watch::Sender<bool>,
)
where
    S: Service<Request<ClientBody>, Response = Response<ProxyBody>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send,
{
    let (client, server) = duplex(64 * 1024);
    let (tx, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let activity = ConnActivity::new();
        let env = Env {
            shared: &shared,
            activity: &activity,
            peer: PEER.parse().unwrap(),
        };
        let closing = async move {
            let _ = rx.changed().await;
        };
        tokio::pin!(closing);
        let mut draining = false;
        let mut service = service;
        serve(
            server,
            BytesMut::new(),
            &mut service,
            closing.as_mut(),
            &mut draining,
            false,
            env,
        )
        .await
    });
    (client, task, tx)
}

fn text(status: u16, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp
}

/// Answers each request with its method, path and whole body.
async fn echo(req: Request<ClientBody>) -> Result<Response<ProxyBody>, Infallible> {
    let line = format!("{} {}", req.method(), req.uri().path());
    let body = match req.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(e) => format!("error: {e}"),
    };
    Ok(text(200, &format!("{line} {body}")))
}

/// What the client has received until nothing more comes (the clock is
/// paused: the wait ends when every task waits).
async fn read_now(client: &mut DuplexStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_millis(50), client.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return String::from_utf8(out).unwrap(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The bodies of the responses in `got`, in order (each has a
/// Content-Length).
fn bodies(got: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = got;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = &rest[..end];
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.parse().unwrap());
        out.push(&rest[end + 4..end + 4 + len]);
        rest = &rest[end + 4 + len..];
    }
    out
}

#[tokio::test(start_paused = true)]
async fn heads_and_bodies_arrive_in_pieces_of_any_size() {
    let (mut client, _task, _drain) = start(shared(), tower::service_fn(echo));
    let requests: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
        POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n";
    for piece in requests.chunks(3) {
        client.write_all(piece).await.unwrap();
        tokio::task::yield_now().await;
    }
    let got = read_now(&mut client).await;
    assert_eq!(bodies(&got), ["POST /a hello", "POST /b abcde"], "{got}");
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_are_answered_in_order() {
    let service = tower::service_fn(|req: Request<ClientBody>| async move {
        // The first is the slowest.
        if req.uri().path() == "/1" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        echo(req).await
    });
    let (mut client, _task, _drain) = start(shared(), service);
    client
        .write_all(b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut got = String::new();
    for _ in 0..100 {
        if bodies(&got).len() == 3 {
            break;
        }
        got.push_str(&read_now(&mut client).await);
    }
    assert_eq!(bodies(&got), ["GET /1 ", "POST /2 hi", "GET /3 "]);
}

#[tokio::test(start_paused = true)]
async fn expect_100_continue_is_answered_when_the_body_is_first_read() {
    let polled = Arc::new(AtomicBool::new(false));
    let service = {
        let polled = Arc::clone(&polled);
        tower::service_fn(move |req: Request<ClientBody>| {
            let polled = Arc::clone(&polled);
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                polled.store(true, Ordering::SeqCst);
                echo(req).await
            }
        })
    };
    let (mut client, _task, _drain) = start(shared(), service);
    client
        .write_all(b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    let mut continued = [0u8; 25];
    client.read_exact(&mut continued).await.unwrap();
    assert!(polled.load(Ordering::SeqCst), "only once the body is read");
    assert_eq!(&continued, b"HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"data").await.unwrap();
    let got = read_now(&mut client).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert_eq!(bodies(&got), ["PUT /up data"]);

    // Answered without reading the body: no 100, and the connection closes
    // (its body would be read as the next request).
    let service = tower::service_fn(|_req: Request<ClientBody>| async { Ok(text(417, "no")) });
    let (mut client, task, _drain) = start(shared(), service);
    client
        .write_all(b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    let got = read_now(&mut client).await;
    assert!(
        got.starts_with("HTTP/1.1 417 Expectation Failed\r\n"),
        "{got}"
    );
    assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
    assert!(matches!(task.await.unwrap(), Ended::Closed));
}

#[tokio::test(start_paused = true)]
async fn head_204_and_304_answers_carry_no_body() {
    let service = tower::service_fn(|req: Request<ClientBody>| async move {
        Ok(match req.uri().path() {
            "/204" => text(204, ""),
            "/304" => text(304, "stale"),
            _ => text(200, "abcd"),
        })
    });
    let (mut client, _task, _drain) = start(shared(), service);
    client
        .write_all(b"HEAD / HTTP/1.1\r\n\r\nGET /204 HTTP/1.1\r\n\r\nGET /304 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let got = read_now(&mut client).await;
    let answers: Vec<&str> = got.split_inclusive("\r\n\r\n").collect();
    assert_eq!(answers.len(), 5, "four heads, then a body: {got}");
    assert!(answers[0].starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(answers[0].contains("content-length: 4\r\n"), "{got}");
    assert!(answers[1].starts_with("HTTP/1.1 204 No Content\r\n"));
    assert!(answers[2].starts_with("HTTP/1.1 304 Not Modified\r\n"));
    for answer in &answers[1..3] {
        assert!(!answer.contains("content-length"), "{answer}");
        assert!(!answer.contains("transfer-encoding"), "{answer}");
    }
    assert!(
        got.ends_with("\r\n\r\nabcd"),
        "only the GET has a body: {got}"
    );
    assert!(answers[0].contains("\r\ndate: "), "{got}");
}

fn facts(version: Version, keep_alive: bool) -> Facts {
    Facts {
        version,
        head: false,
        connect: false,
        keep_alive,
        expect_continue: false,
    }
}

/// The head `parts` gets as the answer to a request of `version` (whose
/// client asked to keep the connection, or not), with the connection's fate
/// in `keep_alive`, and what `response::head` decided.
fn head_for(
    parts: &mut http::response::Parts,
    body: BodyLength,
    version: Version,
    client_keep_alive: bool,
    keep_alive: &mut bool,
) -> (String, response::Written) {
    let mut head = Vec::new();
    let written = response::head(
        parts,
        None,
        body,
        &facts(version, client_keep_alive),
        None,
        keep_alive,
        &mut head,
    );
    (String::from_utf8(head).unwrap(), written)
}

/// A client that takes vectored writes whole, and counts them.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    writes: usize,
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writes += 1;
        let before = this.bytes.len();
        for buf in bufs {
            this.bytes.extend_from_slice(buf);
        }
        Poll::Ready(Ok(this.bytes.len() - before))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The request id the body carries is written once, in place of the
/// node's own `x-request-id` lines, after the node's other lines.
#[test]
fn the_request_id_line_replaces_the_node_s_own() {
    let id = HeaderValue::from_static("levee-id");
    for node_own in [&[][..], &["node-own"][..], &["a", "b"][..]] {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts
            .headers
            .insert("x-node", HeaderValue::from_static("n"));
        for v in node_own {
            parts
                .headers
                .append("x-request-id", HeaderValue::from_static(v));
        }
        let mut head = Vec::new();
        let mut keep_alive = true;
        response::head(
            &mut parts,
            None,
            BodyLength::Known(0),
            &facts(Version::HTTP_11, true),
            Some(&id),
            &mut keep_alive,
            &mut head,
        );
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\nx-node: n\r\nx-request-id: levee-id\r\n"),
            "{node_own:?}: {head}"
        );
        assert_eq!(head.matches("x-request-id").count(), 1, "{head}");
    }
    // Without an id to write (a body that carries none), the node's stays.
    let (mut parts, ()) = Response::new(()).into_parts();
    parts
        .headers
        .insert("x-request-id", HeaderValue::from_static("node-own"));
    let (head, _) = head_for(
        &mut parts,
        BodyLength::Known(0),
        Version::HTTP_11,
        true,
        &mut true,
    );
    assert!(head.contains("x-request-id: node-own\r\n"), "{head}");
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_chunked_on_http11_and_close_delimited_on_http10() {
    let (mut parts, ()) = Response::new(()).into_parts();
    let mut keep_alive = true;
    let mut out = Out::for_head(256);
    let written = response::head(
        &mut parts,
        None,
        BodyLength::Unknown,
        &facts(Version::HTTP_11, true),
        None,
        &mut keep_alive,
        &mut out.head,
    );
    let mut encoder = written.encoder;
    assert_eq!(encoder, Encoder::Chunked);
    assert!(keep_alive && !written.last);
    // Frames ready together are gathered behind the head: one write.
    out.data(&mut encoder, Bytes::from_static(b"hello"), true);
    out.data(&mut encoder, Bytes::from(vec![b'x'; 2000]), true);
    out.data(&mut encoder, Bytes::from(vec![b'y'; 3000]), true);
    assert!(out.end(encoder));
    let mut wire = Wire::default();
    poll_fn(|cx| out.poll_write(&mut wire, cx)).await.unwrap();
    assert_eq!(wire.writes, 1);
    let wire = String::from_utf8(wire.bytes).unwrap();
    assert!(wire.starts_with("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: "));
    let body = &wire[wire.find("\r\n\r\n").unwrap() + 4..];
    let (x, y) = ("x".repeat(2000), "y".repeat(3000));
    assert_eq!(
        body,
        format!("5\r\nhello\r\n7D0\r\n{x}\r\nBB8\r\n{y}\r\n0\r\n\r\n")
    );

    let (mut parts, ()) = Response::new(()).into_parts();
    let mut keep_alive = false;
    let (head, written) = head_for(
        &mut parts,
        BodyLength::Unknown,
        Version::HTTP_10,
        false,
        &mut keep_alive,
    );
    assert_eq!(written.encoder, Encoder::Close);
    assert!(written.last);
    assert!(head.starts_with("HTTP/1.0 200 OK\r\ndate: "), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}

#[test]
fn connection_headers_follow_the_connections_fate() {
    // HTTP/1.0 with keep-alive: kept, and said so.
    let (mut parts, ()) = Response::new(()).into_parts();
    let mut keep_alive = true;
    let (head, written) = head_for(
        &mut parts,
        BodyLength::Known(2),
        Version::HTTP_10,
        true,
        &mut keep_alive,
    );
    assert!(
        head.contains("\r\nconnection: keep-alive\r\ncontent-length: 2\r\n"),
        "{head}"
    );
    assert!(keep_alive && !written.last);
    // HTTP/1.1 not kept (the client asked, a drain, an error).
    let (mut parts, ()) = Response::new(()).into_parts();
    let mut keep_alive = false;
    let (head, written) = head_for(
        &mut parts,
        BodyLength::Empty,
        Version::HTTP_11,
        true,
        &mut keep_alive,
    );
    assert!(
        head.contains("\r\nconnection: close\r\ncontent-length: 0\r\n"),
        "{head}"
    );
    assert!(written.last);
    // A status without a reason phrase gets hyper's placeholder.
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(599).unwrap();
    let (head, _) = head_for(
        &mut parts,
        BodyLength::Empty,
        Version::HTTP_11,
        true,
        &mut true,
    );
    assert!(head.starts_with("HTTP/1.1 599 <none>\r\n"), "{head}");
}

#[test]
fn repeated_fields_keep_their_order_and_framing_fields_are_joined() {
    let (mut parts, ()) = Response::new(()).into_parts();
    let h = &mut parts.headers;
    h.append("set-cookie", HeaderValue::from_static("a=1"));
    h.append("transfer-encoding", HeaderValue::from_static("gzip"));
    h.append("x-one", HeaderValue::from_static("1"));
    h.append("set-cookie", HeaderValue::from_static("b=2"));
    h.append("transfer-encoding", HeaderValue::from_static("chunked"));
    h.append("connection", HeaderValue::from_static("x-hop"));
    h.append("connection", HeaderValue::from_static("close"));
    h.append(
        "date",
        HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
    );
    let mut keep_alive = true;
    let (head, written) = head_for(
        &mut parts,
        BodyLength::Unknown,
        Version::HTTP_11,
        true,
        &mut keep_alive,
    );
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\
         transfer-encoding: gzip, chunked\r\nx-one: 1\r\nconnection: x-hop, close\r\n\
         date: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n"
    );
    assert_eq!(written.encoder, Encoder::Chunked);
    assert!(written.last && !keep_alive, "the node's close ends it");
    // A last transfer coding other than chunked gets chunked added.
    let (mut parts, ()) = Response::new(()).into_parts();
    parts
        .headers
        .append("transfer-encoding", HeaderValue::from_static("chunked"));
    parts
        .headers
        .append("transfer-encoding", HeaderValue::from_static("gzip"));
    let (head, _) = head_for(
        &mut parts,
        BodyLength::Unknown,
        Version::HTTP_11,
        true,
        &mut true,
    );
    assert!(
        head.contains("\r\ntransfer-encoding: chunked, gzip, chunked\r\n"),
        "{head}"
    );
}

#[tokio::test(start_paused = true)]
async fn http10_without_keep_alive_is_answered_in_http10_and_closed() {
    let (mut client, task, _drain) = start(shared(), tower::service_fn(echo));
    client
        .write_all(b"GET /old HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let got = read_now(&mut client).await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    assert_eq!(bodies(&got), ["GET /old "]);
    assert!(matches!(task.await.unwrap(), Ended::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_101_hands_the_socket_and_the_bytes_read_past_the_head_to_the_tunnel() {
    let tunnel = Arc::new(Mutex::new(None));
    let service = {
        let tunnel = Arc::clone(&tunnel);
        tower::service_fn(move |mut req: Request<ClientBody>| {
            let on = req.extensions_mut().remove::<OnUpgrade>().unwrap();
            *tunnel.lock().unwrap() = Some(tokio::spawn(async move {
                let mut io = on.await.unwrap();
                let mut got = [0u8; 10];
                io.read_exact(&mut got).await.unwrap();
                io.write_all(b"up").await.unwrap();
                got
            }));
            async { Ok(text(101, "")) }
        })
    };
    let (mut client, task, _drain) = start(shared(), service);
    client
        .write_all(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nearly")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(!head.contains("content-length"), "{head}");
    assert!(matches!(task.await.unwrap(), Ended::Upgraded));
    client.write_all(b"later").await.unwrap();
    let mut up = [0u8; 2];
    client.read_exact(&mut up).await.unwrap();
    assert_eq!(&up, b"up");
    let tunnel = tunnel.lock().unwrap().take().unwrap();
    assert_eq!(&tunnel.await.unwrap(), b"earlylater");
}

#[tokio::test(start_paused = true)]
async fn a_client_gone_mid_body_fails_the_body_and_gone_while_waiting_drops_the_call() {
    let (mut client, task, _drain) = start(shared(), tower::service_fn(echo));
    client
        .write_all(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let got = read_now(&mut client).await;
    assert_eq!(
        bodies(&got),
        [format!("POST / error: {}", ReadError::Closed).as_str()]
    );
    assert!(matches!(task.await.unwrap(), Ended::Closed));

    let dropped = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let service = {
        let dropped = Arc::clone(&dropped);
        tower::service_fn(move |_req: Request<ClientBody>| {
            let flag = Flag(Arc::clone(&dropped));
            async move {
                let _flag = flag;
                std::future::pending::<Result<Response<ProxyBody>, Infallible>>().await
            }
        })
    };
    let (mut client, task, _drain) = start(shared(), service);
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!dropped.load(Ordering::SeqCst));
    drop(client);
    assert!(matches!(task.await.unwrap(), Ended::Closed));
    assert!(dropped.load(Ordering::SeqCst), "the call is abandoned");
}

#[tokio::test(start_paused = true)]
async fn a_bad_head_after_a_good_one_is_refused_once_the_first_is_answered() {
    let (mut client, task, _drain) = start(shared(), tower::service_fn(echo));
    client
        .write_all(b"GET /1 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nBad Name: 1\r\n\r\n")
        .await
        .unwrap();
    let got = read_now(&mut client).await;
    let (first, answer) = got.split_at(got.find("HTTP/1.1 400").unwrap());
    assert_eq!(bodies(first), ["GET /1 "]);
    assert!(
        answer.contains("\r\nx-levee-error: bad-request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n400 bad-request: the request is malformed\n"),
        "{answer}"
    );
    drop(client);
    assert!(matches!(task.await.unwrap(), Ended::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_bad_chunked_body_fails_with_its_violation_and_the_connection_closes() {
    let service = tower::service_fn(|req: Request<ClientBody>| async move {
        let err = req.into_body().collect().await.unwrap_err();
        assert_eq!(err.violation(), Some(Violation::MissingChunkCrlf));
        Ok(text(400, "bad"))
    });
    let (mut client, task, _drain) = start(shared(), service);
    client
        .write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nxyz")
        .await
        .unwrap();
    let got = read_now(&mut client).await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
    drop(client);
    assert!(matches!(task.await.unwrap(), Ended::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_head_in_pieces_is_cut_at_header_read_timeout() {
    let shared = shared();
    let timeout = shared.state().config.server.header_read_timeout;
    let (mut client, task, _drain) = start(shared, tower::service_fn(echo));
    client
        .write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(matches!(task.await.unwrap(), Ended::Closed));
    assert_eq!(started.elapsed(), timeout);
    assert_eq!(read_now(&mut client).await, "", "closed without an answer");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_parks_after_park_after_with_its_socket_alone() {
    let (mut client, task, _drain) = start(shared(), tower::service_fn(echo));
    client.write_all(b"GET /1 HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(bodies(&read_now(&mut client).await), ["GET /1 "]);
    let Ended::Parked(mut io) = task.await.unwrap() else {
        panic!("parked");
    };
    io.write_all(b"still open").await.unwrap();
    let mut got = [0u8; 10];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"still open");
}

/// Requests that keep coming sooner than `PARK_AFTER` keep the connection
/// awake; it parks once idle for `PARK_AFTER` since the last one ended
/// (at the latest `PARK_RECHECK` after its timer's first firing).
#[tokio::test(start_paused = true)]
async fn a_connection_parks_only_once_idle_past_its_last_request() {
    let (mut client, server) = duplex(64 * 1024);
    let activity = Arc::new(ConnActivity::new());
    let task = {
        let activity = Arc::clone(&activity);
        tokio::spawn(async move {
            let shared = shared();
            let env = Env {
                shared: &shared,
                activity: &activity,
                peer: PEER.parse().unwrap(),
            };
            let closing = std::future::pending::<()>();
            tokio::pin!(closing);
            let mut service = tower::service_fn(echo);
            serve(
                server,
                BytesMut::new(),
                &mut service,
                closing.as_mut(),
                &mut false,
                false,
                env,
            )
            .await
        })
    };
    for i in 0..4 {
        tokio::time::sleep(PARK_AFTER / 2).await;
        assert!(!task.is_finished(), "awake before request {i}");
        client
            .write_all(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(bodies(&read_now(&mut client).await), [format!("GET /{i} ")]);
        // The request's end, as the connection's stack marks it.
        drop(activity.begin());
    }
    let last = Instant::now();
    let ended = tokio::time::timeout(PARK_AFTER + 2 * PARK_RECHECK, task)
        .await
        .expect("parks in time")
        .unwrap();
    assert!(matches!(ended, Ended::Parked(_)));
    let idle = last.elapsed();
    assert!(
        idle >= PARK_AFTER && idle <= PARK_AFTER + PARK_RECHECK,
        "{idle:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_closes_an_idle_connection_and_answers_a_head_under_way_with_close() {
    let (_client, task, drain) = start(shared(), tower::service_fn(echo));
    drain.send_replace(true);
    assert!(matches!(task.await.unwrap(), Ended::Closed));

    let (mut client, task, drain) = start(shared(), tower::service_fn(echo));
    client.write_all(b"GET /1 HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    drain.send_replace(true);
    client.write_all(b"\r\n").await.unwrap();
    let got = read_now(&mut client).await;
    assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
    assert_eq!(bodies(&got), ["GET /1 "]);
    assert!(matches!(task.await.unwrap(), Ended::Closed));
}

/// A client gone before levee's answer to its refused head still gets its
/// access log line, marked incomplete, with no body bytes sent.
#[tokio::test]
async fn a_refused_head_is_logged_even_when_its_answer_never_went_out() {
    let dir = std::env::temp_dir().join(format!("levee-h1-refused-log-{}", std::process::id()));
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
    // A pipe too small for the answer, whose client never reads.
    let (mut client, server) = duplex(16);
    let shared = shared_with(Arc::new(state));
    let refusing = tokio::spawn(async move {
        let activity = ConnActivity::new();
        let env = Env {
            shared: &shared,
            activity: &activity,
            peer: PEER.parse().unwrap(),
        };
        let head = BytesMut::from(&b"DELETE /x?y HTTP/1.1\r\nBad Name: 1\r\n\r\n"[..]);
        refuse::refuse(server, head, Violation::BadFieldName, env).await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    refusing.abort();
    let _ = refusing.await;
    client.shutdown().await.unwrap();

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
    assert_eq!(line["client"], PEER);
    assert_eq!(line["method"], "DELETE");
    assert_eq!(line["path"], "/x");
    assert_eq!(line["bytes_out"], 0);
    assert_eq!(line["complete"], false);
}

#[test]
fn a_request_is_built_from_its_head_without_a_second_parse() {
    let head = Bytes::from_static(
        b"\r\nPOST /p?q=1 HTTP/1.0\r\nHost:  example.com \r\nConnection: Keep-Alive\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    );
    let mut req = http::Request::new(());
    let facts = request::build(head, 4, &mut req).unwrap();
    assert_eq!(req.method(), Method::POST);
    assert_eq!(req.uri(), "/p?q=1");
    assert_eq!(req.version(), Version::HTTP_10);
    assert_eq!(req.headers()["host"], "example.com");
    let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
    assert_eq!(xa, ["1", "2"]);
    assert!(facts.keep_alive && !facts.head && !facts.connect);
}

/// The parts a new request already has (GET, `/`, HTTP/1.1) are kept, and
/// every other method, target and version replaces them.
#[test]
fn a_request_keeps_or_replaces_each_part_of_a_new_one() {
    let cases: [(&[u8], Method, &str, Version); 6] = [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            Method::GET,
            "/",
            Version::HTTP_11,
        ),
        (
            b"GET /x HTTP/1.0\r\n\r\n",
            Method::GET,
            "/x",
            Version::HTTP_10,
        ),
        (
            b"HEAD / HTTP/1.1\r\n\r\n",
            Method::HEAD,
            "/",
            Version::HTTP_11,
        ),
        (
            b"get / HTTP/1.1\r\n\r\n",
            Method::from_bytes(b"get").unwrap(),
            "/",
            Version::HTTP_11,
        ),
        (
            b"GETS / HTTP/1.1\r\n\r\n",
            Method::from_bytes(b"GETS").unwrap(),
            "/",
            Version::HTTP_11,
        ),
        (
            b"CONNECT a:1 HTTP/1.1\r\n\r\n",
            Method::CONNECT,
            "a:1",
            Version::HTTP_11,
        ),
    ];
    for (head, method, uri, version) in cases {
        let mut req = http::Request::new(());
        // Only the first has a field line.
        let fields = usize::from(head.starts_with(b"GET / "));
        let facts = request::build(Bytes::copy_from_slice(head), fields, &mut req).unwrap();
        assert_eq!(req.method(), method);
        assert_eq!(req.uri(), uri);
        assert_eq!(req.version(), version);
        assert_eq!(facts.version, version);
        assert_eq!(facts.head, method == Method::HEAD);
        assert_eq!(facts.connect, method == Method::CONNECT);
        assert_eq!(req.headers().len(), fields);
    }
}

#[test]
fn a_chunked_body_decodes_the_same_however_it_is_cut() {
    let body = b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\nGET";
    let whole = pieces::chunked_in_pieces(body, &[]).unwrap();
    assert_eq!(
        whole,
        pieces::Decoded {
            data: b"abc0123456789abcdef".to_vec(),
            done: true,
            after: 3,
        }
    );
    for a in 0..body.len() {
        for b in a..body.len() {
            assert_eq!(pieces::chunked_in_pieces(body, &[a, b]).unwrap(), whole);
        }
    }
    let bad = b"3\r\nabc\r\n2\r\nxyz";
    for cut in 0..bad.len() {
        assert!(matches!(
            pieces::chunked_in_pieces(bad, &[cut]),
            Err(ReadError::Framing(Violation::MissingChunkCrlf))
        ));
    }
}

/// A client that takes one byte per write: every piece still goes out, in
/// order.
#[derive(Default)]
struct Trickle(Vec<u8>);

impl AsyncWrite for Trickle {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().0.extend_from_slice(&buf[..1]);
        Poll::Ready(Ok(1))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn gathered_frames_go_out_in_order_however_the_stream_takes_them() {
    let mut out = Out::for_head(16);
    out.head.extend_from_slice(b"HEAD|");
    let mut encoder = Encoder::Length(4000);
    out.data(&mut encoder, Bytes::from(vec![b'a'; 1500]), true);
    out.data(&mut encoder, Bytes::from_static(b"bb"), true);
    out.data(&mut encoder, Bytes::from(vec![b'c'; 2498]), true);
    assert!(out.ended, "the Content-Length is reached");
    let mut wire = Trickle::default();
    poll_fn(|cx| out.poll_write(&mut wire, cx)).await.unwrap();
    let expected = [&b"HEAD|"[..], &[b'a'; 1500], b"bb", &[b'c'; 2498]].concat();
    assert_eq!(wire.0, expected);
    assert!(out.is_done());
}

/// A node's field lines written from [`crate::h1::Fields`] come out as
/// they did from the response's map, stripped of hop-by-hop lines.
#[test]
fn node_fields_are_written_as_the_stripped_map_was() {
    let heads: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\nDate: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-A: 1\r\nset-cookie: b=2\r\nConnection: keep-alive, X-A\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 404 Gone Away\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nX-Request-Id: node\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nX-Empty:\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nConnection: close\r\nProxy-Connection: x\r\nTE: trailers\r\n\r\n",
    ];
    let id = HeaderValue::from_static("levee-id");
    for raw in heads {
        for body in [BodyLength::Empty, BodyLength::Known(5), BodyLength::Unknown] {
            for (version, client_keep_alive, method) in [
                (Version::HTTP_11, true, Method::GET),
                (Version::HTTP_11, false, Method::HEAD),
                (Version::HTTP_10, true, Method::GET),
            ] {
                for request_id in [None, Some(&id)] {
                    let mut facts = facts(version, client_keep_alive);
                    facts.head = method == Method::HEAD;
                    let parse = || {
                        let mut buf = BytesMut::from(raw);
                        crate::h1::decode::parse_head(&mut buf, &Method::GET)
                            .unwrap()
                            .unwrap()
                    };
                    let from_map = parse();
                    let (mut map_parts, ()) = from_map.response.into_parts();
                    map_parts.headers = from_map.fields.into_map();
                    crate::headers::strip_hop_by_hop(&mut map_parts.headers);
                    let from_fields = parse();
                    let (mut parts, ()) = from_fields.response.into_parts();
                    let (mut want, mut got) = (Vec::new(), Vec::new());
                    let (mut ka_want, mut ka_got) = (true, true);
                    let w = response::head(
                        &mut map_parts,
                        None,
                        body,
                        &facts,
                        request_id,
                        &mut ka_want,
                        &mut want,
                    );
                    let g = response::head(
                        &mut parts,
                        Some(&from_fields.fields),
                        body,
                        &facts,
                        request_id,
                        &mut ka_got,
                        &mut got,
                    );
                    let (want, got) = (
                        String::from_utf8(want).unwrap(),
                        String::from_utf8(got).unwrap(),
                    );
                    let date = |h: &str| {
                        h.lines()
                            .filter(|l| !l.starts_with("date: "))
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    assert_eq!(
                        date(&got),
                        date(&want),
                        "{raw:?} {body:?} {version:?} {method}"
                    );
                    assert_eq!((g.encoder, g.last, ka_got), (w.encoder, w.last, ka_want));
                }
            }
        }
    }
}
