//! Writing a request head (RFC 9112 §3) and choosing how its body is framed,
//! by hyper's rules: the request's own Content-Length or Transfer-Encoding
//! wins; else a body of known length gets a Content-Length; else chunked
//! (none at all for GET, HEAD and CONNECT, as hyper).

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Method, Version};

use crate::headers::Forwarded;

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// Exactly this many bytes are still due.
    Length(u64),
    Chunked,
}

/// What is known of a body before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// It has ended already: no bytes.
    Empty,
    Known(u64),
    Unknown,
}

/// Writes the head of `parts` to `dst` (its headers adjusted to the framing
/// chosen), then the `forwarded` lines, and returns how the body is to be
/// framed.
pub fn head(
    parts: &mut Parts,
    body: BodyLength,
    forwarded: Option<&Forwarded>,
    dst: &mut Vec<u8>,
) -> Encoder {
    let encoder = set_length(parts, body);
    dst.extend_from_slice(parts.method.as_str().as_bytes());
    dst.push(b' ');
    match parts.uri.path_and_query() {
        // Origin form, as the balancer aims HTTP/1 requests.
        Some(pq) if parts.uri.scheme().is_none() => dst.extend_from_slice(pq.as_str().as_bytes()),
        _ => dst.extend_from_slice(parts.uri.to_string().as_bytes()),
    }
    dst.extend_from_slice(if parts.version == Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in &parts.headers {
        dst.extend_from_slice(name.as_str().as_bytes());
        dst.extend_from_slice(b": ");
        dst.extend_from_slice(value.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if let Some(forwarded) = forwarded {
        forwarded.write(dst);
    }
    dst.extend_from_slice(b"\r\n");
    encoder
}

/// hyper's `Client::set_length`.
fn set_length(parts: &mut Parts, body: BodyLength) -> Encoder {
    let headers = &mut parts.headers;
    if body == BodyLength::Empty {
        // A pass over the names costs less than a lookup, and the edge
        // strips Transfer-Encoding from what it forwards.
        if headers.keys().any(|name| name == TRANSFER_ENCODING) {
            headers.remove(TRANSFER_ENCODING);
        }
        return Encoder::Length(0);
    }
    let existing = content_length(headers);
    if parts.version != Version::HTTP_11 {
        // Chunked is HTTP/1.1's.
        headers.remove(TRANSFER_ENCODING);
        return match (existing, body) {
            (Some(n), _) | (None, BodyLength::Known(n)) => {
                if existing.is_none() {
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
                }
                Encoder::Length(n)
            }
            // Without a length an HTTP/1.0 request has no body.
            _ => Encoder::Length(0),
        };
    }
    if let Some(te) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = te
            .as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if !chunked {
            headers.append(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        headers.remove(CONTENT_LENGTH);
        return Encoder::Chunked;
    }
    if let Some(n) = existing {
        return Encoder::Length(n);
    }
    match body {
        BodyLength::Known(n) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
            Encoder::Length(n)
        }
        _ if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) => {
            Encoder::Length(0)
        }
        _ => {
            headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            // A valid Content-Length would have been used above: an invalid
            // one must not go out beside chunked (as hyper).
            headers.remove(CONTENT_LENGTH);
            Encoder::Chunked
        }
    }
}

/// The Content-Length of the request, if it has one valid value.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = std::str::from_utf8(part.trim_ascii()).ok()?;
            let n: u64 = part.parse().ok().filter(|_| !part.starts_with('+'))?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    length
}

/// The chunk-size line for `len` bytes of data.
pub fn chunk_size(len: usize, dst: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
    dst.extend_from_slice(b"\r\n");
}
