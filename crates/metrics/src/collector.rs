//! [`Collector`]: lock-free recording into a window of histograms.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use resilient_redis_config::{ErrorKind, MetricsConfig};

use crate::histogram::{Histogram, Merged};
use crate::otel::{BREAKER_STATES, Instruments, Server};
use crate::report::PerformanceReport;
use crate::{
    BreakerGauge, Event, FallbackGauge, HealthGauge, MetricsCollector, MetricsSnapshot, Outcome,
    PoolStatus,
};

/// Slots the retention window is cut into: it advances in sixths.
const SLOTS: usize = 6;

/// One error counter per kind, in the order of `ErrorKind::index`.
const KINDS: [ErrorKind; ErrorKind::ALL.len()] = ErrorKind::ALL;

fn kind_index(kind: ErrorKind) -> usize {
    kind.index()
}

/// Stripes per slot: each thread records into its own, so threads do not fight over cache lines.
const STRIPES: usize = 4;

/// One stripe's counters, on cache lines of its own.
#[repr(align(128))]
struct Stripe {
    latency: Histogram,
    ok: AtomicU64,
    fallback: AtomicU64,
    slow: AtomicU64,
    errors: [AtomicU64; KINDS.len()],
}

impl Stripe {
    fn new() -> Self {
        Self {
            latency: Histogram::new(),
            ok: AtomicU64::new(0),
            fallback: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn clear(&self) {
        self.latency.clear();
        self.ok.store(0, Ordering::Relaxed);
        self.fallback.store(0, Ordering::Relaxed);
        self.slow.store(0, Ordering::Relaxed);
        for e in &self.errors {
            e.store(0, Ordering::Relaxed);
        }
    }
}

struct Slot {
    period: AtomicU64,
    stripes: [Stripe; STRIPES],
}

impl Slot {
    fn new() -> Self {
        Self {
            period: AtomicU64::new(u64::MAX),
            stripes: std::array::from_fn(|_| Stripe::new()),
        }
    }

    fn clear(&self) {
        for s in &self.stripes {
            s.clear();
        }
    }
}

/// This thread's stripe: threads are dealt stripes in turn on first use.
fn stripe_index() -> usize {
    use std::cell::Cell;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|m| {
        let mut i = m.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            m.set(i);
        }
        i
    })
}

/// The latest component gauges; read by the OpenTelemetry callbacks.
#[derive(Default)]
pub(crate) struct Gauges {
    pub(crate) pool: Mutex<PoolStatus>,
    pub(crate) breaker_value: AtomicU8,
    pub(crate) breaker_seen: AtomicBool,
    pub(crate) fallback_active: AtomicBool,
    pub(crate) fallback_pending: AtomicU64,
    pub(crate) fallback_dead_letters: AtomicU64,
    pub(crate) fallback_replayed: AtomicU64,
    pub(crate) fallback_bytes: AtomicU64,
    pub(crate) fallback_limit: AtomicU64,
    pub(crate) healthy: AtomicU8, // 0 unknown, 1 unhealthy, 2 healthy
}

