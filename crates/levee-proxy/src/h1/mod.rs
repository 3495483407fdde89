//! levee's own HTTP/1 client for node connections.
//!
//! hyper's client puts every request through a channel to a connection task
//! and back, and wakes two tasks per request. Here the request's own future
//! writes the request head (and a kept body in the same write) and reads
//! the response head from the connection, and the response body reads the
//! rest straight from the socket; whichever is polled also drives a
//! request body still streaming, so a node may answer before it has read
//! the whole request (an echo, an early error). When the response body ends
//! cleanly, with the request written whole and the node allowing it, the
//! connection goes back to its pool ([`Reuse`]); else it is dropped, which
//! closes it. Nothing is spawned.
//!
//! Framing follows RFC 9112 §6.3 as hyper's client does ([`decode`]), and
//! so does the choice of request framing ([`encode`]).

mod decode;
mod encode;
mod fields;
mod names;
#[cfg(any(test, feature = "fuzzing"))]
pub mod pieces;
mod scan;
pub mod server;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

use crate::body::{ClientBodyError, RequestBody};
use crate::headers::Forwarded;
pub use decode::{BodyError, HeadError, MAX_HEAD};
use decode::{Decoded, Decoder, Parsed};
pub use fields::Fields;

use encode::{BodyLength, Encoder};

/// A read buffer starts (and, for small responses, stays) this size.
const READ_BYTES: usize = 8 * 1024;
/// A node connection's room for reading a response head starts at
/// [`READ_BYTES`] and doubles, up to this, while its answers fill it (so a
/// 16 KiB answer comes in one read, not two); it halves back after two
/// answers in a row that fill less than half of it.
const MAX_HEAD_READ: usize = 64 * 1024;
/// A read is not started with less room than this.
const MIN_READ: usize = 1024;
/// A body whose next bytes are known to be due gets room for up to this
/// much in one read, so that a 16 KiB answer takes two reads, not three.
const MAX_BODY_READ: usize = 64 * 1024;
/// Empty read buffers a thread keeps for its node connections' next reads.
const SPARE_BUFFERS: usize = 8;
/// The largest buffer kept as a spare.
const SPARE_MAX_BYTES: usize = 2 * READ_BYTES;

