//! The rules a configuration must meet. Every rule runs; every broken one is reported.

use std::time::Duration;

use crate::error::{ConfigError, Problem};
use crate::model::{CircuitBreakerConfig, RedisConfig};
use crate::units::format_duration;

/// Range allowed for `connect_timeout`.
pub const CONNECT_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(60));

/// Largest count-based sliding window of the circuit breaker.
pub const MAX_SLIDING_WINDOW_SIZE: u32 = 1_000_000;

/// Most trial calls the circuit breaker lets through while half-open.
pub const MAX_HALF_OPEN_CALLS: u32 = 65_535;

/// Largest `max_retries` accepted: more would keep a caller waiting through an outage.
pub const MAX_RETRIES_LIMIT: u32 = 100;

/// Longest duration any field accepts (30 days): longer ones are surely mistakes, and would
/// overflow the arithmetic of deadlines built from them.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Largest count any size, threshold or window field accepts unless it has a tighter bound.
pub const MAX_COUNT: u32 = 1_000_000;

/// Largest `pool.max_size`.
pub const MAX_POOL_SIZE: u32 = 10_000;

/// Largest `fallback.max_memory_size` (1 TiB).
pub const MAX_FALLBACK_MEMORY: u64 = 1 << 40;

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, field: &str, value: Option<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(field, value, message));
    }

    fn positive(&mut self, field: &str, d: Duration) {
        if d.is_zero() {
            self.fail(field, Some(format_duration(d)), "must be more than 0");
        }
    }

    fn percent(&mut self, field: &str, rate: f64) {
        if !(rate > 0.0 && rate <= 100.0) {
            self.fail(
                field,
                Some(rate.to_string()),
                "must be a percentage in (0, 100]",
            );
        }
    }

    fn at_least_one(&mut self, field: &str, n: u32) {
        if n < 1 {
            self.fail(field, Some(n.to_string()), "must be at least 1");
        }
    }

    fn at_most_duration(&mut self, field: &str, d: Duration) {
        if d > MAX_DURATION {
            self.fail(
                field,
                Some(format_duration(d)),
                format!("must be at most {}", format_duration(MAX_DURATION)),
            );
        }
    }

    fn at_most(&mut self, field: &str, n: u32, max: u32) {
        if n > max {
            self.fail(field, Some(n.to_string()), format!("must be at most {max}"));
        }
    }
}

