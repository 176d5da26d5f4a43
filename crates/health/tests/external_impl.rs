//! A health monitor written outside this crate, as a user's crate would write it (only public
//! items): health as the application sees it, from a signal of its own, drives the manager's
//! fallback mode and opens its breaker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilient_redis_breaker::{Breaker, BreakerState, CircuitBreaker};
use resilient_redis_config::RedisConfig;
use resilient_redis_health::{HealthError, HealthMonitor, HealthStatus};
use resilient_redis_manager::RedisManager;
use resilient_redis_pool::MockConnectionPool;
use tokio::sync::watch;

/// Health as the application sees it (say, from its own load balancer's checks).
struct Signal {
    status: watch::Sender<HealthStatus>,
    probes: Mutex<u32>,
}

#[async_trait::async_trait]
impl HealthMonitor for Signal {
    fn start(&self) -> Result<(), HealthError> {
        Ok(())
    }
    async fn stop(&self) {}
    fn status(&self) -> HealthStatus {
        self.status.borrow().clone()
    }
    fn subscribe(&self) -> watch::Receiver<HealthStatus> {
        self.status.subscribe()
    }
    async fn check_now(&self) -> HealthStatus {
        *self.probes.lock().unwrap() += 1;
        self.status()
    }
}

#[tokio::test]
async fn a_health_monitor_written_outside_its_crate_drives_fallback_mode() {
    let signal = Arc::new(Signal {
        status: watch::Sender::new(HealthStatus::default()),
        probes: Mutex::new(0),
    });
    let m = RedisManager::builder(RedisConfig::default())
        .pool(Arc::new(MockConnectionPool::refusing()))
        .health(signal.clone())
        .breaker(Arc::new(
            Breaker::from_config(&RedisConfig::default().circuit_breaker).unwrap(),
        ))
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .build()
        .await
        .unwrap();
    signal.status.send_replace(HealthStatus::new(
        false,
        Some("load balancer says no".into()),
    ));
    tokio::time::timeout(Duration::from_secs(2), async {
        while !m.is_fallback_mode() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("fallback mode follows the monitor");
    assert_eq!(
        m.breaker().state(),
        BreakerState::Open,
        "and the breaker hears of it"
    );
    m.set(b"k", b"v", None).await.unwrap();
    assert_eq!(m.journal().pending_writes(), 1);
    m.close(Duration::from_millis(50)).await.ok();
}
