//! A node's response head read as httparse 1.10 reads it with its default
//! configuration (the same bytes accepted, the same error at the same byte,
//! the same `Partial` on a head cut short), each field line handed on as it
//! is read: no array of 100 lines filled and walked again, and a name
//! spelled as on the last response is matched whole, not byte by byte.

use std::ops::Range;

use http::header::{HeaderName, InvalidHeaderName};
use httparse::Error;

use super::decode::MAX_HEADERS;
use super::names::Names;

/// tchar (RFC 9110 §5.6.2): a header name's bytes.
static TOKEN: [bool; 256] = {
    let mut map = [false; 256];
    let mut i = 0;
    while i < 256 {
        map[i] = matches!(i as u8,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
            | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
            | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~');
        i += 1;
    }
    map
};

/// A header value's bytes: HTAB, SP, VCHAR and obs-text.
static VALUE: [bool; 256] = {
    let mut map = [false; 256];
    let mut i = 0;
    while i < 256 {
        map[i] = matches!(i as u8, b'\t' | b' '..=0x7e | 0x80..=0xff);
        i += 1;
    }
    map
};

/// A whole status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    /// HTTP/1.1, else HTTP/1.0.
    pub http11: bool,
    pub code: u16,
    /// Where the reason phrase lies; empty without one and, as httparse
    /// has it, when it holds obs-text.
    pub reason: Range<usize>,
    /// Where the field lines start.
    pub len: usize,
}

/// `None` when `buf` ends before byte `$i`: the head is partial.
macro_rules! byte {
    ($buf:ident, $i:expr) => {
        match $buf.get($i) {
            Some(b) => *b,
            None => return Ok(None),
        }
    };
}

/// Reads the status line at the start of `buf` (after any empty lines):
/// `None` until it is whole.
pub fn status_line(buf: &[u8]) -> Result<Option<StatusLine>, Error> {
    let mut i = 0;
    loop {
        match byte!(buf, i) {
            b'\r' if byte!(buf, i + 1) == b'\n' => i += 2,
            b'\r' => return Err(Error::NewLine),
            b'\n' => i += 1,
            _ => break,
        }
    }
    let http11 = match buf.get(i..i + 8) {
        Some(b"HTTP/1.1") => true,
        Some(b"HTTP/1.0") => false,
        Some(_) => return Err(Error::Version),
        None => {
            let rest = &buf[i..];
            let n = rest.len().min(7);
            return if rest[..n] == b"HTTP/1."[..n] {
                Ok(None)
            } else {
                Err(Error::Version)
            };
        }
    };
    i += 8;
    if byte!(buf, i) != b' ' {
        return Err(Error::Version);
    }
    i += 1;
    let mut code = 0;
    for _ in 0..3 {
        let b = byte!(buf, i);
        if !b.is_ascii_digit() {
            return Err(Error::Status);
        }
        code = code * 10 + u16::from(b - b'0');
        i += 1;
    }
    let reason = match byte!(buf, i) {
        b' ' => {
            i += 1;
            let start = i;
            let mut obs_text = false;
            loop {
                match byte!(buf, i) {
                    b'\r' if byte!(buf, i + 1) == b'\n' => break,
                    b'\n' => break,
                    b'\t' | b' '..=0x7e => {}
                    0x80.. => obs_text = true,
                    _ => return Err(Error::Status),
                }
                i += 1;
            }
            start..if obs_text { start } else { i }
        }
        b'\r' if byte!(buf, i + 1) == b'\n' => i..i,
        b'\n' => i..i,
        _ => return Err(Error::Status),
    };
    i += if buf[i] == b'\r' { 2 } else { 1 };
    Ok(Some(StatusLine {
        http11,
        code,
        reason,
        len: i,
    }))
}

