//! States, permits and snapshots.

use std::fmt;

/// The state of a circuit breaker, numbered as Resilience4j numbers them (the gauge value of
/// `redis.circuit_breaker.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls flow; outcomes are measured and may open the breaker.
    Closed = 0,
    /// Calls are rejected until the open time has passed.
    Open = 1,
    /// A few trial calls decide between closing and opening again.
    HalfOpen = 2,
    /// Every call is permitted and nothing is measured. Left only by an explicit transition.
    Disabled = 3,
    /// Every call is rejected. Left only by an explicit transition.
    ForcedOpen = 4,
    /// Every call is permitted and measured, but the breaker never opens. Left only by an
    /// explicit transition.
    MetricsOnly = 5,
}

impl BreakerState {
    pub(crate) const ALL: [BreakerState; 6] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
        BreakerState::Disabled,
        BreakerState::ForcedOpen,
        BreakerState::MetricsOnly,
    ];

    pub(crate) fn from_u8(n: u8) -> BreakerState {
        Self::ALL
            .get(usize::from(n))
            .copied()
            .unwrap_or(BreakerState::Closed)
    }

    /// The gauge value (Resilience4j's numbering).
    #[must_use]
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Lower-case name for logs and metrics (`half_open`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Disabled => "disabled",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::MetricsOnly => "metrics_only",
        }
    }

    /// Whether an explicit transition from `self` to `to` is allowed. Moving to the same state
    /// is allowed and does nothing. Refused: CLOSED → HALF_OPEN (nothing to try yet) and
    /// METRICS_ONLY → OPEN / HALF_OPEN (a metrics-only breaker never opens).
    #[must_use]
    pub fn can_transition_to(self, to: BreakerState) -> bool {
        !matches!(
            (self, to),
            (BreakerState::Closed, BreakerState::HalfOpen)
                | (
                    BreakerState::MetricsOnly,
                    BreakerState::Open | BreakerState::HalfOpen
                )
        )
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Permission for one call, from [`crate::CircuitBreaker::try_acquire`].
///
/// Hand it back exactly once: to `on_success`, `on_error` or `release_permission`. It remembers
/// the breaker state it was issued in, so the outcome of a call that started before a
/// transition (a slow call from CLOSED finishing in HALF_OPEN, say) is not counted as a trial
/// call and cannot return a trial permit it never took. A permit that is dropped instead of handed
/// back is lost to HALF_OPEN's budget; [`crate::CircuitBreakerExt::call`] never drops one.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be handed back with on_success, on_error or release_permission"]
pub struct Permit {
    tag: u64,
}

impl Permit {
    /// A permit carrying `tag`. Breakers choose what the tag means; [`crate::Breaker`] uses the
    /// number of the state it was issued in. Other implementations and mocks can use any value.
    pub fn new(tag: u64) -> Self {
        Self { tag }
    }

    /// The tag given at issue.
    #[must_use]
    pub fn tag(&self) -> u64 {
        self.tag
    }
}

/// A point-in-time view of a breaker's figures.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The state.
    pub state: BreakerState,
    /// Failed calls in percent of the measured calls, once there are enough of them
    /// (`minimum_calls`, or every trial call in HALF_OPEN); `None` before.
    pub failure_rate: Option<f64>,
    /// Slow calls in percent, on the same terms as `failure_rate`.
    pub slow_call_rate: Option<f64>,
    /// Calls in the window (the sliding window when CLOSED or METRICS_ONLY, the trial calls
    /// when HALF_OPEN).
    pub buffered_calls: u32,
    /// Failed calls among them.
    pub failed_calls: u32,
    /// Slow calls among them (failed or not).
    pub slow_calls: u32,
    /// Consecutive failures in CLOSED.
    pub consecutive_failures: u32,
    /// Calls rejected since the breaker was built.
    pub not_permitted_calls: u64,
    /// Times the breaker opened (by thresholds, a failed trial or `force_open` excluded).
    pub trips: u64,
}

impl BreakerSnapshot {
    /// A snapshot in `state` with no figures yet (for breakers written outside this crate,
    /// which fill in what they measure).
    #[must_use]
    pub fn new(state: BreakerState) -> Self {
        Self {
            state,
            failure_rate: None,
            slow_call_rate: None,
            buffered_calls: 0,
            failed_calls: 0,
            slow_calls: 0,
            consecutive_failures: 0,
            not_permitted_calls: 0,
            trips: 0,
        }
    }
}
