//! A request head the gate validated, made into `http` types without a
//! second parse: the gate has checked every byte, so this only cuts lines
//! and fields, and shares the head's bytes with the header values.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, EXPECT};
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::gate::Violation;

/// Headers the edge adds to a request for its node (forwarding headers, a
/// request id, a Host from an absolute target).
const EDGE_ADDS: usize = 6;

/// What the connection needs to know of a request to answer it.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub version: Version,
    pub head: bool,
    pub connect: bool,
    /// The client keeps the connection after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1.
    pub expect_continue: bool,
}

/// Builds the request of `head` (a whole, valid head, leading empty lines
/// included) with `body`.
pub fn build<B>(head: Bytes, body: B) -> Result<(Request<B>, Facts), Violation> {
    let mut lines = Lines { head: &head, at: 0 };
    let line = loop {
        match lines.next() {
            Some(line) if line.is_empty() => {}
            Some(line) => break line,
            None => return Err(Violation::BadRequestLine),
        }
    };
    let text = &head[line.clone()];
    let sp1 = text
        .iter()
        .position(|&b| b == b' ')
        .ok_or(Violation::BadRequestLine)?;
    let sp2 = text[sp1 + 1..]
        .iter()
        .position(|&b| b == b' ')
        .map(|i| sp1 + 1 + i)
        .ok_or(Violation::BadRequestLine)?;
    let method = Method::from_bytes(&text[..sp1]).map_err(|_| Violation::BadMethod)?;
    let version = match &text[sp2 + 1..] {
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/1.0" => Version::HTTP_10,
        _ => return Err(Violation::BadVersion),
    };
    let target = head.slice(line.start + sp1 + 1..line.start + sp2);
    let uri = Uri::from_maybe_shared(target).map_err(|_| Violation::BadTarget)?;
    // Sized once: a line per field (the final empty line aside), and room
    // for the headers the edge adds for the node.
    let fields = head[lines.at..].iter().filter(|&&b| b == b'\n').count();
    let mut headers = HeaderMap::with_capacity(fields + EDGE_ADDS);
    for line in lines {
        if line.is_empty() {
            break;
        }
        let text = &head[line.clone()];
        let colon = text
            .iter()
            .position(|&b| b == b':')
            .ok_or(Violation::BadFieldName)?;
        let name = HeaderName::from_bytes(&text[..colon]).map_err(|_| Violation::BadFieldName)?;
        let mut from = line.start + colon + 1;
        let mut to = line.end;
        while from < to && matches!(head[from], b' ' | b'\t') {
            from += 1;
        }
        while to > from && matches!(head[to - 1], b' ' | b'\t') {
            to -= 1;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(from..to))
            .map_err(|_| Violation::BadFieldValue)?;
        headers.append(name, value);
    }
    let keep_alive = match version {
        Version::HTTP_11 => !has_token(&headers, b"close"),
        _ => has_token(&headers, b"keep-alive"),
    };
    let facts = Facts {
        version,
        head: method == Method::HEAD,
        connect: method == Method::CONNECT,
        keep_alive,
        expect_continue: version == Version::HTTP_11
            && headers
                .get(EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok((req, facts))
}

/// Whether a `Connection` line of `headers` lists `token`.
pub fn has_token(headers: &HeaderMap, token: &[u8]) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    })
}

/// The lines of a head, without their CRLF, as ranges of it.
struct Lines<'a> {
    head: &'a [u8],
    at: usize,
}

impl Iterator for Lines<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.head.get(self.at..)?;
        let lf = rest.iter().position(|&b| b == b'\n')?;
        let start = self.at;
        self.at += lf + 1;
        Some(start..start + lf.saturating_sub(1))
    }
}
