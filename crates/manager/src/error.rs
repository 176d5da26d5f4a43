//! The manager's one error type.

use resilient_redis_config::ErrorKind;

/// The cause kept inside an [`Error`] (a `PoolError`, a `redis::RedisError`, a `ConfigError`).
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of [`crate::RedisManager`] operations. Messages never carry a password, a key or a
/// value; the cause is kept as [`std::error::Error::source`].
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
        /// The pool's or redis-rs's error, when there is one.
        #[source]
        source: Option<Source>,
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
        /// The failure that left the outcome unknown.
        #[source]
        source: Option<Source>,
    },
    /// Redis answered with an error reply (`WRONGTYPE`, `NOSCRIPT`, `OOM`, ...). An ACL refusal
    /// (`NOPERM`) is of kind `no_permission_error`.
    #[error("redis error reply: {message}")]
    Server {
        /// The reply's code (`WRONGTYPE`), when it has one.
        code: Option<String>,
        /// The reply.
        message: String,
        /// redis-rs's error, when there is one.
        #[source]
        source: Option<redis::RedisError>,
    },
    /// The fallback store refused (full, wrong type, journal file error).
    #[error(transparent)]
    Fallback(#[from] resilient_redis_fallback::FallbackError),
    /// A reply could not be converted to the requested type, or an argument is unusable.
    #[error("invalid value: {0}")]
    Validation(String),
    /// The configuration breaks a rule: every problem, each with its field (also the source).
    #[error("invalid configuration: {0}")]
    Config(#[from] resilient_redis_config::ConfigError),
    /// A part could not be built.
    #[error("cannot build the manager: {0}")]
    Build(String),
    /// The manager was closed.
    #[error("the redis manager is closed")]
    Closed,
}

/// The code of the redis-rs error a call through `ConnectionLike` returns when its outcome is
/// unknown ([`Error::Ambiguous`]): `err.code() == Some("AMBIGUOUS")`.
pub const AMBIGUOUS_CODE: &str = "AMBIGUOUS";
/// The code of the redis-rs error for a call that failed fast without reaching Redis
/// ([`Error::Unavailable`] without a redis-rs cause: breaker open, pool exhausted, ...).
pub const UNAVAILABLE_CODE: &str = "UNAVAILABLE";
/// The code of the redis-rs error for a refusal of the fallback store (full, journal error,
/// pending writes that a command could overtake).
pub const FALLBACK_CODE: &str = "FALLBACK";

impl Error {
    /// A failure to reach Redis, of `kind`.
    #[must_use]
    pub fn unavailable(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::Unavailable {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The kind of failure (its stable name is the `error.type` metric attribute).
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unavailable { kind, .. } | Error::Ambiguous { kind, .. } => *kind,
            Error::Server { code, .. } if code.as_deref() == Some("NOPERM") => {
                ErrorKind::NoPermission
            }
            Error::Server { .. } => ErrorKind::Server,
            Error::Fallback(e) => e.kind(),
            Error::Validation(_) | Error::Build(_) | Error::Config(_) => ErrorKind::Validation,
            Error::Closed => ErrorKind::Closed,
        }
    }

    /// Whether retrying later may help.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. }) && self.kind().is_transient()
            || matches!(self.kind(), ErrorKind::CircuitBreaker)
    }

    /// The redis-rs error for code written against redis-rs (the `ConnectionLike` path): a
    /// server reply and a connection or timeout failure are redis-rs's own errors (so
    /// `code()`, `is_timeout()` and `is_io_error()` work as before); an unknown outcome has
    /// code [`AMBIGUOUS_CODE`], a fast failure [`UNAVAILABLE_CODE`], a fallback refusal
    /// [`FALLBACK_CODE`]; the detail is this error's message.
    #[must_use]
    pub fn into_redis_error(self) -> redis::RedisError {
        let redis_cause = |source: &Option<Source>| {
            source.as_ref().and_then(|s| {
                s.downcast_ref::<redis::RedisError>().cloned().or_else(|| {
                    match s.downcast_ref::<resilient_redis_pool::PoolError>() {
                        Some(resilient_redis_pool::PoolError::Command { source, .. }) => {
                            Some(source.clone())
                        }
                        Some(e @ resilient_redis_pool::PoolError::CommandTimeout(_)) => {
                            Some(redis::RedisError::from(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                e.to_string(),
                            )))
                        }
                        _ => None,
                    }
                })
            })
        };
        let detail = self.to_string();
        match self {
            Error::Server {
                source: Some(e), ..
            } => e,
            Error::Server { code, .. } => {
                redis::make_extension_error(code.unwrap_or_else(|| "ERR".into()), Some(detail))
            }
            Error::Ambiguous { .. } => {
                redis::make_extension_error(AMBIGUOUS_CODE.into(), Some(detail))
            }
            Error::Unavailable {
                kind: ErrorKind::Fallback,
                ..
            } => redis::make_extension_error(FALLBACK_CODE.into(), Some(detail)),
            Error::Unavailable { ref source, .. } => redis_cause(source).unwrap_or_else(|| {
                redis::make_extension_error(UNAVAILABLE_CODE.into(), Some(detail))
            }),
            // Memory refuses as Redis would have: the same codes.
            Error::Fallback(resilient_redis_fallback::FallbackError::WrongType) => {
                redis::make_extension_error(
                    "WRONGTYPE".into(),
                    Some("Operation against a key holding the wrong kind of value".into()),
                )
            }
            Error::Fallback(resilient_redis_fallback::FallbackError::NotAnInteger) => {
                redis::make_extension_error(
                    "ERR".into(),
                    Some("value is not an integer or out of range".into()),
                )
            }
            Error::Fallback(_) => redis::make_extension_error(FALLBACK_CODE.into(), Some(detail)),
            Error::Closed => redis::make_extension_error(UNAVAILABLE_CODE.into(), Some(detail)),
            Error::Validation(_) | Error::Config(_) | Error::Build(_) => {
                redis::RedisError::from((redis::ErrorKind::Client, "invalid request", detail))
            }
        }
    }
}