/// Reads the field lines from `i` in `buf` to the empty line that ends
/// them, passing each one's name (from `names`: a name spelled as the one
/// remembered for its line is not read again) and where its value lies
/// (trimmed) to `line`, in order: where the head ends, or `None` until it
/// is whole.
pub fn fields(
    buf: &[u8],
    mut i: usize,
    names: &mut Names,
    mut line: impl FnMut(Result<HeaderName, InvalidHeaderName>, Range<usize>),
) -> Result<Option<usize>, Error> {
    let mut lines = 0;
    loop {
        let b = byte!(buf, i);
        if b == b'\r' {
            if byte!(buf, i + 1) != b'\n' {
                return Err(Error::NewLine);
            }
            return Ok(Some(i + 2));
        }
        if b == b'\n' {
            return Ok(Some(i + 1));
        }
        let name = match names.known(lines, &buf[i..]) {
            Some((len, name)) => {
                i += len + 1;
                Ok(name)
            }
            None => {
                if !TOKEN[usize::from(b)] {
                    return Err(Error::HeaderName);
                }
                let start = i;
                i = token_end(buf, i + 1);
                if byte!(buf, i) != b':' {
                    return Err(Error::HeaderName);
                }
                i += 1;
                names.name(lines, &buf[start..i - 1])
            }
        };
        // Whitespace, then the value up to the line's end.
        let value = loop {
            match byte!(buf, i) {
                b' ' | b'\t' => i += 1,
                b'\r' if byte!(buf, i + 1) == b'\n' => break i..i,
                b'\n' => break i..i,
                b if VALUE[usize::from(b)] => {
                    let start = i;
                    i = value_end(buf, i + 1);
                    match byte!(buf, i) {
                        b'\r' if byte!(buf, i + 1) == b'\n' => {}
                        b'\n' => {}
                        _ => return Err(Error::HeaderValue),
                    }
                    let end = buf[start..i]
                        .iter()
                        .rposition(|b| *b != b' ' && *b != b'\t')
                        .map_or(start, |last| start + last + 1);
                    break start..end;
                }
                _ => return Err(Error::HeaderValue),
            }
        };
        i += if buf[i] == b'\r' { 2 } else { 1 };
        if lines == MAX_HEADERS {
            return Err(Error::TooManyHeaders);
        }
        lines += 1;
        line(name, value);
    }
}

/// Where the name's bytes that start at `i` end: at the first byte not a
/// tchar, or at the end of `buf`.
fn token_end(buf: &[u8], i: usize) -> usize {
    let rest = buf.get(i..).unwrap_or_default();
    i + rest
        .iter()
        .position(|b| !TOKEN[usize::from(*b)])
        .unwrap_or(rest.len())
}

