//! The codec on bytes (one at a time where it matters) and the client over
//! an in-memory connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::decode::{parse_head, BodyError, Decoded, Decoder, Framing, HeadError, MAX_HEAD};
use super::encode::{self, BodyLength, Encoder};
use super::{
    send, Conn, Error, Reuse, SendError, SPARE, SPARE_BUFFERS, SPARE_MAX_BYTES, SPARE_WRITE,
};
use crate::body::RequestBody;

fn head(bytes: &[u8], method: Method) -> Result<Option<super::decode::Parsed>, HeadError> {
    parse_head(&mut BytesMut::from(bytes), &method)
}

fn framing(bytes: &[u8], method: Method) -> Framing {
    head(bytes, method).unwrap().unwrap().framing
}

#[test]
fn a_head_fed_one_byte_at_a_time_parses_once_whole() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok";
    let mut buf = BytesMut::new();
    let end = raw.len() - 2;
    for (i, b) in raw[..end].iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = parse_head(&mut buf, &Method::GET).unwrap();
        assert_eq!(got.is_some(), i == end - 1, "after {} bytes", i + 1);
        if let Some(p) = got {
            assert_eq!(p.response.status(), StatusCode::OK);
            assert_eq!(p.fields.into_map()["x-a"], "b");
            assert_eq!(p.framing, Framing::Length(2));
            assert!(p.keep_alive);
            assert!(buf.is_empty(), "the head is taken out of the buffer");
        }
    }
}

#[test]
fn interim_responses_are_skipped_but_101_is_final() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"[..],
    );
    let p = parse_head(&mut buf, &Method::POST).unwrap().unwrap();
    assert_eq!(p.response.status(), StatusCode::CREATED);
    assert_eq!(p.framing, Framing::Empty);
    // Only an interim response so far: wait for the final one.
    let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
    assert!(parse_head(&mut buf, &Method::POST).unwrap().is_none());
    assert!(buf.is_empty());
    let p = head(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert!(p.upgrade && !p.keep_alive);
}

#[test]
fn bodiless_responses_by_status_and_method() {
    for status in ["204 No Content", "304 Not Modified"] {
        let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(framing(raw.as_bytes(), Method::GET), Framing::Empty);
    }
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(framing(raw, Method::HEAD), Framing::Empty);
    assert_eq!(framing(raw, Method::GET), Framing::Length(10));
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_eq!(framing(raw, Method::GET), Framing::Chunked);
    let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
    assert_eq!(framing(raw, Method::GET), Framing::Close);
    assert_eq!(
        framing(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET),
        Framing::Close
    );
}

#[test]
fn content_length_must_be_one_number() {
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(framing(ok, Method::GET), Framing::Length(2));
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    ] {
        let got = head(bad, Method::GET);
        assert!(matches!(got, Err(HeadError::ContentLength)), "{got:?}");
    }
}

#[test]
fn broken_heads_are_refused() {
    let both =
        b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(matches!(head(both, Method::GET), Err(HeadError::Framing)));
    let te10 = b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(matches!(
        head(te10, Method::GET),
        Err(HeadError::TransferEncoding10)
    ));
    assert!(matches!(
        head(b"NOT HTTP AT ALL\r\n\r\n", Method::GET),
        Err(HeadError::Syntax(_))
    ));
    assert!(head(b"HTTP/1.1 2x0 OK\r\n\r\n", Method::GET).is_err());
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(matches!(
        head(&many, Method::GET),
        Err(HeadError::Syntax(_))
    ));
    // Never whole within the bound.
    let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    big.resize(MAX_HEAD, b'a');
    assert!(matches!(head(&big, Method::GET), Err(HeadError::TooLarge)));
    big.truncate(MAX_HEAD - 1);
    assert!(
        head(&big, Method::GET).unwrap().is_none(),
        "under the bound: wait"
    );
}

#[test]
fn keep_alive_follows_version_and_connection() {
    let cases: [(&[u8], bool); 6] = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", false),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\n\r\n", false),
    ];
    for (raw, keep) in cases {
        let p = head(raw, Method::GET).unwrap().unwrap();
        assert_eq!(p.keep_alive, keep, "{}", String::from_utf8_lossy(raw));
    }
    let p = head(b"HTTP/1.0 200 OK\r\n\r\n", Method::GET)
        .unwrap()
        .unwrap();
    assert_eq!(p.response.version(), Version::HTTP_10);
}

