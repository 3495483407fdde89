//! The one error type of this crate.
//!
//! Every error that comes from the text carries a [`Location`] so an operator
//! can jump straight to the offending line: `levee.toml:14: backend[0].max_in_flight: ...`.

use std::fmt;

/// Where in the configuration a problem sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file path as given, or `<inline>`.
    pub origin: String,
    /// 1-based line, when one can be pointed at.
    pub line: Option<usize>,
    /// Key path such as `route[2].backend` or `server.listen`, when known.
    pub key: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded.
///
/// Display renders as `{origin}:{line}: {key}: {message}` (parts that are
/// unknown are left out), so it can be printed to an operator as is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{origin}: cannot read config file: {source}")]
    Io {
        /// The path as given.
        origin: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{at}: invalid TOML: {message}")]
    Syntax {
        /// Where the parser gave up.
        at: Location,
        /// The parser's description.
        message: String,
    },
    /// Valid TOML of the wrong shape: an unknown key, a value of the wrong type,
    /// a duration that does not parse.
    #[error("{at}: {message}")]
    Shape {
        /// The offending key or value.
        at: Location,
        /// What serde said, plus a hint where one helps.
        message: String,
    },
    /// Well-formed, but breaks a rule (a missing backend, contradicting timeouts, ...).
    #[error("{at}: {message}")]
    Invalid {
        /// The key to change.
        at: Location,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// 1-based line of the problem, if one could be pointed at.
    pub fn line(&self) -> Option<usize> {
        self.location().and_then(|at| at.line)
    }

    /// Key path of the problem (`backend[1].name`), if known.
    pub fn key(&self) -> Option<&str> {
        self.location().and_then(|at| at.key.as_deref())
    }

    /// The file path as given, or `<inline>`.
    pub fn origin(&self) -> &str {
        match self {
            Self::Io { origin, .. } => origin,
            Self::Syntax { at, .. } | Self::Shape { at, .. } | Self::Invalid { at, .. } => {
                &at.origin
            }
        }
    }

    /// The explanation without the location prefix.
    pub fn message(&self) -> String {
        match self {
            Self::Io { source, .. } => format!("cannot read config file: {source}"),
            Self::Syntax { message, .. } => format!("invalid TOML: {message}"),
            Self::Shape { message, .. } | Self::Invalid { message, .. } => message.clone(),
        }
    }

    fn location(&self) -> Option<&Location> {
        match self {
            Self::Io { .. } => None,
            Self::Syntax { at, .. } | Self::Shape { at, .. } | Self::Invalid { at, .. } => Some(at),
        }
    }
}
