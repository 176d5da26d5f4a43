//! The breaker's errors.

use crate::BreakerState;

/// A call was not permitted: the breaker is open, forced open, or out of trial permits.
///
/// Small and `Copy` so that the rejection path allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is {state}: call not permitted")]
pub struct CallNotPermitted {
    /// The state that refused the call.
    pub state: BreakerState,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerError {
    /// A call was not permitted.
    #[error(transparent)]
    NotPermitted(#[from] CallNotPermitted),
    /// An explicit transition the state machine does not allow.
    #[error("circuit breaker cannot move from {from} to {to}")]
    IllegalTransition {
        /// The state it is in.
        from: BreakerState,
        /// The state asked for.
        to: BreakerState,
    },
    /// The configuration breaks a rule.
    #[error("invalid circuit breaker configuration: {0}")]
    Config(#[from] resilient_redis_config::ConfigError),
}

impl BreakerError {
    /// True for a rejected call (the only kind the request path meets).
    #[must_use]
    pub fn is_not_permitted(&self) -> bool {
        matches!(self, BreakerError::NotPermitted(_))
    }
}
