//! levee-proxy: the data plane.
//!
//! It owns the client listener, the request path (a tower stack, [`stack`]),
//! the backends and their node sets ([`nodes`]: breakers, health, return
//! ramps, load estimates and keep-alive pools, which a reload carries over),
//! node selection, node names resolved off the data plane ([`dns`]), and
//! the one place where failures become HTTP responses ([`error`]). It never blocks on anything but its own bulkheads and
//! deadlines, and it publishes what it sees through `levee-telemetry`.
//!
//! A request's life (each line a layer of [`stack`], outermost first):
//! ```text
//! client ──accept (max_connections)──▶ [TLS handshake (handshake_timeout; h2 or http/1.1 by ALPN)]
//!        ──▶ connection task (header read / idle timeouts; HTTP/1 levee's own, HTTP/2 hyper's)
//!  gate (HTTP/1)    strict head syntax, limits and body framing on the raw bytes:
//!                   400 / 414 / 431 / 501 with a reason, the connection closed
//!  request id       keep a usable x-request-id or make one; echoed on every response
//!  edge             CONNECT 405 · HTTP/2: lines > max_headers 431 · target > max_uri_bytes 414 ·
//!                   head > max_header_bytes 431 · bad target form 400 · Host rules 400 bad-host ·
//!                   no route 404 · Content-Length > route's body limit 413 · header hygiene
//!                   deadline starts (route timeout, else backend timeout; total_timeout)
//!  rate limit       route's or client's token bucket empty ─▶ 429 rate-limited + Retry-After
//!  tunnel           WebSocket handshake: route's max_tunnels ─full─▶ 503 tunnel-limit;
//!                   node's 101 ─▶ a tunnel task splices both sockets (splice.rs), no slot held
//!  route bulkhead   ─┐ wait ≤ queue_timeout ──full──▶ 503 bulkhead-full + Retry-After
//!  choose backend    │ all nodes out ─▶ when_all_down: 503 no-healthy-node / failover / try_all
//!                    │ returning pool's ramp full ─▶ failover, or wait in its queue
//!  shed              │ normal/sheddable past their share of the current limit ─▶ 503 shed
//!  backend bulkhead ─┘
//!  retry            small bodies kept; another node when safe, within deadline and budget;
//!                   a streamed body past the route's limit aborts the node call ─▶ 413
//!  balance          NodeSet::pick (breaker per node × class, p2c_ewma) ··· NodeSet::record
//!  node call        pool / connect (connect_timeout) ──fail──▶ 502 upstream-connect
//!                   response headers by the deadline ──late──▶ 504 deadline (conn dropped)
//!                                                   ──reset──▶ 502 upstream-reset / -protocol
//! └ response body streams back (body idle timeout, total_timeout; a failure now cuts the
//!   client connection or resets the HTTP/2 stream);
//!   slots, in-flight gauges and the connection's activity are released when it ends
//! ```

pub mod access_log;
pub mod activity;
pub mod balancer;
pub mod body;
pub mod classes;
pub mod clock;
pub mod connection;
pub mod dns;
pub mod error;
mod find;
pub mod gate;
pub mod h1;
pub mod headers;
pub mod health;
pub mod node_io;
pub mod nodes;
mod parking;
pub mod pool;
pub mod routing;
pub mod server;
pub mod splice;
pub mod stack;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod woken;

pub use server::{bind_workers, shutdown_channel, ProxyServer, ServerHandle};
pub use state::{ProxyState, Shared};