type Now = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The metrics collector: operation latencies in a window of lock-free log-linear histograms
/// (`retention_period`, advancing in sixths), error counts by kind, and the latest gauges of the
/// pool, breaker, fallback store and health monitor. Every figure is also exported through
/// OpenTelemetry instruments named by its database-client conventions: on the global meter
/// provider ([`opentelemetry::global`]) unless a meter is given ([`Collector::with_meter`],
/// [`CollectorBuilder::meter`]). The global provider is read when the collector is built:
/// install yours first.
pub struct Collector {
    slots: Box<[Slot]>,
    slot_nanos: u64,
    now: Now,
    /// The start of `now`'s count when it is the real clock: an instant the caller read is
    /// then turned into a period without reading the clock again.
    base: Option<Instant>,
    started: Instant,
    slow_nanos: u64,
    config: MetricsConfig,
    pub(crate) gauges: Arc<Gauges>,
    breaker: Mutex<Option<BreakerGauge>>,
    trips: Mutex<Vec<(u64, u64)>>, // (period, unix ms)
    otel: Option<Instruments>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("otel", &self.otel.is_some())
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Collector {
    /// A collector on the `[metrics]` settings, exporting on the global meter provider.
    #[must_use]
    pub fn new(config: &MetricsConfig) -> Self {
        Self::builder(config).build()
    }

    /// A collector that records into OpenTelemetry instruments made on `meter`.
    #[must_use]
    pub fn with_meter(config: &MetricsConfig, meter: &opentelemetry::metrics::Meter) -> Self {
        Self::builder(config).meter(meter.clone()).build()
    }

    /// A collector with a choice of meter and of the attributes naming the server.
    pub fn builder(config: &MetricsConfig) -> CollectorBuilder {
        CollectorBuilder {
            config: config.clone(),
            meter: Export::Global,
            server: None,
        }
    }

    /// A collector on Tokio's clock: the real one, except in a test that paused it, where the
    /// manager's timings (and the instants it files operations by) come from the paused clock
    /// too.
    fn on_tokio_clock(config: &MetricsConfig) -> Self {
        let base = tokio::time::Instant::now();
        let mut c = Self::with_clock(config, Arc::new(move || nanos(base.elapsed())));
        c.base = Some(base.into_std());
        c
    }

    /// A collector reading time (nanoseconds from any fixed start) from `now`, for tests.
    #[must_use]
    pub fn with_clock(config: &MetricsConfig, now: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            slot_nanos: (nanos(config.retention_period) / SLOTS as u64).max(1),
            now,
            base: None,
            started: Instant::now(),
            slow_nanos: nanos(config.reporting_threshold),
            config: config.clone(),
            gauges: Arc::new(Gauges::default()),
            breaker: Mutex::new(None),
            trips: Mutex::new(Vec::new()),
            otel: None,
        }
    }

    fn period(&self) -> u64 {
        (self.now)() / self.slot_nanos
    }

