//! levee's own HTTP/1 server: the connection driver that reads a client's
//! requests, calls the connection's tower stack with each, and writes the
//! answers, one request at a time (pipelined requests wait in the read
//! buffer and are answered in order).
//!
//! ```text
//! idle ──bytes──▶ head (gate's HeadScan: strict, limits) ──bad──▶ refusal: levee's answer, close
//!   ▲                │ whole: Request built from its bytes (no second parse)
//!   │                ▼
//!   │             stack.call ─ body read from the socket when the stack asks (100 Continue first)
//!   │                │         client EOF while waiting ─▶ abort (the stack's future dropped)
//!   │                ▼
//!   └─keep-alive── response: head + first frame in one write; Content-Length / chunked /
//!                  close-delimited; none for HEAD, 204, 304; 101 ─▶ the socket to the tunnel
//! ```
//!
//! A connection holds no buffer while idle: the read buffer exists while a
//! head or body is being read, its head bytes go with the request (header
//! values share them), and a response's head is written from a buffer made
//! for it. A connection idle for [`PARK_AFTER`] returns [`Ended::Parked`]
//! with its socket alone.

mod body;
mod out;
#[cfg(any(test, feature = "fuzzing"))]
pub mod pieces;
mod refuse;
pub mod request;
pub mod response;
pub mod upgrade;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tower::Service;

pub use body::{channel, ReadError, Reader, RequestBody, Want};
pub use upgrade::{ClientIo, OnUpgrade, Upgraded};

use self::out::Out;
use self::response::{BodyLength, Encoder};
use crate::activity::ConnActivity;
use crate::body::{ClientBody, ProxyBody};
use crate::gate::{ChunkedScan, Framing, HeadScan, Limits, Violation, PARK_AFTER, PARK_RECHECK};
use crate::h1::decode::{self, Decoded};
use crate::state::Shared;

/// Bytes read from the client at once.
const READ_CHUNK: usize = 4 * 1024;

/// How a connection's HTTP/1 service ended.
#[derive(Debug)]
pub enum Ended<I> {
    /// Closed (by either side, an error, or a drain).
    Closed,
    /// Idle for [`PARK_AFTER`]: the socket, to wait on without a buffer.
    Parked(I),
    /// Handed to a tunnel after a `101`.
    Upgraded,
}

/// What a connection serves with.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub shared: &'a Arc<Shared>,
    pub activity: &'a ConnActivity,
    pub peer: SocketAddr,
}

/// What the connection's one timer bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    Off,
    /// A head that arrives in pieces: `header_read_timeout`.
    Head,
    /// An idle connection's park.
    Park,
}

/// One client connection's HTTP/1 state between requests.
struct Conn<I> {
    io: I,
    /// Bytes read and not used yet (the next head, a body's bytes).
    buf: BytesMut,
    eof: bool,
    /// Allocated when a head arrives in pieces or the connection idles;
    /// one for the connection's waking life, not one per request.
    timer: Option<Pin<Box<Sleep>>>,
    timing: Timing,
    /// The waker the park timer was last polled with, since it was last
    /// set: until the timer fires, polling it again with the same waker
    /// finds nothing new (and cost ~130 instructions a request).
    park_waker: Option<Waker>,
}

/// The outcome of waiting for a head.
enum HeadEvent {
    Head(crate::gate::Head),
    Refuse(Violation),
    Park,
    Close,
}

