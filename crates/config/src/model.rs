//! The configuration data: plain serde structs with documented defaults.
//!
//! Every field can be set in the TOML file (`[pool] max_size = 32`) and by the environment as
//! `REDIS_<SECTION>__<FIELD>` (`REDIS_POOL__MAX_SIZE=32`) or `REDIS_<FIELD>` for top-level fields.
//! The conventional variable names ([`crate::ENV_ALIASES`]) work as well.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::{RedisUrl, Secret};
use crate::units;

/// Everything resilient-redis needs to know, one section per component.
///
/// Build it with [`RedisConfig::load`] (defaults < TOML file < environment) or start from
/// [`RedisConfig::default`] and change fields. `Debug`, `Display` and `Serialize` never show a
/// password.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Server address. Default `redis://127.0.0.1:6379`. Env `REDIS_URL`. With
    /// `mode = "sentinel"` or `"cluster"` its host and port are not used: its scheme (`rediss`
    /// for TLS), user, password and database apply to the primary the sentinels name, or to
    /// every cluster node (a cluster has only database 0).
    pub url: RedisUrl,
    /// One Redis at `url` (`"standalone"`, the default), the primary that Redis Sentinel
    /// names (`"sentinel"`, with `sentinels` and `master_name`), or a Redis Cluster
    /// (`"cluster"`, with `nodes`). Env `REDIS_MODE`.
    pub mode: Mode,
    /// With `mode = "sentinel"`: the sentinels' URLs (`redis://host:26379`, a password if they
    /// need one). Env `REDIS_SENTINELS`, comma-separated.
    #[serde(with = "units::url_list")]
    pub sentinels: Vec<RedisUrl>,
    /// With `mode = "sentinel"`: the name the sentinels monitor the primary by (`mymaster`).
    /// Env `REDIS_MASTER_NAME`.
    pub master_name: Option<String>,
    /// With `mode = "cluster"`: some of the cluster's nodes (`redis://host:7000`), from which
    /// redis-rs discovers the rest and the slot map. Env `REDIS_NODES`, comma-separated.
    #[serde(with = "units::url_list")]
    pub nodes: Vec<RedisUrl>,
    /// With `mode = "cluster"`: send read-only commands to replicas as well as primaries
    /// (a read may then see a write a moment late). Default `false`.
    /// Env `REDIS_READ_FROM_REPLICAS`.
    pub read_from_replicas: bool,
    /// ACL user name; overrides one in the URL. Env `REDIS_USERNAME`.
    pub username: Option<String>,
    /// Password; overrides one in the URL. Env `REDIS_PASSWORD`.
    pub password: Option<Secret>,
    /// File holding the password (a mounted secret); its trailing newline is trimmed.
    /// Env `REDIS_PASSWORD_FILE`. Set this or `password`, not both.
    pub password_file: Option<PathBuf>,
    /// Time allowed to open a connection. Default 5 s, range 1 s ..= 60 s.
    /// Env `REDIS_CONNECT_TIMEOUT`.
    #[serde(with = "units::millis")]
    pub connect_timeout: Duration,
    /// Time allowed for one command's reply. Default 2 s. Env `REDIS_SOCKET_TIMEOUT`.
    #[serde(with = "units::millis")]
    pub socket_timeout: Duration,
    /// First delay between retries of an idempotent command; later ones grow exponentially with
    /// jitter. Default 100 ms. Env `REDIS_RETRY_DELAY`.
    #[serde(with = "units::millis")]
    pub retry_delay: Duration,
    /// Retries of an idempotent command after the first try (0 = none). Default 3, at most 100.
    /// Env `REDIS_MAX_RETRIES`.
    pub max_retries: u32,
    /// Connection pool.
    pub pool: PoolConfig,
    /// Health monitor.
    pub health: HealthConfig,
    /// Circuit breaker.
    pub circuit_breaker: CircuitBreakerConfig,
    /// In-memory fallback store.
    pub fallback: FallbackConfig,
    /// Metrics collection.
    pub metrics: MetricsConfig,
    /// TLS certificates for a `rediss://` URL.
    pub tls: TlsConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: RedisUrl::default(),
            mode: Mode::default(),
            sentinels: Vec::new(),
            master_name: None,
            nodes: Vec::new(),
            read_from_replicas: false,
            username: None,
            password: None,
            password_file: None,
            connect_timeout: Duration::from_secs(5),
            socket_timeout: Duration::from_secs(2),
            retry_delay: Duration::from_millis(100),
            max_retries: 3,
            pool: PoolConfig::default(),
            health: HealthConfig::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
            fallback: FallbackConfig::default(),
            metrics: MetricsConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// TLS certificates for a `rediss://` URL (`[tls]`, `REDIS_TLS__*`). Without any, the server's
