//! What a node does with the requests it receives, and the `--mode` grammar
//! that names a behaviour on the command line.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Size of the body a node sends when a behaviour does not say otherwise
/// (`healthy`, `slow:250ms`, `loaded`, and the non-failing answers of `status`).
pub const DEFAULT_BODY_BYTES: usize = 2;

/// How an [`AppNode`](crate::AppNode) answers. Each variant models one way a
/// production app node behaves (or misbehaves); switch between them at run
/// time with [`AppNode::set_behavior`](crate::AppNode::set_behavior).
///
/// Every answer carries the header `x-node: <name>`.
#[derive(Clone, Debug, PartialEq)]
pub enum Behavior {
    /// 200 with a body of `body_bytes` bytes (streamed in 16 KiB chunks,
    /// generated, never held whole in memory). Response has header
    /// `x-node: <name>`.
    ///
    /// Models a node that works: the baseline every failure is compared with.
    Healthy { body_bytes: usize },
    /// 200 echoing the request body back, streamed chunk by chunk as it
    /// arrives (for streaming tests in both directions).
    ///
    /// Models an upload/download endpoint that neither buffers requests nor
    /// responses, so a proxy that buffers either side shows up in tests.
    Echo,
    /// Answer `code` to a share of requests (share in `0.0..=1.0`, 1.0 = all),
    /// optionally only for the listed methods; other requests are answered as
    /// `Healthy { body_bytes: 2 }`.
    ///
    /// Models a node that fails some requests quickly, e.g. a node writing to
    /// a read-only replica: 500 on POST only while reads keep working, or a
    /// flaky dependency failing 10% of calls. A `code` that is not a final
    /// status (outside `200..=999`) is answered as 500.
    Status {
        code: u16,
        share: f64,
        methods: Option<Vec<http::Method>>,
    },
    /// Reads the whole request, never answers, keeps the connection open.
    ///
    /// Models a write hung on a database (a lock wait, a full connection
    /// pool): the TCP connection is healthy, the answer never comes. The
    /// connection is released when the client goes away or the node stops.
    Stuck,
    /// Like `Stuck` for the listed methods; other requests are answered as
    /// `Healthy { body_bytes: 2 }`.
    ///
    /// Models the Exalate incident: after a database failover the node can
    /// still read but every write hangs, so the requests that carry writes
    /// hang while reads keep working.
    StuckOn { methods: Vec<http::Method> },
    /// Answers like `Healthy { body_bytes }` after `delay`.
    ///
    /// Models a node that is overloaded or doing a slow query: it answers,
    /// but late (the case timeouts and hedging exist for).
    Slow { delay: Duration, body_bytes: usize },
    /// Answers like `Healthy { body_bytes }` after `base + per_in_flight × n`,
    /// where `n` is the number of other requests the node was answering when
    /// this one arrived (see [`NodeStats::in_flight`](crate::NodeStats::in_flight)).
    ///
    /// Models a node that slows down under load (a shared CPU, a database
    /// connection pool, lock contention): alone it answers in `base`, and
    /// every request sent on top of what it already handles makes the next
    /// one later, so a caller that keeps adding concurrency only adds
    /// latency. The case adaptive concurrency limits exist for.
    Loaded {
        base: Duration,
        per_in_flight: Duration,
        body_bytes: usize,
    },
    /// Sends headers at once, then `chunks` chunks of `chunk_bytes` bytes,
    /// waiting `interval` before each.
    ///
    /// Models a node that trickles its answer (a slow report, a paging
    /// export, a GC-stalled process): headers arrive in time, the body does
    /// not, so only an idle/body timeout catches it.
    Drip {
        chunks: usize,
        chunk_bytes: usize,
        interval: Duration,
    },
    /// Reads the request, writes a partial status line/headers
    /// (`"HTTP/1.1 200 OK\r\nContent-Le"`), then closes the socket with a
    /// TCP reset (`SO_LINGER` 0).
    ///
    /// Models a process that crashes (OOM kill, segfault, abrupt restart)
    /// while writing its answer: the proxy cannot know whether the request
    /// had an effect.
    ResetMidHeaders,
    /// Sends full headers with `Content-Length: total_bytes`, then
    /// `after_bytes` bytes of body, then resets the connection.
    ///
    /// Models a node dying while streaming a large answer: the status was
    /// 200 but the body is truncated, which the proxy must not pass off as
    /// complete. `after_bytes` is capped to `total_bytes - 1`, so the body is
    /// always cut short. The node waits until its `after_bytes` are written to
    /// the socket before resetting; like after a real crash, whatever the
    /// kernel has not delivered yet (because the client reads slowly) is lost,
    /// so a slow reader may see fewer bytes.
    ResetMidBody {
        total_bytes: usize,
        after_bytes: usize,
    },
    /// A WebSocket echo endpoint: a WebSocket handshake (GET with
    /// `Connection: upgrade`, `Upgrade: websocket` and a
    /// `Sec-WebSocket-Key`) is answered `101 Switching Protocols`, then every
    /// text and binary message is sent back as it came and a close is
    /// answered with a close. Any other request is answered as
    /// `Healthy { body_bytes: 2 }`. Stopping the node (or switching it to
    /// `Refuse`) drops its tunnels without a close frame.
    ///
    /// Models a chat or live-update service behind the proxy, and (when
    /// stopped mid-tunnel) one that crashes with sockets open.
    WebSocketEcho,
    /// The port refuses connections: the listener is closed (and open
    /// connections are closed). Switching to another behaviour re-binds the
    /// same port.
    ///
    /// Models a node that is down (process stopped, container restarting,
    /// deploy in progress): connecting fails at once.
    Refuse,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior::Healthy {
            body_bytes: DEFAULT_BODY_BYTES,
        }
    }
}