/// Serves HTTP/1 on `io` (whose first bytes, already read, are `read`)
/// with `service` until the connection closes, parks or is upgraded.
/// `closing` resolves when the connection idled out or the server drains
/// (then `draining` is set): an idle connection closes, a head under way
/// is answered with `Connection: close`. `resumed`: the connection comes
/// back from a park (it may park again before its first request).
pub async fn serve<I, S, C>(
    io: I,
    read: BytesMut,
    service: &mut S,
    mut closing: Pin<&mut C>,
    draining: &mut bool,
    resumed: bool,
    env: Env<'_>,
) -> Ended<I>
where
    I: ClientIo + 'static,
    S: Service<Request<ClientBody>, Response = Response<ProxyBody>, Error = Infallible>,
    C: Future<Output = ()>,
{
    let mut conn = Conn {
        io,
        buf: read,
        eof: false,
        timer: None,
        timing: Timing::Off,
        park_waker: None,
    };
    let mut may_park = resumed;
    loop {
        let (limits, head_timeout) = {
            let state = env.shared.state();
            let server = &state.config.server;
            let limits = Limits {
                max_head_bytes: server.max_header_bytes,
                max_uri_bytes: server.max_uri_bytes,
                max_headers: server.max_headers,
            };
            (limits, server.header_read_timeout)
        };
        let mut scan = HeadScan::default();
        let event = poll_fn(|cx| {
            conn.poll_head(
                cx,
                &mut scan,
                &limits,
                head_timeout,
                closing.as_mut(),
                draining,
                may_park.then_some(env.activity),
            )
        })
        .await;
        let head = match event {
            HeadEvent::Head(head) => head,
            HeadEvent::Refuse(v) => {
                refuse::refuse(conn.io, conn.buf, v, env).await;
                return Ended::Closed;
            }
            HeadEvent::Park => return Ended::Parked(conn.io),
            HeadEvent::Close => {
                conn.shutdown().await;
                return Ended::Closed;
            }
        };
        may_park = true;
        match exchange(&mut conn, head, service, closing.as_mut(), draining).await {
            Next::Request => {}
            Next::Close { linger } => {
                if linger {
                    refuse::linger(conn.io, conn.buf).await;
                } else {
                    conn.shutdown().await;
                }
                return Ended::Closed;
            }
            Next::Abort => return Ended::Closed,
            Next::Upgrade(pending) => {
                let read_ahead = conn.buf.freeze();
                if pending.fulfil(Box::new(conn.io), read_ahead) {
                    return Ended::Upgraded;
                }
                return Ended::Closed;
            }
        }
    }
}

/// What follows a request's exchange.
enum Next {
    Request,
    /// Close after the answer; `linger`: drain the client's unread bytes
    /// for a while first (after a bad body).
    Close {
        linger: bool,
    },
    /// Close at once: the client left, or the answer failed midway.
    Abort,
    Upgrade(upgrade::Pending),
}

/// How a request's body is being read.
struct BodyRead {
    reader: Reader,
    decode: Decode,
    /// `Expect: 100-continue` not answered yet.
    expect_continue: bool,
}

enum Decode {
    Length(u64),
    /// The gate's scan validates the bytes, then the decoder takes the
    /// data out of the validated ones.
    Chunked {
        scan: ChunkedScan,
        valid: usize,
        decoder: decode::Decoder,
    },
}

/// What reading the body came to.
enum BodyStep {
    /// Waiting (for the stack to ask, or for bytes).
    Pending,
    Done,
    Failed(ReadError),
}

