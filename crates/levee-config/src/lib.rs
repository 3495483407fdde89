//! levee-config: the proxy's configuration, from TOML text to checked, typed values.
//!
//! ```text
//!   text ──toml_edit──▶ Document (spans, for line numbers)
//!     │                     │
//!     └──serde (toml)──▶ raw::RawConfig ──validate──▶ Config
//!                          every key optional        defaults applied,
//!                          unknown keys rejected     every rule checked
//! ```
//!
//! Every failure is a [`ConfigError`] that names the file, the line and the key
//! (`levee.toml:14: backend[0].max_in_flight: must be at least 1 (...)`), so an
//! operator can fix the file without reading this crate. `config/levee.toml`
//! in the repository documents every key, its default and its rule.

mod duration;
mod error;
mod locate;
mod policy;
mod raw;
mod tls;
mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml_edit::Document;

pub use error::{ConfigError, Location};
pub use policy::{
    AdaptiveConfig, BreakerConfig, DriftConfig, HealthCheckConfig, LoadBalancing, Priority,
    RateLimitConfig, RateLimitKey, RetryConfig, SheddingConfig, WhenAllDown,
};
pub use tls::{
    ServerTlsConfig, TlsCertificate, UpstreamProtocol, UpstreamTlsConfig, ALPN_H2, ALPN_HTTP1,
};

/// A fully validated configuration: every default applied, every cross-reference resolved.
///
/// Not `Eq`: backends carry `f64` shares (breaker rates, jitter, shedding).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `[server]`: the data-plane listener.
    pub server: ServerConfig,
    /// `[admin]`: the operator listener (`/status`, `/healthz`, `/metrics`).
    pub admin: AdminConfig,
    /// `[log]`: the access log and levee's own log.
    pub log: LogConfig,
    /// `[[backend]]` tables, in file order.
    pub backends: Vec<BackendConfig>,
    /// `[[route]]` tables, in file order (which is also match order).
    pub routes: Vec<RouteConfig>,
    /// 16 hex digits: FNV-1a 64 of the source text, so /status can say which config is live.
    pub version: String,
    /// Where it came from (file path as given, or `"<inline>"`), for messages.
    pub origin: String,
}

impl Config {
    /// The backend called `name`, if any.
    pub fn backend(&self, name: &str) -> Option<&BackendConfig> {
        self.backends.iter().find(|b| b.name == name)
    }
}

/// `[server]`: where clients connect and how long they may dawdle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address the proxy accepts client traffic on.
    pub listen: SocketAddr,
    /// Longest wait for a client's full request head (default 10s).
    pub header_read_timeout: Duration,
    /// Keep-alive client connections with no request for this long are closed (default 60s).
    pub idle_timeout: Duration,
    /// Cap on concurrent client connections (default 10000, at least 1).
    pub max_connections: usize,
    /// How long in-flight requests get to finish on shutdown (default 30s).
    pub shutdown_grace: Duration,
    /// Request heads bigger than this get 431 (default 64 KiB, at least 1024).
    pub max_header_bytes: usize,
    /// Request targets longer than this get 414 (default 8192, or
    /// `max_header_bytes` when smaller; 256 to min(`max_header_bytes`, 65534)).
    pub max_uri_bytes: usize,
    /// Requests with more header lines than this get 431 (default 100, 32 to 1000).
    pub max_headers: usize,
    /// Default request body limit of every route, in bytes; `None`: no limit
    /// (written as 0). Default 1 GiB.
    pub max_request_body_bytes: Option<u64>,
    /// Data-plane worker threads, each with its own runtime and listener
    /// (default 0 = one per CPU core).
    pub workers: usize,
    /// `[server.tls]`: a TLS listener beside the plain one; `None`: none.
    pub tls: Option<ServerTlsConfig>,
    /// What one HTTP/2 client connection may ask of levee.
    pub h2: Http2Limits,
}

/// The `h2_*` keys of `[server]`: limits that keep one HTTP/2 connection
/// from taking more than its share (RFC 9113 §10.5). The header list limit
/// follows `max_header_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// Streams open at once on one connection; more are refused with
    /// REFUSED_STREAM (default 100, at least 1).
    pub max_concurrent_streams: u32,
    /// Streams the client resets before levee has accepted them; one more
    /// and the connection gets GOAWAY ENHANCE_YOUR_CALM (rapid reset,
    /// CVE-2023-44487; default 20, at least 1).
    pub max_pending_accept_reset_streams: usize,
    /// Streams levee resets because the client broke the protocol; one more
    /// and the connection gets GOAWAY ENHANCE_YOUR_CALM (default 1024, at least 1).
    pub max_local_error_reset_streams: usize,
    /// A PING goes out after this long without a frame from the client (default 20s).
    pub keep_alive_interval: Duration,
    /// A PING not acknowledged within this closes the connection (default 20s).
    pub keep_alive_timeout: Duration,
}

