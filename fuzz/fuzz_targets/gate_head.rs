//! The gate's request-head check on arbitrary bytes, arriving in pieces cut
//! where the fuzzer says. Nothing may panic, and:
//!
//! * the verdict does not depend on where the bytes were cut;
//! * a head the gate accepts is one hyper accepts too: httparse (hyper's
//!   HTTP/1 parser) parses it completely, to the same length, and its
//!   method, target and field names are valid for the `http` crate; and
//!   levee's HTTP/1 server builds its request with that method, target
//!   and fields;
//! * the framing agrees with the head: a Content-Length is its one
//!   `1*DIGIT` value, chunked only with a single `Transfer-Encoding:
//!   chunked`, and never both.
#![no_main]

use arbitrary::Arbitrary;
use levee_proxy::gate::pieces::head_in_pieces;
use levee_proxy::gate::{Framing, Head, HeadScan, Limits, Violation};
use levee_proxy::h1::server::pieces::request_of;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_head_bytes: 4096,
    max_uri_bytes: 1024,
    max_headers: 32,
};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    bytes: &'a [u8],
    cuts: Vec<u16>,
}

fn scan_whole(bytes: &[u8]) -> Result<Option<Head>, Violation> {
    HeadScan::default().scan(bytes, &LIMITS)
}

fuzz_target!(|input: Input<'_>| {
    let whole = scan_whole(input.bytes);
    let cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    assert_eq!(whole, head_in_pieces(input.bytes, &cuts, &LIMITS));
    let Ok(Some(head)) = whole else {
        return;
    };
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(input.bytes);
    assert_eq!(
        parsed,
        Ok(httparse::Status::Complete(head.len)),
        "httparse disagrees on {:?}",
        String::from_utf8_lossy(&input.bytes[..head.len])
    );
    let method = req.method.unwrap_or_default();
    assert!(http::Method::from_bytes(method.as_bytes()).is_ok());
    let target = req.path.unwrap_or_default();
    assert!(
        http::Uri::try_from(target).is_ok(),
        "accepted target {target:?} is not a URI"
    );
    let built = request_of(&input.bytes[..head.len]).expect("levee builds what the gate accepts");
    assert_eq!(built.method().as_str(), method);
    assert_eq!(built.uri(), &http::Uri::try_from(target).expect("a URI"));
    assert_eq!(built.headers().len(), req.headers.len());
    for field in req.headers.iter() {
        let values = built.headers().get_all(field.name);
        assert!(values.iter().any(|v| v.as_bytes() == field.value.trim_ascii()));
    }
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    for field in req.headers.iter() {
        assert!(http::HeaderName::from_bytes(field.name.as_bytes()).is_ok());
        if field.name.eq_ignore_ascii_case("content-length") {
            lengths.push(field.value);
        }
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.push(field.value);
        }
    }
    match head.framing {
        Framing::Chunked => {
            assert!(lengths.is_empty());
            assert_eq!(codings.len(), 1);
            assert!(codings[0].trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        Framing::Length(n) => {
            assert!(codings.is_empty());
            assert_eq!(lengths.len(), 1);
            let text = std::str::from_utf8(lengths[0].trim_ascii()).expect("digits");
            assert_eq!(text.parse::<u64>().ok(), Some(n));
        }
        Framing::Empty => {
            assert!(codings.is_empty());
            assert!(lengths.len() <= 1);
            if let Some(v) = lengths.first() {
                let text = std::str::from_utf8(v.trim_ascii()).expect("digits");
                assert_eq!(text.parse::<u64>().ok(), Some(0));
            }
        }
    }
});
