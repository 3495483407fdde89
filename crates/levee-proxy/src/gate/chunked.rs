//! A chunked body (RFC 9112 §7.1), validated byte by byte as it passes:
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size   = 1*HEXDIG                      (at most 16 digits: 64 bits)
//! chunk-ext    = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! Nothing is buffered: the scan keeps a few counters, and chunk data is
//! skipped in one step.

use super::head::{is_field_vchar, is_tchar};
use super::Violation;

/// Most bytes of chunk extensions in one body (hyper allows 16 KiB).
const MAX_EXTENSION_BYTES: usize = 4 * 1024;
/// Most bytes of the trailer section (hyper allows 16 KiB).
const MAX_TRAILER_BYTES: usize = 8 * 1024;
/// Most trailer field lines (hyper allows 100).
const MAX_TRAILER_LINES: usize = 64;
/// 64 bits of chunk size.
const MAX_SIZE_DIGITS: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The first digit of a chunk size.
    SizeStart,
    Size,
    /// BWS before a `;`.
    ExtSpace,
    /// BWS after a `;`, before the name.
    ExtNameStart,
    ExtName,
    /// BWS after a name: `=` or `;` follows.
    ExtAfterName,
    /// BWS after `=`.
    ExtValueStart,
    ExtToken,
    ExtQuoted,
    ExtQuotedPair,
    /// After the closing quote.
    ExtAfterQuoted,
    /// CR seen at the end of a size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The start of a trailer line, or of the final CRLF.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// The scan of one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedScan {
    state: State,
    /// The current chunk's size while reading it; then its data left.
    size: u64,
    digits: u8,
    ext_bytes: usize,
    trailer_bytes: usize,
    trailer_lines: usize,
}

impl Default for ChunkedScan {
    fn default() -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            ext_bytes: 0,
            trailer_bytes: 0,
            trailer_lines: 0,
        }
    }
}

impl ChunkedScan {
    /// The body has ended (its final CRLF seen).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body; returns how many are valid and
    /// belong to it (fewer than `bytes.len()` once it is done), and the
    /// violation found right after them, if any.
    pub fn scan(&mut self, bytes: &[u8]) -> (usize, Option<Violation>) {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Done {
                break;
            }
            if self.state == State::Data {
                let left = usize::try_from(self.size).unwrap_or(usize::MAX);
                let take = left.min(bytes.len() - i);
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            if let Err(v) = self.step(bytes[i]) {
                return (i, Some(v));
            }
            i += 1;
        }
        (i, None)
    }

    fn step(&mut self, b: u8) -> Result<(), Violation> {
        use State::*;
        if matches!(
            self.state,
            ExtSpace
                | ExtNameStart
                | ExtName
                | ExtAfterName
                | ExtValueStart
                | ExtToken
                | ExtQuoted
                | ExtQuotedPair
                | ExtAfterQuoted
        ) {
            self.ext_bytes += 1;
            if self.ext_bytes > MAX_EXTENSION_BYTES {
                return Err(Violation::ChunkExtensionsTooLong);
            }
        }
        if matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf
        ) {
            self.trailer_bytes += 1;
            if self.trailer_bytes > MAX_TRAILER_BYTES {
                return Err(Violation::BadTrailer);
            }
        }
        let ext = Violation::BadChunkExtension;
        self.state = match (self.state, b) {
            (SizeStart, _) if b.is_ascii_hexdigit() => {
                self.digits = 0;
                self.size = 0;
                self.digit(b)?;
                Size
            }
            (SizeStart, _) => return Err(Violation::BadChunkSize),
            (Size, _) if b.is_ascii_hexdigit() => {
                self.digit(b)?;
                Size
            }
            (Size, b';') => {
                self.ext_bytes += 1;
                ExtNameStart
            }
            (Size, b' ' | b'\t') => {
                self.ext_bytes += 1;
                ExtSpace
            }
            (Size, b'\r') => SizeLf,
            (Size, _) => return Err(Violation::BadChunkSize),
            (ExtSpace, b' ' | b'\t') => ExtSpace,
            (ExtSpace, b';') => ExtNameStart,
            (ExtNameStart, b' ' | b'\t') => ExtNameStart,
            (ExtNameStart, _) if is_tchar(b) => ExtName,
            (ExtName, _) if is_tchar(b) => ExtName,
            (ExtName, b' ' | b'\t') => ExtAfterName,
            (ExtName | ExtAfterName, b'=') => ExtValueStart,
            (ExtName | ExtAfterName, b';') => ExtNameStart,
            (ExtAfterName, b' ' | b'\t') => ExtAfterName,
            (ExtValueStart, b' ' | b'\t') => ExtValueStart,
            (ExtValueStart, b'"') => ExtQuoted,
            (ExtValueStart | ExtToken, _) if is_tchar(b) => ExtToken,
            (ExtToken | ExtAfterQuoted, b' ' | b'\t') => ExtSpace,
            (ExtToken | ExtAfterQuoted, b';') => ExtNameStart,
            (ExtName | ExtToken | ExtAfterQuoted, b'\r') => SizeLf,
            (ExtQuoted, b'"') => ExtAfterQuoted,
            (ExtQuoted, b'\\') => ExtQuotedPair,
            (ExtQuoted | ExtQuotedPair, _) if is_field_vchar(b) => ExtQuoted,
            (
                ExtSpace | ExtNameStart | ExtName | ExtAfterName | ExtValueStart | ExtToken
                | ExtQuoted | ExtQuotedPair | ExtAfterQuoted,
                _,
            ) => return Err(ext),
            (SizeLf, b'\n') if self.size == 0 => TrailerStart,
            (SizeLf, b'\n') => Data,
            (SizeLf, _) => return Err(Violation::BareCr),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => SizeStart,
            (DataCr | DataLf, _) => return Err(Violation::MissingChunkCrlf),
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart, _) if is_tchar(b) => {
                self.trailer_lines += 1;
                if self.trailer_lines > MAX_TRAILER_LINES {
                    return Err(Violation::BadTrailer);
                }
                TrailerName
            }
            (TrailerName, _) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if is_field_vchar(b) => TrailerValue,
            (TrailerLf, b'\n') => TrailerStart,
            (TrailerStart | TrailerName | TrailerValue | TrailerLf, _) => {
                return Err(Violation::BadTrailer)
            }
            (EndLf, b'\n') => Done,
            (EndLf, _) => return Err(Violation::BareCr),
            (Data | Done, _) => self.state,
        };
        Ok(())
    }

    fn digit(&mut self, b: u8) -> Result<(), Violation> {
        self.digits += 1;
        if self.digits > MAX_SIZE_DIGITS {
            return Err(Violation::ChunkSizeOverflow);
        }
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        self.size = (self.size << 4) | u64::from(d);
        Ok(())
    }
}

#[cfg(test)]
#[path = "chunked_tests.rs"]
mod tests;
