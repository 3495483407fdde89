//! Reading a node's response: the head (RFC 9112 §4–5) and the body's
//! framing (§6.3), the same rules hyper's HTTP/1 client applies, on bytes
//! already read (no I/O here).

use std::cell::Cell;
use std::ops::Range;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{InvalidHeaderName, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

use super::fields::Fields;
use super::{names, scan};

/// The largest response head levee reads: hyper's default buffer bound,
/// which is what it answered before.
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Header lines in a response head or a trailer section, at most (hyper's
/// default).
pub const MAX_HEADERS: usize = 100;
/// Chunk extensions over a whole body, at most (as hyper).
const EXTENSIONS_LIMIT: usize = 16 * 1024;
/// A chunk-size line, at most: the extensions' limit and room for the size
/// and whitespace. Checked on the line, found whole or not, so that the
/// verdict does not depend on how the bytes arrived.
const SIZE_LINE_LIMIT: usize = EXTENSIONS_LIMIT + 32;
/// A trailer section, at most (as hyper).
const TRAILERS_LIMIT: usize = 16 * 1024;

/// Why a response head is refused: the node broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("invalid response head: {0}")]
    Syntax(#[from] httparse::Error),
    #[error("invalid status code")]
    Status,
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("invalid header: {0}")]
    Header(&'static str),
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncoding10,
    /// RFC 9112 §6.3 lets a recipient treat this as an error; the node may
    /// be desynchronised.
    #[error("the response has both Transfer-Encoding and Content-Length")]
    Framing,
}

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    #[error("invalid trailer section: {0}")]
    Trailers(&'static str),
    #[error("the connection closed before the end of the body")]
    Incomplete,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, `Content-Length: 0`, 101).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the node closes the connection.
    Close,
}

/// A complete response head and what it says of the body and connection.
#[derive(Debug)]
pub struct Parsed {
    /// Its status, version and reason; the headers are in `fields`.
    pub response: Response<()>,
    pub fields: Fields,
    pub framing: Framing,
    /// The node allows another request on this connection.
    pub keep_alive: bool,
    /// A 101 (or a 2xx to CONNECT): the connection is no longer HTTP.
    pub upgrade: bool,
}

thread_local! {
    /// The field lines of the head being read (each one's name, and where
    /// its value lies): kept from one head to the next, so that reading
    /// them needs no allocation.
    static READ: Cell<Vec<FieldLine>> = const { Cell::new(Vec::new()) };
}

/// A field line as the scanner reads it.
type FieldLine = (Result<HeaderName, InvalidHeaderName>, Range<usize>);

/// Parses the response head at the start of `buf`, skipping interim (1xx)
/// responses other than 101: `None` until a whole head has been read. The
/// head is taken out of `buf`; what follows stays.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Parsed>, HeadError> {
    // Until a whole head has been read, or past the bound.
    let partial = |buf: &BytesMut| {
        if buf.len() >= MAX_HEAD {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        }
    };
    loop {
        let Some(status_line) = scan::status_line(buf)? else {
            return partial(buf);
        };
        // The field lines are read once, in the read buffer; their values
        // become slices of one copy of the head, made once its end is known.
        let mut read = READ.take();
        read.clear();
        let scanned = names::RESPONSES.with_borrow_mut(|names| {
            scan::fields(buf, status_line.len, names, |name, at| {
                read.push((name, at));
            })
        })?;
        let Some(len) = scanned else {
            READ.set(read);
            return partial(buf);
        };
        if len > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let status = StatusCode::from_u16(status_line.code).map_err(|_| HeadError::Status)?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            READ.set(read);
            continue;
        }
        let version = if status_line.http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // One copy of the head, sized to it: the read buffer stays the
        // connection's own, to be reused by the next response.
        let bytes = Bytes::copy_from_slice(&buf[..len]);
        let mut fields = Fields::new(bytes, read.len());
        let mut keep_alive = version == Version::HTTP_11;
        let mut close = false;
        // The framing lines present, noted on the way: most heads have a
        // Content-Length and no Transfer-Encoding, and neither is then
        // looked up by name.
        let mut lines = FramingLines::default();
        for (name, at) in read.drain(..) {
            let name = name.map_err(|_| HeadError::Header("name"))?;
            let value = fields.value(&at);
            if name == TRANSFER_ENCODING {
                lines.last_te_chunked = Some(last_is_chunked(value));
            } else if name == CONTENT_LENGTH {
                lines.content_length(value);
            } else if name == CONNECTION {
                // Once any line asks to close, a later keep-alive cannot undo it.
                if close || has_token(value, b"close") {
                    close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(value, b"keep-alive");
                }
            }
            fields.push(name, at);
        }
        READ.set(read);
        let canonical = status.canonical_reason().unwrap_or_default();
        let reason = (buf[status_line.reason.clone()] != *canonical.as_bytes())
            .then(|| hyper::ext::ReasonPhrase::try_from(fields.slice(status_line.reason)).ok())
            .flatten();
        buf.advance(len);
        let (framing, upgrade) = framing(status, version, lines, method)?;
        // Checked on every final response, as before: a node that frames a
        // body two ways may be desynchronised whatever the status.
        if lines.last_te_chunked.is_some() && lines.length.is_some() {
            return Err(HeadError::Framing);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        if let Some(reason) = reason {
            response.extensions_mut().insert(reason);
        }
        return Ok(Some(Parsed {
            response,
            fields,
            keep_alive: keep_alive && !upgrade && framing != Framing::Close,
            framing,
            upgrade,
        }));
    }
}

