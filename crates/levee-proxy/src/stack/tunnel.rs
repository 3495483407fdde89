//! WebSocket handshakes: the route's tunnel cap, and on the node's `101`
//! the tunnel that carries the connection from then on.
//!
//! Only `Upgrade: websocket` passes (HTTP/1.1, GET, `Connection: upgrade`;
//! [`handshake_of`]). Any other protocol, notably `h2c`, is never
//! forwarded: its `Upgrade` is stripped like any hop-by-hop header and the
//! request goes on as an ordinary one (RFC 9110 §7.8 lets a server ignore
//! an upgrade; an `h2c` upgrade passed through a proxy is a known
//! request-smuggling vector). A handshake takes a tunnel slot of its route
//! (`max_tunnels`, no queue: 503 `tunnel-limit`) before anything else, then
//! goes down the stack like any request (bulkheads, breakers, retries).
//! When the node answers `101`, the tunnel takes over the two sockets
//! ([`crate::splice`]) on a task of its own, holding the tunnel slot and the
//! client connection; the handshake's bulkhead slots end with its empty
//! response body, so tunnels never hold them. Any other answer is forwarded
//! as it is and the tunnel slot is given back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use levee_config::UpstreamProtocol;
use levee_resilience::BulkheadPermit;
use levee_telemetry::{ErrorReason, RouteStats};
use tower::{Layer, Service};

use super::{ProxyResult, Routed};
use crate::activity::Upgrading;
use crate::body::{ClientBody, ProxyBody};
use crate::error::ProxyError;
use crate::h1::server::OnUpgrade;
use crate::pool::NodeUpgrade;
use crate::splice;
use crate::state::{ProxyState, Route};

/// What the Upgrade header of a request asks of levee.
///
/// `Ok(true)`: a WebSocket handshake to pass through. `Ok(false)`: nothing
/// to upgrade: no Upgrade header, or one levee ignores and strips (without
/// `upgrade` in Connection it asks for nothing; another protocol such as
/// `h2c`; any Upgrade on HTTP/1.0, which RFC 9110 §7.8 says to ignore, or
/// on HTTP/2, which has no upgrades). `Err`: 400 `bad-upgrade`, a WebSocket
/// handshake levee will not pass: not a GET, or other protocols offered
/// beside websocket.
pub fn handshake_of(req: &Request<ClientBody>) -> Result<bool, ProxyError> {
    let headers = req.headers();
    if req.version() != Version::HTTP_11
        || !headers.contains_key(UPGRADE)
        || !tokens(headers, &CONNECTION).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
    {
        return Ok(false);
    }
    let mut offered = 0usize;
    let mut websocket = false;
    for token in tokens(headers, &UPGRADE) {
        offered += 1;
        // A protocol may carry a version: `websocket/13`.
        let name = token.split(|b| *b == b'/').next().unwrap_or_default();
        websocket |= name.eq_ignore_ascii_case(b"websocket");
    }
    if !websocket {
        return Ok(false);
    }
    let bad = |detail: &'static str| Err(ProxyError::new(ErrorReason::BadUpgrade, detail));
    if offered > 1 {
        return bad("websocket offered with other protocols");
    }
    if req.method() != Method::GET {
        return bad("a WebSocket handshake must be a GET");
    }
    Ok(true)
}

/// Whether the route's nodes can take a tunnel: an upgrade needs HTTP/1.1
/// to the node. Over a `protocol = "http2"` backend a handshake goes on as
/// an ordinary request, its Upgrade stripped, and the node's answer (not a
/// 101) is passed back; WebSocket over HTTP/2 to nodes (RFC 8441) is not
/// supported.
pub fn carried_to(state: &ProxyState, route: &Route) -> bool {
    state
        .config
        .backends
        .get(route.backend_index)
        .is_some_and(|b| b.protocol == UpstreamProtocol::Http1)
}

/// The comma-separated tokens of every line of header `name`, trimmed.
fn tokens<'a>(
    headers: &'a HeaderMap,
    name: &'a http::header::HeaderName,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Puts back, for the node, the two headers a handshake needs after the
