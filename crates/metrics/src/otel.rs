//! OpenTelemetry instruments (database-client semantic conventions), a Prometheus exporter, and
//! the tracing span of an operation.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::Outcome;
use crate::collector::Gauges;

/// The instrument and attribute names, as OpenTelemetry's database-client conventions and this
/// project define them.
pub mod names {
    /// Operation latency, seconds (histogram).
    pub const OPERATION_DURATION: &str = "db.client.operation.duration";
    /// Open connections by state (gauge, attribute `db.client.connection.state` = `idle|used`).
    pub const CONNECTION_COUNT: &str = "db.client.connection.count";
    /// Callers waiting for a connection (gauge).
    pub const PENDING_REQUESTS: &str = "db.client.connection.pending_requests";
    /// Time a checkout waited, seconds (histogram).
    pub const WAIT_TIME: &str = "db.client.connection.wait_time";
    /// Checkouts that timed out (counter).
    pub const TIMEOUTS: &str = "db.client.connection.timeouts";
    /// Breaker state: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only.
    pub const BREAKER_STATE: &str = "redis.circuit_breaker.state";
    /// 1 while in fallback mode (gauge).
    pub const FALLBACK_ACTIVE: &str = "redis.fallback.active";
    /// Journaled writes waiting for replay (gauge).
    pub const FALLBACK_PENDING: &str = "redis.fallback.journal.pending";
    /// Acknowledged writes Redis refused at replay, kept as dead letters (counter).
    pub const FALLBACK_DEAD_LETTERS: &str = "redis.fallback.dead_letters";
    /// Health probe duration, seconds (histogram).
    pub const HEALTH_CHECK_DURATION: &str = "redis.health.check.duration";
    /// `db.system.name` (always `redis`).
    pub const SYSTEM: &str = "db.system.name";
    /// `db.operation.name` (`get`, `set`, ...; never a key).
    pub const OPERATION: &str = "db.operation.name";
    /// `error.type` (the error kind, `timeout_error`, ...), on failed operations only.
    pub const ERROR_TYPE: &str = "error.type";
    /// `db.client.connection.state`.
    pub const CONNECTION_STATE: &str = "db.client.connection.state";
}

pub(crate) struct Instruments {
    duration: Histogram<f64>,
    wait: Histogram<f64>,
    timeouts: Counter<u64>,
    health: Histogram<f64>,
}

/// `db.system.name = redis` (static strings: no allocation).
fn system() -> KeyValue {
    KeyValue::new(names::SYSTEM, "redis")
}

