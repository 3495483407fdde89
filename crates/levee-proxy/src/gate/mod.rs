//! The gate: a validating tokenizer between a client's HTTP/1 byte stream
//! and hyper, so that levee, not hyper, decides what is malformed, and
//! answers it with a reason.
//!
//! ```text
//! socket ──▶ Gate ──▶ hyper (HTTP/1 parse) ──▶ the stack
//!            head:    held until complete, then checked strictly ([`head`]);
//!                     only valid heads reach hyper
//!            body:    Content-Length counted; chunked checked as it passes
//!                     ([`chunked`]), nothing buffered
//!            Upgrade: bytes after the head wait for its fate (upgraded: pass)
//!            HTTP/2:  the prior-knowledge preface switches to passthrough
//! ```
//!
//! [Parking when idle](Gate::park_when_idle), once a connection has had
//! no request in flight for [`PARK_AFTER`] (its last response written out,
//! nothing more from the client), hyper reads an end of stream, closes
//! quietly without shutting the socket, and the connection parks with no
//! buffers until the client sends again ([`Park`]).
//!
//! A bad head is held back until the connection has no request in flight
//! (earlier pipelined requests get their responses), then hyper reads an
//! end of stream, and when it shuts the connection down the gate writes
//! levee's own error response and closes. hyper never sees that request, so
//! the gate also gives it its access log line ([`RefusedHead`]), written
//! once the answer is out or the connection is gone. A bad chunked body fails hyper's
//! read with a [`Violation`] inside the `io::Error`: the request body fails,
//! the node connection is aborted, and the client gets 400 `bad-request` if
//! no response started.

mod chunked;
mod head;
#[cfg(any(test, feature = "fuzzing"))]
pub mod pieces;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use levee_telemetry::ErrorReason;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;

pub use chunked::ChunkedScan;
pub use head::{Framing, Head, HeadScan, Limits};

use crate::access_log::RefusedHead;
use crate::activity::ConnActivity;
use crate::error::{raw_error_response, status_of};
use crate::state::Shared;

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

    /// The violation behind an error from a client's request body, if any.
    pub fn find(mut e: &(dyn std::error::Error + 'static)) -> Option<Violation> {
        loop {
            if let Some(v) = e.downcast_ref::<Violation>() {
                return Some(*v);
            }
            if let Some(v) = e
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Violation>())
            {
                return Some(*v);
            }
            e = e.source()?;
        }
    }
}

/// Where the gate is in the request stream.
#[derive(Debug)]
enum State {
    /// The first bytes: the HTTP/2 preface, or HTTP/1.
    Sniff,
    /// A head, checked against the limits of when it began.
    Head(HeadScan, Limits),
    /// Content-Length bytes left.
    Length(u64),
    Chunked(ChunkedScan),
    /// After a request that asks for a protocol switch: hold what follows
    /// until its response ended (back to HTTP/1) or it was upgraded. The
    /// request's number on the connection.
    Fate(u64),
    /// HTTP/2, or an upgraded connection: bytes pass unchecked.
    Pass,
    /// The next bytes are invalid; earlier ones still pass.
    Bad(Violation),
    /// A refused head: hyper has read the end of stream; levee's answer is
    /// written when hyper shuts the connection down.
    Refusing(Box<Refusal>),
    /// A bad body was reported to hyper as a read error.
    Failed(Violation),
}

/// levee's answer to a refused head, on its way out.
#[derive(Debug)]
struct Refusal {
    answer: Vec<u8>,
    written: usize,
    /// Where the answer's body starts, for the log's `bytes_out`.
    body_at: usize,
    /// Its access log line, written when the refusal ends (answered, or the
    /// connection gone): only then is it known how much went out.
    log: Option<RefusedHead>,
    shut: bool,
    /// Unread client bytes are drained for a while after the answer, so
    /// that closing does not reset the connection before the client has
    /// read it (a lingering close, as nginx does).
    linger: Option<Pin<Box<Sleep>>>,
    drained: usize,
}

impl Refusal {
    fn new(answer: Vec<u8>, log: Option<RefusedHead>) -> Box<Self> {
        let body_at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        Box::new(Self {
            answer,
            written: 0,
            body_at,
            log,
            shut: false,
            linger: None,
            drained: 0,
        })
    }
}