/// hop-by-hop ones were stripped.
pub fn restore_handshake(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(UPGRADE, upgrade);
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Adds [`Tunnel`].
#[derive(Debug, Clone, Copy)]
pub struct TunnelLayer;

impl<S> Layer<S> for TunnelLayer {
    type Service = Tunnel<S>;

    fn layer(&self, inner: S) -> Tunnel<S> {
        Tunnel { inner }
    }
}

/// Caps a route's tunnels and opens one when the node switches protocols.
#[derive(Debug, Clone)]
pub struct Tunnel<S> {
    inner: S,
}

impl<S> Service<Routed> for Tunnel<S>
where
    S: Service<Routed, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = TunnelFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Routed) -> Self::Future {
        if !req.websocket {
            return TunnelFuture::Plain {
                fut: self.inner.call(req),
            };
        }
        let route = req.route();
        let permit = match route.stats.tunnels.limit.try_acquire() {
            Ok(Some(permit)) => permit,
            _ => {
                return TunnelFuture::Refused {
                    error: Some(ProxyError::new(
                        ErrorReason::TunnelLimit,
                        format!(
                            "route {}: {} tunnels open",
                            route.name,
                            route.stats.tunnels.open()
                        ),
                    )),
                }
            }
        };
        let handshake = Box::new(Handshake {
            permit,
            stats: Arc::clone(&route.stats),
            idle: route.tunnel_idle_timeout,
            client: req.parts.extensions.remove::<OnUpgrade>(),
            conn: req.parts.extensions.remove::<Upgrading>(),
        });
        TunnelFuture::Handshake {
            fut: self.inner.call(req),
            handshake: Some(handshake),
        }
    }
}

/// What a handshake holds until the node answers.
#[derive(Debug)]
pub struct Handshake {
    permit: BulkheadPermit,
    stats: Arc<RouteStats>,
    idle: Duration,
    /// The client's side, handed over once the 101 is written.
    client: Option<OnUpgrade>,
    conn: Option<Upgrading>,
}

impl Handshake {
    /// The node switched protocols: start the tunnel and give the client the 101.
    fn open(self, mut resp: Response<ProxyBody>) -> ProxyResult {
        let refused = |detail| Err(ProxyError::new(ErrorReason::UpstreamProtocol, detail));
        let node = resp.extensions_mut().remove::<NodeUpgrade>();
        let Some(node) = node.as_ref().and_then(NodeUpgrade::take) else {
            return refused("the node's 101 carries no upgraded connection");
        };
        let (Some(client), Some(conn)) = (self.client, self.conn) else {
            return Err(ProxyError::new(
                ErrorReason::BadUpgrade,
                "this client connection cannot be upgraded",
            ));
        };
        self.stats.tunnels.opened();
        let open = splice::Open {
            stats: self.stats,
            permit: self.permit,
            hold: conn.hold_tunnel(),
        };
        tokio::spawn(splice::run(client, node, self.idle, open));
        restore_handshake(resp.headers_mut(), HeaderValue::from_static("websocket"));
        Ok(resp)
    }
}

pin_project_lite::pin_project! {
    /// An ordinary request; a handshake waiting for the node; or a refusal.
    #[project = TunnelProj]
    pub enum TunnelFuture<F> {
        Plain { #[pin] fut: F },
        // Boxed: rare, and the stack's future is as large as its largest
        // state, moved whole at every layer above.
        Handshake { #[pin] fut: F, handshake: Option<Box<Handshake>> },
        Refused { error: Option<ProxyError> },
    }
}

impl<F> Future for TunnelFuture<F>
where
    F: Future<Output = ProxyResult>,
{
    type Output = ProxyResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ProxyResult> {
        match self.project() {
            TunnelProj::Plain { fut } => {
                // Looked at where it is, not moved out and back; a poll with
                // no answer yet is not moved at all (it is as large as one).
                let poll = fut.poll(cx);
                if poll.is_pending() {
                    return Poll::Pending;
                }
                if let Poll::Ready(Ok(resp)) = &poll {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        // Nothing asked for it; dropping the response closes
                        // the node connection it took over.
                        return Poll::Ready(Err(ProxyError::new(
                            ErrorReason::UpstreamProtocol,
                            "101 to a request that asked for no upgrade",
                        )));
                    }
                }
                poll
            }
            TunnelProj::Handshake { fut, handshake } => {
                let resp = ready!(fut.poll(cx))?;
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    // The node declined: its answer goes back as it is.
                    handshake.take();
                    return Poll::Ready(Ok(resp));
                }
                Poll::Ready(match handshake.take() {
                    Some(h) => h.open(resp),
                    None => Err(ProxyError::new(
                        ErrorReason::BadRequest,
                        "future polled after completion",
                    )),
                })
            }
            TunnelProj::Refused { error } => Poll::Ready(Err(super::taken(error))),
        }
    }
}
