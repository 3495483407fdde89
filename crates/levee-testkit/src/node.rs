//! [`AppNode`]: a listener, its connection tasks and the shared state tests inspect.

use std::convert::Infallible;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, UPGRADE,
};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::behavior::{share_hits, Behavior, DEFAULT_BODY_BYTES};
use crate::body::NodeBody;
use crate::io::{ConnCtl, NodeIo};
use crate::stats::{Counters, NodeStats, RecordedRequest, Recorder};
use crate::websocket;

/// Header naming the node on every answer.
pub const NODE_HEADER: &str = "x-node";

/// How long [`AppNode::shutdown`] waits for connection tasks before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How a node speaks: TLS or plain, HTTP/1.1 or HTTP/2.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Serve TLS with this config (its certificate, its ALPN list); `None`:
    /// plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Serve HTTP/2 only (h2c prior knowledge without TLS) instead of HTTP/1.1.
    pub http2: bool,
    /// HTTP/2: SETTINGS_MAX_CONCURRENT_STREAMS, to check that a client
    /// queues its requests instead of opening streams the node refuses.
    pub max_concurrent_streams: Option<u32>,
}

impl fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeOptions")
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .finish()
    }
}

/// State shared by the node handle, its accept loop and its connections.
struct Shared {
    name: String,
    options: NodeOptions,
    node_header: HeaderValue,
    behavior: RwLock<Behavior>,
    counters: Arc<Counters>,
    recorded: Recorder,
}

impl Shared {
    fn behavior(&self) -> Behavior {
        self.behavior
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_behavior(&self, behavior: Behavior) {
        *self
            .behavior
            .write()
            .unwrap_or_else(PoisonError::into_inner) = behavior;
    }
}

/// A running listener: its accept loop and the signal that stops it and its
/// connections.
struct Listening {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Listening {
    fn spawn(listener: TcpListener, shared: Arc<Shared>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, stopped));
        Listening { stop, task }
    }

    /// Closes the listener and every connection it accepted, and waits for that.
    async fn stop(mut self) {
        self.stop.send_replace(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!("levee-testkit node did not stop in time; aborting it");
            self.task.abort();
        }
    }
}

/// A programmable HTTP app node (see the [crate docs](crate)).
///
/// Dropping it stops the node: the listener closes and its connection tasks
/// are aborted. [`AppNode::shutdown`] does the same and waits for it.
pub struct AppNode {
    shared: Arc<Shared>,
    addr: SocketAddr,
    listening: tokio::sync::Mutex<Option<Listening>>,
}

impl fmt::Debug for AppNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppNode")
            .field("name", &self.shared.name)
            .field("addr", &self.addr)
            .field("behavior", &self.shared.behavior())
            .finish_non_exhaustive()
    }
}

impl AppNode {
    /// Binds `127.0.0.1:0` on the current tokio runtime.
    pub async fn start(name: &str, behavior: Behavior) -> std::io::Result<AppNode> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), name, behavior).await
    }

    /// Binds the given address (port 0 picks a free port). With
    /// [`Behavior::Refuse`] the port is bound once to reserve its number,
    /// then closed.
    pub async fn start_on(
        addr: SocketAddr,
        name: &str,
        behavior: Behavior,
    ) -> std::io::Result<AppNode> {
        Self::start_with(addr, name, behavior, NodeOptions::default()).await
    }

    /// Like [`AppNode::start_on`], serving TLS and/or HTTP/2 as `options` say.
    pub async fn start_with(
        addr: SocketAddr,
        name: &str,
        behavior: Behavior,
        options: NodeOptions,
    ) -> std::io::Result<AppNode> {
        let node_header = HeaderValue::from_str(name).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("node name {name:?} is not a valid header value"),
            )
        })?;
        let listener = listen(addr)?;
        let addr = listener.local_addr()?;
        let refuse = matches!(behavior, Behavior::Refuse);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            options,
            node_header,
            behavior: RwLock::new(behavior),
            counters: Arc::default(),
            recorded: Recorder::default(),
        });
        let listening = if refuse {
            drop(listener);
            None
        } else {
            Some(Listening::spawn(listener, shared.clone()))
        };
        tracing::debug!(node = name, %addr, "levee-testkit node started");
        Ok(AppNode {
            shared,
            addr,
            listening: tokio::sync::Mutex::new(listening),
        })
    }

    /// The bound address (with the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Switches behaviour for new requests (requests already being answered
    /// finish as they started). Switching to [`Behavior::Refuse`] closes the
    /// listener and open connections before returning; switching away from
    /// it binds the same address again.
    pub async fn set_behavior(&self, behavior: Behavior) -> std::io::Result<()> {
        let mut listening = self.listening.lock().await;
        let refuse = matches!(behavior, Behavior::Refuse);
        match (listening.take(), refuse) {
            (Some(running), true) => {
                self.shared.set_behavior(behavior);
                running.stop().await;
            }
            (None, false) => {
                let listener = listen(self.addr)?;
                self.shared.set_behavior(behavior);
                *listening = Some(Listening::spawn(listener, self.shared.clone()));
            }
            (running, _) => {
                self.shared.set_behavior(behavior);
                *listening = running;
            }
        }
        tracing::debug!(node = %self.shared.name, behavior = %self.shared.behavior(), "behaviour switched");
        Ok(())
    }

    /// The current behaviour.
    pub fn behavior(&self) -> Behavior {
        self.shared.behavior()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NodeStats {
        self.shared.counters.snapshot()
    }

    /// The last up to 256 request heads, oldest first.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.shared.recorded.snapshot()
    }

    /// Closes the listener and every connection, and waits until their tasks ended.
    pub async fn shutdown(self) {
        let running = self.listening.lock().await.take();
        if let Some(running) = running {
            running.stop().await;
        }
    }
}