/// `[admin]`: the operator endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address of the admin listener (default 127.0.0.1:9901).
    pub listen: SocketAddr,
    /// `/healthz` says 503 when the data-plane heartbeat is older than this (default 2s, >= 200ms).
    pub heartbeat_stale_after: Duration,
}

/// `[log]`: where the access log goes (one JSON line per request), and
/// what levee's own log (operational events, on stderr) lets through and
/// how it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub access: AccessTarget,
    /// A `tracing` filter: a level, or `target=level` directives separated
    /// by commas (default `"info"`). Checked here so that building the
    /// filter at start or on reload cannot fail.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            access: AccessTarget::Off,
            level: "info".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}

/// `log.format`: how levee's own log is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event; colours only on a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

/// `log.access`: `"off"` (the default), `"stdout"`, or a file path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessTarget {
    #[default]
    Off,
    Stdout,
    /// Appended to; reopened at the same path on SIGUSR1 (log rotation).
    File(std::path::PathBuf),
}

/// One `[[backend]]`: a pool of app nodes and the limits that protect it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Unique name; used by routes and as a metric label.
    pub name: String,
    /// App nodes as `ip:port` or `host:port`, no duplicates, at least one.
    pub nodes: Vec<NodeAddr>,
    /// How often `host:port` nodes are resolved again (default 5s).
    pub dns_refresh: Duration,
    /// Longest wait for a TCP connection to a node (default 1s).
    pub connect_timeout: Duration,
    /// Request deadline until response headers (default 15s).
    pub timeout: Duration,
    /// Deadline for the whole exchange, from arrival to the last response
    /// byte; `None` (the default): only `timeout` and `body_idle_timeout` bound it.
    pub total_timeout: Option<Duration>,
    /// Longest silence while streaming a body either way (default 30s).
    pub body_idle_timeout: Duration,
    /// Longest silence, both ways, of an upgraded connection (a WebSocket
    /// tunnel) before levee closes it (default 5m).
    pub tunnel_idle_timeout: Duration,
    /// Requests in flight to this backend at once (default 256, >= 1).
    pub max_in_flight: usize,
    /// Requests waiting for a slot (default 128); 0 means refuse at once when full.
    pub max_queue: usize,
    /// Longest wait in the queue (default 100ms).
    pub queue_timeout: Duration,
    /// Idle keep-alive connections to a node are closed after this (default 90s).
    pub pool_idle_timeout: Duration,
    /// Idle keep-alive connections each worker keeps per node (default 1024;
    /// 0 disables reuse).
    pub pool_max_idle_per_node: usize,
    /// How a node is picked for each request (default [`LoadBalancing::P2cEwma`]).
    pub load_balancing: LoadBalancing,
    /// Ramp-up of traffic to a new or returning node (default 30s);
    /// [`Duration::ZERO`] means off.
    pub slow_start: Duration,
    /// Name of the backend to fail over to, if any; never this backend, and
    /// failover chains never loop.
    pub failover: Option<String>,
    /// Index of [`BackendConfig::failover`] in [`Config::backends`].
    pub failover_index: Option<usize>,
    /// Share (`0 < x <= 1`, default 1.0) of this backend's concurrency limit
    /// that requests failed over to it from other backends may fill: its
    /// failover budget. Past their priority's part of it they are shed.
    pub failover_max_share: f64,
    /// What to do when no node is available (default `Failover` when
    /// `failover` is set, else `Fail`); `Failover` implies `failover` is set.
    pub when_all_down: WhenAllDown,
    /// Largest share of nodes (0..=100 %) that error rates alone may eject (default 50).
    pub max_ejected_percent: u8,
    /// Per-node, per-traffic-class circuit breaker (`[backend.breaker]`).
    pub breaker: BreakerConfig,
    /// Active health checks (`[backend.health_check]`); `None`: no probes.
    pub health_check: Option<HealthCheckConfig>,
    /// Retries under a budget (`[backend.retry]`).
    pub retry: RetryConfig,
    /// Priority shedding thresholds (`[backend.shedding]`).
    pub shedding: SheddingConfig,
    /// HTTP/1.1 or HTTP/2 to the nodes (default HTTP/1.1).
    pub protocol: UpstreamProtocol,
    /// TLS to the nodes (`tls = true`); `None`: plain TCP.
    pub tls: Option<UpstreamTlsConfig>,
    /// Drift alarm thresholds (`[backend.drift]`).
    pub drift: DriftConfig,
    /// Adaptive concurrency and the return ramp's shape (`[backend.adaptive]`).
    pub adaptive: AdaptiveConfig,
}