/// `true` for a share of calls: always for `share >= 1.0`, never for
/// `share <= 0.0` (or NaN), otherwise at random with probability `share`.
pub fn share_hits(share: f64) -> bool {
    if share >= 1.0 {
        true
    } else if share > 0.0 {
        fastrand::f64() < share
    } else {
        false
    }
}

/// Why a `--mode` string is not a [`Behavior`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseBehaviorError {
    #[error("unknown mode `{0}` (expected healthy, echo, websocket, status, stuck, slow, loaded, drip, reset-headers, reset-body or refuse)")]
    UnknownMode(String),
    #[error("mode `{mode}`: expected `{usage}`")]
    Arity {
        mode: &'static str,
        usage: &'static str,
    },
    #[error("invalid size `{0}` (expected bytes, optionally with a k or m suffix: 512, 16k, 1m)")]
    Size(String),
    #[error("invalid duration `{0}` (expected a number with a us, ms or s suffix: 250ms, 1.5s)")]
    Duration(String),
    #[error("invalid status code `{0}` (expected 200..=999)")]
    StatusCode(String),
    #[error("invalid share `{0}` (expected a number in 0.0..=1.0)")]
    Share(String),
    #[error("invalid method `{0}`")]
    Method(String),
    #[error("reset-body: AFTER ({after}) must be smaller than TOTAL ({total})")]
    ResetAfterTooLarge { total: usize, after: usize },
}