impl Drop for Refusal {
    fn drop(&mut self) {
        if let Some(log) = &self.log {
            let sent = self.written.saturating_sub(self.body_at);
            log.write(sent as u64, self.written == self.answer.len());
        }
    }
}

/// How long, and how many bytes, a refused client is drained after its
/// answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes the gate reads at once into its own buffer.
const READ_CHUNK: usize = 4 * 1024;

/// How long an HTTP/1 connection idles with its hyper connection (and
/// hyper's buffers, 16 KiB at least) before it parks. A busy client's next
/// request finds it ready: building a hyper connection per request cost
/// about 13% more CPU per request under keep-alive load. A client idle for
/// longer costs a few microseconds to wake, and holds no buffer meanwhile.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// How often, at most, the park timer of a connection that stays busy
/// fires to look again: a busy connection is not woken every
/// [`PARK_AFTER`], and parks at most this long after it went idle.
pub const PARK_RECHECK: Duration = Duration::from_secs(1);

/// What the gate's one timer bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    Off,
    /// The head being read: `header_read_timeout`.
    Head,
    /// An idle connection's park: [`PARK_AFTER`].
    Park,
}

/// The protocol a client speaks, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// The prior-knowledge preface (also what HTTP/2 over TLS sends).
    Http2,
}

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

/// Wraps a client connection's byte stream; see the module doc.
#[derive(Debug)]
pub struct Gate<IO> {
    io: IO,
    shared: Arc<Shared>,
    activity: Arc<ConnActivity>,
    /// The client, for the access log line of a refused head.
    peer: SocketAddr,
    state: State,
    /// Bytes read from the client and not yet given to hyper, from `start`;
    /// allocated only while a head arrives in pieces, freed when empty.
    held: Vec<u8>,
    start: usize,
    /// Of `held[start..]`, how many are validated and may go to hyper.
    ready: usize,
    /// Heads given to hyper so far.
    heads: u64,
    /// The body being read belongs to a request that asks for a protocol
    /// switch.
    upgrade: bool,
    /// The client closed its side.
    eof: bool,
    /// `header_read_timeout` for the head being read.
    head_timeout: Duration,
    /// Bounds a head that arrives in pieces, or an idle connection's time
    /// before it parks; allocated when first needed, freed when parked.
    timer: Option<Pin<Box<Sleep>>>,
    timing: Timing,
    /// Give hyper an end of stream once idle for [`PARK_AFTER`].
    park_idle: bool,
    /// Every response so far is written out (hyper flushed after the last
    /// one ended).
    answered: bool,
    /// A read that would park waits for `answered`: the flush wakes it.
    await_answer: bool,
    /// hyper read the end of stream that parks the connection.
    parked: bool,
    /// What [`ConnActivity::receiving`] was last told.
    told_receiving: bool,
}

impl<IO> Gate<IO> {
    pub fn new(io: IO, shared: Arc<Shared>, activity: Arc<ConnActivity>, peer: SocketAddr) -> Self {
        let head_timeout = shared.state().config.server.header_read_timeout;
        Self {
            io,
            shared,
            activity,
            peer,
            state: State::Sniff,
            held: Vec::new(),
            start: 0,
            ready: 0,
            heads: 0,
            upgrade: false,
            eof: false,
            head_timeout,
            timer: None,
            timing: Timing::Off,
            park_idle: false,
            answered: true,
            await_answer: false,
            parked: false,
            told_receiving: false,
        }
    }

    /// Ends hyper's stream once the connection idles; see the module doc.
    pub fn park_when_idle(mut self) -> Self {
        self.park_idle = true;
        self
    }

    /// hyper read the end of stream of an idle connection (not the
    /// client's): the connection may park and go on.
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// After a park: the next bytes are the next request's head.
    pub fn resume(&mut self) {
        self.parked = false;
        self.state = self.next_head();
    }

    /// The client's stream, to park on.
    pub fn into_io(self) -> IO {
        self.io
    }