/// A node as written in the config: an address, or a name that levee
/// resolves (and re-resolves) to any number of addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeAddr {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl NodeAddr {
    /// The address, for a node written as `ip:port`.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            NodeAddr::Ip(addr) => Some(*addr),
            NodeAddr::Name { .. } => None,
        }
    }
}

impl From<SocketAddr> for NodeAddr {
    fn from(addr: SocketAddr) -> Self {
        NodeAddr::Ip(addr)
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeAddr::Ip(addr) => addr.fmt(f),
            NodeAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One `[[route]]`: which requests go to which backend, with what limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Unique name (default `route-{index}`); a metric label.
    pub name: String,
    /// Request paths starting with this match; always starts with '/'.
    pub path_prefix: String,
    /// Methods this route matches; `None` matches every method. Standard ones are uppercase.
    pub methods: Option<Vec<http::Method>>,
    /// Host this route matches, lowercase and without port; `None` matches any host.
    pub host: Option<String>,
    /// Name of the backend requests go to.
    pub backend: String,
    /// Index of that backend in [`Config::backends`].
    pub backend_index: usize,
    /// Request deadline until response headers (defaults to the backend's).
    pub timeout: Duration,
    /// Deadline for the whole exchange (defaults to the backend's).
    pub total_timeout: Option<Duration>,
    /// Route bulkhead; `None` means only the backend limit applies.
    pub max_in_flight: Option<usize>,
    /// Requests waiting for a route slot (defaults to the backend's).
    pub max_queue: usize,
    /// Longest wait for a route slot (defaults to the backend's).
    pub queue_timeout: Duration,
    /// Bodies bigger than this get 413 (defaults to
    /// `server.max_request_body_bytes`); `None`: no limit (written as 0).
    pub max_request_body_bytes: Option<u64>,
    /// Longest silence of this route's tunnels (defaults to the backend's).
    pub tunnel_idle_timeout: Duration,
    /// WebSocket tunnels open on this route at once (default 1024, >= 1);
    /// they hold no bulkhead slot once established.
    pub max_tunnels: usize,
    /// Which requests are shed first under load (default [`Priority::Normal`]).
    pub priority: Priority,
    /// Circuit-breaker traffic class; `None` means the proxy picks `"safe"`
    /// for GET/HEAD/OPTIONS and `"unsafe"` otherwise.
    pub breaker_class: Option<String>,
    /// Token buckets (`[route.rate_limit]`); `None`: no rate limit.
    pub rate_limit: Option<RateLimitConfig>,
}

/// Reads and validates the file at `path`; errors name the path as given.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        origin: origin.clone(),
        source,
    })?;
    parse(&text, &origin)
}

/// Validates `text`; `origin` names it in messages (a path, or `"<inline>"`).
/// Relative certificate and key paths are resolved against `origin`'s
/// directory (the working directory for `"<inline>"`), and every such file
/// is read now.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    // toml_edit first: it rejects bad syntax and keeps the spans needed to
    // point later errors at a line.
    let doc = Document::parse(text).map_err(|e| ConfigError::Syntax {
        at: Location {
            origin: origin.to_owned(),
            line: e.span().map(|s| locate::line_at(text, s.start)),
            key: None,
        },
        message: e.message().to_owned(),
    })?;
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| shape_error(&e, &doc, origin))?;
    let dir = match origin {
        "<inline>" => Path::new(""),
        path => Path::new(path).parent().unwrap_or(Path::new("")),
    };
    let cx = validate::Ctx {
        origin,
        doc: &doc,
        dir,
    };
    validate::validate(raw, &cx, fingerprint(text))
}

/// Turns a serde error into one that names the key and line.
fn shape_error(e: &toml::de::Error, doc: &Document<&str>, origin: &str) -> ConfigError {
    let start = e.span().map(|s| s.start);
    let key = start.and_then(|offset| locate::path_at(doc, offset));
    let mut message = e.message().to_owned();
    if matches!(key.as_deref(), Some("backend" | "route")) && message.contains("sequence") {
        let section = key.as_deref().unwrap_or_default();
        message.push_str(&format!(
            "; write [[{section}]] (double brackets) for each {section}"
        ));
    }
    ConfigError::Shape {
        at: Location {
            origin: origin.to_owned(),
            line: start.map(|offset| locate::line_at(doc.raw(), offset)),
            key,
        },
        message,
    }
}

/// FNV-1a 64 of the text as 16 hex digits: cheap, stable across builds and platforms.
fn fingerprint(text: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = text
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}
