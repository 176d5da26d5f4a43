//! A circuit breaker written outside its crate and injected into the manager: it opens after N
//! consecutive failures, and only an explicit transition closes it again. The whole trait is
//! seven methods; `Permit`, `CallNotPermitted` and `BreakerSnapshot` are built with their
//! public constructors.
//!
//! Run it with `cargo run -p resilient-redis-breaker --example consecutive_breaker`; with no
//! Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`) it shows the breaker opening.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use resilient_redis_breaker::{
    BreakerError, BreakerSnapshot, BreakerState, CallNotPermitted, CircuitBreaker, Permit,
};
use resilient_redis_manager::{RedisConfig, RedisManager};
use tokio::sync::watch;

/// Opens after `limit` consecutive failures; an explicit transition to CLOSED resets it.
pub(crate) struct Consecutive {
    limit: u32,
    failures: AtomicU32,
    state: watch::Sender<BreakerState>,
}

impl Consecutive {
    /// A breaker that opens after `limit` consecutive failures.
    #[must_use]
    pub(crate) fn new(limit: u32) -> Self {
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

#[tokio::main(flavor = "current_thread")]
#[allow(
    dead_code,
    reason = "the tests include this file for its breaker, not its main"
)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = RedisConfig::load()?; // defaults, then REDIS_* environment variables
    config.max_retries = 0;
    config.fallback.enabled = false;
    config.socket_timeout = Duration::from_millis(200);
    let breaker = Arc::new(Consecutive::new(3));
    let manager = RedisManager::builder(config)
        .breaker(breaker.clone())
        .build()
        .await?;
    for i in 1..=5 {
        let answer = match manager.execute(&redis::cmd("PING")).await {
            Ok(v) => format!("{v:?}"),
            Err(e) => e.to_string(),
        };
        println!("call {i}: {answer}; breaker {}", breaker.state());
    }
    manager.close(Duration::from_secs(1)).await?;
    Ok(())
}
