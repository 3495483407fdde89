//! A client connection handed over after a `101`: the socket, with the
//! bytes the connection had read past the request head in front of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::h1::Rewind;

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

impl std::fmt::Debug for dyn ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIo")
    }
}
