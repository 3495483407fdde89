//! The client listener: accept under `max_connections`, serve, drain.
//!
//! Connections beyond `max_connections` are not accepted: they wait in the
//! kernel's backlog, not in levee's memory. Shutdown stops accepting, asks
//! every connection to finish its in-flight requests, and waits for them up
//! to `shutdown_grace`. A reload that changes `server.listen` hands each
//! worker a listener already bound on the new address; settings of new
//! connections follow the live config.
//!
//! With `[server.tls]`, each worker also accepts on its own TLS listener
//! (same `SO_REUSEPORT` scheme, same `max_connections` slots): a connection
//! there is served after its handshake, with the certificates of the config
//! live when it arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use levee_config::ServerConfig;
use levee_telemetry::Telemetry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::connection::{self, Conn, Protocols, Start};
use crate::headers::Scheme;
use crate::parking::Lot;
use crate::state::Shared;
use crate::tls;

/// One worker's bound listener, ready to run.
pub struct ProxyServer {
    listener: TcpListener,
    /// The `[server.tls]` listener, if any.
    tls_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    worker: usize,
    max_connections: usize,
    /// New listeners from a reload that changed `server.listen`.
    rebind: mpsc::UnboundedReceiver<std::net::TcpListener>,
}

/// Asks a running server to drain and stop.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shutdown: watch::Sender<bool>,
}

impl ServerHandle {
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// The connection settings of one config version, rebuilt only when a
/// reload changes them.
pub(crate) struct ConnSettings {
    pub server: ServerConfig,
    pub protocols: Arc<Protocols>,
}

/// A connection's place under `max_connections`: taken at accept, given
/// back (and the connection counted closed) when it drops.
pub(crate) struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    telemetry: Arc<Telemetry>,
}

impl ConnSlot {
    pub(crate) fn new(permit: OwnedSemaphorePermit, telemetry: Arc<Telemetry>) -> Self {
        Self {
            _permit: permit,
            telemetry,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.telemetry.connection_closed();
    }
}

impl ConnSettings {
    pub(crate) fn of(server: &ServerConfig) -> Self {
        Self {
            server: server.clone(),
            protocols: Arc::new(protocols(server)),
        }
    }

