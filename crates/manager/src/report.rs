//! The manager's health report.

use std::time::Duration;

use serde::Serialize;

/// The overall verdict, for a readiness probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Verdict {
    /// Redis answers, the breaker is closed, the error rate is low.
    Healthy,
    /// Serving, but not as designed: from the fallback, with the breaker not closed, or with
    /// errors at 5 % or more.
    Degraded,
    /// Redis does not answer and the fallback is off: requests fail.
    Unhealthy,
}

/// One report across every part.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The verdict.
    pub verdict: Verdict,
    /// Whether a PING just now succeeded.
    pub redis_reachable: bool,
    /// How long that PING took.
    pub latency: Option<Duration>,
    /// Why it failed.
    pub error: Option<String>,
    /// The breaker's state.
    pub breaker: &'static str,
    /// The pool's figures, in words.
    pub pool: String,
    /// Whether the fallback serves.
    pub fallback_mode: bool,
    /// Journaled writes waiting for replay.
    pub pending_writes: u64,
    /// Acknowledged writes Redis refused at replay since the start, kept as dead letters in the
    /// journal (`resilient-redis journal inspect` lists them).
    pub dead_letters: u64,
    /// Failed share of recent operations.
    pub error_rate: f64,
}
