//! Node connections that levee can condemn after the fact.
//!
//! hyper keeps a node connection for reuse whenever it could read the whole
//! response, even one levee refuses (both Transfer-Encoding and
//! Content-Length): the node may be desynchronised, so the connection must
//! not carry another request. Every node connection has a [`DropSwitch`],
//! handed to each of its responses as an extension; flipping it fails the
//! connection's next read or write and wakes its task, so hyper closes it
//! and the pool forgets it.
//!
//! A connection is made by TCP within `connect_timeout`, then, for a backend
//! with `tls = true`, a TLS handshake within `connect_timeout` again. A
//! handshake failure is its own error ([`ConnectError::Tls`]), answered
//! `502 upstream-tls` rather than `upstream-connect`; both count against
//! the node.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use levee_config::{UpstreamTlsConfig, ALPN_H2};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
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

/// Why a node connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connect failed: {0}")]
    Tcp(Box<dyn std::error::Error + Send + Sync>),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
}

/// Connects to one node, plain or TLS with that node's server name; each
/// connection with its [`DropSwitch`].
#[derive(Debug, Clone)]
pub struct NodeConnector {
    tcp: HttpConnector,
    tls: Option<NodeTls>,
}

#[derive(Clone)]
struct NodeTls {
    connector: TlsConnector,
    name: ServerName<'static>,
    timeout: Duration,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NodeConnector {
    /// The connector for `node`; with `tls`, its server name is the
    /// backend's `tls_server_name`, else the name the node was found by,
    /// else its IP address.
    pub fn new(
        addr: SocketAddr,
        host: Option<&str>,
        connect_timeout: Duration,
        tls: Option<&UpstreamTlsConfig>,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        tcp.enforce_http(true);
        let tls = tls.map(|t| NodeTls {
            connector: TlsConnector::from(Arc::clone(&t.rustls)),
            name: t
                .server_name
                .clone()
                .or_else(|| ServerName::try_from(host?.to_owned()).ok())
                .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into())),
            timeout: connect_timeout,
        });
        Self { tcp, tls }
    }
}

impl Service<Uri> for NodeConnector {
    type Response = NodeIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<NodeIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.tcp
            .poll_ready(cx)
            .map_err(|e| ConnectError::Tcp(e.into()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // Once per connection, not per request.
        let connecting = self.tcp.call(dst);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await.map_err(|e| ConnectError::Tcp(e.into()))?;
            let io = match tls {
                None => NodeStream::Plain(tcp),
                Some(tls) => {
                    let handshake = tls.connector.connect(tls.name, tcp.into_inner());
                    let stream = tokio::time::timeout(tls.timeout, handshake)
                        .await
                        .map_err(|_| {
                            ConnectError::Tls(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no TLS handshake within {:?}", tls.timeout),
                            ))
                        })?
                        .map_err(ConnectError::Tls)?;
                    NodeStream::Tls(Box::new(TokioIo::new(stream)))
                }
            };
            Ok(NodeIo {
                io,
                switch: DropSwitch::default(),
            })
        })
    }
}

/// A node connection whose reads and writes fail once its switch is flipped.
#[derive(Debug)]
pub struct NodeIo {
    io: NodeStream,
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

/// A node connection, plain or TLS.
#[derive(Debug)]
pub enum NodeStream {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is a kilobyte of state.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for NodeStream {
    fn connected(&self) -> Connected {
        match self {
            NodeStream::Plain(s) => s.connected(),
            NodeStream::Tls(s) => {
                let (tcp, session) = s.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(ALPN_H2) {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for NodeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for NodeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NodeStream::Plain(s) => s.is_write_vectored(),
            NodeStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}
