//! Raw structs -> typed [`Config`]: defaults applied, every rule checked.
//!
//! Rules are checked in file order and the first broken one is reported, with
//! the line of the key to change (or of its table header, when the key was
//! left at its default).

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use toml_edit::Document;

use crate::duration::{show, DurationText};
use crate::error::{ConfigError, Location};
use crate::locate::{line_of, render, Seg};
use crate::raw::{RawAdmin, RawBackend, RawConfig, RawLog, RawRoute, RawServer};
use crate::{
    AccessTarget, AdminConfig, BackendConfig, Config, Http2Limits, LoadBalancing, LogConfig,
    LogFormat, NodeAddr, Priority, RouteConfig, ServerConfig, WhenAllDown,
};

mod policy;
mod tls;

const SERVER_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const SERVER_MAX_CONNECTIONS: usize = 10_000;
const SERVER_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const SERVER_MAX_HEADER_BYTES: usize = 64 * 1024;
const SERVER_MIN_HEADER_BYTES: usize = 1024;
/// nginx's and Apache's request line limit (one 8 KiB header buffer).
const SERVER_MAX_URI_BYTES: usize = 8192;
const SERVER_MIN_URI_BYTES: usize = 256;
/// hyper answers longer HTTP/1 request targets itself, with a bare 414.
const SERVER_MAX_URI_BYTES_CAP: usize = 65_534;
/// hyper's own default and HAProxy's (101 with the request line).
const SERVER_MAX_HEADERS: usize = 100;
const SERVER_MIN_HEADERS: usize = 32;
/// hyper reserves room for twice this many headers for every request.
const SERVER_MAX_HEADERS_CAP: usize = 1000;
const SERVER_MAX_REQUEST_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// RFC 9113 §6.5.2 asks for at least 100; nginx allows 128, hyper 200.
const SERVER_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// The h2 crate's own default.
const SERVER_H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// hyper's own default.
const SERVER_H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
const SERVER_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// hyper's own default.
const SERVER_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

const ADMIN_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    9901,
));
const ADMIN_HEARTBEAT_STALE_AFTER: Duration = Duration::from_secs(2);
const ADMIN_MIN_HEARTBEAT_STALE_AFTER: Duration = Duration::from_millis(200);

const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKEND_TIMEOUT: Duration = Duration::from_secs(15);
const BACKEND_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const BACKEND_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const BACKEND_MAX_IN_FLIGHT: usize = 1024;
const ROUTE_MAX_TUNNELS: usize = 1024;
const BACKEND_MAX_QUEUE: usize = 128;
const BACKEND_QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
const BACKEND_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const BACKEND_POOL_MAX_IDLE_PER_NODE: usize = 1024;
const BACKEND_DNS_REFRESH: Duration = Duration::from_secs(5);
/// Shorter refreshes would put a resolver query on the wire several times a second per name.
const BACKEND_MIN_DNS_REFRESH: Duration = Duration::from_millis(100);
const BACKEND_SLOW_START: Duration = Duration::from_secs(30);
const BACKEND_MAX_EJECTED_PERCENT: u8 = 50;

/// Methods `http` knows by name; written in any case they are stored uppercase.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// What every check needs to build an error that points at the text.
pub(crate) struct Ctx<'a> {
    pub origin: &'a str,
    pub doc: &'a Document<&'a str>,
    /// Relative file paths in the config are resolved against this.
    pub dir: &'a std::path::Path,
}

impl Ctx<'_> {
    fn line(&self, path: &[Seg<'_>]) -> Option<usize> {
        line_of(self.doc, path)
    }

    fn invalid(&self, path: &[Seg<'_>], message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            at: Location {
                origin: self.origin.to_owned(),
                line: self.line(path),
                key: Some(render(path)),
            },
            message: message.into(),
        }
    }
}

/// Builds a key path below `base`: `at(&[Key("backend"), Index(0)], "name")`.
fn at<'a>(base: &[Seg<'a>], field: &'a str) -> Vec<Seg<'a>> {
    let mut path = base.to_vec();
    path.push(Seg::Key(field));
    path
}

