//! A request head, validated line by line as its bytes arrive (RFC 9112
//! §2-§6), and the framing of the body that follows it.
//!
//! Stricter than hyper on every point, so that a head the gate lets through
//! is never refused by hyper with a bare answer: every line ends in CRLF,
//! the request line is `method SP target SP HTTP/1.x`, field names are
//! tokens directly followed by `:`, values hold no control characters, no
//! obs-fold; and the body's framing is unambiguous.

use super::Violation;

/// The limits a head is checked against, from the live `[server]` config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of the whole head, leading empty lines included.
    pub max_head_bytes: usize,
    /// Bytes of the request target.
    pub max_uri_bytes: usize,
    /// Header lines.
    pub max_headers: usize,
}

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length`, non-zero.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A complete, valid head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Its length in bytes, up to and including the final empty line.
    pub len: usize,
    /// Its field lines.
    pub fields: usize,
    pub framing: Framing,
    /// It asks for a protocol switch (`Upgrade`, or `CONNECT`): what
    /// follows it is not known to be HTTP/1 until its response is.
    pub upgrade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Before the request line (empty lines are skipped, RFC 9112 §2.2).
    #[default]
    Start,
    Fields,
}

/// The scan of one head, resumed as more of its bytes arrive.
#[derive(Debug, Default, Clone)]
pub struct HeadScan {
    phase: Phase,
    /// Bytes of the head already scanned (always a line start).
    scanned: usize,
    lines: usize,
    http10: bool,
    upgrade: bool,
    content_length: Option<u64>,
    /// Transfer-Encoding lines seen, and whether each said `chunked`.
    te_lines: usize,
    te_chunked_only: bool,
}

impl HeadScan {
    /// Scans `buf`, which holds the head from its first byte (and maybe more
    /// after it). `Ok(None)`: the head is not complete yet.
    pub fn scan(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<Head>, Violation> {
        loop {
            let rest = &buf[self.scanned..];
            let Some(lf) = crate::find::byte(b'\n', rest) else {
                return self.incomplete(buf.len(), rest, limits).map(|()| None);
            };
            // First the checks an unfinished line gets, so that the verdict
            // never depends on how the bytes arrived.
            let line = &rest[..lf];
            self.incomplete(self.scanned + lf, line, limits)?;
            let end = self.scanned + lf + 1;
            if end > limits.max_head_bytes {
                return Err(self.too_large(line, limits));
            }
            let Some(line) = line.strip_suffix(b"\r") else {
                return Err(Violation::BareLf);
            };
            self.scanned = end;
            match self.phase {
                Phase::Start if line.is_empty() => {}
                Phase::Start => {
                    self.request_line(line, limits)?;
                    self.phase = Phase::Fields;
                }
                Phase::Fields if line.is_empty() => return self.finish(end).map(Some),
                Phase::Fields => self.field_line(line, limits)?,
            }
        }
    }

    /// The limits, on a head of `len` bytes so far whose last line (not
    /// ended yet) is `line`.
    fn incomplete(&self, len: usize, line: &[u8], limits: &Limits) -> Result<(), Violation> {
        // A target is part of its line: a line no longer than the limit
        // needs no look for it.
        if self.phase == Phase::Start
            && line.len() > limits.max_uri_bytes
            && target_so_far(line) > limits.max_uri_bytes
        {
            return Err(Violation::UriTooLong);
        }
        if len > limits.max_head_bytes {
            return Err(self.too_large(line, limits));
        }
        Ok(())
    }

    fn too_large(&self, line: &[u8], limits: &Limits) -> Violation {
        if self.phase == Phase::Start && target_so_far(line) > limits.max_uri_bytes {
            Violation::UriTooLong
        } else {
            Violation::HeadTooLarge
        }
    }

    fn request_line(&mut self, line: &[u8], limits: &Limits) -> Result<(), Violation> {
        let mut parts = line.splitn(3, |&b| b == b' ');
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Violation::BadRequestLine);
        };
        if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
            return Err(Violation::BadMethod);
        }
        if target.len() > limits.max_uri_bytes {
            return Err(Violation::UriTooLong);
        }
        if !valid_target(target) {
            return Err(Violation::BadTarget);
        }
        self.http10 = match version {
            b"HTTP/1.1" => false,
            b"HTTP/1.0" => true,
            _ => return Err(Violation::BadVersion),
        };
        self.upgrade = method == b"CONNECT";
        Ok(())
    }

    fn field_line(&mut self, line: &[u8], limits: &Limits) -> Result<(), Violation> {
        self.lines += 1;
        if self.lines > limits.max_headers {
            return Err(Violation::TooManyHeaders);
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(Violation::ObsFold);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Violation::BadFieldName);
        };
        let name = &line[..colon];
        if matches!(name.last(), Some(b' ' | b'\t')) {
            return Err(Violation::SpaceBeforeColon);
        }
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(Violation::BadFieldName);
        }
        let value = trim_ows(&line[colon + 1..]);
        if !value.iter().all(|&b| is_field_vchar(b)) {
            return Err(Violation::BadFieldValue);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.content_length.is_some() {
                return Err(Violation::RepeatedContentLength);
            }
            self.content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te_chunked_only = self.te_lines == 0 && value.eq_ignore_ascii_case(b"chunked");
            self.te_lines += 1;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
        Ok(())
    }

    /// The framing rules of RFC 9112 §6.1-§6.3, strict where it allows a
    /// choice: Transfer-Encoding on HTTP/1.0, or with Content-Length, is
    /// refused rather than guessed at.
    fn finish(&self, len: usize) -> Result<Head, Violation> {
        let framing = if self.te_lines > 0 {
            if self.http10 {
                return Err(Violation::TransferEncodingOnHttp10);
            }
            if self.content_length.is_some() {
                return Err(Violation::ContentLengthWithTransferEncoding);
            }
            if !self.te_chunked_only {
                return Err(Violation::UnsupportedTransferEncoding);
            }
            Framing::Chunked
        } else {
            match self.content_length {
                None | Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
            }
        };
        Ok(Head {
            len,
            fields: self.lines,
            framing,
            upgrade: self.upgrade,
        })
    }
}

/// Bytes of the target on a request line that has not ended yet.
fn target_so_far(line: &[u8]) -> usize {
    match line.iter().position(|&b| b == b' ') {
        Some(sp) => {
            let target = &line[sp + 1..];
            target
                .iter()
                .position(|&b| b == b' ')
                .unwrap_or(target.len())
        }
        None => 0,
    }
}

/// `1*DIGIT` that fits in a u64: no sign, no list, no spaces inside.
fn parse_content_length(value: &[u8]) -> Result<u64, Violation> {
    if value.is_empty() {
        return Err(Violation::BadContentLength);
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(Violation::BadContentLength);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(Violation::BadContentLength)
    })
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// tchar (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    CLASS[b as usize] & TCHAR != 0
}

/// A byte of a field value: VCHAR, obs-text, SP or HTAB; never NUL, CR, LF
/// or another control.
pub(crate) fn is_field_vchar(b: u8) -> bool {
    CLASS[b as usize] & FIELD_VCHAR != 0
}

const TCHAR: u8 = 1;
const FIELD_VCHAR: u8 = 2;
const PATH: u8 = 4;
const QUERY: u8 = 8;

/// Each byte's classes, looked up once per byte of every head: one load
/// instead of a chain of comparisons.
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            class |= TCHAR;
        }
        if c == b'\t' || (c >= b' ' && c <= b'~') || c >= 0x80 {
            class |= FIELD_VCHAR;
        }
        // What the `http` crate accepts unescaped in a path and in a query.
        if matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E) {
            class |= PATH;
        }
        if matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E) {
            class |= QUERY;
        }
        table[b] = class;
        b += 1;
    }
    table
};

/// The request-target forms of RFC 9112 §3.2: origin-form in bytes that
/// hyper's URI parser takes as they are; the rarer absolute-, authority-
/// and asterisk-forms as that parser takes them (the edge then refuses
/// authority-form, `*` outside OPTIONS, and bad hosts, with reasons).
fn valid_target(target: &[u8]) -> bool {
    match target.first() {
        None => false,
        Some(b'/') => valid_path_query(target),
        // Visible ASCII only and no fragment, as httparse wants; the `http`
        // crate alone would take some raw bytes after a `#`.
        Some(_) => {
            target
                .iter()
                .all(|&b| (0x21..=0x7E).contains(&b) && b != b'#')
                && http::Uri::try_from(target).is_ok()
        }
    }
}

/// A path and query of bytes the `http` crate accepts unescaped.
fn valid_path_query(pq: &[u8]) -> bool {
    let (path, query) = match pq.iter().position(|&b| b == b'?') {
        Some(q) => (&pq[..q], &pq[q + 1..]),
        None => (pq, &[][..]),
    };
    path.iter().all(|&b| CLASS[b as usize] & PATH != 0)
        && query.iter().all(|&b| CLASS[b as usize] & QUERY != 0)
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
