//! The file as serde sees it: every key optional, nothing checked beyond types.
//!
//! Required keys are `Option` here on purpose: a missing key is reported by
//! `validate` with a line and a hint instead of serde's bare "missing field".

use serde::Deserialize;

use crate::duration::DurationText;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: Option<RawServer>,
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    #[serde(default)]
    pub backend: Vec<RawBackend>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

/// `[server]`: the data-plane listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<String>,
    pub header_read_timeout: Option<DurationText>,
    pub idle_timeout: Option<DurationText>,
    pub max_connections: Option<usize>,
    pub shutdown_grace: Option<DurationText>,
    pub max_header_bytes: Option<usize>,
    pub max_uri_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_request_body_bytes: Option<u64>,
    pub workers: Option<usize>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub h2_max_pending_accept_reset_streams: Option<usize>,
    pub h2_max_local_error_reset_streams: Option<usize>,
    pub h2_keep_alive_interval: Option<DurationText>,
    pub h2_keep_alive_timeout: Option<DurationText>,
    pub tls: Option<RawServerTls>,
}

/// `[server.tls]`: the TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTls {
    pub listen: Option<String>,
    pub handshake_timeout: Option<DurationText>,
    #[serde(default)]
    pub certificate: Vec<RawCertificate>,
}

/// One `[[server.tls.certificate]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_names: Option<Vec<String>>,
}

/// `[admin]`: the operator listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub heartbeat_stale_after: Option<DurationText>,
}

/// `[log]`: the access log and levee's own log.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub access: Option<String>,
    pub level: Option<String>,
    pub format: Option<String>,
}

/// One `[[backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub name: Option<String>,
    pub nodes: Option<Vec<String>>,
    pub dns_refresh: Option<DurationText>,
    pub connect_timeout: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub total_timeout: Option<DurationText>,
    pub body_idle_timeout: Option<DurationText>,
    pub tunnel_idle_timeout: Option<DurationText>,
    pub max_in_flight: Option<usize>,
    pub max_queue: Option<usize>,
    pub queue_timeout: Option<DurationText>,
    pub pool_idle_timeout: Option<DurationText>,
    pub pool_max_idle_per_node: Option<usize>,
    pub load_balancing: Option<String>,
    pub slow_start: Option<DurationText>,
    pub failover: Option<String>,
    pub failover_max_share: Option<f64>,
    pub when_all_down: Option<String>,
    /// Signed so that a negative value gets the range message, not serde's.
    pub max_ejected_percent: Option<i64>,
    pub breaker: Option<RawBreaker>,
    pub health_check: Option<RawHealthCheck>,
    pub retry: Option<RawRetry>,
    pub shedding: Option<RawShedding>,
    pub protocol: Option<String>,
    pub tls: Option<bool>,
    pub tls_ca: Option<String>,
    pub tls_server_name: Option<String>,
    pub tls_client_cert: Option<String>,
    pub tls_client_key: Option<String>,
    pub tls_insecure_skip_verify: Option<bool>,
    pub drift: Option<RawDrift>,
    pub adaptive: Option<RawAdaptive>,
}

// Status lists and percentages are read as `i64` so that any integer reaches
// `validate`, which explains the allowed range; serde would only say "expected u16".

/// `[backend.breaker]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub enabled: Option<bool>,
    pub window: Option<DurationText>,
    pub min_calls: Option<u32>,
    pub failure_rate: Option<f64>,
    pub slow_call_rate: Option<f64>,
    pub slow_call_duration: Option<DurationText>,
    pub consecutive_failures: Option<u32>,
    pub failure_statuses: Option<Vec<i64>>,
    pub open_for: Option<DurationText>,
    pub open_for_max: Option<DurationText>,
    pub half_open_calls: Option<u32>,
    pub jitter: Option<f64>,
}

/// `[backend.health_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<DurationText>,
    pub jitter: Option<f64>,
    pub timeout: Option<DurationText>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
    pub expect_statuses: Option<Vec<i64>>,
}

/// `[backend.retry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub max_retries: Option<u32>,
    pub budget_percent: Option<i64>,
    pub budget_min_per_sec: Option<u32>,
    pub on_statuses: Option<Vec<i64>>,
    pub buffer_bytes: Option<usize>,
    pub backoff: Option<DurationText>,
}

/// `[backend.shedding]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShedding {
    pub sheddable: Option<f64>,
    pub normal: Option<f64>,
}

/// `[backend.drift]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDrift {
    pub error_rate_margin: Option<f64>,
    pub error_rate_factor: Option<f64>,
    pub latency_factor: Option<f64>,
    pub sustain: Option<DurationText>,
    pub min_requests: Option<u64>,
    pub window: Option<DurationText>,
}

/// `[backend.adaptive]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdaptive {
    pub enabled: Option<bool>,
    pub min_in_flight: Option<usize>,
    pub tolerance: Option<f64>,
    pub window: Option<DurationText>,
    pub min_rtt_interval: Option<DurationText>,
}

/// `[route.rate_limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub requests_per_second: Option<f64>,
    pub burst: Option<i64>,
    pub key: Option<String>,
    pub max_keys: Option<usize>,
}

/// One `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
    pub backend: Option<String>,
    pub timeout: Option<DurationText>,
    pub total_timeout: Option<DurationText>,
    pub max_in_flight: Option<usize>,
    pub max_queue: Option<usize>,
    pub queue_timeout: Option<DurationText>,
    pub priority: Option<String>,
    pub breaker_class: Option<String>,
    pub max_request_body_bytes: Option<u64>,
    pub tunnel_idle_timeout: Option<DurationText>,
    pub max_tunnels: Option<usize>,
    pub rate_limit: Option<RawRateLimit>,
}
