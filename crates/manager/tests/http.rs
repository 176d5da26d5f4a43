//! The `axum` feature's `/live` and `/ready`: answered from the cached health state (the
//! monitor's `check_now` is never called, so a probe per second costs no PING), with the
//! report as JSON and `503` only when requests would fail.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use resilient_redis_config::RedisConfig;
use resilient_redis_health::{HealthStatus, MockHealthMonitor};
use resilient_redis_manager::RedisManager;
use resilient_redis_pool::{MockConnectionPool, PoolStatus};
use tower::ServiceExt;

async fn manager(healthy: bool, fallback: bool) -> RedisManager {
    let mut pool = MockConnectionPool::new();
    pool.expect_status().returning(|| {
        let mut s = PoolStatus::default();
        s.max_size = 7;
        s
    });
    pool.expect_close().return_const(());
    let mut health = MockHealthMonitor::new();
    health.expect_status().returning(move || {
        let mut s = HealthStatus::default();
        s.healthy = healthy;
        s.checks = 3;
        s.response_time = Some(std::time::Duration::from_micros(1500));
        if !healthy {
            s.error = Some("connection refused".into());
        }
        s
    });
    health.expect_check_now().never();
    let mut config = RedisConfig::default();
    config.fallback.enabled = fallback;
    RedisManager::builder(config)
        .pool(Arc::new(pool))
        .health(Arc::new(health))
        .background_tasks(false)
        .build()
        .await
        .unwrap()
}

async fn get(m: &RedisManager, path: &str) -> (StatusCode, String) {
    let response = resilient_redis_manager::http::health_routes(m.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn ready_reports_the_cached_state_as_json_without_a_ping() {
    let m = manager(true, true).await;
    let (status, body) = get(&m, "/ready").await;
    assert_eq!(status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["verdict"], "healthy");
    assert_eq!(report["latency_ms"], 1.5, "milliseconds: {body}");
    assert_eq!(report["pool"]["max_size"], 7, "the pool as fields: {body}");
    assert_eq!(report["server"], "127.0.0.1:6379/0", "which server: {body}");
    assert_eq!(
        get(&m, "/live").await,
        (StatusCode::OK, "live\n".to_owned())
    );
}

#[tokio::test]
async fn ready_is_503_only_when_requests_would_fail() {
    // Redis down, the fallback on: degraded, still serving.
    let m = manager(false, true).await;
    let (status, body) = get(&m, "/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["verdict"], "degraded");
    assert_eq!(report["error"], "connection refused");

    // Redis down and no fallback: unhealthy, out of rotation; alive all the same.
    let m = manager(false, false).await;
    let (status, body) = get(&m, "/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(get(&m, "/live").await.0, StatusCode::OK);
}
