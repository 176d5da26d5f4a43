//! OpenTelemetry instruments (database-client semantic conventions), a Prometheus exporter, and
//! the tracing span of an operation.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use crate::collector::Gauges;
use crate::{Event, Outcome};

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
    /// Breaker state: one series per state (attribute [`STATE`]), 1 for the current state and
    /// 0 for the others.
    pub const BREAKER_STATE: &str = "redis.circuit_breaker.state";
    /// Breaker state changes, by the state entered (attribute [`STATE`]) (counter).
    pub const BREAKER_TRANSITIONS: &str = "redis.circuit_breaker.transitions";
    /// 1 while in fallback mode (gauge).
    pub const FALLBACK_ACTIVE: &str = "redis.fallback.active";
    /// Journaled writes waiting for replay (gauge).
    pub const FALLBACK_PENDING: &str = "redis.fallback.journal.pending";
    /// Journaled writes replayed into Redis (counter).
    pub const FALLBACK_REPLAYED: &str = "redis.fallback.replayed";
    /// Acknowledged writes Redis refused at replay, kept as dead letters (counter).
    pub const FALLBACK_DEAD_LETTERS: &str = "redis.fallback.dead_letters";
    /// Bytes the fallback store holds (gauge, bytes).
    pub const FALLBACK_MEMORY_USAGE: &str = "redis.fallback.memory.usage";
    /// The fallback store's bound, `fallback.max_memory_size` (gauge, bytes).
    pub const FALLBACK_MEMORY_LIMIT: &str = "redis.fallback.memory.limit";
    /// Attempts repeated after a failure (counter, attribute `db.operation.name`).
    pub const RETRIES: &str = "redis.client.retries";
    /// Writes whose outcome is unknown, refused to the caller as ambiguous (counter, attribute
    /// `db.operation.name`).
    pub const AMBIGUOUS: &str = "redis.client.ambiguous_outcomes";
    /// Health probe duration, seconds (histogram).
    pub const HEALTH_CHECK_DURATION: &str = "redis.health.check.duration";
    /// The health verdict: 1 healthy, 0 unhealthy (gauge; absent before the first probe).
    pub const HEALTHY: &str = "redis.health.healthy";
    /// `db.system.name` (always `redis`).
    pub const SYSTEM: &str = "db.system.name";
    /// `db.operation.name`: the command, lower case (`get`, `set`, `hset`, ...; never a key).
    pub const OPERATION: &str = "db.operation.name";
    /// `error.type` (the error kind, `timeout_error`, ...), on failed operations only.
    pub const ERROR_TYPE: &str = "error.type";
    /// `db.response.status_code`: the error reply's code (`WRONGTYPE`, `NOPERM`, ...), on
    /// operations Redis answered with an error only.
    pub const STATUS_CODE: &str = "db.response.status_code";
    /// `resilient_redis.served_by`: `redis` or `memory` (the fallback store), on operations
    /// that succeeded.
    pub const SERVED_BY: &str = "resilient_redis.served_by";
    /// `db.client.connection.state`.
    pub const CONNECTION_STATE: &str = "db.client.connection.state";
    /// `server.address`: the Redis host.
    pub const SERVER_ADDRESS: &str = "server.address";
    /// `server.port`: the Redis port.
    pub const SERVER_PORT: &str = "server.port";
    /// `db.namespace`: the database index.
    pub const NAMESPACE: &str = "db.namespace";
    /// `db.client.connection.pool.name`: tells two managers in one process apart.
    pub const POOL_NAME: &str = "db.client.connection.pool.name";
    /// `state`: a breaker state (`closed`, `open`, `half_open`, `disabled`, `forced_open`,
    /// `metrics_only`).
    pub const STATE: &str = "state";
}

/// The breaker states, in the order of their gauge values.
pub(crate) const BREAKER_STATES: [&str; 6] = [
    "closed",
    "open",
    "half_open",
    "disabled",
    "forced_open",
    "metrics_only",
];