/// Checks every rule and applies defaults; `version` is passed through to the result.
pub(crate) fn validate(
    raw: RawConfig,
    cx: &Ctx<'_>,
    version: String,
) -> Result<Config, ConfigError> {
    let server = server(cx, raw.server)?;
    let admin = admin(cx, raw.admin.as_ref())?;
    check_listeners_differ(cx, &server, &admin, raw.admin.as_ref())?;
    check_tls_listener_differs(cx, &server, &admin)?;
    let log = log(cx, raw.log.as_ref())?;

    if raw.backend.is_empty() {
        return Err(cx.invalid(
            &[Seg::Key("backend")],
            "at least one [[backend]] is required; add one with `name` and `nodes`, \
             e.g. [[backend]] name = \"app\" nodes = [\"127.0.0.1:9001\"]",
        ));
    }
    let mut backends = Vec::with_capacity(raw.backend.len());
    let mut backend_names: HashMap<String, usize> = HashMap::new();
    for (i, rb) in raw.backend.iter().enumerate() {
        let b = backend(cx, i, rb)?;
        if let Some(&first) = backend_names.get(&b.name) {
            let base = [Seg::Key("backend"), Seg::Index(i)];
            return Err(cx.invalid(
                &at(&base, "name"),
                format!(
                    "duplicate backend name \"{}\"{}; every backend needs its own name",
                    b.name,
                    first_defined(
                        cx,
                        &[Seg::Key("backend"), Seg::Index(first), Seg::Key("name")]
                    ),
                ),
            ));
        }
        backend_names.insert(b.name.clone(), i);
        backends.push(b);
    }
    policy::resolve_failover(cx, &mut backends, &backend_names)?;

    if raw.route.is_empty() {
        return Err(cx.invalid(
            &[Seg::Key("route")],
            "at least one [[route]] is required; add one with `path_prefix` and `backend`, \
             e.g. [[route]] path_prefix = \"/\" backend = \"app\"",
        ));
    }
    let mut routes = Vec::with_capacity(raw.route.len());
    let mut route_names: HashMap<String, usize> = HashMap::new();
    for (i, rr) in raw.route.iter().enumerate() {
        let r = route(
            cx,
            i,
            rr,
            &backends,
            &backend_names,
            server.max_request_body_bytes,
        )?;
        if let Some(&first) = route_names.get(&r.name) {
            let base = [Seg::Key("route"), Seg::Index(i)];
            return Err(cx.invalid(
                &at(&base, "name"),
                format!(
                    "duplicate route name \"{}\"{}; every route needs its own name \
                     (unnamed routes are called route-<index>)",
                    r.name,
                    first_defined(
                        cx,
                        &[Seg::Key("route"), Seg::Index(first), Seg::Key("name")]
                    ),
                ),
            ));
        }
        route_names.insert(r.name.clone(), i);
        routes.push(r);
    }

    Ok(Config {
        server,
        admin,
        log,
        backends,
        routes,
        version,
        origin: cx.origin.to_owned(),
    })
}

fn first_defined(cx: &Ctx<'_>, path: &[Seg<'_>]) -> String {
    match cx.line(path) {
        Some(line) => format!(" (first defined at line {line})"),
        None => String::new(),
    }
}

fn server(cx: &Ctx<'_>, raw: Option<RawServer>) -> Result<ServerConfig, ConfigError> {
    let base = [Seg::Key("server")];
    let Some(raw) = raw else {
        return Err(cx.invalid(
            &base,
            "the [server] table is required; add one with at least \
             `listen = \"127.0.0.1:8080\"`",
        ));
    };
    let listen = match &raw.listen {
        Some(text) => socket_addr(cx, &at(&base, "listen"), text, "127.0.0.1:8080")?,
        None => {
            return Err(cx.invalid(
                &at(&base, "listen"),
                "is required: the address the proxy accepts client traffic on, \
                 e.g. listen = \"127.0.0.1:8080\"",
            ))
        }
    };
    let tls = tls::server_tls(cx, raw.tls.as_ref())?;
    let max_header_bytes = at_least(
        cx,
        &at(&base, "max_header_bytes"),
        raw.max_header_bytes.unwrap_or(SERVER_MAX_HEADER_BYTES),
        SERVER_MIN_HEADER_BYTES,
        "smaller limits reject ordinary requests with 431",
    )?;
    Ok(ServerConfig {
        listen,
        header_read_timeout: positive(
            cx,
            &at(&base, "header_read_timeout"),
            raw.header_read_timeout,
            SERVER_HEADER_READ_TIMEOUT,
        )?,
        idle_timeout: positive(
            cx,
            &at(&base, "idle_timeout"),
            raw.idle_timeout,
            SERVER_IDLE_TIMEOUT,
        )?,
        max_connections: at_least(
            cx,
            &at(&base, "max_connections"),
            raw.max_connections.unwrap_or(SERVER_MAX_CONNECTIONS),
            1,
            "it caps concurrent client connections; 0 would refuse everyone",
        )?,
        shutdown_grace: positive(
            cx,
            &at(&base, "shutdown_grace"),
            raw.shutdown_grace,
            SERVER_SHUTDOWN_GRACE,
        )?,
        max_header_bytes,
        max_uri_bytes: max_uri_bytes(cx, &base, raw.max_uri_bytes, max_header_bytes)?,
        max_headers: at_most(
            cx,
            &at(&base, "max_headers"),
            at_least(
                cx,
                &at(&base, "max_headers"),
                raw.max_headers.unwrap_or(SERVER_MAX_HEADERS),
                SERVER_MIN_HEADERS,
                "browsers send 15 to 25 header lines; smaller limits reject ordinary \
                 requests with 431",
            )?,
            SERVER_MAX_HEADERS_CAP,
            "hyper reserves room for twice this many headers for every request",
        )?,
        max_request_body_bytes: body_limit(
            raw.max_request_body_bytes
                .unwrap_or(SERVER_MAX_REQUEST_BODY_BYTES),
        ),
        workers: at_most(
            cx,
            &at(&base, "workers"),
            raw.workers.unwrap_or(0),
            SERVER_MAX_WORKERS,
            "each worker is an OS thread with its own runtime; use 0 for one per CPU core",
        )?,
        tls,
        h2: h2_limits(cx, &base, &raw)?,
    })
}