impl Instruments {
    pub(crate) fn new(meter: &Meter, gauges: &Arc<Gauges>) -> Self {
        let g = Arc::clone(gauges);
        meter
            .u64_observable_gauge(names::CONNECTION_COUNT)
            .with_description("Open connections by state")
            .with_unit("{connection}")
            .with_callback(move |o| {
                let pool = *g.pool.lock().unwrap_or_else(PoisonError::into_inner);
                // Shared (multiplexed) connections serve callers all the time: used.
                let used = u64::from(pool.in_use + pool.shared_up);
                let idle = u64::from(pool.idle);
                o.observe(
                    idle,
                    &[system(), KeyValue::new(names::CONNECTION_STATE, "idle")],
                );
                o.observe(
                    used,
                    &[system(), KeyValue::new(names::CONNECTION_STATE, "used")],
                );
            })
            .build();
        let g = Arc::clone(gauges);
        meter
            .u64_observable_gauge(names::PENDING_REQUESTS)
            .with_description("Callers waiting for a connection")
            .with_unit("{request}")
            .with_callback(move |o| {
                let pool = *g.pool.lock().unwrap_or_else(PoisonError::into_inner);
                o.observe(u64::from(pool.waiters), &[system()]);
            })
            .build();
        let g = Arc::clone(gauges);
        meter
            .u64_observable_gauge(names::BREAKER_STATE)
            .with_description("Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only")
            .with_callback(move |o| {
                if g.breaker_seen.load(Ordering::Relaxed) {
                    o.observe(u64::from(g.breaker_value.load(Ordering::Relaxed)), &[system()]);
                }
            })
            .build();
        let g = Arc::clone(gauges);
        meter
            .u64_observable_gauge(names::FALLBACK_ACTIVE)
            .with_description("1 while the in-memory fallback serves")
            .with_callback(move |o| {
                o.observe(
                    u64::from(g.fallback_active.load(Ordering::Relaxed)),
                    &[system()],
                )
            })
            .build();
        let g = Arc::clone(gauges);
        meter
            .u64_observable_gauge(names::FALLBACK_PENDING)
            .with_description("Journaled writes waiting for replay")
            .with_unit("{write}")
            .with_callback(move |o| {
                o.observe(g.fallback_pending.load(Ordering::Relaxed), &[system()])
            })
            .build();
        let g = Arc::clone(gauges);
        meter
            .u64_observable_counter(names::FALLBACK_DEAD_LETTERS)
            .with_description("Acknowledged writes Redis refused at replay, kept as dead letters")
            .with_unit("{write}")
            .with_callback(move |o| {
                o.observe(g.fallback_dead_letters.load(Ordering::Relaxed), &[system()])
            })
            .build();
        Self {
            duration: meter
                .f64_histogram(names::OPERATION_DURATION)
                .with_description("Duration of database client operations")
                .with_unit("s")
                .with_boundaries(vec![
                    0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0,
                ])
                .build(),
            wait: meter
                .f64_histogram(names::WAIT_TIME)
                .with_description("Time to obtain an open connection from the pool")
                .with_unit("s")
                .build(),
            timeouts: meter
                .u64_counter(names::TIMEOUTS)
                .with_description("Connection checkouts that timed out")
                .with_unit("{timeout}")
                .build(),
            health: meter
                .f64_histogram(names::HEALTH_CHECK_DURATION)
                .with_description("Duration of health probes")
                .with_unit("s")
                .build(),
        }
    }

    #[inline]
    pub(crate) fn operation(&self, operation: &'static str, duration: Duration, outcome: Outcome) {
        let op = KeyValue::new(names::OPERATION, operation);
        match outcome {
            Outcome::Error(kind) => self.duration.record(
                duration.as_secs_f64(),
                &[
                    system(),
                    op,
                    KeyValue::new(names::ERROR_TYPE, kind.as_str()),
                ],
            ),
            Outcome::Success | Outcome::Fallback => self
                .duration
                .record(duration.as_secs_f64(), &[system(), op]),
        }
    }

    pub(crate) fn pool(&self, wait: Option<Duration>, new_timeouts: u64) {
        if let Some(w) = wait {
            self.wait.record(w.as_secs_f64(), &[system()]);
        }
        if new_timeouts > 0 {
            self.timeouts.add(new_timeouts, &[system()]);
        }
    }

    pub(crate) fn health(&self, d: Duration) {
        self.health.record(d.as_secs_f64(), &[system()]);
    }
}

/// The span of one operation, after OpenTelemetry's database span conventions, for
/// `tracing-opentelemetry`: `db.system.name`, `db.operation.name`, `otel.kind = client`, and
/// `error.type` (recorded on failure). Never a key or a value.
#[must_use]
pub fn operation_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "redis",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = operation,
        error.type = tracing::field::Empty,
    )
}

/// Everything a `/metrics` endpoint needs: a meter provider whose instruments a Prometheus
/// registry reads, and the text exposition of that registry.
#[derive(Clone)]
pub struct PrometheusExporter {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
}

impl std::fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusExporter").finish_non_exhaustive()
    }
}

impl PrometheusExporter {
    /// A new registry and meter provider.
    ///
    /// # Errors
    /// When the exporter cannot be built.
    pub fn new() -> Result<Self, opentelemetry_sdk::error::OTelSdkError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        Ok(Self { registry, provider })
    }

    /// The meter to give [`crate::Collector::with_meter`].
    #[must_use]
    pub fn meter(&self) -> Meter {
        self.provider.meter("resilient-redis")
    }

    /// The Prometheus text exposition of every instrument.
    #[must_use]
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}
