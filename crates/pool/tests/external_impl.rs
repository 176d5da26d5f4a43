//! A pool written outside this crate, as a user's crate would write it (only public items):
//! it hands out redis-test's `MockRedisConnection`, so the manager's request path can be
//! driven through success, retry, an unknown outcome and a server still loading, no server.

use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, Value};
use redis_test::{MockCmd, MockRedisConnection};
use resilient_redis_config::{ErrorKind, RedisConfig};
use resilient_redis_manager::{Error, RedisManager};
use resilient_redis_pool::{
    ConnectionPool, PoolError, PoolStatus, PooledConnection, SharedConnection,
};

/// Every caller shares one scripted connection; exclusive ones are scripted too.
struct ScriptedPool {
    conn: MockRedisConnection,
}

#[async_trait::async_trait]
impl ConnectionPool for ScriptedPool {
    fn shared(&self) -> Result<SharedConnection, PoolError> {
        Ok(SharedConnection::from_connection(self.conn.clone()))
    }
    async fn get(&self) -> Result<PooledConnection, PoolError> {
        Ok(PooledConnection::from_connection(self.conn.clone()))
    }
    fn status(&self) -> PoolStatus {
        PoolStatus::default()
    }
    async fn close(&self, _deadline: Duration) {}
}

async fn manager(
    script: Vec<MockCmd>,
    configure: impl FnOnce(&mut RedisConfig),
) -> (RedisManager, MockRedisConnection) {
    let conn = MockRedisConnection::new(script);
    let mut config = RedisConfig::default();
    config.retry_delay = Duration::from_millis(1);
    configure(&mut config);
    let m = RedisManager::builder(config)
        .pool(Arc::new(ScriptedPool { conn: conn.clone() }))
        .breaker(Arc::new(resilient_redis_breaker::NoopBreaker::new()))
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap();
    (m, conn)
}

fn get(key: &str) -> redis::Cmd {
    let mut c = redis::cmd("GET");
    c.arg(key);
    c
}

fn reset() -> RedisError {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer").into()
}

#[tokio::test]
async fn answers_come_from_the_custom_pool_s_connection() {
    let (m, conn) = manager(vec![MockCmd::new(get("k"), Ok("v"))], |_| {}).await;
    assert_eq!(m.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(conn.is_empty());
    let exclusive = m.connection().await.unwrap();
    assert!(!exclusive.carries_session_state());
}

#[tokio::test]
async fn a_read_that_met_a_reset_is_retried_on_the_custom_connection() {
    let script = vec![
        MockCmd::new(get("k"), Err::<Value, _>(reset())),
        MockCmd::new(get("k"), Ok("v")),
    ];
    let (m, conn) = manager(script, |c| {
        c.max_retries = 1;
        c.fallback.enabled = false;
    })
    .await;
    assert_eq!(m.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(conn.is_empty(), "both attempts went to the connection");
}

#[tokio::test]
async fn an_increment_whose_reply_was_lost_is_ambiguous_and_never_sent_twice() {
    let mut incr = redis::cmd("INCRBY");
    incr.arg("n").arg(1);
    let (m, conn) = manager(vec![MockCmd::new(incr, Err::<Value, _>(reset()))], |c| {
        c.max_retries = 3;
    })
    .await;
    let err = m.incr_by(b"n", 1).await.unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(
        conn.is_empty(),
        "sent once: a second try would have found no script"
    );
    assert_eq!(m.journal().pending_writes(), 0, "and not journaled either");
}

#[tokio::test]
async fn a_server_still_loading_its_data_is_not_ready_and_retried() {
    let loading = redis::make_extension_error(
        "LOADING".into(),
        Some("Redis is loading the dataset in memory".into()),
    );
    let script = vec![
        MockCmd::new(get("k"), Err::<Value, _>(loading)),
        MockCmd::new(get("k"), Ok("v")),
    ];
    let (m, conn) = manager(script, |c| {
        c.max_retries = 1;
        c.fallback.enabled = false;
    })
    .await;
    assert_eq!(m.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(conn.is_empty());
}

#[tokio::test]
async fn a_cluster_down_during_a_failover_is_not_ready_and_retried() {
    let down =
        redis::make_extension_error("CLUSTERDOWN".into(), Some("The cluster is down".into()));
    let script = vec![
        MockCmd::new(get("k"), Err::<Value, _>(down)),
        MockCmd::new(get("k"), Ok("v")),
    ];
    let (m, conn) = manager(script, |c| {
        c.max_retries = 1;
        c.fallback.enabled = false;
    })
    .await;
    assert_eq!(m.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(conn.is_empty(), "retried, not handed to the caller");
}

#[tokio::test]
async fn a_redirect_is_sent_again_once_even_when_memory_could_answer() {
    let moved = redis::make_extension_error("MOVED".into(), Some("3999 127.0.0.1:7001".into()));
    let script = vec![
        MockCmd::new(get("k"), Err::<Value, _>(moved)),
        MockCmd::new(get("k"), Ok("v")),
    ];
    // The fallback is on: an outage would be answered from memory at once, a redirect is not.
    let (m, conn) = manager(script, |c| c.max_retries = 1).await;
    assert_eq!(m.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert!(conn.is_empty(), "sent again, not answered from memory");
    assert!(!m.is_fallback_mode());
}