/// Every duration field, for the common upper bound.
fn durations(c: &RedisConfig) -> [(&'static str, Duration); 21] {
    let (p, h, b, f, m) = (
        &c.pool,
        &c.health,
        &c.circuit_breaker,
        &c.fallback,
        &c.metrics,
    );
    [
        ("socket_timeout", c.socket_timeout),
        ("retry_delay", c.retry_delay),
        ("pool.acquire_timeout", p.acquire_timeout),
        ("pool.create_retry_interval", p.create_retry_interval),
        ("pool.idle_timeout", p.idle_timeout),
        ("pool.reap_interval", p.reap_interval),
        ("pool.max_lifetime", p.max_lifetime),
        ("pool.validation_interval", p.validation_interval),
        ("pool.validate_after_idle", p.validate_after_idle),
        ("health.check_interval", h.check_interval),
        ("health.timeout", h.timeout),
        ("circuit_breaker.slow_call_duration", b.slow_call_duration),
        ("circuit_breaker.monitoring_period", b.monitoring_period),
        ("circuit_breaker.reset_timeout", b.reset_timeout),
        ("circuit_breaker.max_reset_timeout", b.max_reset_timeout),
        (
            "circuit_breaker.max_wait_in_half_open",
            b.max_wait_in_half_open,
        ),
        ("fallback.sync_interval", f.sync_interval),
        ("metrics.collection_interval", m.collection_interval),
        ("metrics.retention_period", m.retention_period),
        ("metrics.reporting_threshold", m.reporting_threshold),
        ("connect_timeout", c.connect_timeout),
    ]
}

/// Sentinel mode needs its sentinels and the primary's name, cluster mode its nodes (and
/// database 0); each mode's settings are problems in another mode.
fn check_mode(c: &mut Checker, config: &RedisConfig) {
    let mode = match config.mode {
        crate::Mode::Sentinel => "sentinel",
        crate::Mode::Cluster => "cluster",
        _ => "standalone",
    };
    if config.mode == crate::Mode::Cluster {
        if config.nodes.is_empty() {
            c.fail(
                "nodes",
                None,
                "is empty: mode = \"cluster\" needs some of the cluster's nodes (redis://host:7000)",
            );
        }
        for (i, n) in config.nodes.iter().enumerate() {
            if let Err(why) = n.check() {
                c.fail(&format!("nodes[{i}]"), Some(n.redacted()), why);
            } else if n.is_tls() != config.url.is_tls() {
                c.fail(
                    &format!("nodes[{i}]"),
                    Some(n.redacted()),
                    "has another scheme than url: url's scheme (rediss:// for TLS) decides TLS \
                     for every node",
                );
            } else if n.db() != 0 {
                c.fail(
                    &format!("nodes[{i}]"),
                    Some(n.redacted()),
                    "names a database other than 0: a Redis Cluster has only database 0",
                );
            }
        }
        if config.url.check().is_ok() && config.url.db() != 0 {
            c.fail(
                "url",
                Some(config.url.redacted()),
                "names a database other than 0: a Redis Cluster has only database 0",
            );
        }
    } else {
        if !config.nodes.is_empty() {
            c.fail(
                "nodes",
                Some(format!("{} URLs", config.nodes.len())),
                format!("is set but mode is \"{mode}\": set mode = \"cluster\" (REDIS_MODE)"),
            );
        }
        if config.read_from_replicas {
            c.fail(
                "read_from_replicas",
                Some("true".into()),
                format!(
                    "is only for mode = \"cluster\" (mode is \"{mode}\"): reads from a \
                     sentinel's replicas are not supported"
                ),
            );
        }
    }
    match config.mode {
        crate::Mode::Sentinel => {
            if config.sentinels.is_empty() {
                c.fail(
                    "sentinels",
                    None,
                    "is empty: mode = \"sentinel\" needs the sentinels' URLs (redis://host:26379)",
                );
            }
            for (i, s) in config.sentinels.iter().enumerate() {
                if let Err(why) = s.check() {
                    c.fail(&format!("sentinels[{i}]"), Some(s.redacted()), why);
                }
            }
            if config.master_name.as_deref().is_none_or(str::is_empty) {
                c.fail(
                    "master_name",
                    None,
                    "is missing: mode = \"sentinel\" needs the name the sentinels monitor the \
                     primary by",
                );
            }
        }
        _ => {
            if !config.sentinels.is_empty() {
                c.fail(
                    "sentinels",
                    Some(format!("{} URLs", config.sentinels.len())),
                    format!("is set but mode is \"{mode}\": set mode = \"sentinel\" (REDIS_MODE)"),
                );
            }
            if let Some(name) = &config.master_name {
                c.fail(
                    "master_name",
                    Some(name.clone()),
                    format!("is set but mode is \"{mode}\": set mode = \"sentinel\" (REDIS_MODE)"),
                );
            }
        }
    }
}

/// Whether `name` is a DNS name rustls accepts: labels of 1 to 63 letters, digits and `-` (not
/// at either end), joined by `.`, at most 253 characters.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        })
}

