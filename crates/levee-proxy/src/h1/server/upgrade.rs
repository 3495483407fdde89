//! A client connection handed over after a `101`: the socket, with the
//! bytes the connection had read past the request head in front of it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// A client stream, whatever its transport.
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

/// The client's side of an upgraded connection. Boxed once per upgrade:
/// plain TCP and TLS both end up in one tunnel type.
pub type Upgraded = Rewind<Box<dyn ClientIo>>;

/// What a request that may be upgraded finds in its extensions: resolves
/// to the connection once its `101` is written, or fails if the connection
/// answered otherwise or ended. Clone, as extensions must be; one clone
/// takes the connection.
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<Mutex<oneshot::Receiver<Upgraded>>>);

/// The connection's end of an [`OnUpgrade`].
#[derive(Debug)]
pub(crate) struct Pending(oneshot::Sender<Upgraded>);

pub(crate) fn pending() -> (Pending, OnUpgrade) {
    let (tx, rx) = oneshot::channel();
    (Pending(tx), OnUpgrade(Arc::new(Mutex::new(rx))))
}

impl Pending {
    /// Hands the connection over; false if nobody waits for it.
    pub(crate) fn fulfil(self, io: Box<dyn ClientIo>, read_ahead: Bytes) -> bool {
        self.0.send(Rewind::new(io, read_ahead)).is_ok()
    }
}

/// The connection ended without an upgrade.
#[derive(Debug, thiserror::Error)]
#[error("the client connection was not upgraded")]
pub struct NotUpgraded;

impl Future for OnUpgrade {
    type Output = Result<Upgraded, NotUpgraded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut rx = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Pin::new(&mut *rx).poll(cx).map_err(|_| NotUpgraded)
    }
}

/// A stream whose first bytes are `prefix`.
#[derive(Debug)]
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(inner: T, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl std::fmt::Debug for dyn ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIo")
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
