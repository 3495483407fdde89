//! Rules of a backend's resilience tables: `[backend.breaker]`,
//! `[backend.health_check]`, `[backend.retry]`, `[backend.shedding]`,
//! `[backend.drift]`, `[backend.adaptive]`, of `failover` across backends, and of a route's
//! `[route.rate_limit]`.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::error::ConfigError;
use crate::locate::Seg;
use crate::raw::{
    RawAdaptive, RawBreaker, RawDrift, RawHealthCheck, RawRateLimit, RawRetry, RawShedding,
};
use crate::{
    AdaptiveConfig, BackendConfig, BreakerConfig, DriftConfig, HealthCheckConfig, RateLimitConfig,
    RateLimitKey, RetryConfig, SheddingConfig,
};

use super::{at, at_least, names_of, ordered, positive, show, Bound, Ctx, Order, Side};

const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const HEALTH_JITTER: f64 = 0.1;
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const HEALTH_UNHEALTHY_AFTER: u32 = 3;
const HEALTH_HEALTHY_AFTER: u32 = 2;
const HEALTH_EXPECT_STATUSES: RangeInclusive<u16> = 200..=299;

const BREAKER_MAX_WINDOW_SECS: u64 = 60;

/// The drift watch ticks once a second, so a shorter window spans nothing.
const DRIFT_MIN_WINDOW: Duration = Duration::from_secs(1);

const RATE_LIMIT_MAX_KEYS: usize = 100_000;
/// A token every nanosecond: governor's finest period.
const RATE_LIMIT_MAX_PER_SECOND: f64 = 1e9;

/// Which values a share (a fraction of 1) may take.
#[derive(Clone, Copy)]
enum Share {
    /// `0 < x <= 1`: a rate that must be able to trigger.
    Positive,
    /// `0 <= x <= 1`: a spread, where 0 means none.
    Any,
}

fn share(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    value: Option<f64>,
    default: f64,
    kind: Share,
    what: &str,
) -> Result<f64, ConfigError> {
    let Some(x) = value else { return Ok(default) };
    // Written so that NaN fails both checks.
    match kind {
        Share::Positive if !(x > 0.0 && x <= 1.0) => Err(cx.invalid(
            path,
            format!(
                "must be greater than 0 and at most 1 (it is {x}): {what}; \
                 write a fraction such as 0.5 for half"
            ),
        )),
        Share::Any if !(0.0..=1.0).contains(&x) => Err(cx.invalid(
            path,
            format!(
                "must be between 0.0 and 1.0 (it is {x}): {what}; \
                 write a fraction such as 0.2 for 20%"
            ),
        )),
        _ => Ok(x),
    }
}

/// A percentage `0..=100`.
pub(super) fn percent(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    n: i64,
    why: &str,
) -> Result<u8, ConfigError> {
    match u8::try_from(n) {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(cx.invalid(
            path,
            format!("must be a percentage from 0 to 100 (it is {n}): {why}"),
        )),
    }
}

/// What a status list may hold.
#[derive(Clone, Copy)]
enum Statuses<'a> {
    /// Server errors only (500..=599); `why_not_4xx` explains why a 4xx is refused.
    ServerErrors { why_not_4xx: &'a str },
    /// Any HTTP status (100..=599), at least one.
    AnyNonEmpty,
}

fn statuses(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    value: Option<&[i64]>,
    default: Vec<u16>,
    kind: Statuses<'_>,
) -> Result<Vec<u16>, ConfigError> {
    let Some(list) = value else {
        return Ok(default);
    };
    if list.is_empty() {
        if let Statuses::AnyNonEmpty = kind {
            return Err(cx.invalid(
                path,
                "must list at least one status; remove the key to accept every 2xx",
            ));
        }
    }
    let mut out: Vec<u16> = Vec::with_capacity(list.len());
    for (j, &n) in list.iter().enumerate() {
        let mut item_path = path.to_vec();
        item_path.push(Seg::Index(j));
        let status = match kind {
            Statuses::ServerErrors { why_not_4xx } => match u16::try_from(n) {
                Ok(s @ 500..=599) => s,
                Ok(400..=499) => {
                    return Err(cx.invalid(
                        &item_path,
                        format!(
                            "{n} is a client error (4xx): {why_not_4xx}; \
                             list only server errors, 500 to 599"
                        ),
                    ))
                }
                _ => {
                    return Err(cx.invalid(
                        &item_path,
                        format!("{n} is not a server error status; list only 500 to 599"),
                    ))
                }
            },
            Statuses::AnyNonEmpty => match u16::try_from(n) {
                Ok(s @ 100..=599) => s,
                _ => {
                    return Err(cx.invalid(
                        &item_path,
                        format!("{n} is not an HTTP status; list statuses from 100 to 599"),
                    ))
                }
            },
        };
        if let Some(first) = out.iter().position(|&s| s == status) {
            let key = match path.last() {
                Some(Seg::Key(k)) => *k,
                _ => "the list",
            };
            return Err(cx.invalid(
                &item_path,
                format!("status {status} is listed twice (also {key}[{first}]); list each once"),
            ));
        }
        out.push(status);
    }
    Ok(out)
}

