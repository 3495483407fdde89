//! Which config is live and how the last reload went, so an operator (or a
//! fleet dashboard comparing replicas' hashes) can tell at a glance.

use std::time::SystemTime;

/// The live config and the last reload that failed, if any.
#[derive(Debug, Clone)]
pub struct ConfigStatus {
    /// FNV-1a 64 of the config text, 16 hex digits: replicas with the same
    /// file show the same hash.
    pub hash: String,
    /// The file it came from.
    pub origin: String,
    pub loaded_at: SystemTime,
    /// Changed keys the running process cannot apply until it restarts.
    pub restart_required: Vec<String>,
    /// The most recent failed reload, kept until a later one succeeds.
    pub last_failure: Option<ReloadFailure>,
}

impl Default for ConfigStatus {
    fn default() -> Self {
        Self {
            hash: String::new(),
            origin: String::new(),
            loaded_at: SystemTime::UNIX_EPOCH,
            restart_required: Vec::new(),
            last_failure: None,
        }
    }
}

/// A reload that was refused; the config before it stayed live.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    pub at: SystemTime,
    pub error: String,
}

/// How a reload ended, as the `result` label of `levee_config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

impl ReloadResult {
    pub const ALL: [ReloadResult; 2] = [ReloadResult::Success, ReloadResult::Failure];

    pub const fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}
