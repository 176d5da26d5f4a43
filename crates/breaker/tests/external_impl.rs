//! A circuit breaker written outside this crate, as a user's crate would write it (only public
//! items): it opens after N consecutive failures, in 30-odd lines, and guards the manager's
//! request path. The breaker is the one in `examples/consecutive_breaker.rs`.

use resilient_redis_breaker::{BreakerState, CircuitBreaker};
use resilient_redis_config::{ErrorKind, RedisConfig};
use resilient_redis_manager::RedisManager;
use resilient_redis_pool::MockConnectionPool;
use std::sync::Arc;

#[path = "../examples/consecutive_breaker.rs"]
#[allow(dead_code, reason = "the example's main is not called here")]
mod example;
use example::Consecutive;

#[tokio::test]
async fn a_breaker_written_outside_its_crate_guards_the_request_path() {
    let breaker = Arc::new(Consecutive::new(3));
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    config.fallback.enabled = false;
    let m = RedisManager::builder(config)
        .pool(Arc::new(MockConnectionPool::refusing()))
        .breaker(breaker.clone())
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap();
    for _ in 0..3 {
        let e = m.execute(&redis::cmd("PING")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let e = m.execute(&redis::cmd("PING")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CircuitBreaker, "{e}");
    assert_eq!(m.breaker().snapshot().state, BreakerState::Open);
}