/// Where the operations go: the attributes every instrument of one collector carries, so two
/// managers in one process (or two Redis servers) are told apart.
///
/// ```
/// use resilient_redis_metrics::Server;
/// let server = Server::new("cache.internal", 6379).namespace(2).pool_name("sessions");
/// assert_eq!(server.pool_name_or_default(), "sessions");
/// assert_eq!(Server::new("cache.internal", 6379).pool_name_or_default(), "cache.internal:6379/0");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Server {
    /// `server.address`.
    pub address: String,
    /// `server.port`.
    pub port: u16,
    /// `db.namespace`: the database index.
    pub namespace: u16,
    /// `db.client.connection.pool.name`; `None`: `address:port/namespace`.
    pub pool_name: Option<String>,
}

impl Server {
    /// A server at `address:port`, database 0.
    #[must_use]
    pub fn new(address: impl Into<String>, port: u16) -> Self {
        Self {
            address: address.into(),
            port,
            namespace: 0,
            pool_name: None,
        }
    }

    /// With the database index.
    #[must_use]
    pub fn namespace(mut self, db: u16) -> Self {
        self.namespace = db;
        self
    }

    /// With a pool name of the application's choosing.
    #[must_use]
    pub fn pool_name(mut self, name: impl Into<String>) -> Self {
        self.pool_name = Some(name.into());
        self
    }

    /// The pool name: the chosen one, or `address:port/namespace`.
    #[must_use]
    pub fn pool_name_or_default(&self) -> String {
        self.pool_name
            .clone()
            .unwrap_or_else(|| format!("{}:{}/{}", self.address, self.port, self.namespace))
    }

    /// The four attributes naming the server, with interned text: a record copies them
    /// without allocating or touching a reference count (the operation histogram is recorded
    /// on every call, whether or not a meter provider is installed).
    fn attributes(&self) -> [KeyValue; 4] {
        [
            KeyValue::new(names::SERVER_ADDRESS, intern(self.address.clone())),
            KeyValue::new(names::SERVER_PORT, i64::from(self.port)),
            KeyValue::new(names::NAMESPACE, intern(self.namespace.to_string())),
            KeyValue::new(names::POOL_NAME, intern(self.pool_name_or_default())),
        ]
    }
}