thread_local! {
    /// A node connection holds a read buffer only while it holds bytes not
    /// yet consumed; in between (waiting for its node, idle in its pool)
    /// the buffer waits here for whichever connection reads next on this
    /// thread. Under load a worker then needs a few buffers, not one per
    /// node connection (8 KiB each, 2 MiB at 256 busy connections).
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };

    /// Likewise a node connection holds a write buffer only while it has
    /// bytes to write: every request head on this thread is encoded into
    /// the same few cache lines, where one buffer per node connection (with
    /// a thousand nodes, most of them cold) costs cache misses per request.
    static SPARE_WRITE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Why an exchange on a node connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("the node closed the connection before a complete response head")]
    Closed,
    #[error("{0}")]
    Head(#[source] HeadError),
    #[error("{0}")]
    Body(#[source] BodyError),
    /// The client's request body failed while it was forwarded.
    #[error("{0}")]
    Client(#[source] ClientBodyError),
    #[error("the request body ended before its Content-Length")]
    ShortBody,
    #[error("the request body is longer than its Content-Length")]
    LongBody,
}

/// A request that failed, and whether any byte of it reached the node.
#[derive(Debug)]
pub enum SendError {
    /// Nothing was written: the request comes back, to go elsewhere.
    Unsent(Box<Request<RequestBody>>, Error),
    Sent(Error),
}

/// Takes a connection whose exchange ended cleanly, for another request.
pub trait Reuse<IO> {
    fn reuse(self, conn: Box<Conn<IO>>);
}

/// A node connection and its buffers, kept across requests.
pub struct Conn<IO> {
    io: IO,
    read: BytesMut,
    /// The request head, or a chunk-size line, being written from `wpos`;
    /// no allocation once written ([`SPARE_WRITE`]).
    write: Vec<u8>,
    wpos: usize,
    /// Body bytes being written, after `write`.
    data: Bytes,
    /// Written after `data`: a chunk's CRLF, or the last chunk.
    tail: &'static [u8],
    /// The request body, until it has ended.
    body: Option<RequestBody>,
    encoder: Encoder,
    /// Some byte of the request was written.
    written: bool,
    /// The request was written whole and flushed.
    sent: bool,
    decoder: Decoder,
    keep_alive: bool,
    /// Room for the next read of a response head ([`MAX_HEAD_READ`]).
    head_room: usize,
    /// Head reads in a row that filled less than half of `head_room`.
    short_heads: u8,
    /// The request being sent, until its response head comes: kept here,
    /// on the heap already, so that the future sending it stays small.
    head: Option<http::request::Parts>,
}

impl<IO> fmt::Debug for Conn<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.read.len())
            .field("sent", &self.sent)
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<IO> {
    pub fn new(io: IO) -> Box<Self> {
        Box::new(Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            wpos: 0,
            data: Bytes::new(),
            tail: b"",
            body: None,
            encoder: Encoder::Length(0),
            written: false,
            sent: true,
            decoder: Decoder::Done,
            keep_alive: false,
            head_room: READ_BYTES,
            short_heads: 0,
            head: None,
        })
    }

    /// The transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Whether an idle connection can take a request: the node has not
    /// closed it, nor sent anything unasked (either makes it unusable).
    /// Costs no system call unless the socket turned readable.
    pub fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_fill(&mut cx, MIN_READ).is_pending()
    }

    /// Reads what the node sent, with room for `due` bytes and one more
    /// (at least [`MIN_READ`], at most [`MAX_BODY_READ`]): a read that
    /// takes all that is due comes back short, which tells tokio the
    /// socket is drained, so the next read waits instead of failing.
    fn poll_fill(&mut self, cx: &mut Context<'_>, due: usize) -> Poll<io::Result<usize>> {
        if self.read.capacity() == 0 {
            self.read = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
        }
        let room = due.saturating_add(1).clamp(MIN_READ, MAX_BODY_READ);
        if self.read.capacity() - self.read.len() < room && !self.read.try_reclaim(room) {
            if self.read.is_empty() {
                // Growing an empty buffer would copy its old allocation for
                // nothing.
                self.read = BytesMut::with_capacity(room.max(READ_BYTES));
            } else {
                self.read.reserve(room.max(READ_BYTES));
            }
        }
        let read = poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read);
        self.release_read();
        read
    }

    /// Hands an empty read buffer back to the thread's spares; one grown
    /// for a large body is freed instead, so that the spares stay small.
    fn release_read(&mut self) {
        if self.read.is_empty() && self.read.capacity() > 0 {
            let buf = std::mem::take(&mut self.read);
            if buf.capacity() > SPARE_MAX_BYTES {
                return;
            }
            SPARE.with_borrow_mut(|spare| {
                if spare.len() < SPARE_BUFFERS {
                    spare.push(buf);
                }
            });
        }
    }

    /// Takes the thread's spare write buffer if this connection has none.
    fn take_write(&mut self) {
        if self.write.capacity() == 0 {
            self.write = SPARE_WRITE.take();
        }
    }

    /// Hands the written-out write buffer to the thread's spare (one grown
    /// for a large head is freed instead).
    fn release_write(&mut self) {
        if self.write.capacity() > 0 {
            let mut buf = std::mem::take(&mut self.write);
            self.wpos = 0;
            if buf.capacity() <= SPARE_MAX_BYTES {
                buf.clear();
                SPARE_WRITE.set(buf);
            }
        }
    }

    /// Writes what is pending and the request body as it comes; ready once
    /// the whole request is written and flushed.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.sent {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.wpos < self.write.len() || !self.data.is_empty() || !self.tail.is_empty() {
                // A head alone (a request without a body) goes as a plain
                // write: on a socket that is send(2), which costs the kernel
                // less than writev(2).
                let n = if self.data.is_empty() && self.tail.is_empty() {
                    ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.wpos..]))
                } else {
                    let slices = [
                        IoSlice::new(&self.write[self.wpos..]),
                        IoSlice::new(&self.data),
                        IoSlice::new(self.tail),
                    ];
                    ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices))
                }
                .map_err(Error::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.written = true;
                self.consume(n);
            }
            self.release_write();
            let Some(body) = &mut self.body else {
                ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(Error::Io)?;
                self.sent = true;
                return Poll::Ready(Ok(()));
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    // What was written goes out while the client is slow.
                    if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                        return Poll::Ready(Err(Error::Io(e)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    self.body = None;
                    match self.encoder {
                        Encoder::Chunked => self.tail = b"0\r\n\r\n",
                        Encoder::Length(0) => {}
                        Encoder::Length(_) => return Poll::Ready(Err(Error::ShortBody)),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.body = None;
                    return Poll::Ready(Err(Error::Client(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Request trailers are never forwarded (`Trailer` is hop-by-hop).
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    match &mut self.encoder {
                        Encoder::Chunked => {
                            self.take_write();
                            encode::chunk_size(data.len(), &mut self.write);
                            self.tail = b"\r\n";
                        }
                        Encoder::Length(left) => {
                            *left = left.checked_sub(data.len() as u64).ok_or(Error::LongBody)?;
                        }
                    }
                    self.data = data;
                }
            }
        }
    }

    /// Drops `n` written bytes from the front of what is pending.
    fn consume(&mut self, mut n: usize) {
        let head = (self.write.len() - self.wpos).min(n);
        self.wpos += head;
        n -= head;
        let data = self.data.len().min(n);
        self.data.advance(data);
        n -= data;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }

    /// Sends what is due and reads the response head.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Parsed, Error>> {
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if !self.read.is_empty() {
                let method = self.head.as_ref().map_or(&Method::GET, |h| &h.method);
                let parsed = decode::parse_head(&mut self.read, method);
                self.release_read();
                if let Some(parsed) = parsed.map_err(Error::Head)? {
                    return Poll::Ready(Ok(parsed));
                }
            }
            match ready!(self.poll_fill(cx, self.head_room - 1)) {
                Ok(0) => return Poll::Ready(Err(Error::Closed)),
                Ok(n) => self.fit_head_room(n),
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
    }

    /// A head read of `n` bytes: one that took all its room doubles the
    /// room for the next; two in a row that took less than half halve it.
    fn fit_head_room(&mut self, n: usize) {
        if n >= self.head_room {
            self.head_room = (self.head_room * 2).min(MAX_HEAD_READ);
            self.short_heads = 0;
        } else if n < self.head_room / 2 && self.head_room > READ_BYTES {
            self.short_heads += 1;
            if self.short_heads == 2 {
                self.head_room /= 2;
                self.short_heads = 0;
            }
        } else {
            self.short_heads = 0;
        }
    }

    /// Drives a request body still streaming, and reads the next frame of
    /// the response body (`None`: it has ended).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, Error>> {
        if let Poll::Ready(Err(e)) = self.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            let decoded = self.decoder.decode(&mut self.read);
            self.release_read();
            match decoded.map_err(Error::Body)? {
                Decoded::Data(data) => return Poll::Ready(Ok(Some(Frame::data(data)))),
                Decoded::Trailers(t) => return Poll::Ready(Ok(Some(Frame::trailers(t)))),
                Decoded::End => return Poll::Ready(Ok(None)),
                Decoded::More => {
                    match ready!(self.poll_fill(cx, self.decoder.due())).map_err(Error::Io)? {
                        0 => {
                            self.decoder.eof().map_err(Error::Body)?;
                            // Closed by the node: not for another request.
                            self.keep_alive = false;
                            return Poll::Ready(Ok(None));
                        }
                        _ => continue,
                    }
                }
            }
        }
    }

    /// The exchange is over and the connection can carry another one.
    fn reusable(&self) -> bool {
        self.keep_alive && self.sent && self.decoder.is_done() && self.read.is_empty()
    }
}