/// `[backend.breaker]`; `timeout` is the backend's request deadline.
pub(super) fn breaker(
    cx: &Ctx<'_>,
    backend: &[Seg<'_>],
    raw: Option<&RawBreaker>,
    timeout: Side<'_>,
) -> Result<BreakerConfig, ConfigError> {
    let d = BreakerConfig::default();
    // A backend with a short deadline and no breaker table stays valid.
    let slow_call_default = d.slow_call_duration.min(timeout.value);
    let Some(raw) = raw else {
        return Ok(BreakerConfig {
            slow_call_duration: slow_call_default,
            ..d
        });
    };
    let base = at(backend, "breaker");

    let window_path = at(&base, "window");
    let window = positive(cx, &window_path, raw.window, d.window)?;
    if window.subsec_nanos() != 0 || window.as_secs() > BREAKER_MAX_WINDOW_SECS {
        return Err(cx.invalid(
            &window_path,
            format!(
                "must be whole seconds from 1s to {BREAKER_MAX_WINDOW_SECS}s (it is {}): \
                 the window is a ring of 1 s buckets; write e.g. \"10s\"",
                show(window)
            ),
        ));
    }
    let min_calls = at_least(
        cx,
        &at(&base, "min_calls"),
        raw.min_calls.unwrap_or(d.min_calls),
        1,
        "rates are only judged once the window holds this many calls",
    )?;
    let failure_rate = share(
        cx,
        &at(&base, "failure_rate"),
        raw.failure_rate,
        d.failure_rate,
        Share::Positive,
        "it is the share of failed calls in the window that opens the breaker",
    )?;
    let slow_call_rate = share(
        cx,
        &at(&base, "slow_call_rate"),
        raw.slow_call_rate,
        d.slow_call_rate,
        Share::Positive,
        "it is the share of slow calls in the window that opens the breaker",
    )?;
    let slow_call_duration = positive(
        cx,
        &at(&base, "slow_call_duration"),
        raw.slow_call_duration,
        slow_call_default,
    )?;
    ordered(
        cx,
        Bound::new(
            &base,
            "slow_call_duration",
            Side {
                key: "slow_call_duration",
                value: slow_call_duration,
                set: raw.slow_call_duration.is_some(),
                source: "the default",
            },
        ),
        Bound::new(backend, "the backend's timeout", timeout),
        Order::NotLonger,
        "a call that outlives the deadline is a deadline failure, never a slow call; \
         lower slow_call_duration",
    )?;
    let failure_statuses = statuses(
        cx,
        &at(&base, "failure_statuses"),
        raw.failure_statuses.as_deref(),
        d.failure_statuses,
        Statuses::ServerErrors {
            why_not_4xx: "4xx answers are the client's mistake, not the node's, \
                          so they never count as breaker failures",
        },
    )?;
    let open_for = positive(cx, &at(&base, "open_for"), raw.open_for, d.open_for)?;
    let open_for_max = positive(
        cx,
        &at(&base, "open_for_max"),
        raw.open_for_max,
        d.open_for_max,
    )?;
    ordered(
        cx,
        Bound::new(
            &base,
            "open_for",
            Side {
                key: "open_for",
                value: open_for,
                set: raw.open_for.is_some(),
                source: "the default",
            },
        ),
        Bound::new(
            &base,
            "open_for_max",
            Side {
                key: "open_for_max",
                value: open_for_max,
                set: raw.open_for_max.is_some(),
                source: "the default",
            },
        ),
        Order::NotLonger,
        "the open period starts at open_for and backs off up to open_for_max",
    )?;
    let half_open_calls = at_least(
        cx,
        &at(&base, "half_open_calls"),
        raw.half_open_calls.unwrap_or(d.half_open_calls),
        1,
        "a half-open breaker needs at least one trial call to ever close again",
    )?;
    let jitter = share(
        cx,
        &at(&base, "jitter"),
        raw.jitter,
        d.jitter,
        Share::Any,
        "it is the share of random spread on open periods",
    )?;

    Ok(BreakerConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        window,
        min_calls,
        failure_rate,
        slow_call_rate,
        slow_call_duration,
        consecutive_failures: raw.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_statuses,
        open_for,
        open_for_max,
        half_open_calls,
        jitter,
    })
}