/// Where the value's bytes that start at `i` end: at the first byte not
/// of [`VALUE`], or at the end of `buf`. Eight bytes at a time, as httparse
/// reads them: a byte below SP (HTAB among them) or DEL stops a word, and
/// the bytes from there are looked up one by one.
fn value_end(buf: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const SPACES: u64 = u64::from_le_bytes([b' '; 8]);
    const DELS: u64 = u64::from_le_bytes([0x7f; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    while let Some(word) = buf.get(i..i + 8) {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        // The high bit set in each byte below SP, or equal to DEL; only
        // the lowest such byte is sure, which is the one wanted.
        let below = x.wrapping_sub(SPACES) & !x;
        let del = (x ^ DELS).wrapping_sub(ONES) & !(x ^ DELS);
        let stops = (below | del) & HIGH;
        if stops != 0 {
            i += (stops.trailing_zeros() / 8) as usize;
            break;
        }
        i += 8;
    }
    let rest = buf.get(i..).unwrap_or_default();
    i + rest
        .iter()
        .position(|b| !VALUE[usize::from(*b)])
        .unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    /// The status line (version, code, reason) and field lines, and where
    /// the head ends.
    type Read = (bool, u16, Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>, usize);

    fn ours(buf: &[u8]) -> Result<Option<Read>, Error> {
        let Some(line) = status_line(buf)? else {
            return Ok(None);
        };
        let mut lines = Vec::new();
        // The names of the heads read before are remembered, as they are
        // on a worker.
        let read = super::super::names::RESPONSES.with_borrow_mut(|names| {
            fields(buf, line.len, names, |name, value| {
                lines.push((
                    name.unwrap().as_str().as_bytes().to_vec(),
                    buf[value].to_vec(),
                ));
            })
        });
        let Some(len) = read? else {
            return Ok(None);
        };
        let reason = buf[line.reason].to_vec();
        Ok(Some((line.http11, line.code, reason, lines, len)))
    }

    fn httparse(buf: &[u8]) -> Result<Option<Read>, Error> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = res.parse(buf)? else {
            return Ok(None);
        };
        let lines = res
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase().into_bytes(), h.value.to_vec()))
            .collect();
        let reason = res.reason.unwrap().as_bytes().to_vec();
        Ok(Some((
            res.version == Some(1),
            res.code.unwrap(),
            reason,
            lines,
            len,
        )))
    }

    /// Heads line by line, of the pieces where the syntax turns, then
    /// perhaps a byte changed and the end cut off.
    fn heads() -> impl Strategy<Value = Vec<u8>> {
        let one = |pieces: &'static [&'static str]| prop::sample::select(pieces);
        let status = one(&[
            "HTTP/1.1 200 OK\r\n",
            "HTTP/1.0 204\r\n",
            "HTTP/1.1 404 \r\n",
            "\r\nHTTP/1.1 101 Switching \t Protocols\n",
            "HTTP/1.1 200 \u{80}K\r\n",
            "HTTP/1.1 099 x\r\n",
            "HTTP/1.2 200 OK\r\n",
            "HTTP/1.1 200 O\rK\r\n",
            "HTTP/1.1 20 OK\r\n",
            "HTTP/1.1  200 OK\r\n",
            "HTTP/1.1 200\tOK\r\n",
        ]);
        // Sound pieces mostly, so that many heads are whole.
        let name = prop_oneof![
            8 => one(&["Content-Length", "X-A", "a", "Transfer-Encoding"]),
            1 => one(&["", "b c", "x\u{80}", "t\"", "é"]),
        ];
        let colon = prop_oneof![8 => one(&[":", ": ", ":\t "]), 1 => one(&[" :", "", "::"])];
        let value = prop_oneof![
            8 => one(&["2", "v ", " x\t", "", "\u{80}y", "a b", "chunked"]),
            4 => one(&["Wed, 02 Dec 2026 15:54:20 GMT", "a longer one\twith a tab ", "ü~{}ÿ!"]),
            1 => one(&["a\u{7f}", "a\rb", "\0", "0123456789abc\u{7f}ef", "0123456789\x1f"]),
        ];
        let end = prop_oneof![8 => one(&["\r\n", "\n"]), 1 => one(&["\r", "\r\r\n"])];
        let lines = prop::collection::vec((name, colon, value, end), 0..6);
        let last = one(&["\r\n", "\n", "", "\r", "\rx", " \r\n"]);
        let change = prop::option::weighted(0.3, (any::<prop::sample::Index>(), any::<u8>()));
        let cut = prop::option::weighted(0.3, any::<prop::sample::Index>());
        (status, lines, last, change, cut).prop_map(|(status, lines, last, change, cut)| {
            let mut head = status.as_bytes().to_vec();
            for (name, colon, value, end) in lines {
                head.extend([name, colon, value, end].concat().as_bytes());
            }
            head.extend(last.as_bytes());
            head.extend(b"body");
            if let Some((at, byte)) = change {
                let at = at.index(head.len());
                head[at] = byte;
            }
            if let Some(at) = cut {
                head.truncate(at.index(head.len() + 1));
            }
            head
        })
    }

    proptest! {
        #[test]
        fn reads_as_httparse(head in heads()) {
            prop_assert_eq!(&ours(&head), &httparse(&head));
        }
    }

    #[test]
    fn a_hundred_lines_and_no_more() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            head.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        let mut more = head.clone();
        head.extend_from_slice(b"\r\n");
        assert_eq!(ours(&head), httparse(&head));
        assert!(ours(&head).unwrap().is_some());
        more.extend_from_slice(b"x-more: v\r\n\r\n");
        assert_eq!(ours(&more), Err(Error::TooManyHeaders));
        assert_eq!(httparse(&more), Err(Error::TooManyHeaders));
        more.truncate(more.len() - 3);
        assert_eq!(ours(&more), Ok(None), "a line cut short: wait for it");
        assert_eq!(httparse(&more), Ok(None));
    }
}