/// certificate is checked against the system's roots (`#insecure` at the end of the URL turns
/// the check off, and is logged at `warn`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust instead of the system's roots (a private CA).
    /// Env `REDIS_TLS__CA_FILE`.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `key_file`.
    /// Env `REDIS_TLS__CERT_FILE`.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`. Env `REDIS_TLS__KEY_FILE`.
    pub key_file: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry (and the name sent as SNI), when it is not
    /// the URL's host: connect to `rediss://10.0.0.5:6380` and verify `redis.internal`, say.
    /// Standalone mode only. Env `REDIS_TLS__SERVER_NAME`.
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Whether any certificate file is set.
    #[must_use]
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

impl std::fmt::Display for RedisConfig {
    /// One line a person can read in a log: the server and the main limits, never a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redis {} (user {}, password {}), connect {}, socket {}, retries {}, pool {}..={}, \
             breaker after {} failures, fallback {}, metrics {}",
            self.url,
            self.username.as_deref().unwrap_or("-"),
            if self.password.is_some() || self.password_file.is_some() {
                "set"
            } else {
                "unset"
            },
            units::format_duration(self.connect_timeout),
            units::format_duration(self.socket_timeout),
            self.max_retries,
            self.pool.min_size,
            self.pool.max_size,
            self.circuit_breaker.failure_threshold,
            if self.fallback.enabled { "on" } else { "off" },
            if self.metrics.enabled { "on" } else { "off" },
        )
    }
}

/// Connection pool limits and lifecycle (`[pool]`, `REDIS_POOL__*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Connections kept open from start. Default 2; at most `max_size`.
    /// Env `REDIS_POOL_MIN_SIZE`.
    pub min_size: u32,
    /// Most connections open at once. Default 16, at least 1. Env `REDIS_POOL_MAX_SIZE`.
    pub max_size: u32,
    /// Longest wait for a connection before `PoolError::Timeout`. Default 2 s.
    #[serde(with = "units::millis")]
    pub acquire_timeout: Duration,
    /// First delay between attempts to create a connection. Default 200 ms.
    #[serde(with = "units::millis")]
    pub create_retry_interval: Duration,
    /// Attempts to create a connection before giving up. Default 3, at least 1.
    pub create_retry_count: u32,
    /// A connection idle this long is closed by the reaper (down to `min_size`). Default 5 min.
    #[serde(with = "units::millis")]
    pub idle_timeout: Duration,
    /// How often the reaper looks for idle connections. Default 30 s.
    #[serde(with = "units::millis")]
    pub reap_interval: Duration,
    /// A connection older than this is replaced (shared) or closed on return (exclusive).
    /// Default 30 min.
    #[serde(with = "units::millis")]
    pub max_lifetime: Duration,
    /// Multiplexed connections shared by all callers for ordinary commands; they count towards
    /// `max_size`, the rest serve exclusive checkouts. One connection pipelines best (measured:
    /// docs/performance.md); a broken one is replaced at once in the background. Default 1,
    /// range 1 ..= `max_size`.
    pub shared_connections: u32,
    /// How often the shared connections are PINGed in the background (and a broken one
    /// replaced). Default 1 s.
    #[serde(with = "units::millis")]
    pub validation_interval: Duration,
    /// An exclusive connection idle longer than this is PINGed when checked out. Default 10 s.
    #[serde(with = "units::millis")]
    pub validate_after_idle: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_size: 2,
            max_size: 16,
            acquire_timeout: Duration::from_secs(2),
            create_retry_interval: Duration::from_millis(200),
            create_retry_count: 3,
            idle_timeout: Duration::from_secs(300),
            reap_interval: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(30 * 60),
            shared_connections: 1,
            validation_interval: Duration::from_secs(1),
            validate_after_idle: Duration::from_secs(10),
        }
    }
}