/// `[backend.health_check]`, when the table is present.
pub(super) fn health_check(
    cx: &Ctx<'_>,
    backend: &[Seg<'_>],
    raw: &RawHealthCheck,
) -> Result<HealthCheckConfig, ConfigError> {
    let base = at(backend, "health_check");
    let path_key = at(&base, "path");
    let path = match &raw.path {
        None => {
            return Err(cx.invalid(
                &path_key,
                "is required in [backend.health_check]: the path probed on every node, \
                 e.g. path = \"/healthz\" (remove the table to turn active checks off)",
            ))
        }
        Some(p) if !p.starts_with('/') => {
            return Err(cx.invalid(
                &path_key,
                format!("\"{p}\" must start with '/', e.g. path = \"/{p}\""),
            ))
        }
        Some(p) => {
            if p.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(cx.invalid(
                    &path_key,
                    format!(
                        "\"{p}\" is not a valid request path; percent-encode spaces and \
                         other special characters, e.g. \"/health%20check\""
                    ),
                ));
            }
            p.clone()
        }
    };
    let interval = positive(cx, &at(&base, "interval"), raw.interval, HEALTH_INTERVAL)?;
    let jitter = share(
        cx,
        &at(&base, "jitter"),
        raw.jitter,
        HEALTH_JITTER,
        Share::Any,
        "it is the share of random spread on the interval",
    )?;
    let timeout = positive(cx, &at(&base, "timeout"), raw.timeout, HEALTH_TIMEOUT)?;
    ordered(
        cx,
        Bound::new(
            &base,
            "timeout",
            Side {
                key: "timeout",
                value: timeout,
                set: raw.timeout.is_some(),
                source: "the default",
            },
        ),
        Bound::new(
            &base,
            "interval",
            Side {
                key: "interval",
                value: interval,
                set: raw.interval.is_some(),
                source: "the default",
            },
        ),
        Order::Shorter,
        "a probe must end before the next one is due",
    )?;
    let unhealthy_after = at_least(
        cx,
        &at(&base, "unhealthy_after"),
        raw.unhealthy_after.unwrap_or(HEALTH_UNHEALTHY_AFTER),
        1,
        "it counts failed probes in a row before a node is marked down",
    )?;
    let healthy_after = at_least(
        cx,
        &at(&base, "healthy_after"),
        raw.healthy_after.unwrap_or(HEALTH_HEALTHY_AFTER),
        1,
        "it counts passed probes in a row before a node is marked up",
    )?;
    let expect_statuses = statuses(
        cx,
        &at(&base, "expect_statuses"),
        raw.expect_statuses.as_deref(),
        HEALTH_EXPECT_STATUSES.collect(),
        Statuses::AnyNonEmpty,
    )?;
    Ok(HealthCheckConfig {
        path,
        interval,
        jitter,
        timeout,
        unhealthy_after,
        healthy_after,
        expect_statuses,
    })
}

