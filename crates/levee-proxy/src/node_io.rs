//! Node connections that levee can condemn after the fact.
//!
//! hyper keeps a node connection for reuse whenever it could read the whole
//! response, even one levee refuses (both Transfer-Encoding and
//! Content-Length): the node may be desynchronised, so the connection must
//! not carry another request. Every node connection has a [`DropSwitch`],
//! handed to each of its responses as an extension; flipping it fails the
//! connection's next read or write and wakes its task, so hyper closes it
//! and the pool forgets it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

/// Condemns one node connection; found in the extensions of its responses.
#[derive(Debug, Clone, Default)]
pub struct DropSwitch(Arc<SwitchState>);

#[derive(Debug, Default)]
struct SwitchState {
    dropped: AtomicBool,
    /// The connection task's last read, woken so an idle connection goes too.
    reader: AtomicWaker,
}

impl DropSwitch {
    /// The connection fails its next read or write, and so is closed.
    pub fn drop_connection(&self) {
        self.0.dropped.store(true, Ordering::Release);
        self.0.reader.wake();
    }

    fn dropped(&self) -> bool {
        self.0.dropped.load(Ordering::Acquire)
    }
}

fn condemned() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "node connection dropped by levee",
    )
}

/// `HttpConnector`'s connections, each with its [`DropSwitch`].
#[derive(Debug, Clone)]
pub struct NodeConnector(pub HttpConnector);

impl Service<Uri> for NodeConnector {
    type Response = NodeIo;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<NodeIo, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // Once per connection, not per request.
        let connecting = self.0.call(dst);
        Box::pin(async move {
            Ok(NodeIo {
                io: connecting.await?,
                switch: DropSwitch::default(),
            })
        })
    }
}

/// A node connection whose reads and writes fail once its switch is flipped.
#[derive(Debug)]
pub struct NodeIo {
    io: TokioIo<TcpStream>,
    switch: DropSwitch,
}

impl Connection for NodeIo {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.switch.clone())
    }
}

impl Read for NodeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.switch.0.reader.register(cx.waker());
        if self.switch.dropped() {
            return Poll::Ready(Err(condemned()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for NodeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.switch.dropped() {
            return Poll::Ready(Err(condemned()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.switch.dropped() {
            return Poll::Ready(Err(condemned()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
