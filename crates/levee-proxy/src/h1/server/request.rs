//! A request head the gate validated, made into `http` types without a
//! second parse: the gate has checked every byte, so this only cuts lines
//! and fields, and shares the head's bytes with the header values.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, EXPECT};
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::find;
use crate::gate::Violation;
use crate::h1::names::{self, Names};

/// Headers the edge adds to a request's map for its node: a request id and
/// a Host from an absolute target. The `X-Forwarded-*` lines go beside the
/// map ([`crate::headers::Forwarded`]) unless the client sent some, when
/// the map grows for them.
const EDGE_ADDS: usize = 2;

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

/// Fills `req` (new from `Request::new`, its body set) with the request of
/// `head` (a whole, valid head, leading empty lines included) of `fields`
/// field lines (as the gate counted them; the header map is sized for
/// them). In place: a request is a few hundred bytes, and returned it would
/// be copied out and again into the caller's; and a new request's parts
/// (GET, `/`, HTTP/1.1, no headers) that are already right are not
/// replaced.
pub fn build<B>(head: Bytes, fields: usize, req: &mut Request<B>) -> Result<Facts, Violation> {
    let mut lines = Lines { head: &head, at: 0 };
    let line = loop {
        match lines.next() {
            Some(line) if line.is_empty() => {}
            Some(line) => break line,
            None => return Err(Violation::BadRequestLine),
        }
    };
    let text = &head[line.clone()];
    let sp1 = find::byte(b' ', text).ok_or(Violation::BadRequestLine)?;
    let sp2 = find::byte(b' ', &text[sp1 + 1..])
        .map(|i| sp1 + 1 + i)
        .ok_or(Violation::BadRequestLine)?;
    // GET without a lookup of its name, and left as the new request has it.
    let get = text[..sp1] == *b"GET";
    if !get {
        *req.method_mut() = Method::from_bytes(&text[..sp1]).map_err(|_| Violation::BadMethod)?;
    }
    let version = match &text[sp2 + 1..] {
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/1.0" => Version::HTTP_10,
        _ => return Err(Violation::BadVersion),
    };
    let target = line.start + sp1 + 1..line.start + sp2;
    // `/` is the URI a new request has: no slice of the head (a count up
    // and down) to parse for the commonest target.
    if head[target.clone()] != *b"/" {
        *req.uri_mut() =
            Uri::from_maybe_shared(head.slice(target)).map_err(|_| Violation::BadTarget)?;
    }
    if version != Version::HTTP_11 {
        *req.version_mut() = version;
    }
    // Sized once: a line per field, and room for the headers the edge adds
    // for the node; in the request's own map, not one moved in over it.
    let headers = req.headers_mut();
    headers
        .try_reserve(fields + EDGE_ADDS)
        .map_err(|_| Violation::TooManyHeaders)?;
    let seen = names::REQUESTS.with_borrow_mut(|names| fill(headers, names, &head, lines))?;
    let keep_alive = match version {
        Version::HTTP_11 => !seen.close,
        _ => seen.keep_alive,
    };
    let facts = Facts {
        version,
        head: !get && req.method() == Method::HEAD,
        connect: !get && req.method() == Method::CONNECT,
        keep_alive,
        expect_continue: version == Version::HTTP_11 && seen.expect_continue == Some(true),
    };
    Ok(facts)
}

/// What the field lines say of the connection and of a 100 Continue,
/// noted as they are read: no lookup after.
#[derive(Debug, Default)]
struct Seen {
    /// A `Connection` line lists `close`.
    close: bool,
    /// A `Connection` line lists `keep-alive`.
    keep_alive: bool,
    /// The first `Expect` line, if any: whether it asks for 100-continue.
    expect_continue: Option<bool>,
}

/// Appends the field lines of `lines` (ranges of `head`) to `headers`.
fn fill(
    headers: &mut HeaderMap,
    names: &mut Names,
    head: &Bytes,
    lines: Lines<'_>,
) -> Result<Seen, Violation> {
    let mut seen = Seen::default();
    for (i, line) in lines.enumerate() {
        if line.is_empty() {
            break;
        }
        let text = &head[line.clone()];
        let colon = find::byte(b':', text).ok_or(Violation::BadFieldName)?;
        let name = names
            .name(i, &text[..colon])
            .map_err(|_| Violation::BadFieldName)?;
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
        if name == CONNECTION {
            seen.close |= lists(&value, b"close");
            seen.keep_alive |= lists(&value, b"keep-alive");
        } else if name == EXPECT && seen.expect_continue.is_none() {
            seen.expect_continue = Some(value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        }
        headers.append(name, value);
    }
    Ok(seen)
}

/// Whether a `Connection` line of `headers` lists `token`.
pub fn has_token(headers: &HeaderMap, token: &[u8]) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| lists(v, token))
}

/// Whether the comma-separated list `value` holds `token`.
fn lists(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The lines of a head, without their CRLF, as ranges of it; found as the
/// gate found them ([`find::byte`]).
struct Lines<'a> {
    head: &'a [u8],
    at: usize,
}

impl Iterator for Lines<'_> {
    type Item = std::ops::Range<usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.head.get(self.at..)?;
        let lf = find::byte(b'\n', rest)?;
        let start = self.at;
        self.at += lf + 1;
        Some(start..start + lf.saturating_sub(1))
    }
}