/// `[backend.retry]`; `timeout` is the backend's request deadline.
pub(super) fn retry(
    cx: &Ctx<'_>,
    backend: &[Seg<'_>],
    raw: Option<&RawRetry>,
    timeout: Side<'_>,
) -> Result<RetryConfig, ConfigError> {
    let d = RetryConfig::default();
    // Half the deadline at most, so a backoff always fits; timeout >= 2ns
    // (it exceeds queue_timeout > 0), so this is never zero.
    let backoff_default = d.backoff.min(timeout.value / 2);
    let Some(raw) = raw else {
        return Ok(RetryConfig {
            backoff: backoff_default,
            ..d
        });
    };
    let base = at(backend, "retry");
    let budget_percent = match raw.budget_percent {
        Some(n) => u32::from(percent(
            cx,
            &at(&base, "budget_percent"),
            n,
            "retries may add at most this share of requests",
        )?),
        None => d.budget_percent,
    };
    let on_statuses = statuses(
        cx,
        &at(&base, "on_statuses"),
        raw.on_statuses.as_deref(),
        d.on_statuses,
        Statuses::ServerErrors {
            why_not_4xx: "a 4xx answer would be the same from every node, \
                          so retrying it only adds load",
        },
    )?;
    let backoff = positive(cx, &at(&base, "backoff"), raw.backoff, backoff_default)?;
    ordered(
        cx,
        Bound::new(
            &base,
            "backoff",
            Side {
                key: "backoff",
                value: backoff,
                set: raw.backoff.is_some(),
                source: "the default",
            },
        ),
        Bound::new(backend, "the backend's timeout", timeout),
        Order::Shorter,
        "a retry after the backoff would already be past the deadline",
    )?;
    Ok(RetryConfig {
        max_retries: raw.max_retries.unwrap_or(d.max_retries),
        budget_percent,
        budget_min_per_sec: raw.budget_min_per_sec.unwrap_or(d.budget_min_per_sec),
        on_statuses,
        buffer_bytes: raw.buffer_bytes.unwrap_or(d.buffer_bytes),
        backoff,
    })
}

/// `[backend.shedding]`: `0 < sheddable <= normal <= 1`.
/// A backend's failover budget: the share of its limit that requests failed
/// over to it may fill.
pub(super) fn failover_max_share(
    cx: &Ctx<'_>,
    path: &[Seg<'_>],
    raw: Option<f64>,
) -> Result<f64, ConfigError> {
    share(
        cx,
        path,
        raw,
        1.0,
        Share::Positive,
        "it is the share of this backend's max_in_flight that requests failed over \
         from other backends may fill",
    )
}

pub(super) fn shedding(
    cx: &Ctx<'_>,
    backend: &[Seg<'_>],
    raw: Option<&RawShedding>,
) -> Result<SheddingConfig, ConfigError> {
    let d = SheddingConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let base = at(backend, "shedding");
    let sheddable = share(
        cx,
        &at(&base, "sheddable"),
        raw.sheddable,
        d.sheddable,
        Share::Positive,
        "it is the share of max_in_flight below which sheddable requests are admitted",
    )?;
    let normal = share(
        cx,
        &at(&base, "normal"),
        raw.normal,
        d.normal,
        Share::Positive,
        "it is the share of max_in_flight below which normal requests are admitted",
    )?;
    if sheddable > normal {
        let describe = |x: f64, set: bool| {
            if set {
                format!("{x}")
            } else {
                format!("{x}, the default")
            }
        };
        let (s, n) = (
            describe(sheddable, raw.sheddable.is_some()),
            describe(normal, raw.normal.is_some()),
        );
        let why = "sheddable requests are shed first, so their share must be the smaller one";
        return Err(if raw.sheddable.is_some() || raw.normal.is_none() {
            cx.invalid(
                &at(&base, "sheddable"),
                format!("sheddable ({s}) must not be more than normal ({n}): {why}"),
            )
        } else {
            cx.invalid(
                &at(&base, "normal"),
                format!("normal ({n}) must not be less than sheddable ({s}): {why}"),
            )
        });
    }
    Ok(SheddingConfig { sheddable, normal })
}

/// `[backend.drift]`.
pub(super) fn drift(
    cx: &Ctx<'_>,
    backend: &[Seg<'_>],
    raw: Option<&RawDrift>,
) -> Result<DriftConfig, ConfigError> {
    let d = DriftConfig::default();
    let Some(raw) = raw else { return Ok(d) };
    let base = at(backend, "drift");
    let error_rate_margin = share(
        cx,
        &at(&base, "error_rate_margin"),
        raw.error_rate_margin,
        d.error_rate_margin,
        Share::Any,
        "it is how far above its peers' median a node's error rate must be",
    )?;
    let factor = |key: &'static str, value: Option<f64>, default: f64| {
        let Some(x) = value else { return Ok(default) };
        // Written so that NaN fails.
        if x >= 1.0 && x.is_finite() {
            Ok(x)
        } else {
            Err(cx.invalid(
                &at(&base, key),
                format!(
                    "must be a finite number of at least 1 (it is {x}): a node is compared \
                     with this many times its peers' median; write e.g. 3.0"
                ),
            ))
        }
    };
    let error_rate_factor = factor(
        "error_rate_factor",
        raw.error_rate_factor,
        d.error_rate_factor,
    )?;
    let latency_factor = factor("latency_factor", raw.latency_factor, d.latency_factor)?;
    let sustain = positive(cx, &at(&base, "sustain"), raw.sustain, d.sustain)?;
    let min_requests = at_least(
        cx,
        &at(&base, "min_requests"),
        raw.min_requests.unwrap_or(d.min_requests),
        1,
        "a node is judged only with this many requests in the window",
    )?;
    let window_path = at(&base, "window");
    let window = positive(cx, &window_path, raw.window, d.window)?;
    if window < DRIFT_MIN_WINDOW {
        return Err(cx.invalid(
            &window_path,
            format!(
                "must be at least 1s (it is {}): the drift watch samples once a second; \
                 write e.g. \"10s\"",
                show(window)
            ),
        ));
    }
    Ok(DriftConfig {
        error_rate_margin,
        error_rate_factor,
        latency_factor,
        sustain,
        min_requests,
        window,
    })
}

/// `[backend.adaptive]`, for a backend of `max_in_flight` (its ceiling).
pub(super) fn adaptive(
    cx: &Ctx<'_>,
    backend: &[Seg<'_>],
    raw: Option<&RawAdaptive>,
    max_in_flight: usize,
) -> Result<AdaptiveConfig, ConfigError> {
    let d = AdaptiveConfig::defaults(max_in_flight);
    let Some(raw) = raw else { return Ok(d) };
    let base = at(backend, "adaptive");
    let min_in_flight = match raw.min_in_flight {
        None => d.min_in_flight,
        Some(n) if n >= 1 && n <= max_in_flight => n,
        Some(n) => {
            return Err(cx.invalid(
                &at(&base, "min_in_flight"),
                format!(
                    "must be at least 1 and at most the backend's max_in_flight ({max_in_flight}) \
                     (it is {n}): it is the floor a returning pool's ramp starts from and the \
                     least the adaptive limit may be"
                ),
            ))
        }
    };
    let tolerance = match raw.tolerance {
        None => d.tolerance,
        // Written so that NaN fails.
        Some(x) if x >= 1.0 && x.is_finite() => x,
        Some(x) => {
            return Err(cx.invalid(
                &at(&base, "tolerance"),
                format!(
                    "must be a finite number of at least 1 (it is {x}): latency up to this many \
                     times the minimum RTT counts as unloaded; write e.g. 2.0"
                ),
            ))
        }
    };
    Ok(AdaptiveConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        min_in_flight,
        tolerance,
        window: positive(cx, &at(&base, "window"), raw.window, d.window)?,
        min_rtt_interval: positive(
            cx,
            &at(&base, "min_rtt_interval"),
            raw.min_rtt_interval,
            d.min_rtt_interval,
        )?,
    })
}

/// `[route.rate_limit]`, when the table is present.
pub(super) fn rate_limit(
    cx: &Ctx<'_>,
    route: &[Seg<'_>],
    raw: &RawRateLimit,
) -> Result<RateLimitConfig, ConfigError> {
    let base = at(route, "rate_limit");
    let rate_path = at(&base, "requests_per_second");
    let Some(rate) = raw.requests_per_second else {
        return Err(cx.invalid(
            &rate_path,
            "is required in [route.rate_limit]: the sustained rate, e.g. \
             requests_per_second = 100 (remove the table for no limit)",
        ));
    };
    let per_token = (rate > 0.0 && rate <= RATE_LIMIT_MAX_PER_SECOND)
        .then(|| Duration::try_from_secs_f64(1.0 / rate).ok())
        .flatten()
        .filter(|d| !d.is_zero());
    let Some(per_token) = per_token else {
        return Err(cx.invalid(
            &rate_path,
            format!(
                "must be greater than 0 and at most {RATE_LIMIT_MAX_PER_SECOND} (it is {rate}); \
                 write e.g. 100, or 0.5 for one request every two seconds"
            ),
        ));
    };
    let burst = match raw.burst {
        Some(n) => match u32::try_from(n) {
            Ok(b) if b >= 1 => b,
            _ => {
                return Err(cx.invalid(
                    &at(&base, "burst"),
                    format!(
                        "must be from 1 to {} (it is {n}): it is how many requests a full \
                         bucket lets through at once",
                        u32::MAX
                    ),
                ))
            }
        },
        // Saturating cast: a rate over u32::MAX per second gets the largest bucket.
        None => (rate.ceil() as u32).max(1),
    };
    let key_path = at(&base, "key");
    let key = match raw.key.as_deref() {
        None | Some("route") => RateLimitKey::Route,
        Some("client") => RateLimitKey::Client,
        Some(text) => match text.strip_prefix("header:") {
            Some(name) => match http::HeaderName::from_bytes(name.trim().as_bytes()) {
                Ok(name) => RateLimitKey::Header(name),
                Err(_) => {
                    return Err(cx.invalid(
                        &key_path,
                        format!(
                            "\"{name}\" is not a valid header name; write e.g. \
                             key = \"header:x-api-key\""
                        ),
                    ))
                }
            },
            None => {
                return Err(cx.invalid(
                    &key_path,
                    format!(
                        "\"{text}\" is not a rate limit key; write \"route\" (one bucket), \
                         \"client\" (a bucket per client address) or \"header:NAME\" \
                         (a bucket per value of that header)"
                    ),
                ))
            }
        },
    };
    let max_keys_path = at(&base, "max_keys");
    let max_keys = match raw.max_keys {
        Some(_) if key == RateLimitKey::Route => {
            return Err(cx.invalid(
                &max_keys_path,
                "only applies to a keyed limit (key = \"client\" or \"header:NAME\"); \
                 remove it, or set key",
            ))
        }
        Some(n) => at_least(
            cx,
            &max_keys_path,
            n,
            1,
            "it caps the per-key buckets kept in memory",
        )?,
        None => RATE_LIMIT_MAX_KEYS,
    };
    Ok(RateLimitConfig {
        per_token,
        burst,
        key,
        max_keys,
    })
}

/// Resolves every `failover` to an index, then rejects self-references and loops.
pub(super) fn resolve_failover(
    cx: &Ctx<'_>,
    backends: &mut [BackendConfig],
    names: &HashMap<String, usize>,
) -> Result<(), ConfigError> {
    let path = |i: usize| [Seg::Key("backend"), Seg::Index(i), Seg::Key("failover")];
    for i in 0..backends.len() {
        let Some(target) = backends[i].failover.as_deref() else {
            continue;
        };
        let Some(&index) = names.get(target) else {
            return Err(cx.invalid(
                &path(i),
                format!(
                    "no backend named \"{target}\"; defined backends: {}",
                    names_of(backends)
                ),
            ));
        };
        if index == i {
            return Err(cx.invalid(
                &path(i),
                format!(
                    "backend \"{target}\" cannot fail over to itself; name another backend \
                     or remove the key"
                ),
            ));
        }
        backends[i].failover_index = Some(index);
    }
    // Each backend has at most one failover, so following the chain from a
    // backend either ends, comes back to it (a loop through it), or enters a
    // loop that does not contain it (reported from a member of that loop).
    for start in 0..backends.len() {
        let mut chain = vec![start];
        let mut current = start;
        while let Some(next) = backends[current].failover_index {
            if next == start {
                let names: Vec<&str> = chain
                    .iter()
                    .chain([&start])
                    .map(|&j| backends[j].name.as_str())
                    .collect();
                return Err(cx.invalid(
                    &path(start),
                    format!(
                        "failover chain loops: {}; when all of them are down requests \
                         would bounce between them forever; remove `failover` from one \
                         of these backends",
                        names.join(" -> ")
                    ),
                ));
            }
            if chain.contains(&next) {
                break;
            }
            chain.push(next);
            current = next;
        }
    }
    Ok(())
}