/// TLS files: only for a `rediss://` URL, a certificate with its key, each a readable file.
fn check_tls(c: &mut Checker, config: &RedisConfig) {
    let tls = &config.tls;
    let files = [
        ("tls.ca_file", &tls.ca_file),
        ("tls.cert_file", &tls.cert_file),
        ("tls.key_file", &tls.key_file),
    ];
    for (field, path) in files {
        let Some(path) = path else { continue };
        let shown = Some(path.display().to_string());
        if !config.url.is_tls() {
            c.fail(
                field,
                shown,
                "is set but `url` is not `rediss://`: certificates apply to TLS connections only",
            );
            continue;
        }
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.len() > 0 => {}
            Ok(_) => c.fail(field, shown, "is not a non-empty file"),
            Err(e) => c.fail(field, shown, format!("cannot be read: {e}")),
        }
    }
    if let Some(name) = &tls.server_name {
        let shown = Some(name.clone());
        if !config.url.is_tls() {
            c.fail(
                "tls.server_name",
                shown,
                "is set but `url` is not `rediss://`: the name is checked on TLS connections only",
            );
        } else if config.mode != crate::Mode::Standalone {
            c.fail(
                "tls.server_name",
                shown,
                "is for mode = \"standalone\" only: sentinels and cluster nodes name their own \
                 addresses",
            );
        } else if config.url.expose().ends_with("#insecure") {
            c.fail(
                "tls.server_name",
                shown,
                "is set but the URL is `#insecure`: no name is checked (nor sent) then",
            );
        } else if name.parse::<std::net::IpAddr>().is_ok() {
            c.fail(
                "tls.server_name",
                shown,
                "is an IP address: put it in the URL; server_name is the certificate's DNS name",
            );
        } else if !is_dns_name(name) {
            c.fail(
                "tls.server_name",
                shown,
                "is not a DNS name (labels of 1 to 63 letters, digits and `-`, not starting or \
                 ending with `-`, joined by `.`; at most 253 characters)",
            );
        }
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => c.fail(
            "tls.key_file",
            None,
            "is missing: tls.cert_file needs the key of its certificate",
        ),
        (None, Some(_)) => c.fail(
            "tls.cert_file",
            None,
            "is missing: tls.key_file is the key of a client certificate, which is not set",
        ),
        _ => {}
    }
}