    /// Follows the live config: new connections get its settings.
    pub(crate) fn refresh(&mut self, shared: &Shared) {
        let state = shared.state();
        let live = &state.config.server;
        if live.header_read_timeout != self.server.header_read_timeout
            || live.max_header_bytes != self.server.max_header_bytes
            || live.max_headers != self.server.max_headers
            || live.idle_timeout != self.server.idle_timeout
            || live.shutdown_grace != self.server.shutdown_grace
            || live.h2 != self.server.h2
        {
            *self = Self::of(live);
        }
    }
}

impl ProxyServer {
    /// `worker` indexes this worker's node pools; `max_connections` is its
    /// share of the server's limit. Call it on the runtime that will run it.
    pub fn new(
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
        worker: usize,
        max_connections: usize,
        rebind: mpsc::UnboundedReceiver<std::net::TcpListener>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::from_std(listener)?,
            tls_listener: None,
            shared,
            worker,
            max_connections,
            rebind,
        })
    }

    /// Also accepts TLS clients on `listener` (bound by [`bind_workers`]).
    pub fn with_tls_listener(mut self, listener: std::net::TcpListener) -> std::io::Result<Self> {
        self.tls_listener = Some(TcpListener::from_std(listener)?);
        Ok(self)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `handle.shutdown()`, then drains. Returns how many
    /// connections were still open when the grace period ended.
    pub async fn run(mut self, handle_rx: watch::Receiver<bool>) -> usize {
        let max = self.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let lot = match Lot::new(Arc::clone(&self.shared), self.worker) {
            Ok(lot) => {
                let lot = Arc::new(lot);
                tokio::spawn(Arc::clone(&lot).run(handle_rx.clone()));
                Some(lot)
            }
            Err(e) => {
                warn!(worker = self.worker, error = %e, "no parking lot: idle connections wait in their tasks");
                None
            }
        };
        let mut conns = Conns {
            settings: ConnSettings::of(&self.shared.state().config.server),
            slots: Arc::new(Semaphore::new(max)),
            shared: Arc::clone(&self.shared),
            worker: self.worker,
            shutdown: handle_rx.clone(),
            lot,
        };
        let mut stop = handle_rx;
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&conns.slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                Some(l) = self.rebind.recv() => { self.switch(l, &mut conns); continue; }
                _ = stop.changed() => break,
            };
            let (accepted, scheme) = tokio::select! {
                accepted = self.listener.accept() => (accepted, Scheme::Http),
                accepted = accept_tls(self.tls_listener.as_ref()) => (accepted, Scheme::Https),
                Some(l) = self.rebind.recv() => { self.switch(l, &mut conns); continue; }
                _ = stop.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            conns.serve(stream, peer, slot, scheme);
        }
        drop(self.listener);
        drop(self.tls_listener);
        conns.settings.refresh(&self.shared);
        let grace = conns.settings.server.shutdown_grace;
        let slots = conns.slots;
        let open = max - slots.available_permits();
        info!(
            worker = self.worker,
            open_connections = open,
            ?grace,
            "draining"
        );
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(grace, slots.acquire_many(all)).await;
        match drained {
            Ok(_) => 0,
            Err(_) => max - slots.available_permits(),
        }
    }

    /// Serves a new listener from now on. The new one was bound before the
    /// old one closes, and clients already waiting in the old one's accept
    /// queue are accepted and served, not reset.
    fn switch(&mut self, listener: std::net::TcpListener, conns: &mut Conns) {
        let new = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(worker = self.worker, error = %e, "cannot serve the new listener; keeping the old one");
                return;
            }
        };
        info!(worker = self.worker, addr = ?new.local_addr().ok(), "serving the new listen address");
        let old = std::mem::replace(&mut self.listener, new);
        let Ok(old) = old.into_std() else {
            return;
        };
        // Non-blocking: ends with WouldBlock once the queue is empty.
        while let Ok((stream, peer)) = old.accept() {
            let Ok(slot) = Arc::clone(&conns.slots).try_acquire_owned() else {
                warn!(worker = self.worker, %peer, "no connection slot for a client queued on the old listen address");
                continue;
            };
            match stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream))
            {
                Ok(stream) => conns.serve(stream, peer, slot, Scheme::Http),
                Err(e) => warn!(worker = self.worker, error = %e, "cannot serve a queued client"),
            }
        }
    }
}

/// What a worker needs to serve each accepted connection.
struct Conns {
    settings: ConnSettings,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    worker: usize,
    shutdown: watch::Receiver<bool>,
    /// Where its idle plain-TCP HTTP/1 connections park.
    lot: Option<Arc<Lot>>,
}

impl Conns {
    /// Serves one client connection on its own task (after its TLS
    /// handshake, for `Scheme::Https`); `slot` is its place under
    /// `max_connections`.
    fn serve(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        scheme: Scheme,
    ) {
        let _ = stream.set_nodelay(true);
        let telemetry = Arc::clone(&self.shared.telemetry);
        telemetry.connection_opened();
        let slot = ConnSlot::new(slot, Arc::clone(&telemetry));
        self.settings.refresh(&self.shared);
        let conn = Conn {
            protocols: Arc::clone(&self.settings.protocols),
            shared: Arc::clone(&self.shared),
            worker: self.worker,
            peer,
            scheme,
            idle_timeout: self.settings.server.idle_timeout,
        };
        let shutdown = self.shutdown.clone();
        match scheme {
            Scheme::Http => {
                tokio::spawn(connection::serve(
                    conn,
                    stream,
                    shutdown,
                    slot,
                    self.lot.clone(),
                    Start::Accepted,
                ));
            }
            Scheme::Https => {
                let tls = self
                    .shared
                    .state()
                    .config
                    .server
                    .tls
                    .as_ref()
                    .map(|t| (Arc::clone(&t.rustls), t.handshake_timeout));
                // The TLS listener outlives a config without [server.tls]
                // only until the restart that reload asked for.
                let Some((config, timeout)) = tls else {
                    return;
                };
                // Boxed: a TLS connection's futures carry rustls's state
                // (kilobytes), and every plain connection's task would be
                // as large.
                tokio::spawn(Box::pin(async move {
                    if let Some(stream) =
                        tls::accept(config, stream, peer, timeout, &telemetry).await
                    {
                        connection::serve(conn, stream, shutdown, slot, None, Start::Accepted)
                            .await;
                    }
                }));
            }
        }
    }
}