/// Sends `req` on `conn` and waits for the response head. `reuse` takes
/// the connection back once the response body has ended (at once when it
/// has none). The head, with the `forwarded` lines after the request's
/// own, is written into the connection's buffer here; the future writes
/// it out and reads the answer.
pub fn send<IO, R>(
    mut conn: Box<Conn<IO>>,
    req: Request<RequestBody>,
    forwarded: Option<&Forwarded>,
    reuse: R,
) -> Sending<IO, R>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (parts, mut body) = req.into_parts();
    let length = if body.is_end_stream() {
        BodyLength::Empty
    } else {
        body.size_hint()
            .exact()
            .map_or(BodyLength::Unknown, BodyLength::Known)
    };
    conn.take_write();
    conn.write.clear();
    conn.wpos = 0;
    // The head is put where it is kept first and encoded there: a head is a
    // few hundred bytes, each move of it a copy.
    let c = &mut *conn;
    let parts = c.head.insert(parts);
    let mut encoder = encode::head(parts, length, forwarded, &mut c.write);
    // A kept body goes out with the head, in one write.
    if let (RequestBody::Kept(kept), Encoder::Length(n)) = (&mut body, encoder) {
        if !kept.is_empty() && kept.len() as u64 == n {
            conn.data = std::mem::take(kept);
            encoder = Encoder::Length(0);
        }
    }
    conn.encoder = encoder;
    conn.body = Some(body);
    conn.written = false;
    conn.sent = false;
    Sending {
        exchange: Some((conn, reuse)),
        head_back: false,
    }
}

