//! A breaker that permits everything.

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    BreakerError, BreakerSnapshot, BreakerState, CallNotPermitted, CircuitBreaker, Permit,
};

/// A breaker that permits every call and measures nothing: the choice "no circuit breaker",
/// without `if enabled` checks at the call sites. Its state is always DISABLED.
#[derive(Debug)]
pub struct NoopBreaker {
    states: watch::Sender<BreakerState>,
}

impl Default for NoopBreaker {
    fn default() -> Self {
        Self {
            states: watch::Sender::new(BreakerState::Disabled),
        }
    }
}

impl NoopBreaker {
    /// A breaker that permits everything.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl CircuitBreaker for NoopBreaker {
    fn try_acquire(&self) -> Result<Permit, CallNotPermitted> {
        Ok(Permit::new(0))
    }
    fn on_success(&self, _permit: Permit, _elapsed: Duration) {}
    fn on_error(&self, _permit: Permit, _elapsed: Duration) {}
    fn release_permission(&self, _permit: Permit) {}
    fn state(&self) -> BreakerState {
        BreakerState::Disabled
    }
    fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.states.subscribe()
    }
    fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot::new(BreakerState::Disabled)
    }
    /// A no-op breaker stays DISABLED.
    fn transition_to(&self, state: BreakerState) -> Result<(), BreakerError> {
        if state == BreakerState::Disabled {
            Ok(())
        } else {
            Err(BreakerError::IllegalTransition {
                from: BreakerState::Disabled,
                to: state,
            })
        }
    }
    fn reset(&self) {}
}
