#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod collector;
mod histogram;
mod otel;
mod report;

use std::sync::Arc;
use std::time::Duration;

use resilient_redis_config::ErrorKind;
/// The pool's figures: the pool reports them, the metrics record them.
pub use resilient_redis_config::PoolStatus;
use serde::Serialize;

pub use collector::{Collector, CollectorBuilder, NoopMetrics};
#[cfg(feature = "prometheus")]
pub use otel::PrometheusExporter;
pub use otel::{Server, names, operation_span, record_error};
pub use report::{PerformanceReport, Recommendation, thresholds};

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Redis answered.
    Success,
    /// Redis was down and the fallback store answered.
    Fallback,
    /// It failed, with this kind.
    Error(ErrorKind),
    /// Redis answered with an error reply (kind `server_error`) with this code (`WRONGTYPE`,
    /// `NOPERM`, ...; `ERR` for a reply without one).
    ServerError(&'static str),
}

impl Outcome {
    /// The error kind of a failed outcome.
    #[must_use]
    pub fn error_kind(self) -> Option<ErrorKind> {
        match self {
            Outcome::Error(kind) => Some(kind),
            Outcome::ServerError(_) => Some(ErrorKind::Server),
            Outcome::Success | Outcome::Fallback => None,
        }
    }
}

/// Something that happened on the request path, beside an operation's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The operation was attempted again `retries` times after failures.
    Retried {
        /// The operation.
        operation: &'static str,
        /// Repeated attempts.
        retries: u32,
    },
    /// A write whose outcome is unknown was refused to the caller as ambiguous.
    Ambiguous {
        /// The operation.
        operation: &'static str,
    },
}

/// The breaker's state, as the metrics need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BreakerGauge {
    /// Lower-case state name (`closed`, `open`, `half_open`, ...).
    pub state: &'static str,
    /// The state's number (0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics
    /// only).
    pub value: u8,
    /// Times the breaker opened since start.
    pub trips: u64,
}

impl BreakerGauge {
    /// A breaker gauge.
    #[must_use]
    pub fn new(state: &'static str, value: u8, trips: u64) -> Self {
        Self {
            state,
            value,
            trips,
        }
    }
}

/// What the fallback store is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FallbackGauge {
    /// In fallback mode.
    pub active: bool,
    /// Journaled writes waiting for replay.
    pub pending: u64,
    /// Acknowledged writes Redis refused at replay, kept as dead letters (since the start).
    pub dead_letters: u64,
    /// Journaled writes replayed into Redis (since the start).
    pub replayed: u64,
    /// Bytes the store holds (0 with `limit` 0: not known).
    pub bytes: u64,
    /// The store's bound in bytes (0: not known).
    pub limit: u64,
}

impl FallbackGauge {
    /// A fallback gauge.
    #[must_use]
    pub fn new(active: bool, pending: u64) -> Self {
        Self {
            active,
            pending,
            dead_letters: 0,
            replayed: 0,
            bytes: 0,
            limit: 0,
        }
    }

    /// With the count of writes replayed so far.
    #[must_use]
    pub fn with_replayed(mut self, replayed: u64) -> Self {
        self.replayed = replayed;
        self
    }

    /// With the bytes the store holds and its bound.
    #[must_use]
    pub fn with_memory(mut self, bytes: u64, limit: u64) -> Self {
        self.bytes = bytes;
        self.limit = limit;
        self
    }

    /// With the count of dead letters so far.
    #[must_use]
    pub fn with_dead_letters(mut self, dead_letters: u64) -> Self {
        self.dead_letters = dead_letters;
        self
    }
}

/// One health probe's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthGauge {
    /// The verdict after the probe.
    pub healthy: bool,
    /// How long the probe took.
    pub check_duration: Duration,
}

impl HealthGauge {
    /// A health gauge.
    #[must_use]
    pub fn new(healthy: bool, check_duration: Duration) -> Self {
        Self {
            healthy,
            check_duration,
        }
    }
}