/// The `h2_*` keys of `[server]`.
fn h2_limits(cx: &Ctx<'_>, base: &[Seg<'_>], raw: &RawServer) -> Result<Http2Limits, ConfigError> {
    Ok(Http2Limits {
        max_concurrent_streams: at_least(
            cx,
            &at(base, "h2_max_concurrent_streams"),
            raw.h2_max_concurrent_streams
                .unwrap_or(SERVER_H2_MAX_CONCURRENT_STREAMS),
            1,
            "0 would refuse every request on HTTP/2",
        )?,
        max_pending_accept_reset_streams: at_least(
            cx,
            &at(base, "h2_max_pending_accept_reset_streams"),
            raw.h2_max_pending_accept_reset_streams
                .unwrap_or(SERVER_H2_MAX_PENDING_ACCEPT_RESET_STREAMS),
            1,
            "0 would close a connection on its first cancelled request",
        )?,
        max_local_error_reset_streams: at_least(
            cx,
            &at(base, "h2_max_local_error_reset_streams"),
            raw.h2_max_local_error_reset_streams
                .unwrap_or(SERVER_H2_MAX_LOCAL_ERROR_RESET_STREAMS),
            1,
            "0 would close a connection on its first refused stream",
        )?,
        keep_alive_interval: positive(
            cx,
            &at(base, "h2_keep_alive_interval"),
            raw.h2_keep_alive_interval,
            SERVER_H2_KEEP_ALIVE_INTERVAL,
        )?,
        keep_alive_timeout: positive(
            cx,
            &at(base, "h2_keep_alive_timeout"),
            raw.h2_keep_alive_timeout,
            SERVER_H2_KEEP_ALIVE_TIMEOUT,
        )?,
    })
}

/// `server.max_uri_bytes`: the request target is part of the head, so it is
/// never allowed above `max_header_bytes` (its default shrinks to fit).
fn max_uri_bytes(
    cx: &Ctx<'_>,
    base: &[Seg<'_>],
    raw: Option<usize>,
    max_header_bytes: usize,
) -> Result<usize, ConfigError> {
    let Some(n) = raw else {
        return Ok(SERVER_MAX_URI_BYTES.min(max_header_bytes));
    };
    let path = at(base, "max_uri_bytes");
    let n = at_least(
        cx,
        &path,
        n,
        SERVER_MIN_URI_BYTES,
        "smaller limits reject ordinary requests with 414",
    )?;
    let n = at_most(
        cx,
        &path,
        n,
        SERVER_MAX_URI_BYTES_CAP,
        "hyper answers longer request targets itself, with a bare 414",
    )?;
    if n > max_header_bytes {
        return Err(cx.invalid(
            &path,
            format!(
                "{n} is more than max_header_bytes ({max_header_bytes}): the request target \
                 is part of the head, so a longer one would get 431 before this limit is \
                 reached; lower it or raise max_header_bytes"
            ),
        ));
    }
    Ok(n)
}

/// A body limit as written: 0 means no limit.
fn body_limit(bytes: u64) -> Option<u64> {
    (bytes > 0).then_some(bytes)
}

/// Most data-plane workers a config may ask for.
const SERVER_MAX_WORKERS: usize = 1024;

fn at_most<T: PartialOrd + Display>(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    value: T,
    max: T,
    why: &str,
) -> Result<T, ConfigError> {
    if value > max {
        Err(cx.invalid(path, format!("must be at most {max} ({why})")))
    } else {
        Ok(value)
    }
}

fn admin(cx: &Ctx<'_>, raw: Option<&RawAdmin>) -> Result<AdminConfig, ConfigError> {
    let base = [Seg::Key("admin")];
    let listen = match raw.and_then(|r| r.listen.as_deref()) {
        Some(text) => socket_addr(cx, &at(&base, "listen"), text, "127.0.0.1:9901")?,
        None => ADMIN_LISTEN,
    };
    let path = at(&base, "heartbeat_stale_after");
    let stale = positive(
        cx,
        &path,
        raw.and_then(|r| r.heartbeat_stale_after),
        ADMIN_HEARTBEAT_STALE_AFTER,
    )?;
    if stale < ADMIN_MIN_HEARTBEAT_STALE_AFTER {
        return Err(cx.invalid(
            &path,
            format!(
                "must be at least {} (it is {}): a shorter window makes /healthz \
                 flap on ordinary scheduling delays",
                show(ADMIN_MIN_HEARTBEAT_STALE_AFTER),
                show(stale),
            ),
        ));
    }
    Ok(AdminConfig {
        listen,
        heartbeat_stale_after: stale,
    })
}

fn log(cx: &Ctx<'_>, raw: Option<&RawLog>) -> Result<LogConfig, ConfigError> {
    let base = [Seg::Key("log")];
    let format = match raw.and_then(|r| r.format.as_deref()) {
        None | Some("pretty") => LogFormat::Pretty,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(cx.invalid(
                &at(&base, "format"),
                format!("unknown log format \"{other}\"; say \"pretty\" or \"json\""),
            ))
        }
    };
    let level = raw
        .and_then(|r| r.level.as_deref())
        .unwrap_or("info")
        .to_owned();
    if let Err(why) = check_log_filter(&level) {
        return Err(cx.invalid(
            &at(&base, "level"),
            format!(
                "{why}; say a level (off, error, warn, info, debug, trace) or \
                 target=level directives separated by commas, e.g. \"info,levee_proxy=debug\""
            ),
        ));
    }
    let access = match raw.and_then(|r| r.access.as_deref()) {
        None | Some("off") => AccessTarget::Off,
        Some("stdout") => AccessTarget::Stdout,
        Some("") => {
            return Err(cx.invalid(
                &at(&base, "access"),
                "empty; say \"off\", \"stdout\" or a file path",
            ))
        }
        Some(path) => AccessTarget::File(path.into()),
    };
    Ok(LogConfig {
        access,
        level,
        format,
    })
}

