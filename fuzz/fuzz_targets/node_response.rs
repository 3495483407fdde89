//! levee's HTTP/1 client reading a node's response (`levee_proxy::h1`): the
//! head parser and the body decoder on arbitrary bytes, arriving in pieces
//! cut where the fuzzer says. Nothing may panic, and:
//!
//! * the reading (status, framing, body, trailers, where it ended, whether
//!   the connection may be reused) does not depend on where the bytes were
//!   cut;
//! * a body read to its end never takes more bytes than were given, and is
//!   what its framing says: the Content-Length's bytes, nothing for a
//!   bodiless response, everything for a close-delimited one (and only
//!   once the node closed), and for chunked what a plain reading of
//!   RFC 9112 §7.1 gives, ending at the same byte;
//! * the connection is reusable only when the framing is exact: a head
//!   allowing keep-alive, no upgrade, not close-delimited, and the body
//!   ending at the last byte given.
#![no_main]

use arbitrary::Arbitrary;
use http::Method;
use levee_proxy::h1::pieces::{response_in_pieces, Framing};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    method: u8,
    /// The node closes the connection after the last byte.
    closed: bool,
    cuts: Vec<u16>,
    bytes: &'a [u8],
}

/// A complete chunked body at the start of `bytes`, read plainly: its data
/// and where it ends; None if it is not complete or not valid.
fn reference_chunked(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = at + bytes.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let line = &bytes[at..end];
        // No bare CR or LF inside a line.
        if line.iter().any(|b| *b == b'\r' || *b == b'\n') {
            return None;
        }
        Some((line, end + 2))
    };
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let (size_line, next) = line(at)?;
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits == 0 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&size_line[..digits]).ok()?, 16).ok()?;
        let rest = size_line[digits..].trim_ascii_start();
        if !rest.is_empty() && rest[0] != b';' {
            return None;
        }
        at = next;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let (trailer, next) = line(at)?;
                at = next;
                if trailer.is_empty() {
                    return Some((data, at));
                }
            }
        }
        let size = usize::try_from(size).ok()?;
        let data_end = at.checked_add(size)?;
        data.extend_from_slice(bytes.get(at..data_end)?);
        if bytes.get(data_end..data_end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        at = data_end + 2;
    }
}

fuzz_target!(|input: Input<'_>| {
    let method = match input.method % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::CONNECT,
    };
    let bytes = input.bytes;
    let whole = response_in_pieces(bytes, &[], &method, input.closed);
    let cuts: Vec<usize> = input.cuts.iter().map(|&c| usize::from(c)).collect();
    assert_eq!(
        whole,
        response_in_pieces(bytes, &cuts, &method, input.closed)
    );
    let Ok(Some(read)) = whole else {
        return;
    };
    assert!(read.head_len <= bytes.len());
    assert!((200..1000).contains(&read.status) || read.status == 101);
    if method == Method::HEAD || matches!(read.status, 204 | 304) {
        assert_eq!(read.framing, Framing::Empty);
    }
    let body = &bytes[read.head_len..];
    if read.upgrade {
        assert!(read.data.is_empty() && !read.reusable);
        return;
    }
    match (read.framing, read.end) {
        (_, Some(end)) => {
            assert!(read.head_len <= end && end <= bytes.len());
            let taken = &bytes[read.head_len..end];
            match read.framing {
                Framing::Empty => assert!(taken.is_empty() && read.data.is_empty()),
                Framing::Length(n) => {
                    assert_eq!(taken.len() as u64, n);
                    assert_eq!(read.data, taken);
                }
                Framing::Close => {
                    assert!(input.closed && end == bytes.len());
                    assert_eq!(read.data, taken);
                }
                Framing::Chunked => {
                    let reference = reference_chunked(body);
                    assert_eq!(
                        reference.as_ref().map(|(d, at)| (&d[..], *at)),
                        Some((&read.data[..], taken.len())),
                        "accepted {:?}",
                        String::from_utf8_lossy(taken)
                    );
                }
            }
        }
        (Framing::Length(n), None) => {
            assert!((body.len() as u64) < n && read.data == body);
        }
        (Framing::Empty, None) => panic!("a bodiless response that did not end"),
        (Framing::Close | Framing::Chunked, None) => assert!(read.data.len() <= body.len()),
    }
    if read.reusable {
        assert!(read.keep_alive);
        assert!(matches!(
            read.framing,
            Framing::Empty | Framing::Length(_) | Framing::Chunked
        ));
        assert_eq!(read.end, Some(bytes.len()));
    }
});
