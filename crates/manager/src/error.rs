//! The manager's one error type.

use resilient_redis_config::ErrorKind;

/// Errors of [`crate::RedisManager`] operations. Messages never carry a password, a key or a
/// value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be used and the fallback could not serve this operation; it failed fast.
    #[error("redis unavailable ({kind}): {message}")]
    Unavailable {
        /// Why: `circuit_breaker_error`, `connection_error`, `timeout_error`, `auth_error`, ...
        kind: ErrorKind,
        /// In words.
        message: String,
    },
    /// A non-idempotent command (INCR, INCRBY, ...) may or may not have been applied: its
    /// connection died or timed out after it was sent. It was not retried or journaled, so it
    /// is never applied twice.
    #[error("{operation} may or may not have been applied ({kind}): {message}")]
    Ambiguous {
        /// The operation.
        operation: &'static str,
        /// `connection_error` or `timeout_error`.
        kind: ErrorKind,
        /// In words.
        message: String,
    },
    /// Redis answered with an error reply (`WRONGTYPE`, `NOSCRIPT`, `OOM`, ...).
    #[error("redis error reply: {message}")]
    Server {
        /// The reply's code (`WRONGTYPE`), when it has one.
        code: Option<String>,
        /// The reply.
        message: String,
    },
    /// The fallback store refused (full, wrong type, journal file error).
    #[error(transparent)]
    Fallback(#[from] resilient_redis_fallback::FallbackError),
    /// A reply could not be converted to the requested type, or an argument is unusable.
    #[error("invalid value: {0}")]
    Validation(String),
    /// The configuration breaks a rule, or a part could not be built.
    #[error("cannot build the manager: {0}")]
    Build(String),
    /// The manager was closed.
    #[error("the redis manager is closed")]
    Closed,
}

impl Error {
    /// The kind (the seed's `RedisErrorType`).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unavailable { kind, .. } | Error::Ambiguous { kind, .. } => *kind,
            Error::Server { .. } => ErrorKind::Server,
            Error::Fallback(e) => e.kind(),
            Error::Validation(_) | Error::Build(_) => ErrorKind::Validation,
            Error::Closed => ErrorKind::Closed,
        }
    }

    /// Whether retrying later may help.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. }) && self.kind().is_transient()
            || matches!(self.kind(), ErrorKind::CircuitBreaker)
    }
}

impl From<resilient_redis_config::ConfigError> for Error {
    fn from(e: resilient_redis_config::ConfigError) -> Self {
        Error::Build(e.to_string())
    }
}