/// `log.level`: the part of `tracing`'s filter syntax that names levels and
/// targets (`info`, `warn,levee_proxy=debug`), so that the filter built
/// from it at start or on reload cannot fail.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l));
    if filter.trim().is_empty() {
        return Err("empty".to_owned());
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.split_once('=') {
            Some((target, level)) => {
                let target_ok = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'));
                if !target_ok {
                    return Err(format!("\"{directive}\" does not name a module target"));
                }
                level
            }
            None => directive,
        };
        if !is_level(level) {
            return Err(format!("\"{directive}\" has no level"));
        }
    }
    Ok(())
}

/// Two listeners on one address cannot both bind. Port 0 ("pick any free
/// port") is exempt: two such listeners get different ports.
fn check_listeners_differ(
    cx: &Ctx<'_>,
    server: &ServerConfig,
    admin: &AdminConfig,
    raw_admin: Option<&RawAdmin>,
) -> Result<(), ConfigError> {
    if server.listen != admin.listen || server.listen.port() == 0 {
        return Ok(());
    }
    if raw_admin.is_some_and(|a| a.listen.is_some()) {
        Err(cx.invalid(
            &[Seg::Key("admin"), Seg::Key("listen")],
            format!(
                "{} is also server.listen; the admin listener needs its own address \
                 (e.g. another port)",
                admin.listen
            ),
        ))
    } else {
        Err(cx.invalid(
            &[Seg::Key("server"), Seg::Key("listen")],
            format!(
                "{} is also the default admin.listen; pick another port here or set \
                 [admin] listen to a different address",
                server.listen
            ),
        ))
    }
}

/// The TLS listener needs an address of its own, like the admin listener.
fn check_tls_listener_differs(
    cx: &Ctx<'_>,
    server: &ServerConfig,
    admin: &AdminConfig,
) -> Result<(), ConfigError> {
    let Some(tls) = &server.tls else {
        return Ok(());
    };
    if tls.listen.port() == 0 {
        return Ok(());
    }
    let other = if tls.listen == server.listen {
        "server.listen"
    } else if tls.listen == admin.listen {
        "admin.listen"
    } else {
        return Ok(());
    };
    Err(cx.invalid(
        &[Seg::Key("server"), Seg::Key("tls"), Seg::Key("listen")],
        format!(
            "{} is also {other}; the TLS listener needs its own address (e.g. port 8443)",
            tls.listen
        ),
    ))
}

