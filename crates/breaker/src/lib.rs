#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod error;
mod ext;
mod machine;
mod noop;
mod state;
mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use error::{BreakerError, CallNotPermitted};
pub use ext::{CallError, CircuitBreakerExt, PermitGuard, Record};
pub use machine::{Breaker, BreakerBuilder};
pub use noop::NoopBreaker;
pub use state::{BreakerSnapshot, BreakerState, Permit};

/// A circuit breaker: a policy that decides whether a call may go ahead and learns from how
/// calls went. It wraps nothing itself; [`CircuitBreakerExt::call`] runs an operation under it.
///
/// Modelled on Resilience4j's `CircuitBreaker`. Object-safe, so the manager can hold an
/// `Arc<dyn CircuitBreaker>`; implemented for `Arc<T>` and `Box<T>`. With the `mock` feature,
/// `MockCircuitBreaker` (mockall) implements it for unit tests.
///
/// Every [`Permit`] from [`CircuitBreaker::try_acquire`] goes back exactly once through
/// [`CircuitBreaker::on_success`], [`CircuitBreaker::on_error`] or
/// [`CircuitBreaker::release_permission`] (for a call whose outcome should not count).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait CircuitBreaker: Send + Sync {
    /// Asks to make a call.
    ///
    /// # Errors
    /// [`CallNotPermitted`] when the breaker is open, forced open, or out of trial permits.
    fn try_acquire(&self) -> Result<Permit, CallNotPermitted>;

    /// Records a call that succeeded after `elapsed` (slow if `elapsed` ≥ the slow-call duration).
    fn on_success(&self, permit: Permit, elapsed: Duration);

    /// Records a call that failed after `elapsed`.
    fn on_error(&self, permit: Permit, elapsed: Duration);

    /// Returns a permit whose call should not count (an ignored error, a cancelled call); in
    /// HALF_OPEN the trial permit becomes available again.
    fn release_permission(&self, permit: Permit);

    /// The current state.
    fn state(&self) -> BreakerState;

    /// A receiver that sees every state change (never a change to the same state).
    fn subscribe(&self) -> watch::Receiver<BreakerState>;

    /// The current figures.
    fn snapshot(&self) -> BreakerSnapshot;

    /// Moves to `state`, if the state machine allows it from the current state (see
    /// [`BreakerState::can_transition_to`]). Moving to the current state does nothing.
    ///
    /// # Errors
    /// [`BreakerError::IllegalTransition`].
    fn transition_to(&self, state: BreakerState) -> Result<(), BreakerError>;

    /// Back to CLOSED with empty windows and no memory of earlier trips.
    fn reset(&self);
}

/// The state changes every breaker supports, as named operations.
pub trait CircuitBreakerControl: CircuitBreaker {
    /// Rejects every call until another explicit transition.
    fn force_open(&self) {
        // Allowed from every state.
        let _ = self.transition_to(BreakerState::ForcedOpen);
    }

    /// Permits every call and measures nothing until another explicit transition.
    fn disable(&self) {
        let _ = self.transition_to(BreakerState::Disabled);
    }

    /// Permits and measures every call but never opens, until another explicit transition.
    fn metrics_only(&self) {
        let _ = self.transition_to(BreakerState::MetricsOnly);
    }
}

impl<B: CircuitBreaker + ?Sized> CircuitBreakerControl for B {}

macro_rules! forward {
    ($ty:ty) => {
        impl<T: CircuitBreaker + ?Sized> CircuitBreaker for $ty {
            #[inline]
            fn try_acquire(&self) -> Result<Permit, CallNotPermitted> {
                (**self).try_acquire()
            }
            #[inline]
            fn on_success(&self, permit: Permit, elapsed: Duration) {
                (**self).on_success(permit, elapsed);
            }
            #[inline]
            fn on_error(&self, permit: Permit, elapsed: Duration) {
                (**self).on_error(permit, elapsed);
            }
            fn release_permission(&self, permit: Permit) {
                (**self).release_permission(permit);
            }
            fn state(&self) -> BreakerState {
                (**self).state()
            }
            fn subscribe(&self) -> watch::Receiver<BreakerState> {
                (**self).subscribe()
            }
            fn snapshot(&self) -> BreakerSnapshot {
                (**self).snapshot()
            }
            fn transition_to(&self, state: BreakerState) -> Result<(), BreakerError> {
                (**self).transition_to(state)
            }
            fn reset(&self) {
                (**self).reset();
            }
        }
    };
}

forward!(Arc<T>);
forward!(Box<T>);

// The manager holds `Arc<dyn CircuitBreaker>`: keep the trait object-safe and thread-safe.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn CircuitBreaker>();
    assert_send_sync::<Arc<dyn CircuitBreaker>>();
};