/// What a head's framing lines say, noted as each is read: the framing
/// needs no lookup in the map after.
#[derive(Debug, Default, Clone, Copy)]
struct FramingLines {
    /// Whether the last Transfer-Encoding line ends in `chunked`; `None`
    /// without one.
    last_te_chunked: Option<bool>,
    /// The length every Content-Length value agrees on; `Some(None)` once
    /// one is not a number or differs; `None` without a Content-Length.
    length: Option<Option<u64>>,
}

impl FramingLines {
    /// Notes a Content-Length line, whose comma-separated values must all
    /// be the same number, as those of the lines before it.
    fn content_length(&mut self, value: &[u8]) {
        let mut length = match self.length {
            Some(None) => return,
            Some(Some(n)) => Some(n),
            None => None,
        };
        for part in value.split(|b| *b == b',') {
            let n = digits(part.trim_ascii());
            if n.is_none() || length.is_some_and(|l| Some(l) != n) {
                self.length = Some(None);
                return;
            }
            length = n;
        }
        self.length = Some(length);
    }
}

/// Whether a Transfer-Encoding value's last coding is `chunked`.
fn last_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// RFC 9112 §6.3, in hyper's order, from what the framing `lines` said.
fn framing(
    status: StatusCode,
    version: Version,
    lines: FramingLines,
    method: &Method,
) -> Result<(Framing, bool), HeadError> {
    match status.as_u16() {
        101 => return Ok((Framing::Empty, true)),
        204 | 304 => return Ok((Framing::Empty, false)),
        _ => {}
    }
    if method == Method::HEAD {
        return Ok((Framing::Empty, false));
    }
    if method == Method::CONNECT && status.is_success() {
        return Ok((Framing::Empty, true));
    }
    if let Some(chunked) = lines.last_te_chunked {
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncoding10);
        }
        // Not chunked last: the body runs to the connection's close.
        return Ok((
            if chunked {
                Framing::Chunked
            } else {
                Framing::Close
            },
            false,
        ));
    }
    Ok((
        match lines.length {
            Some(None) => return Err(HeadError::ContentLength),
            Some(Some(0)) => Framing::Empty,
            Some(Some(n)) => Framing::Length(n),
            None => Framing::Close,
        },
        false,
    ))
}

/// A decimal number of ASCII digits only.
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// What the body decoder made of the bytes it had.
#[derive(Debug)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body has ended; bytes after it stay in the buffer.
    End,
    /// More bytes are needed.
    More,
}

/// Where a body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// A chunk-size line; `extensions` bytes seen so far in the body.
    Size {
        extensions: usize,
    },
    Data {
        left: u64,
        extensions: usize,
    },
    /// The CRLF after a chunk's data.
    DataEnd {
        extensions: usize,
    },
    Trailers,
}

/// Below this a data chunk is copied out of the read buffer, so that the
/// buffer stays the connection's and is reused; above it the bytes are
/// handed on as they lie (a new buffer is then allocated for the next read).
const COPY_BELOW: usize = 4096;

fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n < COPY_BELOW {
        let data = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        data
    } else {
        buf.split_to(n).freeze()
    }
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Decoder::Done,
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size { extensions: 0 }),
            Framing::Close => Decoder::Close,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Bytes of body still due, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Bytes the body is known to need next (a body's rest, a chunk's data
    /// and its CRLF); 0 when that is not known.
    pub fn due(&self) -> usize {
        let due = match self {
            Decoder::Length(n) => *n,
            Decoder::Chunked(Chunk::Data { left, .. }) => left.saturating_add(2),
            _ => 0,
        };
        usize::try_from(due).unwrap_or(usize::MAX)
    }

    /// The next piece of the body from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Close if buf.is_empty() => return Ok(Decoded::More),
                Decoder::Close => return Ok(Decoded::Data(take(buf, buf.len()))),
                Decoder::Length(_) if buf.is_empty() => return Ok(Decoded::More),
                Decoder::Length(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Decoded::Data(take(buf, n)));
                }
                Decoder::Chunked(chunk) => match chunk_step(chunk, buf)? {
                    Step::Again => {}
                    Step::Out(out) => return Ok(out),
                    Step::Last(trailers) => {
                        *self = Decoder::Done;
                        return Ok(Decoded::Trailers(trailers));
                    }
                    Step::End => {
                        *self = Decoder::Done;
                        return Ok(Decoded::End);
                    }
                },
            }
        }
    }

    /// The connection closed: the end of a close-delimited body, else an
    /// error.
    pub fn eof(&mut self) -> Result<(), BodyError> {
        match self {
            Decoder::Close | Decoder::Done => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(BodyError::Incomplete),
        }
    }
}