fn backend(cx: &Ctx<'_>, i: usize, raw: &RawBackend) -> Result<BackendConfig, ConfigError> {
    let base = [Seg::Key("backend"), Seg::Index(i)];
    let name = match &raw.name {
        Some(name) => {
            check_name(cx, &at(&base, "name"), name, "backend name")?;
            name.clone()
        }
        None => {
            return Err(cx.invalid(
                &at(&base, "name"),
                "is required: routes refer to a backend by name, e.g. name = \"app\"",
            ))
        }
    };
    let nodes = nodes(cx, &base, raw.nodes.as_deref())?;
    let dns_refresh = positive(
        cx,
        &at(&base, "dns_refresh"),
        raw.dns_refresh,
        BACKEND_DNS_REFRESH,
    )?;
    if dns_refresh < BACKEND_MIN_DNS_REFRESH {
        return Err(cx.invalid(
            &at(&base, "dns_refresh"),
            format!(
                "must be at least {} (it is {}): each refresh queries the resolver for every \
                 node name",
                show(BACKEND_MIN_DNS_REFRESH),
                show(dns_refresh)
            ),
        ));
    }

    let connect_timeout = positive(
        cx,
        &at(&base, "connect_timeout"),
        raw.connect_timeout,
        BACKEND_CONNECT_TIMEOUT,
    )?;
    let timeout = positive(cx, &at(&base, "timeout"), raw.timeout, BACKEND_TIMEOUT)?;
    let total_timeout = optional_positive(cx, &at(&base, "total_timeout"), raw.total_timeout)?;
    let body_idle_timeout = positive(
        cx,
        &at(&base, "body_idle_timeout"),
        raw.body_idle_timeout,
        BACKEND_BODY_IDLE_TIMEOUT,
    )?;
    let tunnel_idle_timeout = positive(
        cx,
        &at(&base, "tunnel_idle_timeout"),
        raw.tunnel_idle_timeout,
        BACKEND_TUNNEL_IDLE_TIMEOUT,
    )?;
    let max_in_flight = at_least(
        cx,
        &at(&base, "max_in_flight"),
        raw.max_in_flight.unwrap_or(BACKEND_MAX_IN_FLIGHT),
        1,
        "it bounds requests in flight to this backend",
    )?;
    let queue_timeout = positive(
        cx,
        &at(&base, "queue_timeout"),
        raw.queue_timeout,
        BACKEND_QUEUE_TIMEOUT,
    )?;
    let pool_idle_timeout = positive(
        cx,
        &at(&base, "pool_idle_timeout"),
        raw.pool_idle_timeout,
        BACKEND_POOL_IDLE_TIMEOUT,
    )?;

    let default = "the default";
    let timeout_side = Side {
        key: "timeout",
        value: timeout,
        set: raw.timeout.is_some(),
        source: default,
    };
    shorter(
        cx,
        &base,
        Side {
            key: "connect_timeout",
            value: connect_timeout,
            set: raw.connect_timeout.is_some(),
            source: default,
        },
        timeout_side,
        "the request deadline would pass before a connection could be made",
    )?;
    shorter(
        cx,
        &base,
        Side {
            key: "queue_timeout",
            value: queue_timeout,
            set: raw.queue_timeout.is_some(),
            source: default,
        },
        timeout_side,
        "a request would reach its deadline while still waiting in the queue",
    )?;

    let load_balancing = match &raw.load_balancing {
        Some(text) => choice(
            cx,
            &at(&base, "load_balancing"),
            text,
            &LoadBalancing::ALL,
            LoadBalancing::as_str,
            "load-balancing policy",
        )?,
        None => LoadBalancing::default(),
    };
    // Unlike other durations, "0s" is allowed here: it turns slow start off.
    let slow_start = raw.slow_start.map_or(BACKEND_SLOW_START, |d| d.0);
    let failover = raw.failover.clone();
    let failover_max_share =
        policy::failover_max_share(cx, &at(&base, "failover_max_share"), raw.failover_max_share)?;
    let when_all_down = when_all_down(cx, &base, raw)?;
    let max_ejected_percent = match raw.max_ejected_percent {
        Some(n) => policy::percent(
            cx,
            &at(&base, "max_ejected_percent"),
            n,
            "it is the share of nodes that error rates alone may eject",
        )?,
        None => BACKEND_MAX_EJECTED_PERCENT,
    };
    let breaker = policy::breaker(cx, &base, raw.breaker.as_ref(), timeout_side)?;
    let health_check = match &raw.health_check {
        Some(hc) => Some(policy::health_check(cx, &base, hc)?),
        None => None,
    };
    let retry = policy::retry(cx, &base, raw.retry.as_ref(), timeout_side)?;
    let shedding = policy::shedding(cx, &base, raw.shedding.as_ref())?;
    let (protocol, tls) = tls::upstream(cx, &base, raw)?;
    let drift = policy::drift(cx, &base, raw.drift.as_ref())?;
    let adaptive = policy::adaptive(cx, &base, raw.adaptive.as_ref(), max_in_flight)?;

    Ok(BackendConfig {
        name,
        nodes,
        dns_refresh,
        connect_timeout,
        timeout,
        total_timeout,
        body_idle_timeout,
        tunnel_idle_timeout,
        max_in_flight,
        max_queue: raw.max_queue.unwrap_or(BACKEND_MAX_QUEUE),
        queue_timeout,
        pool_idle_timeout,
        pool_max_idle_per_node: raw
            .pool_max_idle_per_node
            .unwrap_or(BACKEND_POOL_MAX_IDLE_PER_NODE),
        load_balancing,
        slow_start,
        failover,
        // Resolved once every backend is known.
        failover_index: None,
        failover_max_share,
        when_all_down,
        max_ejected_percent,
        breaker,
        health_check,
        retry,
        shedding,
        protocol,
        tls,
        drift,
        adaptive,
    })
}

