//! A tunnel's life after the `101`: bytes copied both ways between the
//! client's and the node's upgraded connections until either side closes,
//! or nothing moves either way for the tunnel idle timeout.
//!
//! When one side closes, what it sent is delivered, the other side's write
//! half is shut down and the tunnel ends (like nginx, no half-open tunnel
//! lingers on a slot); a read or write error ends it at once. The side that
//! ended it names the close in `levee_tunnels_closed_total`. The tunnel holds its route's tunnel slot and
//! its client connection until it ends; the node connection was taken out
//! of its pool by the upgrade and is closed with the tunnel.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use levee_resilience::BulkheadPermit;
use levee_telemetry::{RouteStats, TunnelClose};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::trace;

use crate::activity::TunnelHold;
use crate::h1;
use crate::h1::server::{OnUpgrade, Upgraded};
use crate::node_io::NodeStream;

/// Bytes buffered per direction: a tunnel mostly idles, so keep it small.
const BUF_BYTES: usize = 8 * 1024;

/// What an open tunnel holds until it ends. Dropped before it ends (the
/// worker stops at the end of a drain's grace), it counts as `shutdown`.
#[derive(Debug)]
pub struct Open {
    pub stats: Arc<RouteStats>,
    pub permit: BulkheadPermit,
    pub hold: TunnelHold,
}

/// Closes the tunnel's count with a reason when it ends, however it ends.
struct Closing {
    open: Open,
    why: Option<TunnelClose>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        let why = self.why.unwrap_or(TunnelClose::Shutdown);
        self.open.stats.tunnels.closed(why);
        trace!(route = %self.open.stats.name, reason = why.as_str(), "tunnel closed");
    }
}

/// Waits for the client's side to be handed over, then splices the two.
pub async fn run(client: OnUpgrade, node: h1::Upgraded<NodeStream>, idle: Duration, open: Open) {
    let mut closing = Closing { open, why: None };
    let why = match handed_over(client, idle).await {
        Ok(client) => Splice::new(client, node, idle).await,
        Err(why) => why,
    };
    closing.why = Some(why);
}

/// The client's upgraded connection, within `idle` too.
async fn handed_over(client: OnUpgrade, idle: Duration) -> Result<Upgraded, TunnelClose> {
    match tokio::time::timeout(idle, client).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(_)) => Err(TunnelClose::Client),
        Err(_) => Err(TunnelClose::Idle),
    }
}

/// Copies bytes both ways between `client` and `node` until one side
/// closes or fails, or nothing moves for `idle`.
pub struct Splice<C, N> {
    client: C,
    node: N,
    /// Client to node.
    up: Pump,
    /// Node to client.
    down: Pump,
    idle: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<C, N> Splice<C, N> {
    pub fn new(client: C, node: N, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            client,
            node,
            up: Pump::new(),
            down: Pump::new(),
            idle,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }
}

impl<C, N> Future for Splice<C, N>
where
    C: AsyncRead + AsyncWrite + Unpin,
    N: AsyncRead + AsyncWrite + Unpin,
{
    type Output = TunnelClose;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelClose> {
        let this = self.get_mut();
        let mut moved = false;
        let up = this.up.poll_copy(
            cx,
            Pin::new(&mut this.client),
            Pin::new(&mut this.node),
            &mut moved,
        );
        match up {
            Poll::Ready(Ok(()) | Err(Failed::Read)) => return Poll::Ready(TunnelClose::Client),
            Poll::Ready(Err(Failed::Write)) => return Poll::Ready(TunnelClose::Node),
            Poll::Pending => {}
        }
        let down = this.down.poll_copy(
            cx,
            Pin::new(&mut this.node),
            Pin::new(&mut this.client),
            &mut moved,
        );
        match down {
            Poll::Ready(Ok(()) | Err(Failed::Read)) => return Poll::Ready(TunnelClose::Node),
            Poll::Ready(Err(Failed::Write)) => return Poll::Ready(TunnelClose::Client),
            Poll::Pending => {}
        }
        if moved {
            // The timer is moved lazily, when it fires: not on every read.
            this.last = Instant::now();
        }
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            let at = this.last + this.idle;
            if at <= Instant::now() {
                return Poll::Ready(TunnelClose::Idle);
            }
            this.sleep.as_mut().reset(at);
        }
    }
}

/// Which half of a copy failed (the error itself only goes to the trace log).
#[derive(Debug, Clone, Copy)]
enum Failed {
    Read,
    Write,
}

fn read_failed(e: io::Error) -> Failed {
    trace!(error = %e, "tunnel read failed");
    Failed::Read
}

fn write_failed(e: io::Error) -> Failed {
    trace!(error = %e, "tunnel write failed");
    Failed::Write
}

/// One direction of a splice: read into the buffer, write it all out;
/// at the reader's end of stream, shut the writer down.
struct Pump {
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    eof: bool,
    unflushed: bool,
}

impl Pump {
    fn new() -> Self {
        Self {
            buf: vec![0; BUF_BYTES].into_boxed_slice(),
            pos: 0,
            filled: 0,
            eof: false,
            unflushed: false,
        }
    }

    /// Copies until the reader ends (then `Ready(Ok)`), fails, or waits;
    /// sets `moved` when bytes were read or written.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        moved: &mut bool,
    ) -> Poll<Result<(), Failed>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.filled && !self.eof {
                let mut read = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) if read.filled().is_empty() => self.eof = true,
                    Poll::Ready(Ok(())) => {
                        self.filled = read.filled().len();
                        self.pos = 0;
                        *moved = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(read_failed(e))),
                    Poll::Pending => {
                        if self.unflushed {
                            ready!(writer.as_mut().poll_flush(cx)).map_err(write_failed)?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.filled {
                let n = ready!(writer
                    .as_mut()
                    .poll_write(cx, &self.buf[self.pos..self.filled]))
                .map_err(write_failed)?;
                if n == 0 {
                    return Poll::Ready(Err(write_failed(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.unflushed = true;
                *moved = true;
            }
            if self.eof {
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(write_failed)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
#[path = "splice_tests.rs"]
mod tests;