/// Parses the `--mode` grammar of `levee-node`:
///
/// | mode | behaviour |
/// |------|-----------|
/// | `healthy[:BYTES]` | [`Behavior::Healthy`] (default 2 bytes) |
/// | `echo` | [`Behavior::Echo`] |
/// | `websocket` | [`Behavior::WebSocketEcho`] |
/// | `status:CODE[:SHARE[:METHODS]]` | [`Behavior::Status`], SHARE default 1.0, METHODS comma-separated (`POST,PUT`) or `*` for all |
/// | `stuck[:METHODS]` | [`Behavior::Stuck`], or [`Behavior::StuckOn`] with METHODS (`POST,PUT`) |
/// | `slow:DURATION[:BYTES]` | [`Behavior::Slow`] |
/// | `loaded:BASE:PER_INFLIGHT[:BYTES]` | [`Behavior::Loaded`]: `BASE` + `PER_INFLIGHT` per request already in flight |
/// | `drip:CHUNKS:BYTES:INTERVAL` | [`Behavior::Drip`] |
/// | `reset-headers` | [`Behavior::ResetMidHeaders`] |
/// | `reset-body:TOTAL:AFTER` | [`Behavior::ResetMidBody`] (AFTER < TOTAL) |
/// | `refuse` | [`Behavior::Refuse`] |
///
/// BYTES accept a `k` or `m` suffix (KiB, MiB); DURATION needs a `us`, `ms`
/// or `s` suffix (`250ms`, `1.5s`). Mode names are case-insensitive.
/// [`Display`](fmt::Display) writes the same grammar back.
impl FromStr for Behavior {
    type Err = ParseBehaviorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut parts = s.split(':');
        let mode = parts.next().unwrap_or_default().to_ascii_lowercase();
        let args: Vec<&str> = parts.map(str::trim).collect();
        let arity = |mode: &'static str, usage: &'static str, min: usize, max: usize| {
            if args.len() < min || args.len() > max {
                Err(ParseBehaviorError::Arity { mode, usage })
            } else {
                Ok(())
            }
        };
        match mode.as_str() {
            "healthy" => {
                arity("healthy", "healthy[:BYTES]", 0, 1)?;
                let body_bytes = match args.first() {
                    Some(bytes) => parse_size(bytes)?,
                    None => DEFAULT_BODY_BYTES,
                };
                Ok(Behavior::Healthy { body_bytes })
            }
            "echo" => {
                arity("echo", "echo", 0, 0)?;
                Ok(Behavior::Echo)
            }
            "websocket" => {
                arity("websocket", "websocket", 0, 0)?;
                Ok(Behavior::WebSocketEcho)
            }
            "status" => {
                arity("status", "status:CODE[:SHARE[:METHODS]]", 1, 3)?;
                let code = parse_status(args[0])?;
                let share = match args.get(1) {
                    Some(share) => parse_share(share)?,
                    None => 1.0,
                };
                let methods = match args.get(2) {
                    Some(methods) => parse_methods(methods)?,
                    None => None,
                };
                Ok(Behavior::Status {
                    code,
                    share,
                    methods,
                })
            }
            "stuck" => {
                arity("stuck", "stuck[:METHODS]", 0, 1)?;
                match args.first() {
                    Some(methods) => match parse_methods(methods)? {
                        Some(methods) => Ok(Behavior::StuckOn { methods }),
                        None => Ok(Behavior::Stuck),
                    },
                    None => Ok(Behavior::Stuck),
                }
            }
            "slow" => {
                arity("slow", "slow:DURATION[:BYTES]", 1, 2)?;
                let delay = parse_duration(args[0])?;
                let body_bytes = match args.get(1) {
                    Some(bytes) => parse_size(bytes)?,
                    None => DEFAULT_BODY_BYTES,
                };
                Ok(Behavior::Slow { delay, body_bytes })
            }
            "loaded" => {
                arity("loaded", "loaded:BASE:PER_INFLIGHT[:BYTES]", 2, 3)?;
                let body_bytes = match args.get(2) {
                    Some(bytes) => parse_size(bytes)?,
                    None => DEFAULT_BODY_BYTES,
                };
                Ok(Behavior::Loaded {
                    base: parse_duration(args[0])?,
                    per_in_flight: parse_duration(args[1])?,
                    body_bytes,
                })
            }
            "drip" => {
                arity("drip", "drip:CHUNKS:BYTES:INTERVAL", 3, 3)?;
                Ok(Behavior::Drip {
                    chunks: parse_size(args[0])?,
                    chunk_bytes: parse_size(args[1])?,
                    interval: parse_duration(args[2])?,
                })
            }
            "reset-headers" => {
                arity("reset-headers", "reset-headers", 0, 0)?;
                Ok(Behavior::ResetMidHeaders)
            }
            "reset-body" => {
                arity("reset-body", "reset-body:TOTAL:AFTER", 2, 2)?;
                let total = parse_size(args[0])?;
                let after = parse_size(args[1])?;
                if after >= total {
                    return Err(ParseBehaviorError::ResetAfterTooLarge { total, after });
                }
                Ok(Behavior::ResetMidBody {
                    total_bytes: total,
                    after_bytes: after,
                })
            }
            "refuse" => {
                arity("refuse", "refuse", 0, 0)?;
                Ok(Behavior::Refuse)
            }
            _ => Err(ParseBehaviorError::UnknownMode(s.to_owned())),
        }
    }
}