/// A request on its way to a node, until the response head ([`send`]).
pub struct Sending<IO, R> {
    /// `None` once it has answered.
    exchange: Option<(Box<Conn<IO>>, R)>,
    /// Give the request head back ([`Sending::poll_exchange`]).
    head_back: bool,
}

impl<IO, R> fmt::Debug for Sending<IO, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sending")
            .field("conn", &self.exchange.as_ref().map(|e| &e.0))
            .finish_non_exhaustive()
    }
}

impl<IO, R> Sending<IO, R>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Reuse<IO> + Unpin,
{
    /// Whether [`Sending::poll_exchange`] gives the request head back
    /// (boxed, so that it costs nothing to a request that cannot be sent
    /// again).
    pub fn head_back(mut self, yes: bool) -> Self {
        self.head_back = yes;
        self
    }

    /// As [`Future::poll`], and the request head back too if asked for,
    /// once written (or failed) and of no more use here, for a retry to
    /// send again: on an answer, and on a failure after some of it was
    /// written. A request nothing of which was written comes back whole in
    /// [`SendError::Unsent`] instead.
    pub fn poll_exchange(&mut self, cx: &mut Context<'_>) -> Poll<Exchanged<IO, R>> {
        let Some((conn, _)) = self.exchange.as_mut() else {
            // Polled after it answered, which no caller does.
            return Poll::Ready((Err(SendError::Sent(Error::Closed)), None));
        };
        let result = ready!(conn.poll_head(cx));
        let Some((conn, reuse)) = self.exchange.take() else {
            return Poll::Ready((Err(SendError::Sent(Error::Closed)), None));
        };
        Poll::Ready(answered(conn, reuse, result, self.head_back))
    }
}

/// What [`Sending::poll_exchange`] gives: the response or why there is
/// none, and the request head.
pub type Exchanged<IO, R> = (
    Result<Response<Body<IO, R>>, SendError>,
    Option<Box<http::request::Parts>>,
);

impl<IO, R> Future for Sending<IO, R>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Reuse<IO> + Unpin,
{
    type Output = Result<Response<Body<IO, R>>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_exchange(cx).map(|(result, _)| result)
    }
}

