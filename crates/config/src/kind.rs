//! The shared vocabulary of failure kinds.

use std::fmt;

/// What kind of failure an error is. Every crate's error answers `kind()` with one of these, so
/// the breaker, the fallback and the metrics decide by kind, never by message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server could not be reached or the connection broke (refused, reset, closed).
    Connection,
    /// No reply in time: a connect, command or probe deadline passed.
    Timeout,
    /// The server refused the credentials (wrong password, unknown ACL user, NOAUTH).
    Auth,
    /// TLS negotiation failed (certificate, protocol).
    Tls,
    /// No pooled connection became free within the acquire timeout.
    PoolExhausted,
    /// The circuit breaker rejected the call.
    CircuitBreaker,
    /// The fallback store could not serve or accept the operation.
    Fallback,
    /// The input or configuration is invalid.
    Validation,
    /// The server answered with an error reply (`WRONGTYPE`, `OOM`, `LOADING`, ...).
    Server,
    /// The component was closed.
    Closed,
    /// The server refused the command for this user (an ACL `NOPERM` reply): a configuration
    /// problem, not an outage (never retried, never counted against the breaker).
    NoPermission,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`] (one counter per kind in the metrics).
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Auth,
        ErrorKind::Tls,
        ErrorKind::PoolExhausted,
        ErrorKind::CircuitBreaker,
        ErrorKind::Fallback,
        ErrorKind::Validation,
        ErrorKind::Server,
        ErrorKind::Closed,
        ErrorKind::NoPermission,
    ];

    /// Its position in [`ErrorKind::ALL`] (an exhaustive match: a new kind cannot be left out
    /// silently).
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            ErrorKind::Connection => 0,
            ErrorKind::Timeout => 1,
            ErrorKind::Auth => 2,
            ErrorKind::Tls => 3,
            ErrorKind::PoolExhausted => 4,
            ErrorKind::CircuitBreaker => 5,
            ErrorKind::Fallback => 6,
            ErrorKind::Validation => 7,
            ErrorKind::Server => 8,
            ErrorKind::Closed => 9,
            ErrorKind::NoPermission => 10,
        }
    }

    /// The stable name (`connection_error`), used as the `error.type` metric attribute.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Auth => "auth_error",
            ErrorKind::Tls => "tls_error",
            ErrorKind::PoolExhausted => "pool_exhausted_error",
            ErrorKind::CircuitBreaker => "circuit_breaker_error",
            ErrorKind::Fallback => "fallback_error",
            ErrorKind::Validation => "validation_error",
            ErrorKind::Server => "server_error",
            ErrorKind::Closed => "closed_error",
            ErrorKind::NoPermission => "no_permission_error",
        }
    }

    /// Whether the failure says the server is unwell and may pass (connection, timeout, pool
    /// exhausted): these count against the circuit breaker. Auth, TLS, validation and server
    /// replies do not: retrying or opening the breaker would not help.
    #[must_use]
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::PoolExhausted
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn every_kind_sits_at_its_index_and_has_its_own_name() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind}");
        }
        let mut names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
    }
}