/// `when_all_down`, whose default depends on whether `failover` is set.
fn when_all_down(
    cx: &Ctx<'_>,
    base: &[Seg<'_>],
    raw: &RawBackend,
) -> Result<WhenAllDown, ConfigError> {
    let path = at(base, "when_all_down");
    let Some(text) = &raw.when_all_down else {
        return Ok(if raw.failover.is_some() {
            WhenAllDown::Failover
        } else {
            WhenAllDown::Fail
        });
    };
    let choice = choice(
        cx,
        &path,
        text,
        &WhenAllDown::ALL,
        WhenAllDown::as_str,
        "when_all_down choice",
    )?;
    if choice == WhenAllDown::Failover && raw.failover.is_none() {
        return Err(cx.invalid(
            &path,
            "\"failover\" needs a backend to fail over to: add `failover = \"<other backend>\"` \
             to this backend, or choose \"fail\" or \"try_all\"",
        ));
    }
    Ok(choice)
}

fn nodes(
    cx: &Ctx<'_>,
    base: &[Seg<'_>],
    raw: Option<&[String]>,
) -> Result<Vec<NodeAddr>, ConfigError> {
    let path = at(base, "nodes");
    let Some(raw) = raw else {
        return Err(cx.invalid(
            &path,
            "is required: list the app nodes as \"ip:port\" or \"host:port\" strings, \
             e.g. nodes = [\"127.0.0.1:9001\"]",
        ));
    };
    if raw.is_empty() {
        return Err(cx.invalid(
            &path,
            "must list at least one node, e.g. nodes = [\"127.0.0.1:9001\"]",
        ));
    }
    let mut nodes: Vec<NodeAddr> = Vec::with_capacity(raw.len());
    for (j, text) in raw.iter().enumerate() {
        let mut node_path = path.clone();
        node_path.push(Seg::Index(j));
        let node = node_addr(cx, &node_path, text)?;
        if let Some(first) = nodes.iter().position(|n| *n == node) {
            return Err(cx.invalid(
                &node_path,
                format!(
                    "node {node} is listed twice (also nodes[{first}]); \
                     each node must appear once"
                ),
            ));
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// `ip:port`, or `host:port` with a DNS name: letters, digits, '-' and '_'
/// in dot-separated labels, the last one not all digits (so a mistyped
/// address is not taken for a name).
fn node_addr(cx: &Ctx<'_>, path: &[Seg<'_>], text: &str) -> Result<NodeAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(NodeAddr::Ip(addr));
    }
    let bad = || {
        cx.invalid(
            path,
            format!(
                "\"{text}\" is not an ip:port or host:port address; write e.g. \
                 \"127.0.0.1:9001\" or \"app.internal:9001\""
            ),
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    // A trailing dot (an absolute name, no search domains) is kept for the resolver.
    let labels = host.strip_suffix('.').unwrap_or(host);
    let labels_ok = !labels.is_empty()
        && labels.len() <= 253
        && labels.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    let numeric_tld = labels
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    if !labels_ok || numeric_tld {
        return Err(bad());
    }
    Ok(NodeAddr::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn route(
    cx: &Ctx<'_>,
    i: usize,
    raw: &RawRoute,
    backends: &[BackendConfig],
    backend_names: &HashMap<String, usize>,
    server_body_limit: Option<u64>,
) -> Result<RouteConfig, ConfigError> {
    let base = [Seg::Key("route"), Seg::Index(i)];
    let name = match &raw.name {
        Some(name) => {
            check_name(cx, &at(&base, "name"), name, "route name")?;
            name.clone()
        }
        None => format!("route-{i}"),
    };

    let path_prefix = match &raw.path_prefix {
        Some(p) if p.starts_with('/') => p.clone(),
        Some(p) => {
            return Err(cx.invalid(
                &at(&base, "path_prefix"),
                format!("\"{p}\" must start with '/', e.g. path_prefix = \"/{p}\""),
            ))
        }
        None => {
            return Err(cx.invalid(
                &at(&base, "path_prefix"),
                "is required: the request path prefix this route matches, \
                 e.g. path_prefix = \"/\" to match everything",
            ))
        }
    };

    let methods = match &raw.methods {
        Some(list) => Some(methods(cx, &at(&base, "methods"), list)?),
        None => None,
    };
    let host = match &raw.host {
        Some(h) => Some(host(cx, &at(&base, "host"), h)?),
        None => None,
    };

    let backend_path = at(&base, "backend");
    let Some(backend_name) = &raw.backend else {
        return Err(cx.invalid(
            &backend_path,
            format!(
                "is required: the [[backend]] this route sends to; defined backends: {}",
                names_of(backends)
            ),
        ));
    };
    let Some(&backend_index) = backend_names.get(backend_name) else {
        return Err(cx.invalid(
            &backend_path,
            format!(
                "no backend named \"{backend_name}\"; defined backends: {}",
                names_of(backends)
            ),
        ));
    };
    let Some(backend) = backends.get(backend_index) else {
        return Err(cx.invalid(&backend_path, "internal error: backend index out of range"));
    };

    let timeout = positive(cx, &at(&base, "timeout"), raw.timeout, backend.timeout)?;
    let total_timeout = optional_positive(cx, &at(&base, "total_timeout"), raw.total_timeout)?
        .or(backend.total_timeout);
    let queue_timeout = positive(
        cx,
        &at(&base, "queue_timeout"),
        raw.queue_timeout,
        backend.queue_timeout,
    )?;
    let inherited = format!("inherited from backend \"{}\"", backend.name);
    shorter(
        cx,
        &base,
        Side {
            key: "queue_timeout",
            value: queue_timeout,
            set: raw.queue_timeout.is_some(),
            source: &inherited,
        },
        Side {
            key: "timeout",
            value: timeout,
            set: raw.timeout.is_some(),
            source: &inherited,
        },
        "a request would reach its deadline while still waiting in the queue",
    )?;

    let max_in_flight = match raw.max_in_flight {
        None => None,
        Some(n) => {
            let path = at(&base, "max_in_flight");
            let n = at_least(
                cx,
                &path,
                n,
                1,
                "it bounds requests in flight on this route; remove the key for no route limit",
            )?;
            if n > backend.max_in_flight {
                return Err(cx.invalid(
                    &path,
                    format!(
                        "{n} is more than backend \"{}\" max_in_flight ({}): this route \
                         bulkhead could never fill; lower it or remove the key",
                        backend.name, backend.max_in_flight
                    ),
                ));
            }
            Some(n)
        }
    };

    let tunnel_idle_timeout = positive(
        cx,
        &at(&base, "tunnel_idle_timeout"),
        raw.tunnel_idle_timeout,
        backend.tunnel_idle_timeout,
    )?;
    let max_tunnels = at_least(
        cx,
        &at(&base, "max_tunnels"),
        raw.max_tunnels.unwrap_or(ROUTE_MAX_TUNNELS),
        1,
        "it bounds the WebSocket tunnels open on this route",
    )?;

    let priority = match &raw.priority {
        Some(text) => choice(
            cx,
            &at(&base, "priority"),
            text,
            &Priority::ALL,
            Priority::as_str,
            "priority",
        )?,
        None => Priority::default(),
    };
    let breaker_class = match &raw.breaker_class {
        Some(class) => {
            check_name(cx, &at(&base, "breaker_class"), class, "breaker class")?;
            Some(class.clone())
        }
        None => None,
    };
    let rate_limit = match &raw.rate_limit {
        Some(rl) => Some(policy::rate_limit(cx, &base, rl)?),
        None => None,
    };

    Ok(RouteConfig {
        name,
        path_prefix,
        methods,
        host,
        backend: backend.name.clone(),
        backend_index,
        timeout,
        total_timeout,
        max_in_flight,
        max_queue: raw.max_queue.unwrap_or(backend.max_queue),
        queue_timeout,
        priority,
        breaker_class,
        max_request_body_bytes: raw
            .max_request_body_bytes
            .map_or(server_body_limit, body_limit),
        tunnel_idle_timeout,
        max_tunnels,
        rate_limit,
    })
}

/// One of a fixed set of spellings (`as_str` of each of `all`); the error
/// lists them, and suggests one when only case or '-' versus '_' is off.
fn choice<T: Copy>(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    text: &str,
    all: &[T],
    as_str: fn(T) -> &'static str,
    what: &str,
) -> Result<T, ConfigError> {
    if let Some(&found) = all.iter().find(|&&c| as_str(c) == text) {
        return Ok(found);
    }
    let spelled: Vec<String> = all.iter().map(|&c| format!("\"{}\"", as_str(c))).collect();
    let normalised = text.trim().to_ascii_lowercase().replace(['-', ' '], "_");
    let hint = match all.iter().find(|&&c| as_str(c) == normalised) {
        Some(&c) => format!(" (did you mean \"{}\"?)", as_str(c)),
        None => String::new(),
    };
    Err(cx.invalid(
        path,
        format!(
            "\"{text}\" is not a {what}{hint}; write one of {}",
            spelled.join(", ")
        ),
    ))
}

fn names_of(backends: &[BackendConfig]) -> String {
    backends
        .iter()
        .map(|b| b.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn methods(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    list: &[String],
) -> Result<Vec<http::Method>, ConfigError> {
    if list.is_empty() {
        return Err(cx.invalid(
            path,
            "must list at least one method; remove the key to match every method",
        ));
    }
    let mut out: Vec<http::Method> = Vec::with_capacity(list.len());
    for (j, text) in list.iter().enumerate() {
        let mut item_path = path.to_vec();
        item_path.push(Seg::Index(j));
        let upper = text.to_ascii_uppercase();
        let token = if STANDARD_METHODS.contains(&upper.as_str()) {
            upper.as_str()
        } else {
            text.as_str()
        };
        let method = http::Method::from_bytes(token.as_bytes()).map_err(|_| {
            cx.invalid(
                &item_path,
                format!("\"{text}\" is not an HTTP method token; write e.g. \"GET\" or \"POST\""),
            )
        })?;
        if out.contains(&method) {
            return Err(cx.invalid(
                &item_path,
                format!("method {method} is listed twice; list each method once"),
            ));
        }
        out.push(method);
    }
    Ok(out)
}

/// Hosts are matched against the request's host without its port and
/// case-insensitively, so they are stored lowercase and may not carry a port.
fn host(cx: &Ctx<'_>, path: &[Seg<'_>], text: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        cx.invalid(
            path,
            format!("\"{text}\" {why}; write a bare host name such as \"api.example.com\""),
        )
    };
    if text.is_empty() {
        return Err(cx.invalid(
            path,
            "is empty; remove the key to match any host, \
             or write a host name such as \"api.example.com\"",
        ));
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c.is_control())
    {
        return Err(bad("contains characters a host name cannot have"));
    }
    let has_port = match text.strip_prefix('[') {
        Some(rest) => !rest.ends_with(']'),
        None => text.contains(':'),
    };
    if has_port {
        return Err(bad(
            "includes a port (hosts are matched without their port)",
        ));
    }
    Ok(text.to_ascii_lowercase())
}

/// Names become metric labels and log fields, so they stay plain.
fn check_name(cx: &Ctx<'_>, path: &[Seg<'_>], name: &str, what: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(cx.invalid(
            path,
            format!("{what} must not be empty; use letters, digits, '_', '.' or '-'"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(cx.invalid(
            path,
            format!(
                "{what} \"{name}\" contains {c:?}; use only letters, digits, '_', '.' \
                 or '-' (names become metric labels)"
            ),
        ));
    }
    Ok(())
}

fn socket_addr(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    text: &str,
    example: &str,
) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        cx.invalid(
            path,
            format!(
                "\"{text}\" is not an ip:port address; write e.g. \"{example}\" \
                 (host names are not supported yet)"
            ),
        )
    })
}

fn positive(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    value: Option<DurationText>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        Some(DurationText(d)) if d.is_zero() => Err(cx.invalid(
            path,
            "must be greater than zero; a zero duration would expire at once \
             (write e.g. \"100ms\" or \"1s\")",
        )),
        Some(DurationText(d)) => Ok(d),
        None => Ok(default),
    }
}

/// An optional duration: unset means off, set it must be > 0.
fn optional_positive(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    value: Option<DurationText>,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        Some(d) => positive(cx, path, Some(d), Duration::ZERO).map(Some),
        None => Ok(None),
    }
}

fn at_least<T: PartialOrd + Display>(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    value: T,
    min: T,
    why: &str,
) -> Result<T, ConfigError> {
    if value < min {
        Err(cx.invalid(path, format!("must be at least {min} ({why})")))
    } else {
        Ok(value)
    }
}

/// One duration in an ordering rule, and whether the file set it.
#[derive(Clone, Copy)]
struct Side<'a> {
    key: &'a str,
    value: Duration,
    set: bool,
    /// What to call the value when the file did not set it.
    source: &'a str,
}

impl Side<'_> {
    fn describe(&self) -> String {
        if self.set {
            show(self.value)
        } else {
            format!("{}, {}", show(self.value), self.source)
        }
    }
}

