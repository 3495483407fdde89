//! Connecting to a node: the connect phase of a call, before any byte of a
//! request is written.
//!
//! A connection is made by TCP within `connect_timeout`, then, for a backend
//! with `tls = true`, a TLS handshake within `connect_timeout` again. A
//! handshake failure is its own error ([`ConnectError::Tls`]), answered
//! `502 upstream-tls` rather than `upstream-connect`; both count against
//! the node.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use levee_config::UpstreamTlsConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why a node connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connect failed: {0}")]
    Tcp(io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
}

/// Connects to one node, plain or TLS with that node's server name.
#[derive(Debug, Clone)]
pub struct NodeConnector {
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<NodeTls>,
}

#[derive(Clone)]
struct NodeTls {
    connector: TlsConnector,
    name: ServerName<'static>,
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
        let tls = tls.map(|t| NodeTls {
            connector: TlsConnector::from(Arc::clone(&t.rustls)),
            name: t
                .server_name
                .clone()
                .or_else(|| ServerName::try_from(host?.to_owned()).ok())
                .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into())),
        });
        Self {
            addr,
            timeout: connect_timeout,
            tls,
        }
    }

    /// A new connection to the node: TCP, then TLS if the backend uses it,
    /// each within `connect_timeout`.
    pub async fn connect(&self) -> Result<NodeStream, ConnectError> {
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::Tcp(timed_out("TCP connect", self.timeout)))?
            .map_err(ConnectError::Tcp)?;
        // Requests are small writes that must go out at once.
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let Some(tls) = &self.tls else {
            return Ok(NodeStream::Plain(tcp));
        };
        let handshake = tls.connector.connect(tls.name.clone(), tcp);
        let stream = tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| ConnectError::Tls(timed_out("TLS handshake", self.timeout)))?
            .map_err(ConnectError::Tls)?;
        Ok(NodeStream::Tls(Box::new(stream)))
    }
}

fn timed_out(what: &str, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no {what} within {limit:?}"),
    )
}

/// A node connection, plain or TLS.
#[derive(Debug)]
pub enum NodeStream {
    Plain(TcpStream),
    /// Boxed: a TLS session is a kilobyte of state.
    Tls(Box<TlsStream<TcpStream>>),
}

impl NodeStream {
    /// Nothing arrived since the last read came back short: tokio's
    /// readiness, looked at without a read and without taking a waker
    /// (set again only by bytes, a FIN or an error). A TLS stream is never
    /// quiet: rustls may hold bytes it read from the socket already.
    pub fn is_quiet(&self) -> bool {
        match self {
            NodeStream::Plain(s) => s.try_io(Interest::READABLE, || Ok(())).is_err(),
            NodeStream::Tls(_) => false,
        }
    }
}

impl AsyncRead for NodeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
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
