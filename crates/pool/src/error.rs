//! The pool's errors and how they classify.

use std::time::Duration;

use resilient_redis_config::ErrorKind;

use crate::PoolStatus;

/// Errors of the pool and of commands run on its connections.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No exclusive connection became free in time.
    #[error("no connection free within {waited:?} ({status})")]
    Timeout {
        /// How long the caller waited.
        waited: Duration,
        /// The pool when the wait ended.
        status: PoolStatus,
    },
    /// A connection could not be opened, or no shared connection is up.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// `Connection`, `Timeout`, `Auth` or `Tls`.
        kind: ErrorKind,
        /// The server, password redacted.
        url: String,
        /// What went wrong, in words.
        message: String,
    },
    /// A command failed (I/O, timeout, or an error reply).
    #[error("{kind}: {source}")]
    Command {
        /// How the failure classifies.
        kind: ErrorKind,
        /// redis-rs's error.
        #[source]
        source: redis::RedisError,
    },
    /// A command did not answer within the socket timeout.
    #[error("no reply within {0:?}")]
    CommandTimeout(Duration),
    /// The pool is closed.
    #[error("the connection pool is closed")]
    Closed,
}

impl PoolError {
    /// The failure kind.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            PoolError::Timeout { .. } => ErrorKind::PoolExhausted,
            PoolError::Connect { kind, .. } | PoolError::Command { kind, .. } => *kind,
            PoolError::CommandTimeout(_) => ErrorKind::Timeout,
            PoolError::Closed => ErrorKind::Closed,
        }
    }

    /// Whether the server may recover from it (see [`ErrorKind::is_transient`]).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// Whether the command may have reached the server before it failed: its outcome is
    /// unknown. False when it certainly never left (no connection, pool exhausted, closed) or
    /// the server answered with an error.
    #[must_use]
    pub fn outcome_unknown(&self) -> bool {
        match self {
            PoolError::CommandTimeout(_) => true,
            PoolError::Command { kind, .. } => {
                matches!(kind, ErrorKind::Connection | ErrorKind::Timeout)
            }
            _ => false,
        }
    }
}

/// Whether an error reply says the server is not ready rather than that the command is wrong:
/// LOADING (a restarting server reading its data), MASTERDOWN and READONLY (a failover in
/// progress), TRYAGAIN, CLUSTERDOWN (a cluster refusing commands until a replica takes over),
/// MOVED and ASK (a slot that moved, from a cluster connection that does not follow
/// redirects). Each proves the command did not run; a caller may send it again. (`classify`
/// keeps them `Server`: they are replies, not a lost connection whose outcome is unknown.)
#[must_use]
pub fn not_ready(err: &redis::RedisError) -> bool {
    matches!(
        err.code(),
        Some("LOADING" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN" | "MOVED" | "ASK")
    )
}

/// How a redis-rs error classifies.
#[must_use]
pub fn classify(err: &redis::RedisError) -> ErrorKind {
    use redis::ErrorKind as K;
    if is_tls_failure(err) {
        return ErrorKind::Tls;
    }
    if err.is_timeout() {
        return ErrorKind::Timeout;
    }
    if err.kind() == K::AuthenticationFailed || matches!(err.code(), Some("NOAUTH" | "WRONGPASS")) {
        return ErrorKind::Auth;
    }
    if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() {
        return ErrorKind::Connection;
    }
    if err.kind() == K::InvalidClientConfig {
        // redis-rs builds the rustls configuration as it connects, and reports a certificate
        // it cannot use (the client's own, say) as a client configuration error in words.
        if err.to_string().contains("TLS") {
            return ErrorKind::Tls;
        }
        return ErrorKind::Validation;
    }
    match err.kind() {
        // "ERR max number of clients reached" arrives as the connection is refused.
        K::Server(_) | K::Extension
            if err
                .detail()
                .is_some_and(|d| d.contains("max number of clients")) =>
        {
            ErrorKind::Connection
        }
        K::Server(redis::ServerErrorKind::NoPerm) => ErrorKind::NoPermission,
        K::Server(_) | K::Extension => ErrorKind::Server,
        K::Client | K::Parse | K::UnexpectedReturnType => ErrorKind::Validation,
        _ => ErrorKind::Connection,
    }
}

/// Whether a rustls error is among the error's causes (a refused certificate, a protocol
/// mismatch): decided by type, not by message. redis-rs keeps the I/O error in an
/// `Arc<dyn Error>`, and `io::Error::source` skips its own payload, so both are unwrapped here.
fn is_tls_failure(err: &redis::RedisError) -> bool {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let is_rustls = |e: &(dyn std::error::Error + 'static)| {
        e.is::<rustls::Error>()
            || e.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cause {
        if is_rustls(e)
            || e.downcast_ref::<Shared>()
                .is_some_and(|shared| is_rustls(shared.as_ref()))
        {
            return true;
        }
        cause = e.source();
    }
    false
}
