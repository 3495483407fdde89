//! Writing a response head by hyper's server rules (its `role.rs`), so
//! that clients see what they saw when hyper served HTTP/1: the status
//! line and reason, framing headers from the body's known length (else
//! chunked on HTTP/1.1, else close-delimited), none for HEAD/204/304/1xx
//! and a 2xx to CONNECT, `Connection: close` or `keep-alive` as the
//! connection's fate asks, and a `date` from a per-thread cache.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, DATE, TRAILER, TRANSFER_ENCODING,
};
use http::response::Parts;
use http::{StatusCode, Version};

use super::request::{has_token, Facts};
use crate::h1::Fields;
use crate::headers::X_REQUEST_ID;

/// How the response body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// Exactly this many bytes are still due.
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 with no known length).
    Close,
}

/// What is known of the response body before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// It has ended already.
    Empty,
    Known(u64),
    Unknown,
}

/// A head written, how its body goes, and whether the connection ends
/// after it.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub encoder: Encoder,
    pub last: bool,
}

/// Writes the head of `parts` to `dst`, taking its headers: the node's
/// `fields` first (the end-to-end ones; a node's HTTP/1 response keeps
/// them out of its map), then the map's; `request_id`, if any, in place of
/// any `x-request-id` they hold. `keep_alive`: the connection may serve
/// another request after this one (the client's wish, and no drain or
/// error); it may come back false.
pub fn head(
    parts: &mut Parts,
    fields: Option<&Fields>,
    body: BodyLength,
    req: &Facts,
    request_id: Option<&HeaderValue>,
    keep_alive: &mut bool,
    dst: &mut Vec<u8>,
) -> Written {
    enforce_version(parts, req.version, keep_alive);
    let status = parts.status;
    let (wrote_len, last) = if status == StatusCode::SWITCHING_PROTOCOLS {
        (false, true)
    } else if req.connect && status.is_success() {
        (true, true)
    } else {
        (false, !*keep_alive)
    };
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    if parts.version == Version::HTTP_11 && status == StatusCode::OK && reason.is_none() {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if parts.version == Version::HTTP_10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        match reason {
            Some(reason) => dst.extend_from_slice(reason.as_bytes()),
            None => dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        dst.extend_from_slice(b"\r\n");
    }
    let mut w = Writing {
        dst,
        body,
        req,
        request_id,
        chunkable: parts.version != Version::HTTP_10 && can_chunk(req, status),
        encoder: Encoder::Length(0),
        wrote_len,
        wrote_date: false,
        last,
    };
    match fields {
        Some(fields) if fields.plain() => {
            for (name, value) in fields.all() {
                w.field(name, std::iter::once(value));
            }
        }
        Some(fields) => {
            for (name, values) in fields.by_name() {
                w.field(name, values);
            }
        }
        None => {}
    }
    // The headers are taken out in their order, each name once with all
    // its values behind it: no lookup by name.
    let mut drained = parts.headers.drain().peekable();
    while let Some((name, first)) = drained.next() {
        // The values of the name before that its arm left unread.
        let Some(name) = name else { continue };
        let rest = std::iter::from_fn(|| drained.next_if(|(n, _)| n.is_none()).map(|(_, v)| v));
        w.field(&name, std::iter::once(first).chain(rest));
    }
    let Writing {
        dst,
        chunkable,
        mut encoder,
        wrote_len,
        wrote_date,
        mut last,
        ..
    } = w;
    if let Some(id) = request_id {
        line(dst, b"x-request-id", id.as_bytes());
    }
    if !wrote_len {
        encoder = match body {
            BodyLength::Unknown if chunkable => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoder::Chunked
            }
            BodyLength::Unknown => Encoder::Close,
            BodyLength::Empty | BodyLength::Known(0) => {
                if can_have_length(req, status) && !req.head {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoder::Length(0)
            }
            BodyLength::Known(n) => {
                if can_have_length(req, status) {
                    let _ = write!(dst, "content-length: {n}\r\n");
                    Encoder::Length(n)
                } else {
                    Encoder::Length(0)
                }
            }
        };
    }
    if !can_chunk(req, status) {
        encoder = Encoder::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        date(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    last |= encoder == Encoder::Close;
    if last {
        *keep_alive = false;
    }
    Written { encoder, last }
}

/// A head's field lines being written, and what they said of its framing.
struct Writing<'a> {
    dst: &'a mut Vec<u8>,
    body: BodyLength,
    req: &'a Facts,
    request_id: Option<&'a HeaderValue>,
    chunkable: bool,
    encoder: Encoder,
    wrote_len: bool,
    wrote_date: bool,
    last: bool,
}

impl Writing<'_> {
    /// Writes one name's lines, `values` in order, by hyper's rules.
    fn field<V: AsRef<[u8]>>(&mut self, name: &HeaderName, values: impl Iterator<Item = V>) {
        let dst = &mut *self.dst;
        let mut values = values;
        match *name {
            CONTENT_LENGTH => match self.body {
                BodyLength::Known(n) => {
                    if self.wrote_len {
                        return;
                    }
                    if let Some(v) = values.next() {
                        line(dst, b"content-length", v.as_ref());
                    }
                    self.encoder = Encoder::Length(n);
                    self.wrote_len = true;
                }
                BodyLength::Unknown => {
                    if self.wrote_len {
                        return;
                    }
                    if let Some(v) = values.next() {
                        let n = std::str::from_utf8(v.as_ref())
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok());
                        if let Some(n) = n {
                            line(dst, b"content-length", v.as_ref());
                            self.encoder = Encoder::Length(n);
                            self.wrote_len = true;
                        }
                    }
                }
                BodyLength::Empty if self.req.head => {
                    for v in values {
                        line(dst, b"content-length", v.as_ref());
                    }
                    self.wrote_len = true;
                }
                BodyLength::Empty => {}
            },
            TRANSFER_ENCODING => {
                if !self.chunkable || self.wrote_len {
                    return;
                }
                self.wrote_len = true;
                self.encoder = Encoder::Chunked;
                let mut chunked = false;
                joined(
                    dst,
                    b"transfer-encoding",
                    values.inspect(|v| {
                        chunked = v
                            .as_ref()
                            .rsplit(|&b| b == b',')
                            .next()
                            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                    }),
                );
                if !chunked {
                    dst.truncate(dst.len() - 2);
                    dst.extend_from_slice(b", chunked\r\n");
                }
            }
            CONNECTION => {
                let mut close = false;
                joined(
                    dst,
                    b"connection",
                    values.inspect(|v| {
                        close |= v
                            .as_ref()
                            .split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
                    }),
                );
                self.last |= close;
            }
            TRAILER => {
                if self.chunkable {
                    joined(dst, b"trailer", values);
                }
            }
            _ => {
                if self.request_id.is_some() && *name == X_REQUEST_ID {
                    return;
                }
                self.wrote_date |= *name == DATE;
                for v in values {
                    line(dst, name.as_str().as_bytes(), v.as_ref());
                }
            }
        }
    }
}