/// Health probe schedule and thresholds (`[health]`, `REDIS_HEALTH__*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Time between PING probes. Default 5 s. Env `REDIS_HEALTH_CHECK_INTERVAL`.
    #[serde(with = "units::millis")]
    pub check_interval: Duration,
    /// Time allowed for one probe; at most `check_interval`. Default 1 s.
    #[serde(with = "units::millis")]
    pub timeout: Duration,
    /// Consecutive failed probes that make a healthy server unhealthy. Default 3, at least 1.
    pub failure_threshold: u32,
    /// Consecutive good probes that make an unhealthy server healthy. Default 2, at least 1.
    pub success_threshold: u32,
    /// Probes the rolling success and failure rates are measured over. Default 20, at least 1.
    pub window: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
            success_threshold: 2,
            window: 20,
        }
    }
}

/// Where the server is (`mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Mode {
    /// One Redis at `url`.
    #[default]
    Standalone,
    /// The primary Redis Sentinel names: asked of the sentinels at every new connection, so a
    /// failover is followed as soon as the old primary's connections break.
    Sentinel,
    /// A Redis Cluster: redis-rs discovers the nodes and slots from `nodes`, follows MOVED and
    /// ASK redirects and a failover's new slot map; each command goes to its key's primary.
    Cluster,
}

/// What the fallback answers for a key it knows nothing about (`fallback.unknown_keys`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum UnknownKeys {
    /// Fail the read or increment with a fallback error of its own.
    #[default]
    Error,
    /// Answer as a cache miss (and count an unknown counter from 0).
    Miss,
}

/// How the circuit breaker's failure and slow-call rates are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SlidingWindowType {
    /// The last `sliding_window_size` calls.
    Count,
    /// The calls of the last `monitoring_period`.
    Time,
}

/// Circuit breaker thresholds (`[circuit_breaker]`, `REDIS_CIRCUIT_BREAKER__*`).
///
/// The breaker opens on **either** `failure_threshold` consecutive failures, **or** a failure
/// rate ≥ `failure_rate_threshold`, **or** a slow-call rate ≥ `slow_call_rate_threshold`, the rates
/// measured over the sliding window once it holds `minimum_calls` calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the breaker. Default 5, at least 1.
    /// Env `REDIS_CIRCUIT_BREAKER_THRESHOLD`.
    pub failure_threshold: u32,
    /// Failure rate, in percent of the window's calls, that opens the breaker. Default 50,
    /// range (0, 100].
    pub failure_rate_threshold: f64,
    /// Slow-call rate, in percent, that opens the breaker. Default 100, range (0, 100].
    pub slow_call_rate_threshold: f64,
    /// A call that takes at least this long is slow. Default 1 s.
    #[serde(with = "units::millis")]
    pub slow_call_duration: Duration,
    /// `count` (the last `sliding_window_size` calls) or `time` (the last `monitoring_period`).
    /// Default `count`.
    pub sliding_window_type: SlidingWindowType,
    /// Calls in a count window. Default 100, range 1 ..= 1 000 000.
    pub sliding_window_size: u32,
    /// Length of a time window. Default 60 s.
    #[serde(with = "units::millis")]
    pub monitoring_period: Duration,
    /// Calls the window must hold before rates count. Default 20, at least 1.
    pub minimum_calls: u32,
    /// Time the breaker stays open before it lets trial calls through. Default 30 s.
    #[serde(with = "units::millis")]
    pub reset_timeout: Duration,
    /// Growth of the open time on each trip that follows a failed trial (1 = constant).
    /// Default 1, at least 1.
    pub reset_timeout_multiplier: f64,
    /// Cap on the grown open time. Default 5 min, at least `reset_timeout`.
    #[serde(with = "units::millis")]
    pub max_reset_timeout: Duration,
    /// Random spread of the open time, as a fraction (0.2 = ±20 %). Default 0, range [0, 1).
    pub reset_timeout_jitter: f64,
    /// Trial calls let through while half-open. Default 5, range 1 ..= 65 535.
    pub half_open_permitted_calls: u32,
    /// Move from open to half-open by a timer at `reset_timeout`, so that trial calls start
    /// on time without waiting for traffic and a rejection does not read the clock. `false`
    /// moves on the first call after `reset_timeout` (Resilience4j's default). Default `true`.
    pub automatic_transition: bool,
    /// Longest time in half-open before the breaker opens again when the trial calls have not
    /// all finished; 0 waits for them. Default 0.
    #[serde(with = "units::millis")]
    pub max_wait_in_half_open: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(1),
            sliding_window_type: SlidingWindowType::Count,
            sliding_window_size: 100,
            monitoring_period: Duration::from_secs(60),
            minimum_calls: 20,
            reset_timeout: Duration::from_secs(30),
            reset_timeout_multiplier: 1.0,
            max_reset_timeout: Duration::from_secs(300),
            reset_timeout_jitter: 0.0,
            half_open_permitted_calls: 5,
            automatic_transition: true,
            max_wait_in_half_open: Duration::ZERO,
        }
    }
}

