//! The manager's health report.

use std::time::Duration;

use resilient_redis_config::PoolStatus;
use serde::{Serialize, Serializer};

/// A duration as milliseconds (fractional), the unit dashboards and probes read.
#[allow(
    clippy::ref_option,
    reason = "serde's serialize_with passes the field by reference"
)]
fn millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

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
    /// The server it is about, never with a password: `host:port/db`, or in sentinel mode
    /// `sentinel:<master_name>@<sentinels>/<db>` (the probe goes to the primary they name).
    pub server: String,
    /// Whether the PING succeeded: one made just now ([`RedisManager::health_check`]), or the
    /// health monitor's last ([`RedisManager::health_report`]).
    ///
    /// [`RedisManager::health_check`]: crate::RedisManager::health_check
    /// [`RedisManager::health_report`]: crate::RedisManager::health_report
    pub redis_reachable: bool,
    /// How long that PING took (serialised as `latency_ms`, in milliseconds).
    #[serde(rename = "latency_ms", serialize_with = "millis")]
    pub latency: Option<Duration>,
    /// Why it failed.
    pub error: Option<String>,
    /// The breaker's state.
    pub breaker: &'static str,
    /// The pool's figures.
    pub pool: PoolStatus,
    /// Whether the fallback serves.
    pub fallback_mode: bool,
    /// In cluster mode, how many of the 16384 slots the fallback serves (the slots of the
    /// primaries that failed, or all); `None` outside cluster mode (and then not serialised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_slots: Option<u32>,
    /// Journaled writes waiting for replay.
    pub pending_writes: u64,
    /// Acknowledged writes Redis refused at replay since the start, kept as dead letters in the
    /// journal (`resilient-redis journal inspect` lists them).
    pub dead_letters: u64,
    /// Failed share of recent operations.
    pub error_rate: f64,
}