/// hyper's `enforce_version`: an HTTP/1.0 client gets an HTTP/1.0 answer
/// (with `Connection: keep-alive` if it keeps the connection); an HTTP/1.1
/// one that will not keep it gets `Connection: close`.
fn enforce_version(parts: &mut Parts, client: Version, keep_alive: &mut bool) {
    if client == Version::HTTP_10 {
        if !has_token(&parts.headers, b"keep-alive") {
            match parts.version {
                Version::HTTP_10 => *keep_alive = false,
                Version::HTTP_11 if *keep_alive => {
                    parts
                        .headers
                        .append(CONNECTION, HeaderValue::from_static("keep-alive"));
                }
                _ => {}
            }
        }
        parts.version = Version::HTTP_10;
    } else {
        if parts.version != Version::HTTP_10 {
            parts.version = Version::HTTP_11;
        }
        if !*keep_alive && !has_token(&parts.headers, b"close") {
            parts
                .headers
                .append(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// 1xx, 204 and 304 have no body, nor a 2xx to CONNECT (the tunnel's).
fn bodiless(req: &Facts, status: StatusCode) -> bool {
    status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        || req.connect && status.is_success()
}

fn can_chunk(req: &Facts, status: StatusCode) -> bool {
    !(req.head || bodiless(req, status))
}

fn can_have_length(req: &Facts, status: StatusCode) -> bool {
    !bodiless(req, status)
}

fn line(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// All values of one header on one line, comma-separated.
fn joined<V: AsRef<[u8]>>(dst: &mut Vec<u8>, name: &[u8], values: impl Iterator<Item = V>) {
    let mut first = true;
    for v in values {
        if first {
            dst.extend_from_slice(name);
            dst.extend_from_slice(b": ");
            first = false;
        } else {
            dst.extend_from_slice(b", ");
        }
        dst.extend_from_slice(v.as_ref());
    }
    if !first {
        dst.extend_from_slice(b"\r\n");
    }
}

/// The IMF-fixdate of now, formatted at most once a second per thread
/// (tokio's clock tells when the second is over).
fn date(dst: &mut Vec<u8>) {
    thread_local! {
        static CACHE: RefCell<(Option<tokio::time::Instant>, [u8; 29])> =
            const { RefCell::new((None, [0; 29])) };
    }
    CACHE.with_borrow_mut(|(next, text)| {
        let now = tokio::time::Instant::now();
        if next.is_none_or(|next| now >= next) {
            let wall = SystemTime::now();
            let formatted = httpdate::fmt_http_date(wall);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
            }
            let into = wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            *next = Some(now + Duration::from_nanos(u64::from(1_000_000_000 - into)));
        }
        dst.extend_from_slice(text);
    });
}
