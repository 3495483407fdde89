//! levee's own log: operational events (breaker moves, health changes,
//! reloads, drains, sheds) as `tracing` events on stderr, readable or one
//! JSON object per line (`log.format`), filtered by `log.level`.
//!
//! The filter sits behind a reload handle so a config reload can change
//! the level without a restart; the format is fixed at start (a reload
//! that changes it reports `log.format` as restart-required).

use std::io::IsTerminal as _;

use levee_config::{LogConfig, LogFormat};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Changes the live log filter; held by [`crate::Levee`] for reloads.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over `log.level`, at start and on reload.
    from_env: bool,
}

impl LogLevel {
    /// Applies a reloaded `log.level` (already checked by the config).
    pub(crate) fn set(&self, level: &str) {
        if self.from_env {
            return;
        }
        if let Err(e) = self.handle.reload(EnvFilter::new(level)) {
            tracing::warn!(error = %e, level, "cannot change the log level");
        }
    }
}

/// Installs levee's own log as the global subscriber, writing to stderr.
/// `RUST_LOG`, when set, is the filter instead of `log.level`.
pub fn init(config: &LogConfig) -> anyhow::Result<LogLevel> {
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = match &env {
        Some(directives) => EnvFilter::try_new(directives)
            .map_err(|e| anyhow::anyhow!("RUST_LOG={directives:?}: {e}"))?,
        None => EnvFilter::new(&config.level),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match config.format {
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        // Fields at the top level of each object, where log shippers look.
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
    }
    Ok(LogLevel {
        handle,
        from_env: env.is_some(),
    })
}