    /// Bytes of a request are held that hyper has not read: a head under
    /// way (or the first bytes, before they tell the protocol).
    pub fn receiving(&self) -> bool {
        self.held.len() > self.start && matches!(self.state, State::Sniff | State::Head(..))
            || self.ready > 0 && !matches!(self.state, State::Pass)
    }

    /// A new head, under the live config's limits.
    fn next_head(&mut self) -> State {
        let state = self.shared.state();
        let server = &state.config.server;
        self.head_timeout = server.header_read_timeout;
        if self.timing == Timing::Head {
            self.timing = Timing::Off;
        }
        State::Head(
            HeadScan::default(),
            Limits {
                max_head_bytes: server.max_header_bytes,
                max_uri_bytes: server.max_uri_bytes,
                max_headers: server.max_headers,
            },
        )
    }

    /// After a request's last byte: the next head, or its fate first.
    fn after_request(&mut self) -> State {
        if self.upgrade {
            State::Fate(self.heads)
        } else {
            self.next_head()
        }
    }

    /// Validates as much of `data` (the bytes after the last validated one)
    /// as it can and returns how many passed. It stops short at a head not
    /// complete yet, at a request awaiting its fate, or before a violation
    /// (then in [`State::Bad`]).
    fn advance(&mut self, data: &[u8]) -> usize {
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..];
            let (used, next) = match &mut self.state {
                State::Sniff => {
                    let n = rest.len().min(H2_PREFACE.len());
                    if rest[..n] != H2_PREFACE[..n] {
                        (0, Some(self.next_head()))
                    } else if n == H2_PREFACE.len() {
                        (rest.len(), Some(State::Pass))
                    } else {
                        break;
                    }
                }
                State::Head(scan, limits) => match scan.scan(rest, limits) {
                    Ok(None) => break,
                    Ok(Some(head)) => {
                        self.heads += 1;
                        self.answered = false;
                        self.upgrade = head.upgrade;
                        let next = match head.framing {
                            Framing::Length(n) => State::Length(n),
                            Framing::Chunked => State::Chunked(ChunkedScan::default()),
                            Framing::Empty => self.after_request(),
                        };
                        (head.len, Some(next))
                    }
                    Err(v) => (0, Some(State::Bad(v))),
                },
                State::Length(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                    *left -= n as u64;
                    let ended = *left == 0;
                    (n, ended.then(|| self.after_request()))
                }
                State::Chunked(scan) => match scan.scan(rest) {
                    (n, Some(v)) => (n, Some(State::Bad(v))),
                    (n, None) => {
                        let ended = scan.is_done();
                        (n, ended.then(|| self.after_request()))
                    }
                },
                State::Pass => (rest.len(), None),
                State::Fate(_) | State::Bad(_) | State::Refusing(_) | State::Failed(_) => break,
            };
            done += used;
            if let Some(next) = next {
                self.state = next;
            }
        }
        done
    }

    /// A stopped state still waits: for its upgrade request's fate, or,
    /// for a refused head, for every earlier request's response to end.
    fn waiting(&self) -> bool {
        match self.state {
            State::Fate(n) => !self.activity.upgraded() && self.activity.ended() < n,
            State::Bad(_) => self.activity.ended() < self.heads,
            _ => false,
        }
    }

    /// Moves a stopped state on once what it waits for has happened; false
    /// (with the activity waker registered) while it must wait.
    fn unblock(&mut self, cx: &mut Context<'_>) -> bool {
        if self.waiting() {
            self.activity.register(cx.waker());
            // Again: the last response may have ended meanwhile.
            if self.waiting() {
                return false;
            }
        }
        if let State::Fate(_) = self.state {
            self.state = if self.activity.upgraded() {
                State::Pass
            } else {
                self.next_head()
            };
        }
        true
    }

    /// Refuses the connection's next request: counted, hyper reads the end
    /// of the stream, and the answer waits for hyper's shutdown. The held
    /// bytes start with the refused head (as far as it arrived).
    fn refuse(&mut self, v: Violation) {
        let reason = v.reason();
        let state = self.shared.state();
        let unrouted = &state.topology.unrouted;
        unrouted.record_error(reason);
        unrouted.record_status(status_of(reason).as_u16());
        tracing::debug!(reason = reason.as_str(), detail = %v, "request refused by the gate");
        let id = crate::headers::new_request_id();
        let log = RefusedHead::new(&state, &self.held[self.start..], self.peer, &id, reason);
        self.state = State::Refusing(Refusal::new(raw_error_response(reason, &id), log));
        self.held = Vec::new();
        self.start = 0;
        self.ready = 0;
    }

    /// A head held in pieces for longer than `header_read_timeout` (hyper's
    /// own timer does not run while hyper waits for the first bytes of a
    /// connection, and the gate holds a head until it is whole). Not while
    /// an earlier request is still in flight: the time starts again.
    fn head_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.head_timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if self.timing != Timing::Head {
            timer.as_mut().reset(deadline);
            self.timing = Timing::Head;
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if self.activity.ended() < self.heads {
            timer.as_mut().reset(deadline);
            let _ = timer.as_mut().poll(cx);
            return false;
        }
        true
    }

    /// With nothing to read at a request boundary: whether hyper should
    /// read an end of stream, so that the connection parks. True once no
    /// request is in flight, every response is written out and the
    /// connection has idled for [`PARK_AFTER`]; until then the timer (or
    /// the flush) wakes this read again.
    fn poll_park(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.park_idle
            || !matches!(self.state, State::Head(..))
            || self.held.len() > self.start
            || self.activity.ended() < self.heads
            || self.activity.upgraded()
        {
            return false;
        }
        if !self.answered {
            self.await_answer = true;
            return false;
        }
        // Armed once, not per request: when it fires, it moves to the
        // last request's end if one ended since, and at least
        // PARK_RECHECK on.
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())));
        if self.timing != Timing::Park {
            timer
                .as_mut()
                .reset(self.activity.last_change() + PARK_AFTER);
            self.timing = Timing::Park;
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.activity.last_change() + PARK_AFTER;
            if deadline <= timer.deadline() {
                break;
            }
            let recheck = timer.deadline() + PARK_RECHECK;
            timer.as_mut().reset(deadline.max(recheck));
        }
        self.parked = true;
        self.timer = None;
        self.timing = Timing::Off;
        true
    }

    /// Tells the connection whether a request is being received, when
    /// that changed.
    fn tell_receiving(&mut self) {
        let receiving = self.receiving();
        if receiving != self.told_receiving {
            self.told_receiving = receiving;
            self.activity.set_receiving(receiving);
        }
    }

    /// Hands validated held bytes to hyper.
    fn give(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.ready.min(buf.remaining());
        buf.put_slice(&self.held[self.start..self.start + n]);
        self.start += n;
        self.ready -= n;
        if self.start == self.held.len() {
            self.held = Vec::new();
            self.start = 0;
        }
    }

    /// Keeps `bytes` (read but not validated) in front of what is held.
    fn hold(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.held.drain(..self.start);
            self.start = 0;
        }
        self.held.extend_from_slice(bytes);
    }
}

