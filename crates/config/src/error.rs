//! The one error type of this crate.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A key of the TOML file.
    File {
        /// The file.
        path: PathBuf,
        /// The dotted key inside it (`pool.max_size`).
        key: String,
    },
    /// An environment variable.
    Env {
        /// Its name (`REDIS_POOL_MAX_SIZE`).
        var: String,
    },
    /// Set in code (a value passed to [`crate::RedisConfig::validate`] directly).
    Code,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, key } => write!(f, "key `{key}` in {}", path.display()),
            Origin::Env { var } => write!(f, "env {var}"),
            Origin::Code => f.write_str("set in code"),
        }
    }
}

/// One thing wrong with a configuration: which field, where its value came from, the value
/// (never a secret) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Dotted field path, e.g. `pool.max_size`.
    pub field: String,
    /// Where the value came from.
    pub origin: Origin,
    /// The offending value as given, secrets redacted; `None` where there is no value to show.
    pub value: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl Problem {
    /// A problem of `field` (its dotted path), with the value shown (never a secret) and what
    /// is wrong, for parts that check settings of their own (a key file's contents, say).
    #[must_use]
    pub fn new(field: &str, value: Option<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            origin: Origin::Code,
            value,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.field)?;
        match &self.origin {
            Origin::Code => {}
            origin => write!(f, " ({origin})")?,
        }
        match &self.value {
            Some(value) => write!(f, ": `{value}` {}", self.message),
            None => write!(f, ": {}", self.message),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML.
    #[error("configuration file {} is not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, reduced to its location and reason (no file contents).
        message: String,
    },
    /// One or more values are missing their mark; every problem is listed.
    #[error("{} configuration problem{}:\n  - {}",
        .0.len(), if .0.len() == 1 { "" } else { "s" },
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems with individual fields (empty for file errors).
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}