/// The figures over the retention window: operation counts, latencies, error rates and gauges.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Operations in the window.
    pub total_operations: u64,
    /// Answered by Redis.
    pub successful_operations: u64,
    /// Failed.
    pub failed_operations: u64,
    /// Answered by the fallback store.
    pub fallback_operations: u64,
    /// Slower than `metrics.reporting_threshold`.
    pub slow_operations: u64,
    /// Mean latency.
    pub average_response_time: Duration,
    /// Fastest.
    pub min_response_time: Duration,
    /// Slowest.
    pub max_response_time: Duration,
    /// Median.
    pub p50_response_time: Duration,
    /// 95th percentile.
    pub p95_response_time: Duration,
    /// 99th percentile.
    pub p99_response_time: Duration,
    /// Failed share of all operations, 0..=1.
    pub error_rate: f64,
    /// Failures by kind (`timeout_error`, ...).
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// Timeouts share of all operations, 0..=1.
    pub timeout_rate: f64,
    /// Since the collector started.
    pub uptime: Duration,
    /// The pool's latest figures.
    pub pool: PoolStatus,
    /// Share of the pool in use, 0..=1.
    pub pool_utilisation: f64,
    /// The breaker's latest state.
    pub breaker: Option<BreakerGauge>,
    /// When the breaker opened within the window (Unix ms).
    pub breaker_trips: Vec<u64>,
    /// The fallback store's latest state.
    pub fallback: FallbackGauge,
    /// The latest health verdict.
    pub healthy: Option<bool>,
}

/// Collects operation figures and component gauges, and turns them into a report.
///
/// Object-safe, so the manager can hold an `Arc<dyn MetricsCollector>`; implemented for `Arc<T>`.
/// [`NoopMetrics`] is the "disabled" choice. With the `mock` feature, `MockMetricsCollector`
/// (mockall) implements it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait MetricsCollector: Send + Sync {
    /// Records one operation: its name (`get`, `set`, ...: never a key), duration and outcome.
    fn record_operation(&self, operation: &'static str, duration: Duration, outcome: Outcome);
    /// Records one operation that ended at `ended`, as
    /// [`record_operation`](Self::record_operation) does. The manager calls this one: it has
    /// just read the clock, so a collector that files operations by time need not read it
    /// again (a clock read is a good part of a record's cost). The default forwards to
    /// `record_operation`.
    fn record_operation_at(
        &self,
        operation: &'static str,
        duration: Duration,
        outcome: Outcome,
        ended: std::time::Instant,
    ) {
        let _ = ended;
        self.record_operation(operation, duration, outcome);
    }
    /// Records an event of the request path (a retry, an ambiguous outcome). The default does
    /// nothing.
    fn record_event(&self, event: Event) {
        let _ = event;
    }
    /// Records the pool's figures, and how long a checkout waited if one did.
    fn record_pool(&self, pool: PoolStatus, wait: Option<Duration>);
    /// Records the breaker's state.
    fn record_breaker_state(&self, breaker: BreakerGauge);
    /// Records the fallback store's state.
    fn record_fallback(&self, fallback: FallbackGauge);
    /// Records a health probe.
    fn record_health(&self, health: HealthGauge);
    /// The figures over the retention window.
    fn snapshot(&self) -> MetricsSnapshot;
    /// The performance report: summary, figures and recommendations.
    fn report(&self) -> PerformanceReport;
}

impl<T: MetricsCollector + ?Sized> MetricsCollector for Arc<T> {
    #[inline]
    fn record_operation(&self, operation: &'static str, duration: Duration, outcome: Outcome) {
        (**self).record_operation(operation, duration, outcome);
    }
    #[inline]
    fn record_operation_at(
        &self,
        operation: &'static str,
        duration: Duration,
        outcome: Outcome,
        ended: std::time::Instant,
    ) {
        (**self).record_operation_at(operation, duration, outcome, ended);
    }
    fn record_event(&self, event: Event) {
        (**self).record_event(event);
    }
    fn record_pool(&self, pool: PoolStatus, wait: Option<Duration>) {
        (**self).record_pool(pool, wait);
    }
    fn record_breaker_state(&self, breaker: BreakerGauge) {
        (**self).record_breaker_state(breaker);
    }
    fn record_fallback(&self, fallback: FallbackGauge) {
        (**self).record_fallback(fallback);
    }
    fn record_health(&self, health: HealthGauge) {
        (**self).record_health(health);
    }
    fn snapshot(&self) -> MetricsSnapshot {
        (**self).snapshot()
    }
    fn report(&self) -> PerformanceReport {
        (**self).report()
    }
}

const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn MetricsCollector>();
};