impl Violation {
    /// Found in a body (reported as a read error) rather than in a head.
    pub fn in_body(self) -> bool {
        matches!(
            self,
            Violation::BadChunkSize
                | Violation::ChunkSizeOverflow
                | Violation::BadChunkExtension
                | Violation::ChunkExtensionsTooLong
                | Violation::MissingChunkCrlf
                | Violation::BadTrailer
                | Violation::BareCr
        )
    }
}

impl<IO: AsyncRead + Unpin> Gate<IO> {
    /// Reads more client bytes into `held`.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.start > 0 {
            self.held.drain(..self.start);
            self.start = 0;
        }
        let old = self.held.len();
        self.held.resize(old + READ_CHUNK, 0);
        let mut rb = ReadBuf::new(&mut self.held[old..]);
        let polled = Pin::new(&mut self.io).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.held.truncate(old + n);
        ready!(polled)?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads the first bytes, until they tell the protocol; they stay held
    /// for hyper.
    pub fn poll_protocol(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
        while matches!(self.state, State::Sniff) && !self.eof {
            if self.held.len() > self.start && self.head_timed_out(cx) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head did not arrive within header_read_timeout",
                )));
            }
            ready!(self.fill(cx))?;
            let held = std::mem::take(&mut self.held);
            self.ready = self.advance(&held[self.start..]);
            self.held = held;
        }
        Poll::Ready(Ok(match self.state {
            State::Pass => Protocol::Http2,
            _ => Protocol::Http1,
        }))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Gate<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = this.poll_hyper_read(cx, buf);
        this.tell_receiving();
        polled
    }
}

