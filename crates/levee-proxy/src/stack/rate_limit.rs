//! Route rate limits: a request over its route's `[route.rate_limit]`
//! gets 429 `rate-limited` with `Retry-After`, before it takes a tunnel,
//! a bulkhead slot or a node.
//!
//! The bucket is the route's, or the client's: its IP address, or the value
//! of a named header (requests without that header share one bucket). The
//! buckets themselves are [`levee_resilience::RateLimit`].

use std::sync::Arc;
use std::time::Duration;

use levee_config::{RateLimitConfig, RateLimitKey};
use levee_resilience::{ClientKey, RateLimit};
use levee_telemetry::{ErrorReason, RateLimitTopology};

use super::{Decision, Routed};
use crate::error::ProxyError;

/// A route's limit and the config it was built from, so that a reload
/// that keeps the config keeps the buckets.
#[derive(Debug)]
pub struct RouteRateLimit {
    pub config: RateLimitConfig,
    pub limit: Arc<RateLimit>,
}

impl RouteRateLimit {
    /// The limit of `cfg`: `old`'s buckets when its config is the same,
    /// fresh (full) ones otherwise.
    pub fn build(cfg: &RateLimitConfig, old: Option<&RouteRateLimit>) -> Self {
        let limit = match old {
            Some(o) if o.config == *cfg => Arc::clone(&o.limit),
            _ => {
                let max_keys = (cfg.key != RateLimitKey::Route).then_some(cfg.max_keys);
                let burst =
                    std::num::NonZeroU32::new(cfg.burst).unwrap_or(std::num::NonZeroU32::MIN);
                Arc::new(RateLimit::new(cfg.per_token, burst, max_keys))
            }
        };
        Self {
            config: cfg.clone(),
            limit,
        }
    }
}

impl RouteRateLimit {
    /// What `/status` and `/metrics` show of it.
    pub fn topology(&self) -> RateLimitTopology {
        let c = &self.config;
        RateLimitTopology {
            per_token: c.per_token,
            burst: c.burst,
            key: c.key.to_string(),
            max_keys: self.limit.is_keyed().then_some(c.max_keys),
            limit: Arc::clone(&self.limit),
        }
    }
}

/// Takes a token from the request's bucket, or refuses it.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitDecision;

impl Decision for RateLimitDecision {
    fn decide(&self, req: &mut Routed) -> Result<(), ProxyError> {
        let Some(rl) = &req.route().rate_limit else {
            return Ok(());
        };
        let key = match &rl.config.key {
            RateLimitKey::Route => ClientKey::Anonymous,
            RateLimitKey::Client => ClientKey::Addr(req.peer.ip().to_canonical()),
            RateLimitKey::Header(name) => match req.header(name) {
                Some(value) => rl.limit.token_key(value.as_bytes()),
                None => ClientKey::Anonymous,
            },
        };
        rl.limit.check(key).map_err(|e| {
            ProxyError::new(
                ErrorReason::RateLimited,
                format!(
                    "route {} over its rate limit (key {})",
                    req.route().name,
                    rl.config.key
                ),
            )
            .retry_after(retry_after_secs(e.retry_after))
        })
    }
}

/// Whole seconds until a token, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_of_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }
}