/// The data, the trailers, and the bytes left after the body.
type Decoded3 = (Vec<u8>, Option<http::HeaderMap>, Vec<u8>);

/// Decodes `raw` fed one byte at a time.
fn decode_bytewise(mut decoder: Decoder, raw: &[u8]) -> Result<Decoded3, BodyError> {
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(d) => data.extend_from_slice(&d),
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => {
                let mut left = buf.to_vec();
                left.extend_from_slice(&raw[fed..]);
                return Ok((data, trailers, left));
            }
            Decoded::More if fed < raw.len() => {
                buf.extend_from_slice(&raw[fed..=fed]);
                fed += 1;
            }
            Decoded::More => {
                decoder.eof()?;
            }
        }
    }
}

#[test]
fn chunked_bodies_byte_by_byte() {
    let raw = b"5;ext=1\r\nhello\r\n6 \t;x\r\n world\r\n0\r\nx-t: 1\r\n\r\nGARBAGE";
    let (data, trailers, left) = decode_bytewise(Decoder::new(Framing::Chunked), raw).unwrap();
    assert_eq!(data, b"hello world");
    assert_eq!(trailers.unwrap()["x-t"], "1");
    assert_eq!(left, b"GARBAGE", "bytes after the body stay");
    let (data, trailers, left) = decode_bytewise(
        Decoder::new(Framing::Chunked),
        b"a\r\n0123456789\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(data, b"0123456789");
    assert!(trailers.is_none() && left.is_empty());
}

#[test]
fn broken_chunked_bodies_fail() {
    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5 x\r\nhello\r\n",
        b"fffffffffffffffff\r\n",
        b"5\r\nhel",
    ] {
        let got = decode_bytewise(Decoder::new(Framing::Chunked), bad);
        assert!(got.is_err(), "{}: {got:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn length_and_close_delimited_bodies() {
    let (data, _, left) = decode_bytewise(Decoder::new(Framing::Length(3)), b"abcdef").unwrap();
    assert_eq!((&data[..], &left[..]), (&b"abc"[..], &b"def"[..]));
    let got = decode_bytewise(Decoder::new(Framing::Length(5)), b"abc");
    assert!(matches!(got, Err(BodyError::Incomplete)));
    let (data, _, _) = decode_bytewise(Decoder::new(Framing::Close), b"to the end").unwrap();
    assert_eq!(data, b"to the end");
}

#[test]
fn a_status_line_without_a_reason_phrase_parses() {
    // httparse gives these reasons (none, or obs-text) as a `""` that is
    // not a slice of the buffer.
    for raw in [
        &b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"[..],
        b"HTTP/1.1 204\nX-Empty:\n\n",
        b"HTTP/1.1 200 \xe9t\xe9\r\nX-Empty: \r\nContent-Length: 0\r\n\r\n",
    ] {
        let p = head(raw, Method::GET).unwrap().unwrap();
        let reason = p.response.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(
            reason.map(|r| r.as_bytes()),
            Some(&b""[..]),
            "as hyper: an empty reason is kept"
        );
    }
    let p = head(b"HTTP/1.1 204\r\nX-Empty:\r\n\r\n", Method::GET)
        .unwrap()
        .unwrap();
    assert_eq!(p.fields.into_map()["x-empty"], "");
}

#[test]
fn chunk_extensions_hold_no_control_bytes() {
    for bad in [
        &b"5;a\rb\r\nhello\r\n0\r\n\r\n"[..],
        b"5;a\x00\r\nhello\r\n0\r\n\r\n",
        b"5;a=\x7f\r\nhello\r\n0\r\n\r\n",
    ] {
        let got = decode_bytewise(Decoder::new(Framing::Chunked), bad);
        assert!(got.is_err(), "{}: {got:?}", String::from_utf8_lossy(bad));
    }
    let (data, _, _) = decode_bytewise(
        Decoder::new(Framing::Chunked),
        b"5 ; a=\"b\tc\"\r\nhello\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(data, b"hello");
}

#[test]
fn a_trailer_line_ending_without_cr_fails() {
    for bad in [
        // httparse would end the section at the bare LF and the "response"
        // after it would be eaten as trailers.
        &b"0\r\nX: y\n\nHTTP/1.1 200 OK\r\n\r\n"[..],
        b"0\r\nX: y\nZ: w\r\n\r\n",
        b"0\r\n\nX: y\r\n\r\n",
    ] {
        let got = decode_bytewise(Decoder::new(Framing::Chunked), bad);
        assert!(
            matches!(got, Err(BodyError::Trailers(_))),
            "{}: {got:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn a_long_chunk_size_line_fails_however_it_arrives() {
    let mut raw = b"5".to_vec();
    raw.resize(20_000, b' ');
    raw.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let whole = Decoder::new(Framing::Chunked).decode(&mut BytesMut::from(&raw[..]));
    assert!(matches!(whole, Err(BodyError::Chunked(_))), "{whole:?}");
    let bytewise = decode_bytewise(Decoder::new(Framing::Chunked), &raw);
    assert!(
        matches!(bytewise, Err(BodyError::Chunked(_))),
        "{bytewise:?}"
    );
}

#[test]
fn a_response_reads_the_same_in_any_pieces() {
    use super::pieces::{response_in_pieces, Failed};
    let chunked = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n";
    /// The bytes, whether the node closes after them, and the data, end
    /// and reusability read.
    type Case<'a> = (
        &'a [u8],
        bool,
        Result<(&'a [u8], Option<usize>, bool), Failed>,
    );
    let cases: [Case<'_>; 6] = [
        (chunked, false, Ok((b"hello", Some(chunked.len()), true))),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX",
            false,
            Ok((b"ok", Some(40), false)),
        ),
        (
            b"HTTP/1.1 200 OK\r\n\r\nto the end",
            true,
            Ok((b"to the end", Some(29), false)),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok",
            true,
            Err(Failed::Body),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            false,
            Err(Failed::Head),
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
            Ok((b"", Some(48), true)),
        ),
    ];
    for (raw, closed, want) in cases {
        for cuts in [&[][..], &[1, 7, 30], &(0..raw.len()).collect::<Vec<_>>()] {
            let got = response_in_pieces(raw, cuts, &Method::GET, closed)
                .map(|r| r.unwrap())
                .map(|r| (r.data, r.end, r.reusable));
            let got = got
                .as_ref()
                .map(|(d, e, r)| (&d[..], *e, *r))
                .map_err(|e| *e);
            assert_eq!(
                got,
                want,
                "{} cut at {cuts:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}

proptest! {
    /// Any data, chunked in any sizes and read in any splits, comes back whole.
    #[test]
    fn chunked_round_trip(data in proptest::collection::vec(any::<u8>(), 0..600), sizes in proptest::collection::vec(1usize..70, 1..20), split in 1usize..40) {
        let mut raw = Vec::new();
        let mut rest = &data[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            encode::chunk_size(n, &mut raw);
            raw.extend_from_slice(&rest[..n]);
            raw.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            i += 1;
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        let mut decoder = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf).unwrap() {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::Trailers(_) => prop_assert!(false, "no trailers sent"),
                Decoded::End => break,
                Decoded::More => {
                    prop_assert!(fed < raw.len(), "wants more than was sent");
                    let end = (fed + split).min(raw.len());
                    buf.extend_from_slice(&raw[fed..end]);
                    fed = end;
                }
            }
        }
        prop_assert_eq!(out, data);
        prop_assert_eq!(fed, raw.len());
    }
}

fn encoded(req: Request<()>, body: BodyLength) -> (String, Encoder) {
    let (mut parts, ()) = req.into_parts();
    let mut dst = Vec::new();
    let enc = encode::head(&mut parts, body, None, &mut dst);
    (String::from_utf8(dst).unwrap(), enc)
}

#[test]
fn request_framing_follows_hyper() {
    let get = || Request::get("/a?b=1").header("host", "n").body(()).unwrap();
    let (head, enc) = encoded(get(), BodyLength::Empty);
    assert_eq!(head, "GET /a?b=1 HTTP/1.1\r\nhost: n\r\n\r\n");
    assert_eq!(enc, Encoder::Length(0));
    let (head, enc) = encoded(get(), BodyLength::Unknown);
    assert_eq!(
        enc,
        Encoder::Length(0),
        "GET with an unknown body sends none"
    );
    assert!(!head.contains("transfer-encoding"));
    let post = || Request::post("/").body(()).unwrap();
    let (head, enc) = encoded(post(), BodyLength::Known(5));
    assert!(head.contains("content-length: 5\r\n"), "{head}");
    assert_eq!(enc, Encoder::Length(5));
    let (head, enc) = encoded(post(), BodyLength::Unknown);
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert_eq!(enc, Encoder::Chunked);
    let declared = Request::post("/")
        .header("content-length", "9")
        .body(())
        .unwrap();
    assert_eq!(encoded(declared, BodyLength::Unknown).1, Encoder::Length(9));
    let invalid = Request::post("/")
        .header("content-length", "1, 2")
        .body(())
        .unwrap();
    let (head, enc) = encoded(invalid, BodyLength::Unknown);
    assert_eq!(enc, Encoder::Chunked);
    assert!(
        !head.contains("content-length"),
        "never beside chunked: {head}"
    );
    let old = Request::post("/")
        .version(Version::HTTP_10)
        .body(())
        .unwrap();
    let (head, enc) = encoded(old, BodyLength::Unknown);
    assert!(head.starts_with("POST / HTTP/1.0\r\n"), "{head}");
    assert_eq!(enc, Encoder::Length(0), "HTTP/1.0 has no chunked");
    let mut line = Vec::new();
    encode::chunk_size(0x1a2b, &mut line);
    assert_eq!(line, b"1A2B\r\n");
}

/// Keeps the connection a body hands back.
#[derive(Clone, Default)]
struct Kept(Arc<Mutex<Option<Box<Conn<DuplexStream>>>>>);

impl Reuse<DuplexStream> for Kept {
    fn reuse(self, conn: Box<Conn<DuplexStream>>) {
        *self.0.lock().unwrap() = Some(conn);
    }
}

impl Kept {
    fn take(&self) -> Option<Box<Conn<DuplexStream>>> {
        self.0.lock().unwrap().take()
    }
}

fn get(path: &str) -> Request<RequestBody> {
    Request::get(path)
        .header("host", "node")
        .body(RequestBody::kept(Bytes::new()))
        .unwrap()
}

/// Reads one request head (and `body` more bytes) from the node's end.
async fn read_request(node: &mut DuplexStream, body: usize) -> String {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        node.read_exact(&mut byte).await.unwrap();
        seen.push(byte[0]);
    }
    let mut rest = vec![0u8; body];
    node.read_exact(&mut rest).await.unwrap();
    seen.extend_from_slice(&rest);
    String::from_utf8(seen).unwrap()
}

#[tokio::test]
async fn a_connection_goes_back_once_its_body_ends() {
    let (client, mut node) = tokio::io::duplex(64);
    let kept = Kept::default();
    let call = tokio::spawn(send(Conn::new(client), get("/one"), None, kept.clone()));
    assert_eq!(
        read_request(&mut node, 0).await,
        "GET /one HTTP/1.1\r\nhost: node\r\n\r\n"
    );
    // One byte at a time.
    for b in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" {
        node.write_all(&[*b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    let resp = call.await.unwrap().unwrap();
    assert!(kept.take().is_none(), "not while its body is unread");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hello");
    let mut conn = kept.take().expect("handed back");
    assert!(conn.is_open());
    // The same connection carries the next request.
    let call = tokio::spawn(send(conn, get("/two"), None, kept.clone()));
    assert!(read_request(&mut node, 0).await.starts_with("GET /two "));
    node.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .unwrap();
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        kept.take().is_some(),
        "a bodiless answer hands it back at once"
    );
}

#[tokio::test]
async fn connections_that_cannot_carry_another_request_are_dropped() {
    for answer in [
        // Bytes nobody asked for after the response.
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ] {
        let (client, mut node) = tokio::io::duplex(1024);
        let kept = Kept::default();
        let call = tokio::spawn(send(Conn::new(client), get("/"), None, kept.clone()));
        read_request(&mut node, 0).await;
        node.write_all(answer).await.unwrap();
        let resp = call.await.unwrap().unwrap();
        resp.into_body().collect().await.unwrap();
        assert!(kept.take().is_none(), "{}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn a_close_delimited_body_ends_with_the_connection() {
    let (client, mut node) = tokio::io::duplex(1024);
    let kept = Kept::default();
    let call = tokio::spawn(send(Conn::new(client), get("/"), None, kept.clone()));
    read_request(&mut node, 0).await;
    node.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        .await
        .unwrap();
    drop(node);
    let resp = call.await.unwrap().unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "all of it");
    assert!(kept.take().is_none());
}

#[tokio::test]
async fn a_kept_body_goes_with_its_head() {
    let (client, mut node) = tokio::io::duplex(4096);
    let req = Request::post("/p")
        .body(RequestBody::kept(Bytes::from_static(b"payload")))
        .unwrap();
    let call = tokio::spawn(send(Conn::new(client), req, None, Kept::default()));
    let seen = read_request(&mut node, 7).await;
    assert_eq!(seen, "POST /p HTTP/1.1\r\ncontent-length: 7\r\n\r\npayload");
    node.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn a_request_the_node_never_read_comes_back() {
    let (client, node) = tokio::io::duplex(64);
    drop(node);
    let req = Request::post("/p")
        .body(RequestBody::kept(Bytes::from_static(b"payload")))
        .unwrap();
    match send(Conn::new(client), req, None, Kept::default()).await {
        Err(SendError::Unsent(req, Error::Io(_))) => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "payload", "the body comes back whole");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_node_that_closes_after_reading_the_request_fails_it_as_sent() {
    let (client, mut node) = tokio::io::duplex(1024);
    let call = tokio::spawn(send(Conn::new(client), get("/"), None, Kept::default()));
    read_request(&mut node, 0).await;
    drop(node);
    let got = call.await.unwrap();
    assert!(
        matches!(got, Err(SendError::Sent(Error::Closed))),
        "{got:?}"
    );
}

#[tokio::test]
async fn an_idle_connection_the_node_closed_or_wrote_to_is_not_open() {
    let (client, node) = tokio::io::duplex(64);
    let mut conn = Conn::new(client);
    assert!(conn.is_open());
    drop(node);
    assert!(!conn.is_open());
    let (client, mut node) = tokio::io::duplex(64);
    let mut conn = Conn::new(client);
    node.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        .await
        .unwrap();
    assert!(!conn.is_open(), "unasked bytes: the node is out of step");
}

#[tokio::test]
async fn a_node_connection_holds_a_read_buffer_only_while_it_holds_bytes() {
    let (client, mut node) = tokio::io::duplex(1024);
    let mut conn = Conn::new(client);
    assert!(conn.is_open());
    assert_eq!(
        conn.read.capacity(),
        0,
        "a read that found nothing gives its buffer back"
    );
    let kept = Kept::default();
    let call = tokio::spawn(send(conn, get("/"), None, kept.clone()));
    read_request(&mut node, 0).await;
    node.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    let conn = kept.take().expect("handed back");
    assert_eq!(conn.read.capacity(), 0, "idle in its pool: no read buffer");
    let spare = SPARE.with_borrow(Vec::len);
    assert!(
        (1..=SPARE_BUFFERS).contains(&spare),
        "the buffer waits for the thread's next read: {spare}"
    );
}

#[tokio::test]
async fn a_node_connection_holds_a_write_buffer_only_while_it_writes() {
    // A node that takes eight bytes at a time: the head goes in many writes.
    let (client, mut node) = tokio::io::duplex(8);
    let kept = Kept::default();
    let path = format!("/{}", "p".repeat(100));
    let call = tokio::spawn(send(Conn::new(client), get(&path), None, kept.clone()));
    assert_eq!(
        read_request(&mut node, 0).await,
        format!("GET {path} HTTP/1.1\r\nhost: node\r\n\r\n")
    );
    node.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
    let conn = kept.take().expect("handed back");
    assert_eq!(
        conn.write.capacity(),
        0,
        "idle in its pool: no write buffer"
    );
    let spare = SPARE_WRITE.take();
    assert!(spare.is_empty() && spare.capacity() > 0, "{spare:?}");
    let at = spare.as_ptr();
    SPARE_WRITE.set(spare);
    // The next request's head is encoded into the same buffer.
    let call = tokio::spawn(send(conn, get("/two"), None, kept.clone()));
    assert!(read_request(&mut node, 0).await.starts_with("GET /two "));
    node.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .unwrap();
    call.await.unwrap().unwrap();
    let spare = SPARE_WRITE.take();
    assert_eq!(spare.as_ptr(), at);
}

#[tokio::test]
async fn a_buffer_grown_for_a_large_body_is_not_kept_as_a_spare() {
    let (client, mut node) = tokio::io::duplex(64 * 1024);
    let kept = Kept::default();
    let call = tokio::spawn(send(Conn::new(client), get("/"), None, kept.clone()));
    read_request(&mut node, 0).await;
    const LEN: usize = 48 * 1024;
    const PIECE: usize = 6 * 1024;
    node.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = call.await.unwrap().unwrap().into_body();
    let mut read = 0;
    while read < LEN {
        // Each read finds a piece, much less than the room made for the
        // rest of the body; between pieces the connection holds no buffer.
        node.write_all(&[b'x'; PIECE]).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        read += frame.into_data().unwrap().len();
        SPARE.with_borrow(|spare| {
            let sizes: Vec<usize> = spare.iter().map(|b| b.capacity()).collect();
            assert!(
                sizes.iter().all(|&c| c <= SPARE_MAX_BYTES),
                "spares stay small: {sizes:?}"
            );
        });
    }
    assert_eq!(read, LEN);
    assert!(body.frame().await.is_none());
    assert!(kept.take().is_some(), "handed back");
}

#[tokio::test]
async fn an_upgrade_hands_over_the_connection_with_what_followed_the_head() {
    let (client, mut node) = tokio::io::duplex(1024);
    let call = tokio::spawn(send(Conn::new(client), get("/ws"), None, Kept::default()));
    read_request(&mut node, 0).await;
    node.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nearly")
        .await
        .unwrap();
    let mut resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgrade = resp
        .extensions_mut()
        .remove::<super::Upgrade<DuplexStream>>()
        .unwrap();
    let mut io = upgrade.take().unwrap();
    let mut got = [0u8; 5];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"early");
    node.write_all(b"later").await.unwrap();
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"later");
    io.write_all(b"up").await.unwrap();
    let mut up = [0u8; 2];
    node.read_exact(&mut up).await.unwrap();
    assert_eq!(&up, b"up");
}

#[tokio::test]
async fn a_streamed_body_goes_chunked_and_on_while_the_response_is_read() {
    let incoming = crate::stack::testing::client_request_with(
        Method::POST,
        "/up",
        &[("transfer-encoding", "chunked")],
        "a body of unknown length",
    )
    .await;
    let (parts, incoming) = incoming.into_parts();
    let mut req = Request::from_parts(
        parts,
        RequestBody::stream(incoming, std::time::Duration::from_secs(10), None),
    );
    req.headers_mut().remove("transfer-encoding");
    // A small pipe: the body cannot all be written before the node reads.
    let (client, mut node) = tokio::io::duplex(16);
    let kept = Kept::default();
    let call = tokio::spawn(send(Conn::new(client), req, None, kept.clone()));
    let head = read_request(&mut node, 0).await;
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    // The node answers before it has read the body...
    node.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    let resp = call.await.unwrap().unwrap();
    let reading = tokio::spawn(resp.into_body().collect());
    // ...then reads it whole, and only then ends its own.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"0\r\n\r\n") {
        node.read_exact(&mut byte).await.unwrap();
        seen.push(byte[0]);
    }
    let seen = String::from_utf8(seen).unwrap();
    assert!(seen.contains("a body of unknown length"), "{seen}");
    node.write_all(b"done").await.unwrap();
    let body = reading.await.unwrap().unwrap().to_bytes();
    assert_eq!(body, "done");
    assert!(
        kept.take().is_some(),
        "request and response both whole: reused"
    );
}

#[tokio::test]
async fn a_body_of_known_length_already_sent_is_read_in_two_reads() {
    let (client, mut node) = tokio::io::duplex(128 * 1024);
    let kept = Kept::default();
    let call = tokio::spawn(send(Conn::new(client), get("/big"), None, kept.clone()));
    read_request(&mut node, 0).await;
    let body = vec![b'x'; 40_000];
    let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n".to_vec();
    answer.extend_from_slice(&body);
    node.write_all(&answer).await.unwrap();
    let mut resp = call.await.unwrap().unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = resp.body_mut().frame().await {
        frames.push(frame.unwrap().into_data().unwrap().len());
    }
    assert_eq!(frames.iter().sum::<usize>(), body.len());
    // The head's read fills the first 8 KiB; the rest is due, and comes
    // in one more read rather than 8 KiB at a time.
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(kept.take().is_some());
}

/// A `LEN`-byte answer on `conn`; the frames its body came in, and the
/// connection back.
async fn answer_of(
    conn: Box<Conn<DuplexStream>>,
    node: &mut DuplexStream,
    len: usize,
) -> (usize, Box<Conn<DuplexStream>>) {
    let kept = Kept::default();
    let call = tokio::spawn(send(conn, get("/"), None, kept.clone()));
    read_request(node, 0).await;
    let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    answer.resize(answer.len() + len, b'x');
    node.write_all(&answer).await.unwrap();
    let mut resp = call.await.unwrap().unwrap();
    let (mut frames, mut got) = (0, 0);
    while let Some(frame) = resp.body_mut().frame().await {
        got += frame.unwrap().into_data().unwrap().len();
        frames += 1;
    }
    assert_eq!(got, len);
    (frames, kept.take().expect("handed back"))
}

#[tokio::test]
async fn answers_that_fill_the_head_read_get_room_to_come_in_one_read() {
    SPARE.with_borrow_mut(Vec::clear);
    let (client, mut node) = tokio::io::duplex(256 * 1024);
    let mut conn = Conn::new(client);
    let mut frames = Vec::new();
    for _ in 0..4 {
        let (n, back) = answer_of(conn, &mut node, 16 * 1024).await;
        frames.push(n);
        conn = back;
    }
    // 8 KiB of room, then 16 KiB (both filled: two reads), then 32 KiB.
    assert_eq!(frames, [2, 2, 1, 1]);
    assert_eq!(conn.head_room, 32 * 1024);
    // One small answer keeps the room; two in a row halve it.
    let (_, conn) = answer_of(conn, &mut node, 10).await;
    assert_eq!(conn.head_room, 32 * 1024);
    let (_, conn) = answer_of(conn, &mut node, 10).await;
    assert_eq!(conn.head_room, 16 * 1024);
    // Never past the most a body read takes, however large the answers.
    let mut conn = conn;
    for _ in 0..4 {
        conn = answer_of(conn, &mut node, 200 * 1024).await.1;
    }
    assert_eq!(conn.head_room, super::MAX_HEAD_READ);
    SPARE.with_borrow(|spare| {
        let sizes: Vec<usize> = spare.iter().map(|b| b.capacity()).collect();
        assert!(
            sizes.iter().all(|&c| c <= SPARE_MAX_BYTES),
            "spares stay small: {sizes:?}"
        );
    });
}

proptest! {
    /// Values remembered from earlier heads (by line, from small heads
    /// only) never stand in for other bytes: each head's values are its own.
    #[test]
    fn values_are_each_heads_own(
        heads in proptest::collection::vec(
            (proptest::collection::vec((0..3usize, 0..4usize), 0..5), any::<bool>()),
            1..8,
        )
    ) {
        const NAMES: [&str; 3] = ["x-a", "content-type", "date"];
        const VALUES: [&str; 4] = ["", "v", "text/plain", "Wed, 02 Dec 2026 15:54:20 GMT"];
        for (lines, large) in heads {
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            for (name, value) in &lines {
                raw.extend_from_slice(format!("{}: {}\r\n", NAMES[*name], VALUES[*value]).as_bytes());
            }
            if large {
                raw.extend_from_slice(format!("x-pad: {}\r\n", "p".repeat(1100)).as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            let parsed = head(&raw, Method::GET).unwrap().unwrap();
            let headers = parsed.fields.into_map();
            for (i, name) in NAMES.iter().enumerate() {
                let want: Vec<&str> = lines
                    .iter()
                    .filter(|(n, _)| *n == i)
                    .map(|(_, v)| VALUES[*v])
                    .collect();
                let got: Vec<&[u8]> = headers.get_all(*name).iter().map(|v| v.as_bytes()).collect();
                let want: Vec<&[u8]> = want.iter().map(|v| v.as_bytes()).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