/// Writes the `--mode` grammar accepted by [`FromStr`], e.g. `status:500:1:POST`.
impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behavior::Healthy { body_bytes } => write!(f, "healthy:{body_bytes}"),
            Behavior::Echo => f.write_str("echo"),
            Behavior::WebSocketEcho => f.write_str("websocket"),
            Behavior::Status {
                code,
                share,
                methods,
            } => {
                write!(f, "status:{code}:{share}")?;
                if let Some(methods) = methods {
                    f.write_str(":")?;
                    for (i, method) in methods.iter().enumerate() {
                        if i > 0 {
                            f.write_str(",")?;
                        }
                        f.write_str(method.as_str())?;
                    }
                }
                Ok(())
            }
            Behavior::Stuck => f.write_str("stuck"),
            Behavior::StuckOn { methods } => {
                f.write_str("stuck:")?;
                for (i, method) in methods.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(method.as_str())?;
                }
                Ok(())
            }
            Behavior::Slow { delay, body_bytes } => {
                write!(f, "slow:{}:{body_bytes}", DisplayDuration(*delay))
            }
            Behavior::Loaded {
                base,
                per_in_flight,
                body_bytes,
            } => write!(
                f,
                "loaded:{}:{}:{body_bytes}",
                DisplayDuration(*base),
                DisplayDuration(*per_in_flight)
            ),
            Behavior::Drip {
                chunks,
                chunk_bytes,
                interval,
            } => write!(
                f,
                "drip:{chunks}:{chunk_bytes}:{}",
                DisplayDuration(*interval)
            ),
            Behavior::ResetMidHeaders => f.write_str("reset-headers"),
            Behavior::ResetMidBody {
                total_bytes,
                after_bytes,
            } => write!(f, "reset-body:{total_bytes}:{after_bytes}"),
            Behavior::Refuse => f.write_str("refuse"),
        }
    }
}

/// Writes a duration in the largest of s/ms/us that keeps it exact.
struct DisplayDuration(Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        if micros.is_multiple_of(1_000_000) {
            write!(f, "{}s", micros / 1_000_000)
        } else if micros.is_multiple_of(1_000) {
            write!(f, "{}ms", micros / 1_000)
        } else {
            write!(f, "{micros}us")
        }
    }
}

/// `512`, `16k` (KiB), `1m` (MiB); `kib`/`mib` are accepted too.
fn parse_size(s: &str) -> Result<usize, ParseBehaviorError> {
    let err = || ParseBehaviorError::Size(s.to_owned());
    let lower = s.trim().to_ascii_lowercase();
    let (digits, multiplier) = if let Some(d) = lower
        .strip_suffix("kib")
        .or_else(|| lower.strip_suffix('k'))
    {
        (d, 1024)
    } else if let Some(d) = lower
        .strip_suffix("mib")
        .or_else(|| lower.strip_suffix('m'))
    {
        (d, 1024 * 1024)
    } else {
        (lower.as_str(), 1)
    };
    let n: usize = digits.trim().parse().map_err(|_| err())?;
    n.checked_mul(multiplier).ok_or_else(err)
}

/// `250ms`, `1.5s`, `800us`.
fn parse_duration(s: &str) -> Result<Duration, ParseBehaviorError> {
    let err = || ParseBehaviorError::Duration(s.to_owned());
    let lower = s.trim().to_ascii_lowercase();
    let (number, unit_secs) = if let Some(n) = lower.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = lower.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = lower.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(err());
    };
    let number = number.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    // Whole numbers are converted exactly; fractions go through f64.
    if let Ok(whole) = number.parse::<u64>() {
        return Ok(if unit_secs == 1.0 {
            Duration::from_secs(whole)
        } else if unit_secs == 1e-3 {
            Duration::from_millis(whole)
        } else {
            Duration::from_micros(whole)
        });
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    Duration::try_from_secs_f64(value * unit_secs).map_err(|_| err())
}

fn parse_status(s: &str) -> Result<u16, ParseBehaviorError> {
    let err = || ParseBehaviorError::StatusCode(s.to_owned());
    let code: u16 = s.parse().map_err(|_| err())?;
    match http::StatusCode::from_u16(code) {
        Ok(status) if !status.is_informational() => Ok(code),
        _ => Err(err()),
    }
}

fn parse_share(s: &str) -> Result<f64, ParseBehaviorError> {
    let share: f64 = s
        .parse()
        .map_err(|_| ParseBehaviorError::Share(s.to_owned()))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(ParseBehaviorError::Share(s.to_owned()))
    }
}

/// `POST,PUT` (upper-cased), or `*` / empty for every method.
fn parse_methods(s: &str) -> Result<Option<Vec<http::Method>>, ParseBehaviorError> {
    if s.is_empty() || s == "*" {
        return Ok(None);
    }
    s.split(',')
        .map(|m| {
            let m = m.trim().to_ascii_uppercase();
            http::Method::from_bytes(m.as_bytes()).map_err(|_| ParseBehaviorError::Method(m))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
#[path = "behavior_tests.rs"]
mod tests;