impl RedisConfig {
    /// Checks every rule and returns all problems at once, each naming its field and value.
    ///
    /// [`RedisConfig::load`] calls this and adds where each bad value came from.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut c = Checker {
            problems: Vec::new(),
        };

        if let Err(why) = self.url.check() {
            c.fail("url", Some(self.url.redacted()), why);
        }
        if self.password.is_some() && self.password_file.is_some() {
            c.fail(
                "password",
                None,
                "is set together with `password_file`; set one of them",
            );
        }
        let (lo, hi) = CONNECT_TIMEOUT_RANGE;
        if self.connect_timeout < lo || self.connect_timeout > hi {
            c.fail(
                "connect_timeout",
                Some(format_duration(self.connect_timeout)),
                format!(
                    "is out of range: must be between {} and {} (integers are milliseconds)",
                    format_duration(lo),
                    format_duration(hi)
                ),
            );
        }
        c.positive("socket_timeout", self.socket_timeout);
        c.positive("retry_delay", self.retry_delay);
        if self.max_retries > MAX_RETRIES_LIMIT {
            c.fail(
                "max_retries",
                Some(self.max_retries.to_string()),
                format!("must be at most {MAX_RETRIES_LIMIT}"),
            );
        }

        let pool = &self.pool;
        c.at_least_one("pool.max_size", pool.max_size);
        if pool.min_size > pool.max_size {
            c.fail(
                "pool.min_size",
                Some(pool.min_size.to_string()),
                format!("must not exceed pool.max_size ({})", pool.max_size),
            );
        }
        c.positive("pool.acquire_timeout", pool.acquire_timeout);
        c.positive("pool.create_retry_interval", pool.create_retry_interval);
        c.at_least_one("pool.create_retry_count", pool.create_retry_count);
        c.positive("pool.idle_timeout", pool.idle_timeout);
        c.positive("pool.reap_interval", pool.reap_interval);
        c.positive("pool.max_lifetime", pool.max_lifetime);
        if pool.max_size >= 1 && !(1..=pool.max_size).contains(&pool.shared_connections) {
            c.fail(
                "pool.shared_connections",
                Some(pool.shared_connections.to_string()),
                format!("must be between 1 and pool.max_size ({})", pool.max_size),
            );
        }
        c.positive("pool.validation_interval", pool.validation_interval);
        c.positive("pool.validate_after_idle", pool.validate_after_idle);

        let health = &self.health;
        c.positive("health.check_interval", health.check_interval);
        c.positive("health.timeout", health.timeout);
        if health.timeout > health.check_interval && !health.check_interval.is_zero() {
            c.fail(
                "health.timeout",
                Some(format_duration(health.timeout)),
                format!(
                    "must not exceed health.check_interval ({})",
                    format_duration(health.check_interval)
                ),
            );
        }
        c.at_least_one("health.failure_threshold", health.failure_threshold);
        c.at_least_one("health.success_threshold", health.success_threshold);
        c.at_least_one("health.window", health.window);

        check_breaker(&mut c, &self.circuit_breaker);
        check_tls(&mut c, self);
        check_mode(&mut c, self);

        let fallback = &self.fallback;
        if fallback.enabled && fallback.max_memory_size == 0 {
            c.fail(
                "fallback.max_memory_size",
                Some("0".into()),
                "must be more than 0 bytes while fallback.enabled is true",
            );
        }
        c.positive("fallback.sync_interval", fallback.sync_interval);
        if let Some(key) = &fallback.journal_key_file {
            let shown = Some(key.display().to_string());
            if fallback.journal_path.is_none() {
                c.fail(
                    "fallback.journal_key_file",
                    shown,
                    "needs fallback.journal_path: the key seals the journal file",
                );
            } else if let Err(e) = std::fs::metadata(key) {
                c.fail(
                    "fallback.journal_key_file",
                    shown,
                    format!("cannot be read: {e}"),
                );
            }
        }
        if fallback.persist_on_shutdown && fallback.journal_path.is_none() {
            c.fail(
                "fallback.persist_on_shutdown",
                Some("true".into()),
                "needs fallback.journal_path: the file the next process restores from",
            );
        }
        if !(1..=10_000).contains(&fallback.replay_batch_size) {
            c.fail(
                "fallback.replay_batch_size",
                Some(fallback.replay_batch_size.to_string()),
                "must be between 1 and 10000",
            );
        }

        if fallback.max_memory_size > MAX_FALLBACK_MEMORY {
            c.fail(
                "fallback.max_memory_size",
                Some(fallback.max_memory_size.to_string()),
                format!("must be at most {MAX_FALLBACK_MEMORY} bytes (1 TiB)"),
            );
        }

        for (field, d) in durations(self) {
            c.at_most_duration(field, d);
        }
        c.at_most("pool.max_size", pool.max_size, MAX_POOL_SIZE);
        c.at_most(
            "pool.create_retry_count",
            pool.create_retry_count,
            MAX_COUNT,
        );
        c.at_most(
            "health.failure_threshold",
            health.failure_threshold,
            MAX_COUNT,
        );
        c.at_most(
            "health.success_threshold",
            health.success_threshold,
            MAX_COUNT,
        );
        c.at_most("health.window", health.window, MAX_COUNT);

        let metrics = &self.metrics;
        c.positive("metrics.collection_interval", metrics.collection_interval);
        c.positive("metrics.reporting_threshold", metrics.reporting_threshold);
        if metrics.retention_period < metrics.collection_interval {
            c.fail(
                "metrics.retention_period",
                Some(format_duration(metrics.retention_period)),
                format!(
                    "must be at least metrics.collection_interval ({})",
                    format_duration(metrics.collection_interval)
                ),
            );
        }

        c.problems
    }
}

