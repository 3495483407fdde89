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
}

/// `[admin]`: the operator listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub heartbeat_stale_after: Option<DurationText>,
}

/// One `[[backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub name: Option<String>,
    pub nodes: Option<Vec<String>>,
    pub connect_timeout: Option<DurationText>,
    pub timeout: Option<DurationText>,
    pub body_idle_timeout: Option<DurationText>,
    pub max_in_flight: Option<usize>,
    pub max_queue: Option<usize>,
    pub queue_timeout: Option<DurationText>,
    pub pool_idle_timeout: Option<DurationText>,
    pub pool_max_idle_per_node: Option<usize>,
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
    pub max_in_flight: Option<usize>,
    pub max_queue: Option<usize>,
    pub queue_timeout: Option<DurationText>,
}
