//! A circuit breaker written outside this crate, as a user's crate would write it (only public
//! items): it opens after N consecutive failures, in 30-odd lines, and guards the manager's
//! request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use resilient_redis_breaker::{
    BreakerError, BreakerSnapshot, BreakerState, CallNotPermitted, CircuitBreaker, Permit,
};
use resilient_redis_config::{ErrorKind, RedisConfig};
use resilient_redis_manager::RedisManager;
use resilient_redis_pool::{MockConnectionPool, PoolError};
use tokio::sync::watch;

/// Opens after `limit` consecutive failures; an explicit transition to CLOSED resets it.
struct Consecutive {
    limit: u32,
    failures: AtomicU32,
    state: watch::Sender<BreakerState>,
}

impl Consecutive {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            failures: AtomicU32::new(0),
            state: watch::Sender::new(BreakerState::Closed),
        }
    }
}

impl CircuitBreaker for Consecutive {
    fn try_acquire(&self) -> Result<Permit, CallNotPermitted> {
        match *self.state.borrow() {
            BreakerState::Open => Err(CallNotPermitted {
                state: BreakerState::Open,
            }),
            _ => Ok(Permit::new(0)),
        }
    }
    fn on_success(&self, _: Permit, _: Duration) {
        self.failures.store(0, Ordering::Relaxed);
    }
    fn on_error(&self, _: Permit, _: Duration) {
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= self.limit {
            self.state.send_replace(BreakerState::Open);
        }
    }
    fn release_permission(&self, _: Permit) {}
    fn state(&self) -> BreakerState {
        *self.state.borrow()
    }
    fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.state.subscribe()
    }
    fn snapshot(&self) -> BreakerSnapshot {
        let mut s = BreakerSnapshot::new(self.state());
        s.consecutive_failures = self.failures.load(Ordering::Relaxed);
        s
    }
    fn transition_to(&self, to: BreakerState) -> Result<(), BreakerError> {
        match to {
            BreakerState::Closed => self.reset(),
            BreakerState::Open | BreakerState::HalfOpen => {
                self.state.send_replace(to);
            }
            _ => {
                return Err(BreakerError::IllegalTransition {
                    from: self.state(),
                    to,
                });
            }
        }
        Ok(())
    }
    fn reset(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.state.send_replace(BreakerState::Closed);
    }
}

fn refusing_pool() -> MockConnectionPool {
    let mut pool = MockConnectionPool::new();
    pool.expect_shared().returning(|| {
        Err(PoolError::Connect {
            kind: ErrorKind::Connection,
            url: "redis://127.0.0.1:1".into(),
            message: "connection refused".into(),
        })
    });
    pool.expect_status().returning(Default::default);
    pool.expect_close().return_const(());
    pool
}

#[tokio::test]
async fn a_breaker_written_outside_its_crate_guards_the_request_path() {
    let breaker = Arc::new(Consecutive::new(3));
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    config.fallback.enabled = false;
    let m = RedisManager::builder(config)
        .pool(Arc::new(refusing_pool()))
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