/// The rules of the `[circuit_breaker]` section.
fn check_breaker(c: &mut Checker, breaker: &CircuitBreakerConfig) {
    c.at_least_one(
        "circuit_breaker.failure_threshold",
        breaker.failure_threshold,
    );
    c.percent(
        "circuit_breaker.failure_rate_threshold",
        breaker.failure_rate_threshold,
    );
    c.percent(
        "circuit_breaker.slow_call_rate_threshold",
        breaker.slow_call_rate_threshold,
    );
    c.positive(
        "circuit_breaker.slow_call_duration",
        breaker.slow_call_duration,
    );
    if !(1..=MAX_SLIDING_WINDOW_SIZE).contains(&breaker.sliding_window_size) {
        c.fail(
            "circuit_breaker.sliding_window_size",
            Some(breaker.sliding_window_size.to_string()),
            format!("must be between 1 and {MAX_SLIDING_WINDOW_SIZE}"),
        );
    }
    c.positive(
        "circuit_breaker.monitoring_period",
        breaker.monitoring_period,
    );
    c.at_least_one("circuit_breaker.minimum_calls", breaker.minimum_calls);
    c.at_most(
        "circuit_breaker.failure_threshold",
        breaker.failure_threshold,
        MAX_COUNT,
    );
    c.at_most(
        "circuit_breaker.minimum_calls",
        breaker.minimum_calls,
        MAX_COUNT,
    );
    c.positive("circuit_breaker.reset_timeout", breaker.reset_timeout);
    if !(breaker.reset_timeout_multiplier >= 1.0 && breaker.reset_timeout_multiplier.is_finite()) {
        c.fail(
            "circuit_breaker.reset_timeout_multiplier",
            Some(breaker.reset_timeout_multiplier.to_string()),
            "must be a finite number of at least 1 (1 keeps the open time constant)",
        );
    }
    if breaker.max_reset_timeout < breaker.reset_timeout {
        c.fail(
            "circuit_breaker.max_reset_timeout",
            Some(format_duration(breaker.max_reset_timeout)),
            format!(
                "must be at least circuit_breaker.reset_timeout ({})",
                format_duration(breaker.reset_timeout)
            ),
        );
    }
    if !(0.0..1.0).contains(&breaker.reset_timeout_jitter) {
        c.fail(
            "circuit_breaker.reset_timeout_jitter",
            Some(breaker.reset_timeout_jitter.to_string()),
            "must be a fraction in [0, 1)",
        );
    }
    if !(1..=MAX_HALF_OPEN_CALLS).contains(&breaker.half_open_permitted_calls) {
        c.fail(
            "circuit_breaker.half_open_permitted_calls",
            Some(breaker.half_open_permitted_calls.to_string()),
            format!("must be between 1 and {MAX_HALF_OPEN_CALLS}"),
        );
    }
}

