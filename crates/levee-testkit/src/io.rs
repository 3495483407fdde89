//! The socket under hyper, wrapped so a behaviour can end a connection the
//! way a crashed process does: a partial write followed by a TCP reset.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What `ResetMidHeaders` writes before resetting: a status line and a
/// header cut off in the middle of its name.
pub(crate) const PARTIAL_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Le";

/// Per-connection switches shared between the service, the response body
/// and the socket wrapper.
#[derive(Debug, Default)]
pub(crate) struct ConnCtl {
    /// Close with `SO_LINGER` 0 (RST) instead of a FIN when the socket is dropped.
    reset: AtomicBool,
    /// Write [`PARTIAL_HEAD`] just before the reset.
    partial_head: AtomicBool,
    /// Completed flushes of hyper's write buffer (hyper flushes the socket
    /// only once its buffer is empty).
    flushes: AtomicU64,
    /// Whether a body waits in [`ConnCtl::flush_waker`], so plain
    /// connections never take the lock.
    flush_watched: AtomicBool,
    flush_waker: Mutex<Option<Waker>>,
}

impl ConnCtl {
    /// Reset the connection when hyper drops it.
    pub(crate) fn reset_on_close(&self) {
        self.reset.store(true, Ordering::Release);
    }

    /// Write a partial response head, then reset, when hyper drops the connection.
    pub(crate) fn partial_head_then_reset(&self) {
        self.partial_head.store(true, Ordering::Release);
        self.reset.store(true, Ordering::Release);
    }

    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Wake `waker` on the next completed flush.
    pub(crate) fn wake_on_flush(&self, waker: &Waker) {
        let mut slot = self
            .flush_waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(existing) if existing.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
        self.flush_watched.store(true, Ordering::SeqCst);
    }

    fn flushed(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.flush_watched.swap(false, Ordering::SeqCst) {
            let waker = self
                .flush_waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// A `TcpStream` that honours [`ConnCtl`] when dropped.
pub(crate) struct NodeIo {
    /// Always `Some` until dropped.
    stream: Option<TcpStream>,
    ctl: std::sync::Arc<ConnCtl>,
}

impl NodeIo {
    pub(crate) fn new(stream: TcpStream, ctl: std::sync::Arc<ConnCtl>) -> Self {
        NodeIo {
            stream: Some(stream),
            ctl,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.stream.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }
}

impl AsyncRead for NodeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for NodeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = match this.stream() {
            Ok(stream) => std::task::ready!(stream.poll_flush(cx)),
            Err(e) => Err(e),
        };
        if result.is_ok() {
            this.ctl.flushed();
        }
        Poll::Ready(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for NodeIo {
    fn drop(&mut self) {
        if !self.ctl.reset.load(Ordering::Acquire) {
            return;
        }
        let Some(stream) = self.stream.take() else {
            return;
        };
        // SO_LINGER 0: closing sends a RST instead of a FIN.
        if let Err(e) = stream.set_zero_linger() {
            tracing::debug!(error = %e, "could not set SO_LINGER 0; closing normally");
        }
        if self.ctl.partial_head.load(Ordering::Acquire) {
            // A synchronous non-blocking write: the send buffer of a
            // connection that has not answered yet has room for a few bytes.
            match stream.into_std() {
                Ok(std_stream) => {
                    if let Err(e) = io::Write::write(&mut &std_stream, PARTIAL_HEAD) {
                        tracing::debug!(error = %e, "could not write the partial head");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not detach the socket"),
            }
        }
    }
}