/// `text` as a `&'static str`, leaked once per distinct text (server names and pool names: a
/// handful per process).
fn intern(text: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = seen.get(text.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(text.into_boxed_str());
    seen.insert(leaked);
    leaked
}

pub(crate) struct Instruments {
    /// The attributes every series carries (system, server, namespace, pool).
    base: Arc<[KeyValue]>,
    /// The attribute sets of operations seen, by operation and outcome.
    sets: AttributeSets,
    duration: Histogram<f64>,
    wait: Histogram<f64>,
    timeouts: Counter<u64>,
    health: Histogram<f64>,
    transitions: Counter<u64>,
    retries: Counter<u64>,
    ambiguous: Counter<u64>,
}

/// `db.system.name = redis` (static strings: no allocation).
fn system() -> KeyValue {
    KeyValue::new(names::SYSTEM, "redis")
}

/// `base` and then `more`.
fn with(base: &[KeyValue], more: &[KeyValue]) -> Vec<KeyValue> {
    let mut all = Vec::with_capacity(base.len() + more.len());
    all.extend_from_slice(base);
    all.extend_from_slice(more);
    all
}

impl Instruments {
    #[allow(clippy::too_many_lines)] // one registration per instrument, nothing else
    pub(crate) fn new(meter: &Meter, gauges: &Arc<Gauges>, server: Option<&Server>) -> Self {
        let server = server.map(Server::attributes);
        let base: Arc<[KeyValue]> = match &server {
            Some(s) => std::iter::once(system()).chain(s.iter().cloned()).collect(),
            None => vec![system()].into(),
        };
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        let (idle, used) = (
            with(&b, &[KeyValue::new(names::CONNECTION_STATE, "idle")]),
            with(&b, &[KeyValue::new(names::CONNECTION_STATE, "used")]),
        );
        meter
            .u64_observable_gauge(names::CONNECTION_COUNT)
            .with_description("Open connections by state")
            .with_unit("{connection}")
            .with_callback(move |o| {
                let pool = *g.pool.lock().unwrap_or_else(PoisonError::into_inner);
                // Shared (multiplexed) connections serve callers all the time: used.
                o.observe(u64::from(pool.idle), &idle);
                o.observe(u64::from(pool.in_use + pool.shared_up), &used);
            })
            .build();
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        meter
            .u64_observable_gauge(names::PENDING_REQUESTS)
            .with_description("Callers waiting for a connection")
            .with_unit("{request}")
            .with_callback(move |o| {
                let pool = *g.pool.lock().unwrap_or_else(PoisonError::into_inner);
                o.observe(u64::from(pool.waiters), &b);
            })
            .build();
        let g = Arc::clone(gauges);
        let per_state: Vec<Vec<KeyValue>> = BREAKER_STATES
            .iter()
            .map(|s| with(&base, &[KeyValue::new(names::STATE, *s)]))
            .collect();
        meter
            .u64_observable_gauge(names::BREAKER_STATE)
            .with_description("Circuit breaker state: 1 for the current state, 0 for the others")
            .with_callback(move |o| {
                if g.breaker_seen.load(Ordering::Relaxed) {
                    let now = usize::from(g.breaker_value.load(Ordering::Relaxed));
                    for (i, attrs) in per_state.iter().enumerate() {
                        o.observe(u64::from(i == now), attrs);
                    }
                }
            })
            .build();
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        meter
            .u64_observable_gauge(names::FALLBACK_ACTIVE)
            .with_description("1 while the in-memory fallback serves")
            .with_callback(move |o| {
                o.observe(u64::from(g.fallback_active.load(Ordering::Relaxed)), &b);
            })
            .build();
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        meter
            .u64_observable_gauge(names::FALLBACK_PENDING)
            .with_description("Journaled writes waiting for replay")
            .with_unit("{write}")
            .with_callback(move |o| o.observe(g.fallback_pending.load(Ordering::Relaxed), &b))
            .build();
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        meter
            .u64_observable_counter(names::FALLBACK_REPLAYED)
            .with_description("Journaled writes replayed into Redis")
            .with_unit("{write}")
            .with_callback(move |o| o.observe(g.fallback_replayed.load(Ordering::Relaxed), &b))
            .build();
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        meter
            .u64_observable_counter(names::FALLBACK_DEAD_LETTERS)
            .with_description("Acknowledged writes Redis refused at replay, kept as dead letters")
            .with_unit("{write}")
            .with_callback(move |o| {
                o.observe(g.fallback_dead_letters.load(Ordering::Relaxed), &b);
            })
            .build();
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        meter
            .u64_observable_gauge(names::FALLBACK_MEMORY_USAGE)
            .with_description("Bytes the fallback store holds")
            .with_unit("By")
            .with_callback(move |o| {
                if g.fallback_limit.load(Ordering::Relaxed) > 0 {
                    o.observe(g.fallback_bytes.load(Ordering::Relaxed), &b);
                }
            })
            .build();
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        meter
            .u64_observable_gauge(names::FALLBACK_MEMORY_LIMIT)
            .with_description("The fallback store's bound in bytes")
            .with_unit("By")
            .with_callback(move |o| {
                let limit = g.fallback_limit.load(Ordering::Relaxed);
                if limit > 0 {
                    o.observe(limit, &b);
                }
            })
            .build();
        let (g, b) = (Arc::clone(gauges), Arc::clone(&base));
        meter
            .u64_observable_gauge(names::HEALTHY)
            .with_description("The health verdict: 1 healthy, 0 unhealthy")
            .with_callback(move |o| match g.healthy.load(Ordering::Relaxed) {
                0 => {}
                v => o.observe(u64::from(v == 2), &b),
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
            transitions: meter
                .u64_counter(names::BREAKER_TRANSITIONS)
                .with_description("Circuit breaker state changes, by the state entered")
                .with_unit("{transition}")
                .build(),
            retries: meter
                .u64_counter(names::RETRIES)
                .with_description("Attempts repeated after a failure")
                .with_unit("{retry}")
                .build(),
            ambiguous: meter
                .u64_counter(names::AMBIGUOUS)
                .with_description("Writes refused to the caller because their outcome is unknown")
                .with_unit("{operation}")
                .build(),
            base,
            sets: AttributeSets::new(),
        }
    }

    /// Records one operation. Its attribute set is built once per operation and outcome and
    /// then looked up: with no meter provider installed a record costs a lookup and a call.
    #[inline]
    pub(crate) fn operation(&self, operation: &'static str, duration: Duration, outcome: Outcome) {
        let secs = duration.as_secs_f64();
        if let Some(attrs) = self.sets.get(operation, outcome, || {
            self.attributes_of(operation, outcome)
        }) {
            self.duration.record(secs, attrs);
            return;
        }
        // The table is full (thousands of distinct operations): build the set on the stack.
        self.duration
            .record(secs, &self.attributes_of(operation, outcome));
    }

    /// The attributes of one operation's record.
    fn attributes_of(&self, operation: &'static str, outcome: Outcome) -> Vec<KeyValue> {
        let op = KeyValue::new(names::OPERATION, operation);
        let extra: &[KeyValue] = &match outcome {
            Outcome::Error(kind) => vec![op, KeyValue::new(names::ERROR_TYPE, kind.as_str())],
            Outcome::ServerError(code) => vec![
                op,
                KeyValue::new(names::ERROR_TYPE, "server_error"),
                KeyValue::new(names::STATUS_CODE, code),
            ],
            Outcome::Success => vec![op, KeyValue::new(names::SERVED_BY, "redis")],
            Outcome::Fallback => vec![op, KeyValue::new(names::SERVED_BY, "memory")],
        };
        with(&self.base, extra)
    }

    pub(crate) fn pool(&self, wait: Option<Duration>, new_timeouts: u64) {
        if let Some(w) = wait {
            self.wait.record(w.as_secs_f64(), &self.base);
        }
        if new_timeouts > 0 {
            self.timeouts.add(new_timeouts, &self.base);
        }
    }

    pub(crate) fn health(&self, d: Duration) {
        self.health.record(d.as_secs_f64(), &self.base);
    }

    pub(crate) fn transition(&self, entered: &'static str) {
        self.transitions.add(
            1,
            &with(&self.base, &[KeyValue::new(names::STATE, entered)]),
        );
    }

    pub(crate) fn event(&self, event: Event) {
        match event {
            Event::Retried { operation, retries } => self.retries.add(
                u64::from(retries),
                &with(&self.base, &[KeyValue::new(names::OPERATION, operation)]),
            ),
            Event::Ambiguous { operation } => self.ambiguous.add(
                1,
                &with(&self.base, &[KeyValue::new(names::OPERATION, operation)]),
            ),
        }
    }
}

/// Attribute sets by (operation, outcome): a fixed open-addressed table of write-once slots, so
/// a lookup is a hash and an atomic load, with no lock and no allocation. Operations and
/// outcomes are a bounded set (command names, error kinds, reply codes); should the table ever
/// fill, records build their set each time instead.
struct AttributeSets {
    slots: Box<[Slot]>,
}

/// One slot: empty, or an attribute set and its key.
type Slot = std::sync::OnceLock<(SetKey, Box<[KeyValue]>)>;

/// An operation (its text's address and length: the names are static strings) and an outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SetKey(usize, usize, usize, usize);

impl SetKey {
    fn new(operation: &'static str, outcome: Outcome) -> Self {
        let (tag, code) = match outcome {
            Outcome::Success => (0, 0),
            Outcome::Fallback => (1, 0),
            Outcome::Error(kind) => (2 + kind.index(), 0),
            Outcome::ServerError(code) => (usize::MAX, code.as_ptr() as usize ^ code.len()),
        };
        Self(operation.as_ptr() as usize, operation.len(), tag, code)
    }

    fn hash(self) -> usize {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for part in [self.0, self.1, self.2, self.3] {
            h = (h ^ part as u64).wrapping_mul(0x0100_0000_01b3);
        }
        (h ^ (h >> 29)) as usize
    }
}

impl AttributeSets {
    const SLOTS: usize = 1024;
    const PROBES: usize = 16;

    fn new() -> Self {
        Self {
            slots: (0..Self::SLOTS)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        }
    }

    #[inline]
    fn get(
        &self,
        operation: &'static str,
        outcome: Outcome,
        build: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<&[KeyValue]> {
        let key = SetKey::new(operation, outcome);
        let start = key.hash();
        let mut build = Some(build);
        for i in 0..Self::PROBES {
            let slot = &self.slots[(start + i) % Self::SLOTS];
            let (k, attrs) = match slot.get() {
                Some(entry) => entry,
                None => {
                    let make = build.take()?;
                    // Another thread may fill this slot first: then look at what it holds.
                    let _ = slot.set((key, make().into_boxed_slice()));
                    match slot.get() {
                        Some(entry) => entry,
                        None => continue,
                    }
                }
            };
            if *k == key {
                return Some(attrs);
            }
            // Built for this key but lost the slot to another key: nothing is left to
            // insert, so this record builds its set on the stack.
            build.as_ref()?;
        }
        None
    }
}

/// The span of one operation, after OpenTelemetry's database span conventions, for
/// `tracing-opentelemetry`: `db.system.name`, `db.operation.name`, `otel.kind = client`, and,
/// on failure, `error.type` and `otel.status_code = ERROR` (see [`record_error`]). Never a key
/// or a value.
#[must_use]
pub fn operation_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "redis",
        otel.name = operation,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = operation,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Marks an [`operation_span`] failed: `error.type` and `otel.status_code = ERROR`.
pub fn record_error(span: &tracing::Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
}

#[cfg(feature = "prometheus")]
pub use exporter::PrometheusExporter;

#[cfg(feature = "prometheus")]
mod exporter {
    use opentelemetry::metrics::{Meter, MeterProvider};
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    /// Everything a `/metrics` endpoint needs (feature `prometheus`): a meter provider whose
    /// instruments a Prometheus registry reads, and the text exposition of that registry.
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

        /// The meter provider, to install as the global one
        /// (`opentelemetry::global::set_meter_provider(exporter.provider())`) so that every
        /// collector built afterwards exports through it.
        #[must_use]
        pub fn provider(&self) -> SdkMeterProvider {
            self.provider.clone()
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
}

#[cfg(test)]
mod tests {
    use resilient_redis_config::ErrorKind;

    use super::*;

    fn op_of(attrs: &[KeyValue]) -> String {
        attrs
            .iter()
            .filter(|kv| kv.key.as_str() != names::SYSTEM)
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn attribute_sets_are_built_once_per_operation_and_outcome() {
        let sets = AttributeSets::new();
        let built = std::cell::Cell::new(0);
        let make = |text: &'static str| {
            built.set(built.get() + 1);
            vec![KeyValue::new("x", text)]
        };
        let outcomes = [
            Outcome::Success,
            Outcome::Fallback,
            Outcome::Error(ErrorKind::Timeout),
            Outcome::Error(ErrorKind::Connection),
            Outcome::ServerError("WRONGTYPE"),
            Outcome::ServerError("NOPERM"),
        ];
        for round in 0..3 {
            for (i, outcome) in outcomes.iter().enumerate() {
                for op in ["get", "set"] {
                    let label: &'static str = Box::leak(format!("{op}{i}").into_boxed_str());
                    let got = sets.get(op, *outcome, || make(label)).unwrap();
                    // Each (operation, outcome) keeps the set first built for it.
                    assert_eq!(op_of(got), format!("x={op}{i}"), "round {round}");
                }
            }
        }
        assert_eq!(built.get(), outcomes.len() * 2);
    }

    #[test]
    fn a_full_table_says_so_and_records_still_happen() {
        let sets = AttributeSets::new();
        let names: Vec<&'static str> = (0..AttributeSets::SLOTS + 50)
            .map(|i| &*Box::leak(format!("op{i}").into_boxed_str()))
            .collect();
        let mut missed = 0;
        for n in &names {
            match sets.get(n, Outcome::Success, || vec![KeyValue::new("op", *n)]) {
                Some(attrs) => assert_eq!(op_of(attrs), format!("op={n}")),
                None => missed += 1,
            }
        }
        assert!(missed >= 50, "{missed}");
    }
}
