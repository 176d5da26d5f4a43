//! Configuration helpers shared by the integration tests.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::time::Duration;

use resilient_redis_config::RedisConfig;

/// A configuration for `url` with timeouts short enough for tests. The test process is the
/// application: it installs its rustls crypto provider (for `rediss://` URLs) here.
pub(crate) fn config(url: &str) -> RedisConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut c = RedisConfig::default();
    c.url = resilient_redis_config::RedisUrl::new(url);
    c.connect_timeout = Duration::from_secs(1);
    c.socket_timeout = Duration::from_millis(300);
    c.pool.min_size = 2;
    c.pool.max_size = 4;
    c.pool.shared_connections = 1;
    c.pool.acquire_timeout = Duration::from_millis(500);
    c.pool.create_retry_count = 1;
    c.pool.create_retry_interval = Duration::from_millis(20);
    c.pool.validation_interval = Duration::from_millis(100);
    c
}

/// A manager configuration for `url` that sees an outage and a recovery within a few hundred
/// milliseconds: short timeouts, one retry, a probe every 100 ms that decides on one result.
pub(crate) fn outage_config(url: &str) -> RedisConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut c = RedisConfig::default();
    c.url = resilient_redis_config::RedisUrl::new(url);
    c.connect_timeout = Duration::from_secs(1);
    c.socket_timeout = Duration::from_millis(300);
    c.max_retries = 1;
    c.retry_delay = Duration::from_millis(20);
    c.pool.acquire_timeout = Duration::from_millis(300);
    c.pool.create_retry_count = 1;
    c.pool.validation_interval = Duration::from_millis(100);
    c.health.check_interval = Duration::from_millis(100);
    c.health.timeout = Duration::from_millis(100);
    c.health.failure_threshold = 1;
    c.health.success_threshold = 1;
    c.fallback.sync_interval = Duration::from_millis(100);
    c
}

/// PING over the pool's shared connection.
pub(crate) async fn ping(
    pool: &resilient_redis_pool::RedisPool,
) -> Result<String, resilient_redis_pool::PoolError> {
    use resilient_redis_pool::ConnectionPool;
    pool.shared()?.query::<String>(&redis::cmd("PING")).await
}