impl CircuitBreakerConfig {
    /// Checks this section alone (for building a breaker from it); field paths are prefixed
    /// `circuit_breaker.`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut c = Checker {
            problems: Vec::new(),
        };
        check_breaker(&mut c, self);
        if c.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(c.problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisUrl;

    fn fields(config: &RedisConfig) -> Vec<String> {
        config.problems().into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(
            RedisConfig::default().validate().map_err(|e| e.to_string()),
            Ok(())
        );
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        let mut c = RedisConfig::default();
        c.url = RedisUrl::new("http://x");
        c.connect_timeout = Duration::from_millis(5);
        c.socket_timeout = Duration::ZERO;
        c.max_retries = 1000;
        c.pool.min_size = 10;
        c.pool.max_size = 5;
        c.pool.create_retry_count = 0;
        c.pool.shared_connections = 0;
        c.health.failure_threshold = 0;
        c.health.success_threshold = 0;
        c.health.timeout = Duration::from_secs(10);
        c.circuit_breaker.failure_threshold = 0;
        c.circuit_breaker.reset_timeout = Duration::ZERO;
        c.circuit_breaker.max_reset_timeout = Duration::ZERO;
        c.circuit_breaker.failure_rate_threshold = 0.0;
        c.circuit_breaker.slow_call_rate_threshold = 100.5;
        c.circuit_breaker.sliding_window_size = 0;
        c.circuit_breaker.minimum_calls = 0;
        c.circuit_breaker.reset_timeout_multiplier = 0.5;
        c.circuit_breaker.reset_timeout_jitter = 1.0;
        c.circuit_breaker.half_open_permitted_calls = 70_000;
        c.fallback.max_memory_size = 0;
        c.metrics.retention_period = Duration::from_secs(1);
        assert_eq!(
            fields(&c),
            [
                "url",
                "connect_timeout",
                "socket_timeout",
                "max_retries",
                "pool.min_size",
                "pool.create_retry_count",
                "pool.shared_connections",
                "health.timeout",
                "health.failure_threshold",
                "health.success_threshold",
                "circuit_breaker.failure_threshold",
                "circuit_breaker.failure_rate_threshold",
                "circuit_breaker.slow_call_rate_threshold",
                "circuit_breaker.sliding_window_size",
                "circuit_breaker.minimum_calls",
                "circuit_breaker.reset_timeout",
                "circuit_breaker.reset_timeout_multiplier",
                "circuit_breaker.reset_timeout_jitter",
                "circuit_breaker.half_open_permitted_calls",
                "fallback.max_memory_size",
                "metrics.retention_period",
            ]
        );
    }

    #[test]
    fn connect_timeout_range_is_inclusive() {
        let mut c = RedisConfig::default();
        c.connect_timeout = Duration::from_secs(1);
        assert!(fields(&c).is_empty());
        c.connect_timeout = Duration::from_secs(60);
        assert!(fields(&c).is_empty());
        c.connect_timeout = Duration::from_millis(60_001);
        assert_eq!(fields(&c), ["connect_timeout"]);
        c.connect_timeout = Duration::from_millis(999);
        assert_eq!(fields(&c), ["connect_timeout"]);
    }

    #[test]
    fn pool_max_size_must_be_at_least_one() {
        let mut c = RedisConfig::default();
        c.pool.min_size = 0;
        c.pool.max_size = 0;
        assert_eq!(fields(&c), ["pool.max_size"]);
    }

    #[test]
    fn fallback_memory_may_be_zero_when_disabled() {
        let mut c = RedisConfig::default();
        c.fallback.max_memory_size = 0;
        assert_eq!(fields(&c), ["fallback.max_memory_size"]);
        c.fallback.enabled = false;
        assert!(fields(&c).is_empty());
    }

    #[test]
    fn every_interval_must_be_positive() {
        let mut c = RedisConfig::default();
        c.retry_delay = Duration::ZERO;
        c.pool.acquire_timeout = Duration::ZERO;
        c.pool.create_retry_interval = Duration::ZERO;
        c.pool.idle_timeout = Duration::ZERO;
        c.pool.reap_interval = Duration::ZERO;
        c.health.check_interval = Duration::ZERO;
        c.health.timeout = Duration::ZERO;
        c.circuit_breaker.monitoring_period = Duration::ZERO;
        c.circuit_breaker.slow_call_duration = Duration::ZERO;
        c.fallback.sync_interval = Duration::ZERO;
        c.metrics.collection_interval = Duration::ZERO;
        c.metrics.reporting_threshold = Duration::ZERO;
        let problems = c.problems();
        assert_eq!(problems.len(), 12, "{problems:?}");
        assert!(
            problems.iter().all(|p| p.message == "must be more than 0"),
            "{problems:?}"
        );
    }

    /// Fails on the first validation, which had no upper bounds: `"500000000000y"` passed and
    /// the request path's deadline arithmetic panicked on it.
    #[test]
    fn every_duration_and_count_has_an_upper_bound() {
        let mut c = RedisConfig::default();
        let huge = Duration::from_secs(500_000_000_000 * 365 * 24 * 3600);
        c.socket_timeout = huge;
        c.retry_delay = huge;
        c.pool.idle_timeout = huge;
        c.health.check_interval = huge;
        c.health.timeout = huge;
        c.circuit_breaker.reset_timeout = huge;
        c.circuit_breaker.max_reset_timeout = huge;
        c.circuit_breaker.max_wait_in_half_open = huge;
        c.fallback.sync_interval = huge;
        c.metrics.retention_period = huge;
        c.pool.max_size = 1_000_000;
        c.pool.shared_connections = 4;
        c.health.window = u32::MAX;
        c.fallback.max_memory_size = u64::MAX;
        let problems = c.problems();
        let named: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for field in [
            "socket_timeout",
            "retry_delay",
            "pool.idle_timeout",
            "health.check_interval",
            "circuit_breaker.reset_timeout",
            "circuit_breaker.max_wait_in_half_open",
            "fallback.sync_interval",
            "metrics.retention_period",
            "pool.max_size",
            "health.window",
            "fallback.max_memory_size",
        ] {
            assert!(named.contains(&field), "{field} missing from {named:?}");
        }
        let bound = format_duration(MAX_DURATION);
        assert!(
            problems
                .iter()
                .any(|p| p.field == "socket_timeout" && p.message.contains(&bound)),
            "{problems:?}"
        );
        // The bound itself is accepted.
        let mut ok = RedisConfig::default();
        ok.socket_timeout = MAX_DURATION;
        assert!(fields(&ok).is_empty(), "{:?}", fields(&ok));
    }

    #[test]
    fn password_and_password_file_together_are_refused() {
        let mut c = RedisConfig::default();
        c.password = Some(crate::Secret::new("hunter2"));
        c.password_file = Some("/run/secrets/redis".into());
        let problems = c.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "password");
        assert!(!format!("{problems:?}").contains("hunter2"));
    }

    #[test]
    fn tls_files_are_checked_for_the_url_their_pair_and_being_readable() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let mut c = RedisConfig::default();
        c.tls.ca_file = Some(ca.clone());
        // Not a TLS URL.
        let problems = c.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "tls.ca_file");
        assert!(problems[0].message.contains("rediss://"), "{problems:?}");
        // A TLS URL: fine; then a certificate without its key, and a file that is not there.
        c.url = crate::RedisUrl::new("rediss://cache.internal:6380");
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        c.tls.cert_file = Some(dir.path().join("absent.crt"));
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            ["tls.cert_file", "tls.key_file"],
            "{:?}",
            c.problems()
        );
    }

    #[test]
    fn sentinel_mode_needs_its_sentinels_and_the_primary_s_name() {
        let mut c = RedisConfig::default();
        c.mode = crate::Mode::Sentinel;
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["sentinels", "master_name"]);
        c.sentinels = vec![
            crate::RedisUrl::new("redis://127.0.0.1:26379"),
            crate::RedisUrl::new("http://x"),
        ];
        c.master_name = Some("mymaster".into());
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["sentinels[1]"]);
        // Standalone with sentinel settings: a forgotten REDIS_MODE, said so.
        c.mode = crate::Mode::Standalone;
        c.sentinels.pop();
        let problems = c.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("REDIS_MODE"));
    }

    #[test]
    fn a_tls_server_name_is_a_dns_name_for_a_rediss_url_in_standalone_mode() {
        let mut c = RedisConfig::default();
        c.tls.server_name = Some("redis.internal".into());
        let problems = c.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("rediss://"), "{problems:?}");
        c.url = crate::RedisUrl::new("rediss://10.0.0.5:6380");
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        for bad in [
            "redis internal/x",
            "a..b",
            "-x.test",
            "x.",
            "10.0.0.5",
            "::1",
        ] {
            c.tls.server_name = Some(bad.into());
            let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
            assert_eq!(fields, ["tls.server_name"], "{bad}");
        }
        // No name is checked on an `#insecure` URL: a name there would mislead.
        c.url = crate::RedisUrl::new("rediss://10.0.0.5:6380/#insecure");
        c.tls.server_name = Some("redis.internal".into());
        let problems = c.problems();
        assert!(problems[0].message.contains("#insecure"), "{problems:?}");
    }

    #[test]
    fn cluster_mode_needs_its_nodes_and_database_0() {
        let mut c = RedisConfig::default();
        c.mode = crate::Mode::Cluster;
        let fields: Vec<String> = c.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["nodes"]);
        c.nodes = vec![
            crate::RedisUrl::new("redis://127.0.0.1:7000"),
            crate::RedisUrl::new("redis://127.0.0.1:7001/2"),
            crate::RedisUrl::new("http://x"),
            crate::RedisUrl::new("rediss://127.0.0.1:7002"),
        ];
        c.url = crate::RedisUrl::new("redis://127.0.0.1:6379/1");
        c.read_from_replicas = true;
        let problems = c.problems();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["nodes[1]", "nodes[2]", "nodes[3]", "url"],
            "{problems:?}"
        );
        assert!(problems[2].message.contains("TLS"), "{problems:?}");
        assert!(problems[0].message.contains("database 0"), "{problems:?}");
        // Cluster settings in another mode: a forgotten REDIS_MODE, said so.
        c.mode = crate::Mode::Standalone;
        c.nodes.truncate(1);
        let problems = c.problems();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["nodes", "read_from_replicas"], "{problems:?}");
        assert!(problems[0].message.contains("REDIS_MODE"), "{problems:?}");
    }
}