/// Accepts on the TLS listener; never ready without one.
async fn accept_tls(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Binds one listener per worker on `addr` with `SO_REUSEPORT`, so each
/// worker has its own accept queue on the same address; a port already in
/// use by anyone is refused. Port 0 is resolved by the first bind; the
/// others share its port. Plain sockets, so they can
/// be bound anywhere and handed to the runtime that will serve them.
pub fn bind_workers(
    addr: SocketAddr,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    // SO_REUSEPORT would quietly share a port another process (another
    // levee) already listens on; a plain bind first refuses that.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let first = bind_one(addr)?;
    let bound = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers.max(1) {
        all.push(bind_one(bound)?);
    }
    Ok(all)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A shutdown handle and the receiver a server runs with.
pub fn shutdown_channel() -> (ServerHandle, watch::Receiver<bool>) {
    let (tx, rx) = watch::channel(false);
    (ServerHandle { shutdown: tx }, rx)
}

pub(crate) fn protocols(server: &ServerConfig) -> Protocols {
    let buf = (server.max_header_bytes * 2).max(8 * 1024);
    // A header list over this reaches the edge without its fields, marked by
    // the patched h2 (vendor/README.md): 431 header-too-large.
    let h2 = &server.h2;
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buf).unwrap_or(u32::MAX))
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams)
        .keep_alive_interval(h2.keep_alive_interval)
        .keep_alive_timeout(h2.keep_alive_timeout);
    Protocols { http2 }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use levee_telemetry::{Telemetry, Topology};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client already in the old listener's accept queue when the listen
    /// address moves is served, not reset.
    #[tokio::test]
    async fn clients_queued_on_the_old_address_are_served_after_a_switch() {
        let state = crate::stack::testing::state(
            "[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:1\"]\nconnect_timeout = \"100ms\"\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
        );
        let shared = Arc::new(Shared::new(state, Telemetry::new(Topology::default(), 1)));
        let mut old = bind_workers("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let old = old.remove(0);
        let old_addr = old.local_addr().unwrap();
        let (_tx, rebind) = mpsc::unbounded_channel();
        let mut server = ProxyServer::new(old, Arc::clone(&shared), 0, 8, rebind).unwrap();
        // Nobody accepts yet: the kernel queues the connection.
        let mut client = TcpStream::connect(old_addr).await.unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let mut conns = Conns {
            settings: ConnSettings::of(&shared.state().config.server),
            slots: Arc::new(Semaphore::new(8)),
            shared: Arc::clone(&shared),
            worker: 0,
            shutdown: stop,
            lot: None,
        };
        let new = bind_workers("127.0.0.1:0".parse().unwrap(), 1)
            .unwrap()
            .remove(0);
        let new_addr = new.local_addr().unwrap();
        server.switch(new, &mut conns);
        assert_eq!(server.local_addr().unwrap(), new_addr);
        assert_eq!(
            conns.slots.available_permits(),
            7,
            "the queued client got a slot"
        );

        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 502") && answer.contains("upstream-connect"),
            "{answer}"
        );
        assert!(
            TcpStream::connect(old_addr).await.is_err(),
            "the old address is closed"
        );
    }
}
