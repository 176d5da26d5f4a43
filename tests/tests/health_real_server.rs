//! The health monitor against a real server: a SIGKILL is seen as unhealthy and the restart as
//! healthy again, both through `subscribe()`. The probe is the manager's own `PoolProbe`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use resilient_redis_config::HealthConfig;
use resilient_redis_health::{HealthMonitor, Monitor};
use resilient_redis_manager::PoolProbe;
use resilient_redis_pool::RedisPool;
use resilient_redis_tests::RedisServer;

#[tokio::test]
async fn kill_is_seen_as_unhealthy_and_restart_as_healthy() {
    let mut server = RedisServer::start();
    let pool = RedisPool::new(&common::config(&server.url()))
        .await
        .unwrap();
    let mut health = HealthConfig::default();
    health.check_interval = Duration::from_millis(50);
    health.timeout = Duration::from_millis(50);
    health.failure_threshold = 2;
    health.success_threshold = 2;
    let monitor = Monitor::new(Arc::new(PoolProbe::new(Arc::new(pool))), &health).unwrap();
    let mut rx = monitor.subscribe();
    monitor.start().unwrap();

    rx.wait_for(|s| s.healthy && s.checks >= 2).await.unwrap();
    server.kill();
    let down = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| !s.healthy))
        .await
        .expect("unhealthy within 5 s")
        .unwrap()
        .clone();
    assert!(down.consecutive_failures >= 2);
    assert!(down.error.is_some());

    server.restart();
    let up = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.healthy))
        .await
        .expect("healthy again within 5 s")
        .unwrap()
        .clone();
    assert!(up.consecutive_successes >= 2);
    assert_eq!(up.error, None);
    monitor.stop().await;
}