impl<IO: AsyncRead + Unpin> Gate<IO> {
    /// [`AsyncRead::poll_read`] for hyper; see the module doc.
    fn poll_hyper_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        loop {
            if this.ready > 0 {
                this.give(buf);
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Refusing(_) => return Poll::Ready(Ok(())),
                State::Failed(v) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, v)))
                }
                State::Bad(v) if v.in_body() => {
                    this.state = State::Failed(v);
                    this.held = Vec::new();
                    this.start = 0;
                    continue;
                }
                State::Bad(v) => {
                    if !this.unblock(cx) {
                        return Poll::Pending;
                    }
                    this.refuse(v);
                    return Poll::Ready(Ok(()));
                }
                State::Fate(_) => {
                    if !this.unblock(cx) {
                        return Poll::Pending;
                    }
                    // Resumed: what was held is checked (or passed) next.
                    let held = std::mem::take(&mut this.held);
                    let start = std::mem::replace(&mut this.start, 0);
                    this.ready = this.advance(&held[start..]);
                    this.held = held;
                    this.start = start;
                    continue;
                }
                _ => {}
            }
            let pending = this.held.len() - this.start;
            if pending > 0 {
                // Held bytes not validated yet: a head that came in pieces.
                let held = std::mem::take(&mut this.held);
                this.ready = this.advance(&held[this.start..]);
                this.held = held;
                if this.ready > 0 || !matches!(this.state, State::Head(..) | State::Sniff) {
                    continue;
                }
                if this.eof {
                    return Poll::Ready(Ok(()));
                }
                if this.head_timed_out(cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request head did not arrive within header_read_timeout",
                    )));
                }
                ready!(this.fill(cx))?;
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Nothing held: read straight into hyper's buffer, and keep
            // back only what cannot pass yet.
            let before = buf.filled().len();
            if Pin::new(&mut this.io).poll_read(cx, buf)?.is_pending() {
                if this.poll_park(cx) {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
            let read = buf.filled().len() - before;
            if read == 0 {
                this.eof = true;
                return Poll::Ready(Ok(()));
            }
            let passed = this.advance(&buf.filled()[before..]);
            if passed < read {
                let rest = buf.filled()[before + passed..].to_vec();
                this.hold(&rest);
                buf.set_filled(before + passed);
            }
            if passed > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gate<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// hyper flushes once its write buffer is empty: after the last
    /// response ended, that is when it is out.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        if !this.answered && this.activity.ended() >= this.heads {
            this.answered = true;
            if std::mem::take(&mut this.await_answer) {
                // hyper waits on a read that may now park.
                cx.waker().wake_by_ref();
            }
        }
        Poll::Ready(Ok(()))
    }

    /// hyper shuts down after its last response: a refused head's answer
    /// goes out first; after a refusal or a bad body, the client's unread
    /// bytes are drained for a while (see [`Refusal`]).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            // Not the end of the connection: only of this hyper connection.
            return Poll::Ready(Ok(()));
        }
        if let State::Failed(_) = this.state {
            // Nothing more to say, but the client may still be sending.
            this.state = State::Refusing(Refusal::new(Vec::new(), None));
        }
        let State::Refusing(r) = &mut this.state else {
            return Pin::new(&mut this.io).poll_shutdown(cx);
        };
        while r.written < r.answer.len() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &r.answer[r.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            r.written += n;
        }
        if !r.shut {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            r.shut = true;
        }
        let linger = r
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        let mut scratch = [0u8; 4096];
        loop {
            if linger.as_mut().poll(cx).is_ready() || r.drained > LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut scratch);
            match ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb)) {
                Ok(()) if !rb.filled().is_empty() => r.drained += rb.filled().len(),
                _ => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
