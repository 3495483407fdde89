#![allow(clippy::unwrap_used, clippy::expect_used)]
use proptest::prelude::*;

use super::*;

const LIMITS: Limits = Limits {
    max_head_bytes: 4096,
    max_uri_bytes: 1024,
    max_headers: 16,
};

fn scan(bytes: &[u8]) -> Result<Option<Head>, Violation> {
    HeadScan::default().scan(bytes, &LIMITS)
}

/// The verdict when the head arrives in pieces split at `cuts`.
fn scan_split(bytes: &[u8], cuts: &[usize]) -> Result<Option<Head>, Violation> {
    crate::gate::pieces::head_in_pieces(bytes, cuts, &LIMITS)
}

#[test]
fn a_valid_head_and_its_framing() {
    let head = scan(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A:  v \t\r\n\r\nrest").unwrap();
    assert_eq!(
        head,
        Some(Head {
            len: 43,
            fields: 2,
            framing: Framing::Empty,
            upgrade: false
        })
    );
    let head = scan(b"POST / HTTP/1.1\r\nContent-Length: 007\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(head.framing, Framing::Length(7));
    let head = scan(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(head.framing, Framing::Empty);
    let head = scan(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(head.framing, Framing::Chunked);
    let head = scan(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(head.upgrade);
    let head = scan(b"CONNECT a:443 HTTP/1.1\r\n\r\n").unwrap().unwrap();
    assert!(head.upgrade);
    // Leading empty lines are skipped.
    assert!(scan(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    assert!(scan(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap().is_some());
    assert!(scan(b"GET http://a.example:8080/x HTTP/1.1\r\n\r\n")
        .unwrap()
        .is_some());
    assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
}

#[test]
fn each_violation() {
    let cases: &[(&[u8], Violation)] = &[
        (b"GET / HTTP/1.1\nHost: x\r\n\r\n", Violation::BareLf),
        (b"GET / HTTP/1.1\r\nHost: x\n\r\n", Violation::BareLf),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\n", Violation::BareLf),
        (b"\nGET / HTTP/1.1\r\n\r\n", Violation::BareLf),
        (b"GET / HTTP/1.1\r\nA: 1\r\n b\r\n\r\n", Violation::ObsFold),
        (
            b"GET / HTTP/1.1\r\nA : 1\r\n\r\n",
            Violation::SpaceBeforeColon,
        ),
        (
            b"GET / HTTP/1.1\r\nA\t: 1\r\n\r\n",
            Violation::SpaceBeforeColon,
        ),
        (b"GET / HTTP/1.1\r\n: 1\r\n\r\n", Violation::BadFieldName),
        (b"GET / HTTP/1.1\r\nA B: 1\r\n\r\n", Violation::BadFieldName),
        (b"GET / HTTP/1.1\r\nA\r\n\r\n", Violation::BadFieldName),
        (
            b"GET / HTTP/1.1\r\nA: \x00\r\n\r\n",
            Violation::BadFieldValue,
        ),
        (
            b"GET / HTTP/1.1\r\nA: a\rb\r\n\r\n",
            Violation::BadFieldValue,
        ),
        (
            b"GET / HTTP/1.1\r\nA: \x7f\r\n\r\n",
            Violation::BadFieldValue,
        ),
        (b"GET /  HTTP/1.1\r\n\r\n", Violation::BadVersion),
        (b"GET  / HTTP/1.1\r\n\r\n", Violation::BadTarget),
        (b"GET / HTTP/1.1 \r\n\r\n", Violation::BadVersion),
        (b"GET / HTTP/2.0\r\n\r\n", Violation::BadVersion),
        (b"GET /\r\n\r\n", Violation::BadRequestLine),
        (b"G@T / HTTP/1.1\r\n\r\n", Violation::BadMethod),
        (b" / HTTP/1.1\r\n\r\n", Violation::BadMethod),
        (b"GET /a#b HTTP/1.1\r\n\r\n", Violation::BadTarget),
        (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", Violation::BadTarget),
        (b"GET /a b HTTP/1.1\r\n\r\n", Violation::BadVersion),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            Violation::RepeatedContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n",
            Violation::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            Violation::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\n",
            Violation::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
            Violation::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
            Violation::BadContentLength,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            Violation::ContentLengthWithTransferEncoding,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Violation::TransferEncodingOnHttp10,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Violation::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            Violation::UnsupportedTransferEncoding,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            Violation::UnsupportedTransferEncoding,
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            scan(bytes),
            Err(*want),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    // The largest Content-Length that fits.
    let head = scan(b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n");
    assert_eq!(head.unwrap().unwrap().framing, Framing::Length(u64::MAX));
}

#[test]
fn limits() {
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1024));
    assert_eq!(scan(long_target.as_bytes()), Err(Violation::UriTooLong));
    let at_limit = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1023));
    assert!(scan(at_limit.as_bytes()).unwrap().is_some());
    // An unfinished request line is refused once its target passes the limit.
    let unfinished = format!("GET /{}", "a".repeat(1100));
    assert_eq!(scan(unfinished.as_bytes()), Err(Violation::UriTooLong));
    let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "v".repeat(4096));
    assert_eq!(scan(big.as_bytes()), Err(Violation::HeadTooLarge));
    let unfinished = format!("GET / HTTP/1.1\r\nA: {}", "v".repeat(4096));
    assert_eq!(scan(unfinished.as_bytes()), Err(Violation::HeadTooLarge));
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..16 {
        many.push_str(&format!("x-{i}: 1\r\n"));
    }
    assert!(scan(format!("{many}\r\n").as_bytes()).unwrap().is_some());
    many.push_str("x-17: 1\r\n\r\n");
    assert_eq!(scan(many.as_bytes()), Err(Violation::TooManyHeaders));
}

/// Every origin-form target the gate takes, hyper's URI parser takes too.
#[test]
fn accepted_targets_parse_as_uris() {
    for b in 0u8..=255 {
        let target = [b'/', b'a', b, b'?', b, b'=', b];
        let head = [b"GET ", &target[..], b" HTTP/1.1\r\n\r\n"].concat();
        if scan(&head).is_ok() {
            assert!(
                http::Uri::try_from(&target[..]).is_ok(),
                "byte {b:#x} accepted but not a valid URI"
            );
        }
    }
}

proptest! {
    /// The verdict does not depend on how the bytes were split.
    #[test]
    fn split_points_do_not_change_the_verdict(
        fields in proptest::collection::vec(("[a-zA-Z-]{1,8}", "[ -~\t]{0,12}"), 0..6),
        noise in proptest::collection::vec(any::<u8>(), 0..4),
        at in 0usize..200,
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut head = b"POST /p?q HTTP/1.1\r\n".to_vec();
        for (name, value) in &fields {
            head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let at = at % (head.len() + 1);
        head.splice(at..at, noise);
        prop_assert_eq!(scan(&head), scan_split(&head, &cuts));
    }
}

/// Found by the `gate_head` fuzz target (fuzz/): an absolute-form target
/// with raw bytes after a `#` passed (the `http` crate takes it), but
/// httparse, hyper's parser, refuses it: hyper would have answered a bare
/// 400.
#[test]
fn an_absolute_target_with_a_fragment_and_raw_bytes_is_refused() {
    let head = b"PO htrp://a.#\xff\xff\xffSg'x?5=Content-LZe HTTP/1.0\r\n\r\n";
    assert_eq!(scan(head), Err(Violation::BadTarget));
    assert_eq!(
        scan(b"GET http://a.example/x#frag HTTP/1.1\r\n\r\n"),
        Err(Violation::BadTarget)
    );
    assert!(scan(b"GET http://a.example/x?q HTTP/1.1\r\n\r\n")
        .unwrap()
        .is_some());
}

/// Found by the `gate_head` fuzz target: a request line with a target over
/// the limit and a bare LF was `BareLf` when it arrived whole but
/// `UriTooLong` when it arrived in pieces. The limits are now checked on a
/// finished line first, as on an unfinished one.
#[test]
fn a_long_target_ending_in_a_bare_lf_gets_one_verdict() {
    let head = format!("GET /{}\nHost: x\n\n", "\x0b".repeat(1100));
    let whole = scan(head.as_bytes());
    assert_eq!(whole, Err(Violation::UriTooLong));
    assert_eq!(scan_split(head.as_bytes(), &[600, 1200]), whole);
    // Over the head limit, a bare LF after it.
    let head = format!("GET / HTTP/1.1\r\nA: {}\n\n", "v".repeat(4100));
    assert_eq!(scan(head.as_bytes()), Err(Violation::HeadTooLarge));
    assert_eq!(
        scan_split(head.as_bytes(), &[3000]),
        Err(Violation::HeadTooLarge)
    );
}

#[test]
fn byte_classes_are_the_rfc_sets() {
    // The sets as RFC 9110 and the `http` crate spell them, byte by byte,
    // against the lookup table the scan uses.
    for b in 0..=255u8 {
        let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        assert_eq!(is_tchar(b), tchar, "tchar {b:#04x}");
        let vchar = b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80;
        assert_eq!(is_field_vchar(b), vchar, "field byte {b:#04x}");
        let path = b"!$%&'()*+,-./0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_abcdefghijklmnopqrstuvwxyz|~";
        let query_extra = b"?`{}";
        // `/?` is a path and an empty query.
        let target = [b'/', b];
        assert_eq!(
            valid_path_query(&target),
            path.contains(&b) || b == b'?',
            "path byte {b:#04x}"
        );
        let in_query = [b'/', b'?', b];
        assert_eq!(
            valid_path_query(&in_query),
            path.contains(&b) || query_extra.contains(&b),
            "query byte {b:#04x}"
        );
    }
}
