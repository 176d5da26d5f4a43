//! The health status a monitor reports.

use std::time::{Duration, SystemTime};

/// The health monitor's view: the verdict and the figures behind it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HealthStatus {
    /// The verdict, with hysteresis: it turns false after `failure_threshold` consecutive
    /// failed probes and true again after `success_threshold` consecutive good ones. Before the
    /// first probe it is `true` (innocent until proven otherwise), with `checks == 0`.
    pub healthy: bool,
    /// How long the last probe took (up to its timeout); `None` before the first.
    pub response_time: Option<Duration>,
    /// When the last probe finished (wall clock, for reports).
    pub timestamp: SystemTime,
    /// Why the last probe failed; `None` when it succeeded.
    pub error: Option<String>,
    /// Failed probes in the rolling window, 0..=1.
    pub failure_rate: f64,
    /// Good probes in the rolling window, 0..=1.
    pub success_rate: f64,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// Good probes in a row.
    pub consecutive_successes: u32,
    /// Probes made since start.
    pub checks: u64,
}

impl Default for HealthStatus {
    /// Before the first probe: healthy, nothing measured.
    fn default() -> Self {
        Self::initial()
    }
}

impl HealthStatus {
    /// A status with this verdict and the last probe's error (for health monitors written
    /// outside this crate, and for tests); the figures start at zero.
    #[must_use]
    pub fn new(healthy: bool, error: Option<String>) -> Self {
        Self {
            healthy,
            error,
            ..Self::initial()
        }
    }

    pub(crate) fn initial() -> Self {
        Self {
            healthy: true,
            response_time: None,
            timestamp: SystemTime::now(),
            error: None,
            failure_rate: 0.0,
            success_rate: 0.0,
            consecutive_failures: 0,
            consecutive_successes: 0,
            checks: 0,
        }
    }
}
