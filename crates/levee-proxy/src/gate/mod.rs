//! The gate: levee's strict reading of a client's HTTP/1 bytes, so that
//! levee, not a parser's defaults, decides what is malformed, and answers
//! it with a reason. [`h1::server`](crate::h1::server) runs it on every
//! request:
//!
//! ```text
//! head:  checked line by line as it arrives ([`head`]): syntax, limits,
//!        body framing; a bad one is refused (400/414/431/501 + reason)
//! body:  chunked checked as it passes ([`chunked`]), nothing buffered;
//!        a violation fails the request body: 400 if no response started
//! ```

mod chunked;
mod head;
#[cfg(any(test, feature = "fuzzing"))]
pub mod pieces;

use std::io;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use levee_telemetry::ErrorReason;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub use chunked::ChunkedScan;
pub(crate) use head::is_tchar;
pub use head::{Framing, Head, HeadScan, Limits};

/// What makes a request unacceptable, found in its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a line ends in a bare LF, not CRLF")]
    BareLf,
    #[error("a CR not followed by LF")]
    BareCr,
    #[error("the request line is not `method SP target SP version`")]
    BadRequestLine,
    #[error("the method is not a token")]
    BadMethod,
    #[error("the request target is not a valid origin-, absolute-, authority- or asterisk-form")]
    BadTarget,
    #[error("the version is not HTTP/1.0 or HTTP/1.1")]
    BadVersion,
    #[error("the request head is over max_header_bytes")]
    HeadTooLarge,
    #[error("the request target is over max_uri_bytes")]
    UriTooLong,
    #[error("more header lines than max_headers")]
    TooManyHeaders,
    #[error("a header line is folded (obs-fold)")]
    ObsFold,
    #[error("whitespace between a field name and its colon")]
    SpaceBeforeColon,
    #[error("a field name is empty or not a token")]
    BadFieldName,
    #[error("a field value holds a control character")]
    BadFieldValue,
    #[error("Content-Length is not 1*DIGIT within 64 bits")]
    BadContentLength,
    #[error("more than one Content-Length")]
    RepeatedContentLength,
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("Transfer-Encoding on an HTTP/1.0 request")]
    TransferEncodingOnHttp10,
    #[error("a Transfer-Encoding other than exactly `chunked`")]
    UnsupportedTransferEncoding,
    #[error("a chunk size is not hexadecimal")]
    BadChunkSize,
    #[error("a chunk size over 64 bits")]
    ChunkSizeOverflow,
    #[error("a chunk extension is malformed")]
    BadChunkExtension,
    #[error("the chunk extensions of a body are over 4 KiB")]
    ChunkExtensionsTooLong,
    #[error("chunk data is not followed by CRLF (more data than its size)")]
    MissingChunkCrlf,
    #[error("the trailer section is malformed or too large")]
    BadTrailer,
}

impl Violation {
    /// What levee answers for it.
    pub fn reason(self) -> ErrorReason {
        match self {
            Violation::HeadTooLarge => ErrorReason::HeaderTooLarge,
            Violation::UriTooLong => ErrorReason::UriTooLong,
            Violation::TooManyHeaders => ErrorReason::TooManyHeaders,
            Violation::UnsupportedTransferEncoding => ErrorReason::UnsupportedTransferEncoding,
            _ => ErrorReason::BadRequest,
        }
    }
}

/// How long an HTTP/1 connection idles awake (its task, its service
/// stack) before it parks. A busy client's next request finds it ready:
/// parking and waking per request costs more than it saves. A client idle
/// for longer costs a few microseconds to wake, and holds no buffer
/// meanwhile.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How often, at most, the park timer of a connection that stays busy
/// fires to look again: a busy connection is not woken every
/// [`PARK_AFTER`], and parks at most this long after it went idle.
pub const PARK_RECHECK: Duration = Duration::from_secs(1);

/// A client stream an idle HTTP/1 connection can wait on without a buffer.
pub trait Park {
    /// Ready once the client sent bytes (`true`) or closed (`false`),
    /// reading nothing.
    fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>>;
}

impl Park for TcpStream {
    fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        ready!(self.poll_peek(cx, &mut buf))?;
        Poll::Ready(Ok(!buf.filled().is_empty()))
    }
}

impl Park for TlsStream<TcpStream> {
    /// rustls may hold decrypted bytes the socket no longer shows: only
    /// with none (and no close_notify) is the socket what to wait on.
    fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let (tcp, tls) = self.get_mut();
        if tls.wants_read() {
            tcp.poll_parked(cx)
        } else {
            Poll::Ready(Ok(true))
        }
    }
}