/// The exchange once the response head came, or why it did not.
fn answered<IO, R>(
    mut conn: Box<Conn<IO>>,
    reuse: R,
    result: Result<Parsed, Error>,
    head_back: bool,
) -> Exchanged<IO, R>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Reuse<IO> + Unpin,
{
    let head = conn.head.take();
    let back = |head: Option<http::request::Parts>| head.filter(|_| head_back).map(Box::new);
    let parsed = match (result, head) {
        (Ok(parsed), head) => (parsed, head),
        (Err(e), Some(parts)) if !conn.written => {
            let mut body = conn.body.take().unwrap_or(RequestBody::Kept(Bytes::new()));
            if !conn.data.is_empty() {
                body = RequestBody::Kept(std::mem::take(&mut conn.data));
            }
            let request = Box::new(Request::from_parts(parts, body));
            return (Err(SendError::Unsent(request, e)), None);
        }
        (Err(e), head) => return (Err(SendError::Sent(e)), back(head)),
    };
    let (parsed, head) = parsed;
    let Parsed {
        response,
        fields,
        framing,
        keep_alive,
        upgrade,
    } = parsed;
    conn.decoder = Decoder::new(framing);
    conn.keep_alive = keep_alive;
    if upgrade {
        // The tunnel reads and writes a 101's headers in its map.
        let Conn { io, read, .. } = *conn;
        let mut response = response.map(|()| Body::empty());
        *response.headers_mut() = fields.into_map();
        response
            .extensions_mut()
            .insert(Upgrade::new(Rewind::new(io, read.freeze())));
        return (Ok(response), back(head));
    }
    let mut body = Body {
        conn: Some(conn),
        reuse: Some(reuse),
        failed: None,
        fields: Some(fields),
    };
    body.end_if_done();
    (Ok(response.map(|()| body)), back(head))
}

/// A response body read from its node connection.
pub struct Body<IO, R> {
    /// `None` once the body has ended (or failed).
    conn: Option<Box<Conn<IO>>>,
    reuse: Option<R>,
    /// An error to give on the next poll.
    failed: Option<Error>,
    /// The response's field lines, until the writer takes them: the
    /// response's own map is left empty ([`Fields`]).
    fields: Option<Fields>,
}

impl<IO, R> fmt::Debug for Body<IO, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body").field("conn", &self.conn).finish()
    }
}

impl<IO, R> Body<IO, R> {
    fn empty() -> Self {
        Self {
            conn: None,
            reuse: None,
            failed: None,
            fields: None,
        }
    }

    /// The response's field lines, once: its map holds none of them.
    pub fn take_fields(&mut self) -> Option<Fields> {
        self.fields.take()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, R: Reuse<IO>> Body<IO, R> {
    /// Once the body is through, hands the connection back (or drops it) at
    /// once: whoever reads the body may stop at its last frame.
    fn end_if_done(&mut self) {
        if !self.conn.as_ref().is_some_and(|c| c.decoder.is_done()) {
            return;
        }
        if let (Some(conn), Some(reuse)) = (self.conn.take(), self.reuse.take()) {
            if conn.reusable() {
                reuse.reuse(conn);
            }
        }
    }

    /// The connection is dropped at once, and the error given on the next
    /// poll: whoever reads the body then sends on the data read before it
    /// first (hyper's server drops what it has not flushed when a body
    /// fails).
    fn fail(
        &mut self,
        e: Error,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.failed = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, R: Reuse<IO> + Unpin> HttpBody for Body<IO, R> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(this.failed.take().map(Err));
        };
        match ready!(conn.poll_body(cx)) {
            Err(e) => this.fail(e, cx),
            Ok(frame) => {
                this.end_if_done();
                Poll::Ready(frame.map(Ok))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.conn {
            None => SizeHint::with_exact(0),
            Some(conn) => conn
                .decoder
                .remaining()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

/// A stream whose first bytes are `prefix`: a connection switched to
/// another protocol (101), with the bytes read past the head, on either
/// side.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(inner: T, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl<T> fmt::Debug for Rewind<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewind")
            .field("prefix", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection the node switched to another protocol (101).
pub type Upgraded<IO> = Rewind<IO>;

/// The upgraded connection, in the 101 response's extensions (which must
/// be `Clone`) until the tunnel takes it; dropped with the response else.
pub struct Upgrade<IO>(Arc<Mutex<Option<Upgraded<IO>>>>);

impl<IO> Upgrade<IO> {
    fn new(upgraded: Upgraded<IO>) -> Self {
        Self(Arc::new(Mutex::new(Some(upgraded))))
    }

    pub fn take(&self) -> Option<Upgraded<IO>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl<IO> Clone for Upgrade<IO> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<IO> fmt::Debug for Upgrade<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Upgrade")
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