    /// Records one operation into `period`'s slot (and OpenTelemetry).
    fn record(&self, period: u64, operation: &'static str, duration: Duration, outcome: Outcome) {
        let n = nanos(duration);
        let slot = &self.slot(period).stripes[stripe_index()];
        slot.latency.record(n);
        match outcome {
            Outcome::Success => slot.ok.fetch_add(1, Ordering::Relaxed),
            Outcome::Fallback => slot.fallback.fetch_add(1, Ordering::Relaxed),
            Outcome::Error(kind) => slot.errors[kind_index(kind)].fetch_add(1, Ordering::Relaxed),
            Outcome::ServerError(_) => {
                slot.errors[kind_index(ErrorKind::Server)].fetch_add(1, Ordering::Relaxed)
            }
        };
        if n >= self.slow_nanos {
            slot.slow.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(otel) = &self.otel {
            otel.operation(operation, duration, outcome);
        }
    }

    #[inline]
    fn slot(&self, period: u64) -> &Slot {
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        let seen = slot.period.load(Ordering::Acquire);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The first recorder of a new period recycles the slot (samples racing this instant
            // may be lost; none is counted twice).
            slot.clear();
        }
        slot
    }

    fn merged(&self) -> (Merged, u64, u64, u64, [u64; KINDS.len()]) {
        let period = self.period();
        let oldest = period.saturating_sub(SLOTS as u64 - 1);
        let mut merged = Merged::new();
        let (mut ok, mut fallback, mut slow) = (0, 0, 0);
        let mut errors = [0u64; KINDS.len()];
        for slot in &*self.slots {
            let p = slot.period.load(Ordering::Acquire);
            if p == u64::MAX || p < oldest || p > period {
                continue;
            }
            for stripe in &slot.stripes {
                merged.add(&stripe.latency);
                ok += stripe.ok.load(Ordering::Relaxed);
                fallback += stripe.fallback.load(Ordering::Relaxed);
                slow += stripe.slow.load(Ordering::Relaxed);
                for (into, e) in errors.iter_mut().zip(&stripe.errors) {
                    *into += e.load(Ordering::Relaxed);
                }
            }
        }
        (merged, ok, fallback, slow, errors)
    }

    pub(crate) fn config(&self) -> &MetricsConfig {
        &self.config
    }
}

enum Export {
    Global,
    Meter(opentelemetry::metrics::Meter),
    Nowhere,
}

/// Builds a [`Collector`]: where its instruments are made and which server they describe.
#[must_use]
pub struct CollectorBuilder {
    config: MetricsConfig,
    meter: Export,
    server: Option<Server>,
}

impl std::fmt::Debug for CollectorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorBuilder")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl CollectorBuilder {
    /// Instruments on this meter instead of the global provider's.
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Export::Meter(meter);
        self
    }

    /// No OpenTelemetry instruments: only the snapshot and the report.
    pub fn no_export(mut self) -> Self {
        self.meter = Export::Nowhere;
        self
    }

    /// Every series carries `server.address`, `server.port`, `db.namespace` and
    /// `db.client.connection.pool.name` from `server`.
    pub fn server(mut self, server: Server) -> Self {
        self.server = Some(server);
        self
    }

    /// The collector.
    #[must_use]
    pub fn build(self) -> Collector {
        let mut c = Collector::on_tokio_clock(&self.config);
        let meter = match self.meter {
            Export::Global => Some(opentelemetry::global::meter("resilient-redis")),
            Export::Meter(m) => Some(m),
            Export::Nowhere => None,
        };
        c.otel = meter.map(|m| Instruments::new(&m, &c.gauges, self.server.as_ref()));
        c
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

impl MetricsCollector for Collector {
    #[inline]
    fn record_operation(&self, operation: &'static str, duration: Duration, outcome: Outcome) {
        self.record(self.period(), operation, duration, outcome);
    }

    fn record_operation_at(
        &self,
        operation: &'static str,
        duration: Duration,
        outcome: Outcome,
        ended: Instant,
    ) {
        let period = match self.base {
            Some(base) => nanos(ended.saturating_duration_since(base)) / self.slot_nanos,
            None => self.period(),
        };
        self.record(period, operation, duration, outcome);
    }

    fn record_event(&self, event: Event) {
        if let Some(otel) = &self.otel {
            otel.event(event);
        }
    }

    fn record_pool(&self, pool: PoolStatus, wait: Option<Duration>) {
        let before = std::mem::replace(
            &mut *self
                .gauges
                .pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            pool,
        )
        .timeouts;
        if let Some(otel) = &self.otel {
            otel.pool(wait, pool.timeouts.saturating_sub(before));
        }
    }

    fn record_breaker_state(&self, breaker: BreakerGauge) {
        self.gauges
            .breaker_value
            .store(breaker.value, Ordering::Relaxed);
        self.gauges.breaker_seen.store(true, Ordering::Relaxed);
        let mut last = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|l| l.value != breaker.value)
            && let Some(otel) = &self.otel
            && let Some(entered) = BREAKER_STATES.get(usize::from(breaker.value))
        {
            otel.transition(entered);
        }
        let new_trips = breaker.trips.saturating_sub(last.map_or(0, |b| b.trips));
        if new_trips > 0 {
            let period = self.period();
            let mut trips = self.trips.lock().unwrap_or_else(PoisonError::into_inner);
            let now = unix_ms();
            for _ in 0..new_trips.min(100) {
                trips.push((period, now));
            }
            let oldest = period.saturating_sub(SLOTS as u64 - 1);
            trips.retain(|(p, _)| *p >= oldest);
        }
        *last = Some(breaker);
    }

    fn record_fallback(&self, fallback: FallbackGauge) {
        self.gauges
            .fallback_active
            .store(fallback.active, Ordering::Relaxed);
        self.gauges
            .fallback_pending
            .store(fallback.pending, Ordering::Relaxed);
        self.gauges
            .fallback_dead_letters
            .fetch_max(fallback.dead_letters, Ordering::Relaxed);
        self.gauges
            .fallback_replayed
            .fetch_max(fallback.replayed, Ordering::Relaxed);
        self.gauges
            .fallback_bytes
            .store(fallback.bytes, Ordering::Relaxed);
        self.gauges
            .fallback_limit
            .store(fallback.limit, Ordering::Relaxed);
    }

    fn record_health(&self, health: HealthGauge) {
        self.gauges
            .healthy
            .store(if health.healthy { 2 } else { 1 }, Ordering::Relaxed);
        if let Some(otel) = &self.otel {
            otel.health(health.check_duration);
        }
    }

    fn snapshot(&self) -> MetricsSnapshot {
        let (latency, ok, fallback, slow, errors) = self.merged();
        let failed: u64 = errors.iter().sum();
        let total = latency.total;
        let rate = |n: u64| {
            if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            }
        };
        let g = &self.gauges;
        let pool = *g.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let period = self.period();
        let oldest = period.saturating_sub(SLOTS as u64 - 1);
        let breaker_trips = self
            .trips
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(p, _)| *p >= oldest)
            .map(|(_, at)| *at)
            .collect();
        MetricsSnapshot {
            total_operations: total,
            successful_operations: ok,
            failed_operations: failed,
            fallback_operations: fallback,
            slow_operations: slow,
            average_response_time: Duration::from_nanos(
                latency.sum.checked_div(total).unwrap_or(0),
            ),
            min_response_time: Duration::from_nanos(if total == 0 { 0 } else { latency.min }),
            max_response_time: Duration::from_nanos(latency.max),
            p50_response_time: Duration::from_nanos(latency.quantile(0.50)),
            p95_response_time: Duration::from_nanos(latency.quantile(0.95)),
            p99_response_time: Duration::from_nanos(latency.quantile(0.99)),
            error_rate: rate(failed),
            errors_by_kind: KINDS
                .iter()
                .zip(errors)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.as_str().to_owned(), n))
                .collect::<BTreeMap<_, _>>(),
            timeout_rate: rate(errors[kind_index(ErrorKind::Timeout)]),
            uptime: self.started.elapsed(),
            pool,
            pool_utilisation: pool.utilisation(),
            breaker: *self.breaker.lock().unwrap_or_else(PoisonError::into_inner),
            breaker_trips,
            fallback: FallbackGauge {
                active: g.fallback_active.load(Ordering::Relaxed),
                pending: g.fallback_pending.load(Ordering::Relaxed),
                dead_letters: g.fallback_dead_letters.load(Ordering::Relaxed),
                replayed: g.fallback_replayed.load(Ordering::Relaxed),
                bytes: g.fallback_bytes.load(Ordering::Relaxed),
                limit: g.fallback_limit.load(Ordering::Relaxed),
            },
            healthy: match g.healthy.load(Ordering::Relaxed) {
                0 => None,
                1 => Some(false),
                _ => Some(true),
            },
        }
    }

    fn report(&self) -> PerformanceReport {
        PerformanceReport::from_snapshot(self.snapshot(), self.config())
    }
}

/// Metrics switched off: records nothing, reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopMetrics;

impl MetricsCollector for NoopMetrics {
    #[inline]
    fn record_operation(&self, _: &'static str, _: Duration, _: Outcome) {}
    fn record_pool(&self, _: PoolStatus, _: Option<Duration>) {}
    fn record_breaker_state(&self, _: BreakerGauge) {}
    fn record_fallback(&self, _: FallbackGauge) {}
    fn record_health(&self, _: HealthGauge) {}
    fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot::default()
    }
    fn report(&self) -> PerformanceReport {
        PerformanceReport::from_snapshot(MetricsSnapshot::default(), &MetricsConfig::default())
    }
}