impl Drop for AppNode {
    fn drop(&mut self) {
        if let Some(running) = self.listening.get_mut().take() {
            running.stop.send_replace(true);
            // Aborting the accept loop drops its JoinSet, which aborts the
            // connection tasks even if the runtime never polls them again.
            running.task.abort();
        }
    }
}

/// Accepts until stopped; each connection runs in a task of `connections`,
/// so stopping (or aborting) the loop ends them all.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let open = OpenConnection::new(shared.counters.clone());
                    tracing::trace!(node = %shared.name, %peer, "connection accepted");
                    connections.spawn(serve_connection(stream, shared.clone(), stopped.clone(), open));
                }
                Err(e) => {
                    // e.g. out of file descriptors: back off instead of spinning.
                    tracing::debug!(node = %shared.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped.changed() => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Counts a connection open until dropped (also when its task is aborted).
struct OpenConnection(Arc<Counters>);

impl OpenConnection {
    fn new(counters: Arc<Counters>) -> Self {
        counters.connection_opened();
        OpenConnection(counters)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    _open: OpenConnection,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::trace!(error = %e, "could not set TCP_NODELAY");
    }
    let ctl = Arc::new(ConnCtl::default());
    let io = NodeIo::new(stream, ctl.clone());
    let options = shared.options.clone();
    let tunnels = stopped.clone();
    let service =
        service_fn(move |request| handle(shared.clone(), ctl.clone(), tunnels.clone(), request));
    match options.tls.clone() {
        Some(config) => {
            let handshake = tokio_rustls::TlsAcceptor::from(config).accept(io);
            let tls = tokio::select! {
                tls = handshake => tls,
                _ = stopped.changed() => return,
            };
            match tls {
                Ok(tls) => serve_http(TokioIo::new(tls), service, &options, stopped).await,
                Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
            }
        }
        None => serve_http(TokioIo::new(io), service, &options, stopped).await,
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it ends or the node stops.
async fn serve_http<I, S>(
    io: I,
    service: S,
    options: &NodeOptions,
    mut stopped: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = NodeBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let served = if options.http2 {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(options.max_concurrent_streams)
            .serve_connection(io, service);
        tokio::select! {
            served = connection => served,
            _ = stopped.changed() => return,
        }
    } else {
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            // No idle timeout: a test decides when a connection goes away.
            .header_read_timeout(None)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::select! {
            served = connection => served,
            _ = stopped.changed() => return,
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Why a connection is dropped without an answer.
#[derive(Debug, thiserror::Error)]
enum Dropped {
    #[error("the node refuses connections")]
    Refused,
    #[error("reset by behaviour reset-headers")]
    ResetMidHeaders,
    #[error("reading the request body: {0}")]
    RequestBody(#[from] hyper::Error),
}

async fn handle(
    shared: Arc<Shared>,
    ctl: Arc<ConnCtl>,
    stopped: watch::Receiver<bool>,
    request: Request<Incoming>,
) -> Result<Response<NodeBody>, Dropped> {
    let behavior = shared.behavior();
    if matches!(behavior, Behavior::Refuse) {
        // A request that raced the switch to Refuse: close like a dead process.
        return Err(Dropped::Refused);
    }
    // Held until this function returns (or its future is dropped): the
    // response head is then handed over, and the request is no longer in flight.
    let (_in_flight, others_in_flight) = shared.counters.request();
    let (mut parts, body) = request.into_parts();
    let accept = match behavior {
        Behavior::WebSocketEcho => websocket::accept_key(&parts.method, &parts.headers),
        _ => None,
    };
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    shared.recorded.push(RecordedRequest {
        method: parts.method.clone(),
        uri: parts.uri,
        headers: parts.headers,
        version: parts.version,
    });
    let counters = &shared.counters;

    if let (Some(accept), Some(upgrade)) = (accept, upgrade) {
        read_body(body, counters).await?;
        tokio::spawn(websocket::echo(upgrade, stopped));
        let mut response = Response::new(NodeBody::full(String::new(), counters.clone()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(NODE_HEADER, shared.node_header.clone());
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
        return Ok(response);
    }

    if let Behavior::Echo = behavior {
        let body = NodeBody::echo(body, counters.clone());
        return Ok(respond(&shared, StatusCode::OK, None, body));
    }

    // Every other behaviour reads the whole request first.
    read_body(body, counters).await?;

    let response = match behavior {
        Behavior::Healthy { body_bytes } => healthy(&shared, body_bytes),
        // Not a handshake: answered like a healthy node.
        Behavior::WebSocketEcho => healthy(&shared, DEFAULT_BODY_BYTES),
        Behavior::Status {
            code,
            share,
            methods,
        } => {
            let applies = methods
                .as_ref()
                .is_none_or(|methods| methods.contains(&parts.method));
            if applies && share_hits(share) {
                let status = StatusCode::from_u16(code)
                    .ok()
                    .filter(|status| !status.is_informational())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let text = format!("levee-testkit {}: injected {code}\n", shared.name);
                let len = text.len();
                respond(
                    &shared,
                    status,
                    Some(len),
                    NodeBody::full(text, counters.clone()),
                )
            } else {
                healthy(&shared, DEFAULT_BODY_BYTES)
            }
        }
        Behavior::Stuck => {
            // Never answers; the connection task drops this future when the
            // client goes away or the node stops.
            let never: Infallible = std::future::pending().await;
            match never {}
        }
        Behavior::StuckOn { methods } => {
            if methods.contains(&parts.method) {
                let never: Infallible = std::future::pending().await;
                match never {}
            }
            healthy(&shared, DEFAULT_BODY_BYTES)
        }
        Behavior::Slow { delay, body_bytes } => {
            tokio::time::sleep(delay).await;
            healthy(&shared, body_bytes)
        }
        Behavior::Loaded {
            base,
            per_in_flight,
            body_bytes,
        } => {
            let others = u32::try_from(others_in_flight).unwrap_or(u32::MAX);
            tokio::time::sleep(base.saturating_add(per_in_flight.saturating_mul(others))).await;
            healthy(&shared, body_bytes)
        }
        Behavior::Drip {
            chunks,
            chunk_bytes,
            interval,
        } => respond(
            &shared,
            StatusCode::OK,
            Some(chunks.saturating_mul(chunk_bytes)),
            NodeBody::drip(chunks, chunk_bytes, interval, counters.clone()),
        ),
        Behavior::ResetMidHeaders => {
            ctl.partial_head_then_reset();
            return Err(Dropped::ResetMidHeaders);
        }
        Behavior::ResetMidBody {
            total_bytes,
            after_bytes,
        } => respond(
            &shared,
            StatusCode::OK,
            Some(total_bytes),
            NodeBody::reset_after(
                total_bytes,
                after_bytes.min(total_bytes.saturating_sub(1)),
                ctl,
                counters.clone(),
            ),
        ),
        // Handled above; kept so the match stays exhaustive.
        Behavior::Echo | Behavior::Refuse => return Err(Dropped::Refused),
    };
    Ok(response)
}

/// Reads and counts the request body.
async fn read_body(mut body: Incoming, counters: &Counters) -> Result<(), hyper::Error> {
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            counters.body_bytes(data.len());
        }
    }
    Ok(())
}

fn healthy(shared: &Shared, body_bytes: usize) -> Response<NodeBody> {
    respond(
        shared,
        StatusCode::OK,
        Some(body_bytes),
        NodeBody::generated(body_bytes, shared.counters.clone()),
    )
}

fn respond(
    shared: &Shared,
    status: StatusCode,
    content_length: Option<usize>,
    body: NodeBody,
) -> Response<NodeBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(NODE_HEADER, shared.node_header.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Some(len) = content_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    response
}

/// Binds with a backlog of 1,024 rather than the 128 that `TcpListener::bind`
/// asks for: a proxy opening 256 node connections at once overflowed 128,
/// the dropped SYNs were sent again a second later, as late as a 1 s connect
/// timeout, and the proxy's breaker took the node out for a whole benchmark run.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