/// In-memory fallback store (`[fallback]`, `REDIS_FALLBACK__*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FallbackConfig {
    /// Serve from memory while Redis is down. Default `true`. Env `REDIS_FALLBACK_ENABLED`.
    pub enabled: bool,
    /// Bytes the store may hold (keys, values and overhead). Default 64 MiB; more than 0 when
    /// enabled. Accepts `"64MiB"`.
    #[serde(with = "units::bytes")]
    pub max_memory_size: u64,
    /// How often a pending journal is retried against Redis. Default 5 s.
    #[serde(with = "units::millis")]
    pub sync_interval: Duration,
    /// On close, compact the journal file to the pending entries and fsync it, so the next
    /// process replays them. Needs `journal_path`. Default `false`.
    pub persist_on_shutdown: bool,
    /// Keep a bounded copy of values read and written in normal operation, so an outage can
    /// still answer reads of them (possibly stale). Costs a cache insert per read and write:
    /// measured, 0.69× instead of 0.90× of raw redis-rs throughput at 64 tasks (see
    /// docs/performance.md). Default `false`.
    pub shadow: bool,
    /// Append every journaled write to this file before acknowledging it; a restarted process
    /// restores and replays what is pending. Default none (the journal lives in memory only).
    pub journal_path: Option<std::path::PathBuf>,
    /// A file holding the key that seals the journal file (64 hexadecimal digits, `openssl
    /// rand -hex 32`): every record is encrypted and authenticated (ChaCha20-Poly1305), and a
    /// journal written with another key is refused at start. Needs `journal_path`. Default none.
    /// Env `REDIS_FALLBACK__JOURNAL_KEY_FILE`.
    pub journal_key_file: Option<std::path::PathBuf>,
    /// fsync the journal file after every append (survives power loss; costs a disk flush per
    /// write). Without it a write survives a crash of the process, not of the machine.
    /// Default `false`.
    pub journal_fsync: bool,
    /// Journal entries per replay batch (one atomic, idempotent script call). Default 100,
    /// range 1 ..= 10 000.
    pub replay_batch_size: u32,
    /// What a read (or an increment) of a key memory knows nothing about answers while Redis
    /// is unreachable: `"error"` (default) fails it with a fallback error, so a session never
    /// looks logged out and a counter never restarts from 0 by accident; `"miss"` answers as
    /// a cache would (missing; a counter counts from 0, its delta still replayed exactly).
    /// Env `REDIS_FALLBACK__UNKNOWN_KEYS`.
    pub unknown_keys: UnknownKeys,
    /// Replay a journal file whose header names another server (`host:port/db`) than the
    /// configured one. Off by default: a changed `REDIS_URL` makes the store refuse to start
    /// rather than send another server's writes to it.
    pub replay_to_other_server: bool,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_memory_size: 64 * 1024 * 1024,
            sync_interval: Duration::from_secs(5),
            persist_on_shutdown: false,
            shadow: false,
            journal_path: None,
            journal_key_file: None,
            journal_fsync: false,
            replay_batch_size: 100,
            replay_to_other_server: false,
            unknown_keys: UnknownKeys::Error,
        }
    }
}

/// Metrics collection (`[metrics]`, `REDIS_METRICS__*`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// Record metrics. Default `true`. Env `REDIS_METRICS_ENABLED`.
    pub enabled: bool,
    /// How often gauges (pool, breaker, fallback) are sampled. Default 10 s.
    #[serde(with = "units::millis")]
    pub collection_interval: Duration,
    /// How long operation samples count towards percentiles and rates. Default 5 min; at least
    /// `collection_interval`.
    #[serde(with = "units::millis")]
    pub retention_period: Duration,
    /// Operations slower than this are counted as slow and flagged in reports. Default 100 ms.
    #[serde(with = "units::millis")]
    pub reporting_threshold: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            collection_interval: Duration::from_secs(10),
            retention_period: Duration::from_secs(300),
            reporting_threshold: Duration::from_millis(100),
        }
    }
}