/// Serves one request: calls the stack, reads its body as asked, writes
/// the answer.
async fn exchange<I, S, C>(
    conn: &mut Conn<I>,
    head: crate::gate::Head,
    service: &mut S,
    mut closing: Pin<&mut C>,
    draining: &mut bool,
) -> Next
where
    I: ClientIo + 'static,
    S: Service<Request<ClientBody>, Response = Response<ProxyBody>, Error = Infallible>,
    C: Future<Output = ()>,
{
    // The head's bytes go with the request (its header values share them);
    // the rest of the buffer reads the next ones.
    let head_bytes = conn.buf.split_to(head.len).freeze();
    let (body, mut reading) = match head.framing {
        Framing::Empty => (ClientBody::Empty, None),
        Framing::Length(n) => {
            let (reader, body) = channel(Some(n));
            (ClientBody::H1(body), Some((reader, Decode::Length(n))))
        }
        Framing::Chunked => {
            let (reader, body) = channel(None);
            (ClientBody::H1(body), Some((reader, Decode::chunked())))
        }
    };
    let mut req = Request::new(body);
    let facts = match request::build(head_bytes, head.fields, &mut req) {
        Ok(facts) => facts,
        // The gate validated the head: not reached.
        Err(_) => return Next::Abort,
    };
    let mut reading = reading.take().map(|(reader, decode)| BodyRead {
        reader,
        decode,
        expect_continue: facts.expect_continue,
    });
    let pending_upgrade = head.upgrade.then(|| {
        let (pending, on) = upgrade::pending();
        req.extensions_mut().insert(on);
        pending
    });
    if let Poll::Ready(Err(never)) = service.poll_ready(&mut Context::from_waker(Waker::noop())) {
        match never {}
    }
    let fut = service.call(req);
    let mut fut = std::pin::pin!(fut);
    // A 100 Continue on its way out.
    let mut continued = Out::default();
    // The body failed: the connection is not reused; `linger` if it broke
    // the framing (the client may still be sending).
    let mut read_failed = false;
    let mut linger = false;
    // Wait for the answer, reading the body as the stack asks for it.
    // `closing` is not polled while the stack works: a drain only decides
    // whether the answer keeps the connection, looked at once it is ready.
    // The answer is polled into its place here, not moved out through the
    // `poll_fn`: it is a few hundred bytes.
    let mut answer = Poll::Pending;
    poll_fn(|cx| {
        if let Some(r) = &mut reading {
            match conn.poll_body(cx, r, &mut continued) {
                BodyStep::Pending => {}
                BodyStep::Done => end_body(&mut reading, Ok(())),
                BodyStep::Failed(e) => {
                    read_failed = true;
                    linger |= matches!(e, ReadError::Framing(_));
                    end_body(&mut reading, Err(e));
                }
            }
        }
        // Moved into `answer` only once there is one.
        let polled = fut.as_mut().poll(cx);
        if polled.is_ready() {
            answer = polled;
            if !*draining && closing.as_mut().poll(cx).is_ready() {
                *draining = true;
            }
            return Poll::Ready(());
        }
        if reading.is_none() && !read_failed && conn.poll_client_gone(cx) {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    let Poll::Ready(Ok(resp)) = answer else {
        return Next::Abort;
    };
    // Out before the answer: a 100 Continue under way.
    if poll_fn(|cx| continued.poll_write(&mut conn.io, cx))
        .await
        .is_err()
    {
        return Next::Abort;
    }
    let (mut parts, mut body) = resp.into_parts();
    let length = if body.is_end_stream() {
        BodyLength::Empty
    } else {
        match body.size_hint().exact() {
            Some(n) => BodyLength::Known(n),
            None => BodyLength::Unknown,
        }
    };
    // A body the stack dropped unread: what has arrived is read, else the
    // connection cannot be reused (hyper's drain-or-close).
    if let Some(r) = &mut reading {
        if r.reader.want(&mut Context::from_waker(Waker::noop())) == Want::Gone
            && !conn.drain_buffered(r)
        {
            read_failed = true;
        }
        // Too late for a 100 Continue: the answer is out first.
        r.expect_continue = false;
    }
    let mut keep_alive = facts.keep_alive && !*draining && !read_failed;
    // Room for the head and a small first frame behind it.
    let node_fields = body.take_fields();
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + node_fields.as_ref().map_or(0, |f| f.head_len());
    let mut out = Out::for_head(fields + 128 + 1024);
    let request_id = body.take_request_id();
    let written = response::head(
        &mut parts,
        node_fields.as_ref(),
        length,
        &facts,
        request_id.as_ref(),
        &mut keep_alive,
        &mut out.head,
    );
    let upgraded = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let mut encoder = written.encoder;
    if encoder == Encoder::Length(0) || length == BodyLength::Empty {
        drop(body);
        if poll_fn(|cx| out.poll_write(&mut conn.io, cx))
            .await
            .is_err()
        {
            return Next::Abort;
        }
    } else {
        let vectored = conn.io.is_write_vectored();
        let sent = poll_fn(|cx| loop {
            if let Some(r) = &mut reading {
                match conn.poll_body(cx, r, &mut Out::default()) {
                    BodyStep::Pending => {}
                    BodyStep::Done => end_body(&mut reading, Ok(())),
                    BodyStep::Failed(e) => {
                        keep_alive = false;
                        end_body(&mut reading, Err(e));
                    }
                }
            }
            // What the body has ready goes in one write (the head with the
            // first frames).
            while out.has_room() {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            out.data(&mut encoder, data, vectored);
                        }
                        // Its last byte framed, a body that knows it has
                        // ended is polled to its end now: what it holds (the
                        // bulkhead slots, the node's in-flight place) is
                        // free before the client can see the answer whole.
                        if out.ended && body.is_end_stream() {
                            let _ = Pin::new(&mut body).poll_frame(cx);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(Ok(false)),
                    Poll::Ready(None) => {
                        if !out.end(encoder) {
                            return Poll::Ready(Ok(false));
                        }
                    }
                }
            }
            if out.is_done() && !out.ended {
                return Poll::Pending;
            }
            ready!(out.poll_write(&mut conn.io, cx))?;
            if out.ended {
                return Poll::Ready(Ok::<_, io::Error>(true));
            }
        })
        .await;
        if !matches!(sent, Ok(true)) {
            return Next::Abort;
        }
        drop(body);
    }
    if upgraded {
        return match pending_upgrade {
            Some(pending) => Next::Upgrade(pending),
            None => Next::Close { linger: false },
        };
    }
    drop(pending_upgrade);
    if let Some(r) = &mut reading {
        if !conn.drain_buffered(r) {
            keep_alive = false;
        }
    }
    if linger {
        Next::Close { linger: true }
    } else if keep_alive && !written.last && !*draining {
        Next::Request
    } else {
        Next::Close { linger: false }
    }
}

/// Ends the body being read, and stops reading it.
fn end_body(reading: &mut Option<BodyRead>, end: Result<(), ReadError>) {
    if let Some(r) = reading.take() {
        r.reader.end(end);
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Reads more client bytes into `buf`; `Ok(0)` at the end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if n == 0 {
            self.eof = true;
        }
        Poll::Ready(Ok(n))
    }

    /// Waits for the next whole head. `park`: the connection may park once
    /// idle (its activity tells since when).
    #[allow(clippy::too_many_arguments)]
    fn poll_head<C: Future<Output = ()>>(
        &mut self,
        cx: &mut Context<'_>,
        scan: &mut HeadScan,
        limits: &Limits,
        head_timeout: Duration,
        closing: Pin<&mut C>,
        draining: &mut bool,
        park: Option<&ConnActivity>,
    ) -> Poll<HeadEvent> {
        let mut closing = closing;
        loop {
            if !self.buf.is_empty() {
                match scan.scan(&self.buf, limits) {
                    Ok(Some(head)) => {
                        if self.timing == Timing::Head {
                            self.timing = Timing::Off;
                        }
                        return Poll::Ready(HeadEvent::Head(head));
                    }
                    Err(v) => return Poll::Ready(HeadEvent::Refuse(v)),
                    Ok(None) => {}
                }
            }
            if self.eof || !self.buf.is_empty() && self.head_timed_out(cx, head_timeout) {
                return Poll::Ready(HeadEvent::Close);
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(HeadEvent::Close),
                Poll::Pending => {
                    // Only before waiting: `closing` keeps the task's waker
                    // from then on, and the exchange looks again before it
                    // answers. Polled on every pass it cost four polls (a
                    // lock each) a request.
                    if !*draining && closing.as_mut().poll(cx).is_ready() {
                        *draining = true;
                    }
                    if self.buf.is_empty() {
                        // Nothing sent: a drain closes the connection, an
                        // idle one parks (its buffer freed with it).
                        if *draining {
                            return Poll::Ready(HeadEvent::Close);
                        }
                        if park.is_some_and(|activity| self.park_due(cx, activity)) {
                            return Poll::Ready(HeadEvent::Park);
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// A head in pieces for longer than `header_read_timeout`.
    fn head_timed_out(&mut self, cx: &mut Context<'_>, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if self.timing != Timing::Head {
            timer.as_mut().reset(deadline);
            self.timing = Timing::Head;
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// Idle since the last request for [`PARK_AFTER`]: the timer is armed
    /// once, and on firing moves to the last request's end if one ended
    /// since (at least [`PARK_RECHECK`] on).
    fn park_due(&mut self, cx: &mut Context<'_>, activity: &ConnActivity) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now())));
        if self.timing != Timing::Park {
            timer.as_mut().reset(activity.last_change() + PARK_AFTER);
            self.timing = Timing::Park;
            self.park_waker = None;
        }
        loop {
            let seen = self
                .park_waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()));
            if seen && !timer.is_elapsed() {
                return false;
            }
            if timer.as_mut().poll(cx).is_pending() {
                if !seen {
                    self.park_waker = Some(cx.waker().clone());
                }
                return false;
            }
            let deadline = activity.last_change() + PARK_AFTER;
            if deadline <= timer.deadline() {
                break;
            }
            let recheck = timer.deadline() + PARK_RECHECK;
            timer.as_mut().reset(deadline.max(recheck));
            self.park_waker = None;
        }
        self.timer = None;
        self.timing = Timing::Off;
        true
    }

    /// While the answer is awaited and the body is read: whether the
    /// client closed (then the request is abandoned, as hyper does).
    /// Pipelined bytes are kept, up to a bound.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        if self.eof {
            return true;
        }
        if self.buf.len() >= 64 * 1024 {
            return false;
        }
        match self.poll_fill(cx) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => true,
            // Read more next time: the waker is registered only by a
            // pending read.
            Poll::Ready(Ok(_)) => {
                cx.waker().wake_by_ref();
                false
            }
            Poll::Pending => false,
        }
    }

    /// Serves the body's reads: a frame each time the stack asks.
    fn poll_body(&mut self, cx: &mut Context<'_>, r: &mut BodyRead, out: &mut Out) -> BodyStep {
        loop {
            match r.reader.want(cx) {
                Want::Nothing | Want::Gone => return BodyStep::Pending,
                Want::Frame => {}
            }
            if r.expect_continue {
                out.head.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                r.expect_continue = false;
            }
            if !out.is_empty() {
                match out.poll_write(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return BodyStep::Failed(ReadError::Io(e)),
                    Poll::Pending => return BodyStep::Pending,
                }
            }
            match self.decode(r) {
                Ok(Some(data)) => {
                    r.reader.send(data);
                    continue;
                }
                Ok(None) if r.done() => return BodyStep::Done,
                Ok(None) => {}
                Err(e) => return BodyStep::Failed(e),
            }
            if self.eof {
                return BodyStep::Failed(ReadError::Closed);
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return BodyStep::Failed(ReadError::Io(e)),
                Poll::Pending => return BodyStep::Pending,
            }
        }
    }

    fn decode(&mut self, r: &mut BodyRead) -> Result<Option<Bytes>, ReadError> {
        r.decode.next(&mut self.buf)
    }

    /// Reads what the buffer holds of a body nobody reads any more; true
    /// if that was the rest of it.
    fn drain_buffered(&mut self, r: &mut BodyRead) -> bool {
        loop {
            if r.done() {
                return true;
            }
            match self.decode(r) {
                Ok(Some(_)) => {}
                Ok(None) => return r.done(),
                Err(_) => return false,
            }
        }
    }

    /// Ends the connection: whatever is written goes out, then FIN.
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.io).await;
    }
}

impl BodyRead {
    fn done(&self) -> bool {
        self.decode.done()
    }
}

impl Decode {
    fn chunked() -> Self {
        Decode::Chunked {
            scan: ChunkedScan::default(),
            valid: 0,
            decoder: decode::Decoder::new(decode::Framing::Chunked),
        }
    }

    fn done(&self) -> bool {
        match self {
            Decode::Length(left) => *left == 0,
            Decode::Chunked { decoder, .. } => decoder.is_done(),
        }
    }

    /// The next data of the body from `buf` (`None`: none there yet, or
    /// the body is done); what it took is gone from `buf`.
    fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ReadError> {
        match self {
            Decode::Length(0) => Ok(None),
            Decode::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Ok(Some(buf.split_to(n).freeze()))
            }
            Decode::Chunked {
                scan,
                valid,
                decoder,
            } => loop {
                if *valid < buf.len() && !scan.is_done() {
                    let (n, violation) = scan.scan(&buf[*valid..]);
                    *valid += n;
                    if let Some(v) = violation {
                        return Err(ReadError::Framing(v));
                    }
                }
                if *valid == 0 || decoder.is_done() {
                    return Ok(None);
                }
                // The decoder sees the validated bytes only.
                let mut validated = buf.split_to(*valid);
                let decoded = decoder.decode(&mut validated);
                *valid = validated.len();
                if !validated.is_empty() {
                    validated.unsplit(std::mem::take(buf));
                    *buf = validated;
                }
                match decoded {
                    Ok(Decoded::Data(data)) if data.is_empty() => {}
                    Ok(Decoded::Data(data)) => return Ok(Some(data)),
                    Ok(Decoded::Trailers(_) | Decoded::End | Decoded::More) => return Ok(None),
                    // The gate's scan took these bytes: the decoder is not
                    // stricter (the `client_chunked` fuzz target checks).
                    Err(_) => return Err(ReadError::Framing(Violation::BadChunkSize)),
                }
            },
        }
    }
}