/// Requires `short < long`, blaming whichever key the file actually wrote
/// (preferring `short`), so the line points at something the operator can edit.
fn shorter(
    cx: &Ctx<'_>,
    base: &[Seg<'_>],
    short: Side<'_>,
    long: Side<'_>,
    why: &str,
) -> Result<(), ConfigError> {
    ordered(
        cx,
        Bound::new(base, short.key, short),
        Bound::new(base, long.key, long),
        Order::Shorter,
        why,
    )
}

/// A [`Side`] placed in the file: its table and how messages name it.
struct Bound<'p, 'a> {
    base: &'p [Seg<'a>],
    name: &'a str,
    side: Side<'a>,
}

impl<'p, 'a> Bound<'p, 'a> {
    fn new(base: &'p [Seg<'a>], name: &'a str, side: Side<'a>) -> Self {
        Self { base, name, side }
    }
}

/// How two durations must compare.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// `short < long`.
    Shorter,
    /// `short <= long`.
    NotLonger,
}

/// Requires `short` before `long` in `order`, blaming whichever key the file
/// wrote (preferring `short`), so the line points at something editable.
fn ordered(
    cx: &Ctx<'_>,
    short: Bound<'_, '_>,
    long: Bound<'_, '_>,
    order: Order,
    why: &str,
) -> Result<(), ConfigError> {
    let holds = match order {
        Order::Shorter => short.side.value < long.side.value,
        Order::NotLonger => short.side.value <= long.side.value,
    };
    if holds {
        return Ok(());
    }
    let (blamed, other, verb) = match (short.side.set || !long.side.set, order) {
        (true, Order::Shorter) => (&short, &long, "must be shorter than"),
        (true, Order::NotLonger) => (&short, &long, "must not be longer than"),
        (false, Order::Shorter) => (&long, &short, "must be longer than"),
        (false, Order::NotLonger) => (&long, &short, "must not be shorter than"),
    };
    Err(cx.invalid(
        &at(blamed.base, blamed.side.key),
        format!(
            "{} ({}) {verb} {} ({}): {why}",
            blamed.name,
            blamed.side.describe(),
            other.name,
            other.side.describe()
        ),
    ))
}