enum Step {
    Again,
    Out(Decoded),
    /// The trailer section, the body's last frame.
    Last(HeaderMap),
    End,
}

fn chunk_step(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<Step, BodyError> {
    match *chunk {
        Chunk::Size { extensions } => {
            let lf = buf.iter().position(|b| *b == b'\n');
            if lf.unwrap_or(buf.len()) > SIZE_LINE_LIMIT {
                return Err(BodyError::Chunked("chunk-size line too long"));
            }
            let Some(lf) = lf else {
                return Ok(Step::Out(Decoded::More));
            };
            let line = &buf[..lf];
            let Some(line) = line.strip_suffix(b"\r") else {
                return Err(BodyError::Chunked("chunk-size line without CR"));
            };
            let hex_end = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            if hex_end == 0 {
                return Err(BodyError::Chunked("no chunk size"));
            }
            let mut size: u64 = 0;
            for b in &line[..hex_end] {
                let d = (*b as char).to_digit(16).unwrap_or_default();
                size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(d)))
                    .ok_or(BodyError::Chunked("chunk size overflows"))?;
            }
            let rest = &line[hex_end..];
            let after_ws = rest
                .iter()
                .position(|b| *b != b' ' && *b != b'\t')
                .unwrap_or(rest.len());
            let ext = &rest[after_ws..];
            if !ext.is_empty() && ext[0] != b';' {
                return Err(BodyError::Chunked("invalid chunk size"));
            }
            // Tokens and quoted strings (§7.1.1) hold no control bytes but
            // HTAB: a bare CR would end the line for a reader that stops at
            // CR, as hyper's does.
            if ext.iter().any(|b| (*b < b' ' && *b != b'\t') || *b == 0x7f) {
                return Err(BodyError::Chunked("control byte in a chunk extension"));
            }
            let extensions = extensions + ext.len();
            if extensions > EXTENSIONS_LIMIT {
                return Err(BodyError::Chunked("chunk extensions over the limit"));
            }
            buf.advance(lf + 1);
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data {
                    left: size,
                    extensions,
                }
            };
            Ok(Step::Again)
        }
        Chunk::Data { left, extensions } => {
            if buf.is_empty() {
                return Ok(Step::Out(Decoded::More));
            }
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let left = left - n as u64;
            *chunk = if left == 0 {
                Chunk::DataEnd { extensions }
            } else {
                Chunk::Data { left, extensions }
            };
            Ok(Step::Out(Decoded::Data(take(buf, n))))
        }
        Chunk::DataEnd { extensions } => {
            if buf.len() < 2 {
                if buf.first().is_some_and(|b| *b != b'\r') {
                    return Err(BodyError::Chunked("no CRLF after chunk data"));
                }
                return Ok(Step::Out(Decoded::More));
            }
            if &buf[..2] != b"\r\n" {
                return Err(BodyError::Chunked("no CRLF after chunk data"));
            }
            buf.advance(2);
            *chunk = Chunk::Size { extensions };
            Ok(Step::Again)
        }
        Chunk::Trailers => {
            if buf.len() < 2 {
                if buf.first().is_some_and(|b| *b != b'\r') {
                    // A trailer line: wait for the whole section.
                } else {
                    return Ok(Step::Out(Decoded::More));
                }
            } else if &buf[..2] == b"\r\n" {
                buf.advance(2);
                return Ok(Step::End);
            }
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > TRAILERS_LIMIT {
                    return Err(BodyError::Trailers("larger than 16 KiB"));
                }
                return Ok(Step::Out(Decoded::More));
            };
            let len = end + 4;
            if len > TRAILERS_LIMIT {
                return Err(BodyError::Trailers("larger than 16 KiB"));
            }
            // httparse also ends lines at a bare LF, and so would end the
            // section before the CRLF found here: where the body ends would
            // be in doubt.
            let section = &buf[..len];
            let bare_lf = section.first() == Some(&b'\n')
                || section.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r');
            if bare_lf {
                return Err(BodyError::Trailers("a line ends without CR"));
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let parsed = match httparse::parse_headers(section, &mut headers) {
                Ok(httparse::Status::Complete((_, parsed))) => parsed,
                Ok(httparse::Status::Partial) => return Err(BodyError::Trailers("partial")),
                Err(_) => return Err(BodyError::Trailers("syntax")),
            };
            let mut map = HeaderMap::with_capacity(parsed.len());
            for h in parsed.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| BodyError::Trailers("name"))?;
                let value =
                    HeaderValue::from_bytes(h.value).map_err(|_| BodyError::Trailers("value"))?;
                map.append(name, value);
            }
            buf.advance(len);
            Ok(Step::Last(map))
        }
    }
}
