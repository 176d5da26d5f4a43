//! The request path's composition, with every part mocked: who is asked, in which order, and
//! what the caller gets.

use std::sync::Arc;

use resilient_redis_breaker::{BreakerState, CallNotPermitted, MockCircuitBreaker, Permit};
use resilient_redis_config::{ErrorKind, RedisConfig};
use resilient_redis_fallback::MockFallbackStore;
use resilient_redis_health::MockHealthMonitor;
use resilient_redis_manager::{Error, RedisManager};
use resilient_redis_metrics::{MockMetricsCollector, Outcome};
use resilient_redis_pool::{MockConnectionPool, PoolError};

struct Parts {
    pool: MockConnectionPool,
    breaker: MockCircuitBreaker,
    store: MockFallbackStore,
    metrics: MockMetricsCollector,
}

fn parts() -> Parts {
    Parts {
        pool: MockConnectionPool::new(),
        breaker: MockCircuitBreaker::new(),
        store: MockFallbackStore::new(),
        metrics: MockMetricsCollector::new(),
    }
}

async fn manager(p: Parts) -> RedisManager {
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    let mut store = p.store;
    store.expect_pending_writes().return_const(0u64);
    RedisManager::builder(config)
        .pool(Arc::new(p.pool))
        .health(Arc::new(MockHealthMonitor::new()))
        .breaker(Arc::new(p.breaker))
        .fallback(Arc::new(store))
        .metrics(Arc::new(p.metrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap()
}

fn refused() -> PoolError {
    PoolError::Connect {
        kind: ErrorKind::Connection,
        url: "redis://127.0.0.1:1".into(),
        message: "connection refused".into(),
    }
}

#[tokio::test]
async fn an_open_breaker_sends_reads_to_the_fallback_without_touching_the_pool() {
    let mut p = parts();
    p.breaker.expect_try_acquire().times(1).returning(|| {
        Err(CallNotPermitted {
            state: BreakerState::Open,
        })
    });
    p.pool.expect_shared().never();
    p.store.expect_is_fallback_mode().return_const(false);
    p.store.expect_activate().times(1).return_const(());
    p.store
        .expect_get()
        .withf(|k| k == b"k")
        .times(1)
        .returning(|_| Ok(Some(b"cached".to_vec())));
    p.metrics
        .expect_record_operation()
        .withf(|op, _, o| op == "get" && *o == Outcome::Fallback)
        .times(1)
        .return_const(());
    let m = manager(p).await;
    assert_eq!(m.get(b"k").await.unwrap(), Some(b"cached".to_vec()));
}

#[tokio::test]
async fn an_open_breaker_fails_fast_for_what_the_fallback_cannot_serve() {
    let mut p = parts();
    p.breaker.expect_try_acquire().returning(|| {
        Err(CallNotPermitted {
            state: BreakerState::Open,
        })
    });
    p.pool.expect_shared().never();
    p.store.expect_is_fallback_mode().return_const(false);
    p.metrics
        .expect_record_operation()
        .withf(|op, _, o| op == "ping" && *o == Outcome::Error(ErrorKind::CircuitBreaker))
        .times(1)
        .return_const(());
    let m = manager(p).await;
    let err = m.execute(&redis::cmd("PING")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                kind: ErrorKind::CircuitBreaker,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_write_that_never_left_counts_against_the_breaker_and_is_journaled() {
    let mut p = parts();
    p.breaker
        .expect_try_acquire()
        .returning(|| Ok(Permit::new(7)));
    p.breaker
        .expect_on_error()
        .withf(|permit, _| permit.tag() == 7)
        .times(1)
        .return_const(());
    p.pool.expect_shared().times(1).returning(|| Err(refused()));
    p.store.expect_is_fallback_mode().return_const(false);
    p.store.expect_activate().times(1).return_const(());
    p.store
        .expect_set()
        .withf(|k, v, ttl| k == b"k" && v == b"v" && ttl.is_none())
        .times(1)
        .returning(|_, _, _| Ok(()));
    p.metrics
        .expect_record_operation()
        .withf(|_, _, o| *o == Outcome::Fallback)
        .times(1)
        .return_const(());
    let m = manager(p).await;
    m.set(b"k", b"v", None).await.unwrap();
}

#[tokio::test]
async fn an_increment_that_never_left_is_journaled_not_ambiguous() {
    let mut p = parts();
    p.breaker
        .expect_try_acquire()
        .returning(|| Ok(Permit::new(1)));
    p.breaker.expect_on_error().return_const(());
    p.pool.expect_shared().returning(|| Err(refused()));
    p.store.expect_is_fallback_mode().return_const(false);
    p.store.expect_activate().return_const(());
    p.store
        .expect_incr_by()
        .withf(|k, d| k == b"n" && *d == 2)
        .times(1)
        .returning(|_, _| Ok(2));
    p.metrics.expect_record_operation().return_const(());
    let m = manager(p).await;
    assert_eq!(m.incr_by(b"n", 2).await.unwrap(), 2);
}

#[tokio::test]
async fn in_fallback_mode_supported_operations_never_reach_the_breaker() {
    let mut p = parts();
    p.breaker.expect_try_acquire().never();
    p.store.expect_is_fallback_mode().return_const(true);
    p.store.expect_exists().times(1).returning(|_| Ok(true));
    p.metrics
        .expect_record_operation()
        .withf(|_, _, o| *o == Outcome::Fallback)
        .return_const(());
    let m = manager(p).await;
    assert!(m.exists(b"k").await.unwrap());
}

#[tokio::test]
async fn a_full_fallback_store_refuses_with_its_error() {
    let mut p = parts();
    p.store.expect_is_fallback_mode().return_const(true);
    p.store.expect_set().returning(|_, _, _| {
        Err(resilient_redis_fallback::FallbackError::Full {
            needed: 10,
            used: 100,
            limit: 100,
        })
    });
    p.metrics
        .expect_record_operation()
        .withf(|_, _, o| *o == Outcome::Error(ErrorKind::Fallback))
        .return_const(());
    let m = manager(p).await;
    let err = m.set(b"k", b"v", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fallback, "{err}");
    assert!(err.to_string().contains("full"), "{err}");
}

/// Application code written against `RedisApi` is unit-tested with `MockRedisApi`, no server.
async fn greeting(api: &dyn resilient_redis_manager::RedisApi, user: &str) -> String {
    match api.get(format!("name:{user}").as_bytes()).await {
        Ok(Some(name)) => format!("hello, {}", String::from_utf8_lossy(&name)),
        Ok(None) => "hello, stranger".to_owned(),
        Err(e) => format!("hello (degraded: {})", e.kind()),
    }
}

#[tokio::test]
async fn applications_mock_the_typed_api() {
    let mut api = resilient_redis_manager::MockRedisApi::new();
    api.expect_get()
        .withf(|k| k == b"name:42")
        .returning(|_| Ok(Some(b"Ada".to_vec())));
    api.expect_get()
        .withf(|k| k == b"name:7")
        .returning(|_| Err(Error::unavailable(ErrorKind::CircuitBreaker, "open")));
    assert_eq!(greeting(&api, "42").await, "hello, Ada");
    assert_eq!(
        greeting(&api, "7").await,
        "hello (degraded: circuit_breaker_error)"
    );
}

/// Fails on the first version, where `execute` and `pipeline` went straight to Redis while
/// journaled writes for the same keys waited for their replay (and were replayed over them).
#[tokio::test]
async fn commands_the_fallback_cannot_serve_never_overtake_journaled_writes() {
    let mut p = parts();
    p.pool.expect_shared().never();
    p.breaker.expect_try_acquire().never();
    p.store.expect_is_fallback_mode().return_const(true);
    p.store.expect_activate().return_const(());
    p.store.expect_pending_writes().return_const(3u64);
    p.metrics
        .expect_record_operation()
        .withf(|_, _, o| *o == Outcome::Error(ErrorKind::Fallback))
        .times(2)
        .return_const(());
    let m = RedisManager::builder(RedisConfig::default())
        .pool(Arc::new(p.pool))
        .health(Arc::new(MockHealthMonitor::new()))
        .breaker(Arc::new(p.breaker))
        .fallback(Arc::new(p.store))
        .metrics(Arc::new(p.metrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap();
    let err = m.execute(&redis::cmd("GETSET")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fallback, "{err}");
    assert!(err.to_string().contains("overtake"), "{err}");
    let err = m.pipeline(&redis::pipe()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fallback, "{err}");
}

/// Refused in every mode, before anything is asked of Redis or memory: a TTL whose deadline
/// Redis would refuse, and argument lists Redis would refuse as empty.
#[tokio::test]
async fn arguments_redis_would_refuse_are_refused_at_the_call() {
    let mut p = parts();
    p.pool.expect_shared().never();
    p.breaker.expect_try_acquire().never();
    p.store.expect_is_fallback_mode().never();
    let m = manager(p).await;
    for err in [
        m.set(b"k", b"v", Some(std::time::Duration::MAX))
            .await
            .unwrap_err(),
        m.expire(b"k", std::time::Duration::MAX)
            .await
            .map(drop)
            .unwrap_err(),
        m.hset(b"h", &[]).await.map(drop).unwrap_err(),
        m.del(&[]).await.map(drop).unwrap_err(),
    ] {
        assert!(matches!(err, Error::Validation(_)), "{err}");
    }
}

/// Fails on the first version: a call in flight when `close()` ran (here sleeping before its
/// retry) was later answered from memory and journaled after the store had been closed, so
/// nobody would ever replay it. Now it gets `Closed`, and close's `Ok` means nothing is left.
#[tokio::test(start_paused = true)]
async fn a_call_in_flight_at_close_is_refused_not_journaled_behind_it() {
    use resilient_redis_fallback::{FallbackStore, MemoryStore};
    let mut config = RedisConfig::default();
    config.max_retries = 1;
    let mut pool = MockConnectionPool::new();
    pool.expect_shared().returning(|| Err(refused()));
    pool.expect_close().return_const(());
    let mut health = MockHealthMonitor::new();
    health.expect_stop().return_const(());
    let store = Arc::new(MemoryStore::new(&config.fallback).unwrap());
    let m = RedisManager::builder(config)
        .pool(Arc::new(pool))
        .health(Arc::new(health))
        .breaker(Arc::new(resilient_redis_breaker::NoopBreaker::new()))
        .fallback(Arc::clone(&store) as Arc<dyn FallbackStore>)
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap();
    let call = tokio::spawn({
        let m = m.clone();
        async move { m.set(b"k", b"v", None).await }
    });
    tokio::task::yield_now().await; // the call failed once and sleeps before its retry
    m.close(std::time::Duration::from_secs(1)).await.unwrap();
    let answer = call.await.unwrap();
    assert!(matches!(answer, Err(Error::Closed)), "{answer:?}");
    assert_eq!(store.pending_writes(), 0, "nothing journaled after close");
}

/// Found by review: with the fallback turned off, a journal restored from an earlier process
/// did not turn fallback mode on, so new writes went to Redis before the older journaled ones
/// were replayed over them. Now they are refused until the journal is replayed.
#[tokio::test]
async fn a_restored_journal_blocks_writes_that_would_overtake_it_even_with_the_fallback_off() {
    use resilient_redis_fallback::{FallbackStore, MemoryStore};
    let dir = tempfile::tempdir().unwrap();
    let mut config = RedisConfig::default();
    config.fallback.journal_path = Some(dir.path().join("app.journal"));
    {
        let earlier = MemoryStore::new(&config.fallback).unwrap();
        earlier.set(b"k", b"old", None).unwrap();
    }
    config.fallback.enabled = false;
    let mut pool = MockConnectionPool::new();
    pool.expect_shared().never();
    let m = RedisManager::builder(config)
        .pool(Arc::new(pool))
        .health(Arc::new(MockHealthMonitor::new()))
        .breaker(Arc::new(resilient_redis_breaker::NoopBreaker::new()))
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap();
    assert_eq!(m.fallback().pending_writes(), 1);
    let err = m.set(b"k", b"new", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fallback, "{err}");
    assert!(m.connection().await.is_err());
}

/// Fails on the first version: a call dropped by its caller (a timeout around it) while it
/// waited to retry kept its breaker permit forever; in HALF_OPEN that wedged the breaker.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_it_waits_gives_its_permit_back() {
    let mut p = parts();
    p.breaker
        .expect_try_acquire()
        .times(1)
        .returning(|| Ok(Permit::new(7)));
    p.breaker
        .expect_release_permission()
        .withf(|permit| permit.tag() == 7)
        .times(1)
        .return_const(());
    p.breaker.expect_on_error().never();
    p.breaker.expect_on_success().never();
    p.pool.expect_shared().returning(|| Err(refused()));
    p.store.expect_is_fallback_mode().return_const(false);
    p.metrics.expect_record_operation().return_const(());
    let mut config = RedisConfig::default();
    config.max_retries = 3;
    config.retry_delay = std::time::Duration::from_millis(100);
    let mut store = p.store;
    store.expect_pending_writes().return_const(0u64);
    let m = RedisManager::builder(config)
        .pool(Arc::new(p.pool))
        .health(Arc::new(MockHealthMonitor::new()))
        .breaker(Arc::new(p.breaker))
        .fallback(Arc::new(store))
        .metrics(Arc::new(p.metrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(10), m.get(b"k")).await;
    assert!(
        abandoned.is_err(),
        "the caller gave up while the call slept"
    );
}
