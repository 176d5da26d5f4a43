//! The request path's composition, with every part mocked: who is asked, in which order, and
//! what the caller gets.

use std::sync::Arc;

use resilient_redis_breaker::{BreakerState, CallNotPermitted, MockCircuitBreaker, Permit};
use resilient_redis_config::{ErrorKind, RedisConfig};
use resilient_redis_fallback::{Answer, MockFallbackStore, MockJournal, ReadCmd, WriteCmd};
use resilient_redis_health::MockHealthMonitor;
use resilient_redis_manager::{Error, RedisManager};
use resilient_redis_metrics::{MockMetricsCollector, Outcome};
use resilient_redis_pool::{MockConnectionPool, PoolError};

struct Parts {
    pool: MockConnectionPool,
    breaker: MockCircuitBreaker,
    store: MockFallbackStore,
    metrics: MockMetricsCollector,
    /// Writes the journal holds at build (restored from an earlier process): fallback mode
    /// starts on when there are any.
    pending: u64,
}

fn parts() -> Parts {
    Parts {
        pool: MockConnectionPool::new(),
        breaker: MockCircuitBreaker::new(),
        store: MockFallbackStore::new(),
        metrics: MockMetricsCollector::new(),
        pending: 0,
    }
}

async fn manager(p: Parts) -> RedisManager {
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    manager_with(p, config).await
}

async fn manager_with(p: Parts, config: RedisConfig) -> RedisManager {
    let mut journal = MockJournal::new();
    journal.expect_pending_writes().return_const(p.pending);
    RedisManager::builder(config)
        .pool(Arc::new(p.pool))
        .health(Arc::new(MockHealthMonitor::new()))
        .breaker(Arc::new(p.breaker))
        .fallback_parts(Arc::new(p.store), Arc::new(journal))
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
    p.store.expect_knows().return_const(true);
    p.store
        .expect_read()
        .withf(|c| *c == ReadCmd::Get(b"k"))
        .times(1)
        .returning(|_| Ok(Answer::Value(Some(b"cached".to_vec()))));
    p.metrics
        .expect_record_operation_at()
        .withf(|op, _, o, _| op == "get" && *o == Outcome::Fallback)
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
    p.metrics
        .expect_record_operation_at()
        .withf(|op, _, o, _| op == "ping" && *o == Outcome::Error(ErrorKind::CircuitBreaker))
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
    p.store
        .expect_write()
        .withf(|c| {
            *c == WriteCmd::Set {
                key: b"k",
                value: b"v",
                ttl: None,
            }
        })
        .times(1)
        .returning(|_| Ok(Answer::Ok));
    p.metrics
        .expect_record_operation_at()
        .withf(|_, _, o, _| *o == Outcome::Fallback)
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
    p.store.expect_knows().return_const(true);
    p.store
        .expect_write()
        .withf(|c| {
            *c == WriteCmd::IncrBy {
                key: b"n",
                delta: 2,
            }
        })
        .times(1)
        .returning(|_| Ok(Answer::Int(2)));
    p.metrics.expect_record_operation_at().return_const(());
    let m = manager(p).await;
    assert_eq!(m.incr_by(b"n", 2).await.unwrap(), 2);
}

#[tokio::test]
async fn in_fallback_mode_supported_operations_never_reach_the_breaker() {
    let mut p = parts();
    p.breaker.expect_try_acquire().never();
    p.pending = 1;
    p.store.expect_knows().return_const(true);
    p.store
        .expect_read()
        .withf(|c| *c == ReadCmd::Exists(b"k"))
        .times(1)
        .returning(|_| Ok(Answer::Bool(true)));
    p.metrics
        .expect_record_operation_at()
        .withf(|_, _, o, _| *o == Outcome::Fallback)
        .return_const(());
    let m = manager(p).await;
    assert!(m.exists(b"k").await.unwrap());
}

#[tokio::test]
async fn a_full_fallback_store_refuses_with_its_error() {
    let mut p = parts();
    p.pending = 1;
    p.store.expect_write().returning(|_| {
        Err(resilient_redis_fallback::FallbackError::Full {
            needed: 10,
            used: 100,
            limit: 100,
        })
    });
    p.metrics
        .expect_record_operation_at()
        .withf(|_, _, o, _| *o == Outcome::Error(ErrorKind::Fallback))
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
    p.pending = 3;
    p.metrics
        .expect_record_operation_at()
        .withf(|_, _, o, _| *o == Outcome::Error(ErrorKind::Fallback))
        .times(2)
        .return_const(());
    let m = manager_with(p, RedisConfig::default()).await;
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
    p.store.expect_read().never();
    p.store.expect_write().never();
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

/// Found by review: with the fallback turned off, a journal restored from an earlier process
/// did not turn fallback mode on, so new writes went to Redis before the older journaled ones
/// were replayed over them. Now they are refused until the journal is replayed.
#[tokio::test]
async fn a_restored_journal_blocks_writes_that_would_overtake_it_even_with_the_fallback_off() {
    use resilient_redis_fallback::{FallbackStoreExt, MemoryStore};
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
    assert_eq!(m.journal().pending_writes(), 1);
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
    p.metrics.expect_record_operation_at().return_const(());
    let mut config = RedisConfig::default();
    config.max_retries = 3;
    config.retry_delay = std::time::Duration::from_millis(100);
    let m = manager_with(p, config).await;
    // PING has no fallback: it is retried, and the caller gives up while it sleeps.
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(10),
        m.execute(&redis::cmd("PING")),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the caller gave up while the call slept"
    );
}

/// A manager over a real fallback store whose Redis refuses every connection.
async fn outage_manager(
    config: RedisConfig,
) -> (RedisManager, Arc<resilient_redis_fallback::MemoryStore>) {
    use resilient_redis_fallback::MemoryStore;
    let mut pool = MockConnectionPool::new();
    pool.expect_shared().returning(|| Err(refused()));
    let store = Arc::new(MemoryStore::new(&config.fallback).unwrap());
    let m = RedisManager::builder(config)
        .pool(Arc::new(pool))
        .health(Arc::new(MockHealthMonitor::new()))
        .breaker(Arc::new(resilient_redis_breaker::NoopBreaker::new()))
        .fallback(Arc::clone(&store))
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap();
    (m, store)
}

/// Fails on the first version: while Redis was unreachable a GET of a key memory never held
/// answered `Ok(None)` (a session looked logged out, a flag looked unset) and an INCRBY of a
/// counter it never held answered the delta (an ID generator handed out duplicates).
#[tokio::test]
async fn memory_never_passes_off_an_unknown_key_as_redis_s_answer() {
    use resilient_redis_fallback::{FallbackError, Journal};
    use resilient_redis_manager::ServedBy;
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    let (m, store) = outage_manager(config.clone()).await;
    let unknown =
        |r: Result<_, Error>| matches!(r, Err(Error::Fallback(FallbackError::Unknown { .. })));
    assert!(unknown(m.get(b"session:1").await.map(drop)));
    assert!(unknown(m.exists(b"flag").await.map(drop)));
    assert!(unknown(m.incr_by(b"ids", 1).await.map(drop)));
    assert_eq!(
        store.pending_writes(),
        0,
        "a refused increment is not journaled"
    );
    m.set(b"known", b"v", None).await.unwrap();
    assert_eq!(m.get(b"known").await.unwrap().as_deref(), Some(&b"v"[..]));
    m.del(&[b"gone".to_vec()]).await.unwrap();
    assert_eq!(
        m.get(b"gone").await.unwrap(),
        None,
        "deleted during the outage: known"
    );
    // Provenance: always answered, always labelled.
    let s = m.get_with_source(b"session:1").await.unwrap();
    assert_eq!((s.value, s.by), (None, ServedBy::MemoryUnknownKey));
    let s = m.get_with_source(b"known").await.unwrap();
    assert_eq!(s.by, ServedBy::Memory);
    let n = m.incr_by_with_source(b"ids", 5).await.unwrap();
    assert_eq!((n.value, n.by), (5, ServedBy::MemoryUnknownKey));
    assert_eq!(
        store.pending_writes(),
        3,
        "the labelled increment is journaled"
    );
    // A pure cache opts into miss semantics.
    config.fallback.unknown_keys = resilient_redis_config::UnknownKeys::Miss;
    let (cache, _) = outage_manager(config).await;
    assert_eq!(cache.get(b"anything").await.unwrap(), None);
    assert_eq!(cache.incr_by(b"hits", 2).await.unwrap(), 2);
}

/// Fails on the first version, which retried with backoff before answering from memory: the
/// first callers of an outage waited several retry delays (752-899 ms measured with 200 ms
/// timeouts). What memory can answer is now answered after the first failed attempt.
#[tokio::test(start_paused = true)]
async fn the_first_callers_of_an_outage_do_not_wait_for_retries() {
    let mut config = RedisConfig::default();
    config.max_retries = 3;
    config.retry_delay = std::time::Duration::from_millis(100);
    let (m, _) = outage_manager(config).await;
    let started = tokio::time::Instant::now();
    m.set(b"k", b"v", None).await.unwrap();
    assert_eq!(
        started.elapsed(),
        std::time::Duration::ZERO,
        "no backoff slept"
    );
}

/// Fails on the first version: with the fallback on, one caller through an outage switched
/// everything to memory and the breaker never heard of the outage (it stayed CLOSED, its
/// trips and state gauge said nothing). An unhealthy verdict of the health monitor opens it.
#[tokio::test]
async fn an_unhealthy_verdict_opens_the_breaker_whatever_the_traffic() {
    use resilient_redis_health::HealthStatus;
    let config = RedisConfig::default();
    let (tx, rx) = tokio::sync::watch::channel(HealthStatus::default());
    let mut health = MockHealthMonitor::new();
    health.expect_start().returning(|| Ok(()));
    health.expect_stop().return_const(());
    health.expect_subscribe().returning(move || rx.clone());
    health.expect_status().returning(HealthStatus::default);
    health
        .expect_check_now()
        .returning(|| HealthStatus::new(false, Some("connection refused".into())));
    let breaker =
        Arc::new(resilient_redis_breaker::Breaker::from_config(&config.circuit_breaker).unwrap());
    let mut pool = MockConnectionPool::new();
    pool.expect_status().returning(Default::default);
    pool.expect_close().return_const(());
    let m = RedisManager::builder(config)
        .pool(Arc::new(pool))
        .health(Arc::new(health))
        .breaker(breaker.clone())
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .build()
        .await
        .unwrap();
    assert_eq!(m.breaker().state(), BreakerState::Closed);
    tx.send(HealthStatus::new(false, Some("connection refused".into())))
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while m.breaker().state() != BreakerState::Open {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the breaker opens");
    assert!(m.is_fallback_mode());
    m.close(std::time::Duration::from_millis(100))
        .await
        .unwrap();
}

/// Per-call options: no fallback fails fast instead of answering from memory; no retry makes
/// one attempt.
#[tokio::test]
async fn call_options_turn_off_the_fallback_and_retries_for_one_handle() {
    use resilient_redis_fallback::Journal;
    use resilient_redis_manager::CallOptions;
    let mut config = RedisConfig::default();
    config.max_retries = 3;
    config.retry_delay = std::time::Duration::from_millis(1);
    let (m, store) = outage_manager(config).await;
    let strict = m.with_options(CallOptions::new().no_fallback());
    let err = strict.set(b"k", b"v", None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert_eq!(store.pending_writes(), 0, "not journaled");
    // The default handle still answers from memory.
    m.set(b"k", b"v", None).await.unwrap();
    assert_eq!(store.pending_writes(), 1);

    let mut p = parts();
    p.pool.expect_shared().times(1).returning(|| Err(refused()));
    p.breaker
        .expect_try_acquire()
        .returning(|| Ok(Permit::new(1)));
    p.breaker.expect_on_error().times(1).return_const(());
    p.metrics
        .expect_record_operation_at()
        .times(1)
        .return_const(());
    let one_try = manager(p).await.with_options(CallOptions::new().no_retry());
    assert!(one_try.execute(&redis::cmd("PING")).await.is_err());
}

/// A manager over a real fallback store whose Redis refuses every connection, replaying into
/// `target`, with no background tasks: the tests drive `close` themselves.
async fn closable_manager(
    config: RedisConfig,
    target: Arc<dyn resilient_redis_fallback::SyncTarget>,
) -> (RedisManager, Arc<resilient_redis_fallback::MemoryStore>) {
    let mut pool = MockConnectionPool::new();
    pool.expect_shared().returning(|| Err(refused()));
    pool.expect_close().return_const(());
    let mut health = MockHealthMonitor::new();
    health.expect_stop().return_const(());
    let store = Arc::new(resilient_redis_fallback::MemoryStore::new(&config.fallback).unwrap());
    let m = RedisManager::builder(config)
        .pool(Arc::new(pool))
        .health(Arc::new(health))
        .breaker(Arc::new(resilient_redis_breaker::NoopBreaker::new()))
        .fallback(Arc::clone(&store))
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .sync_target(target)
        .background_tasks(false)
        .build()
        .await
        .unwrap();
    (m, store)
}

/// A replay target whose first batch takes a second (the first close gives up on it).
struct SlowFirst {
    model: resilient_redis_fallback::ModelTarget,
    calls: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl resilient_redis_fallback::SyncTarget for SlowFirst {
    async fn apply(
        &self,
        batch: &resilient_redis_fallback::Batch<'_>,
    ) -> Result<resilient_redis_fallback::BatchOutcome, resilient_redis_fallback::SyncError> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        self.model.apply(batch).await
    }
}

/// Found by the final review: a `close()` whose future was dropped half-way (a shutdown
/// timeout around it) marked the manager closed, and the next `close()` answered `Ok` at once
/// with the journaled write never replayed or persisted.
#[tokio::test]
async fn a_close_cut_short_does_not_let_the_next_one_answer_ok_too_early() {
    use resilient_redis_fallback::Journal;
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    let target = Arc::new(SlowFirst {
        model: resilient_redis_fallback::ModelTarget::new(),
        calls: std::sync::atomic::AtomicU32::new(0),
    });
    let (m, store) = closable_manager(config, target.clone()).await;
    m.set(b"k", b"v", None).await.unwrap();
    assert_eq!(store.pending_writes(), 1);
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(20),
        m.close(std::time::Duration::from_secs(5)),
    )
    .await;
    assert!(cut.is_err(), "the first close was cut short");
    m.close(std::time::Duration::from_secs(5)).await.unwrap();
    assert_eq!(store.pending_writes(), 0, "the second close replayed it");
    assert_eq!(target.model.snapshot(0).len(), 1);
}

/// Found by review: any answer a custom store gave was turned into a reply, so a store that
/// answered `Ok` to a GET made the typed `get` return `Some(b"OK")`.
#[tokio::test]
async fn a_store_answer_of_the_wrong_kind_is_an_error_not_a_value() {
    let mut p = parts();
    p.pending = 1;
    p.store.expect_knows().return_const(true);
    p.store.expect_read().returning(|_| Ok(Answer::Ok));
    p.metrics
        .expect_record_operation_at()
        .withf(|op, _, o, _| op == "get" && *o == Outcome::Error(ErrorKind::Fallback))
        .times(1)
        .return_const(());
    let m = manager(p).await;
    let err = m.get(b"k").await.unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
}

/// Found by review: a reply that did not decode into the operation's type was recorded as a
/// success (decoding happened after the metrics); it is recorded as the validation error the
/// caller gets.
#[tokio::test]
async fn a_reply_that_does_not_decode_is_recorded_as_a_failure() {
    use redis_test::{MockCmd, MockRedisConnection};
    let mut p = parts();
    p.breaker
        .expect_try_acquire()
        .returning(|| Ok(Permit::new(1)));
    p.breaker.expect_on_success().return_const(());
    let mut pttl = redis::cmd("PTTL");
    pttl.arg("k");
    let conn = MockRedisConnection::new(vec![MockCmd::new(pttl, Ok("not a number"))]);
    p.pool.expect_shared().returning(move || {
        Ok(resilient_redis_pool::SharedConnection::from_connection(
            conn.clone(),
        ))
    });
    p.metrics
        .expect_record_operation_at()
        .withf(|op, _, o, _| op == "ttl" && *o == Outcome::Error(ErrorKind::Validation))
        .times(1)
        .return_const(());
    let m = manager(p).await;
    let err = m.ttl(b"k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
}

/// A replay target that refuses the first `n` batches as if Redis were still unreachable.
struct DownFor {
    model: resilient_redis_fallback::ModelTarget,
    refusals: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl resilient_redis_fallback::SyncTarget for DownFor {
    async fn apply(
        &self,
        batch: &resilient_redis_fallback::Batch<'_>,
    ) -> Result<resilient_redis_fallback::BatchOutcome, resilient_redis_fallback::SyncError> {
        let left = self.refusals.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.refusals
                .store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(resilient_redis_fallback::SyncError::new(
                ErrorKind::Connection,
                "no shared connection is up",
            ));
        }
        self.model.apply(batch).await
    }
}

/// Found by the chaos campaign: `close` right after an outage tried the replay once, found the
/// pool still reconnecting, and left every journaled write for a next process (which may never
/// come). It retries until its deadline.
#[tokio::test(start_paused = true)]
async fn close_keeps_replaying_until_redis_is_back_or_the_deadline() {
    use resilient_redis_fallback::Journal;
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    let target = Arc::new(DownFor {
        model: resilient_redis_fallback::ModelTarget::new(),
        refusals: std::sync::atomic::AtomicU32::new(5),
    });
    let (m, store) = closable_manager(config, target.clone()).await;
    m.set(b"k", b"v", None).await.unwrap();
    m.close(std::time::Duration::from_secs(5)).await.unwrap();
    assert_eq!(store.pending_writes(), 0, "replayed once Redis answered");
    assert_eq!(target.model.snapshot(0).len(), 1);
}

/// Found by review: two closes at once (or a close racing the recovery loop's replay) spun: the
/// second's replay returned at once with writes pending, and its loop never yielded, so on a
/// current-thread runtime the first close was never polled again.
#[tokio::test]
async fn two_closes_at_once_both_finish() {
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    let target = Arc::new(SlowFirst {
        model: resilient_redis_fallback::ModelTarget::new(),
        calls: std::sync::atomic::AtomicU32::new(0),
    });
    let (m, store) = closable_manager(config, target.clone()).await;
    m.set(b"k", b"v", None).await.unwrap();
    let deadline = std::time::Duration::from_secs(5);
    let both = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(m.close(deadline), m.close(deadline))
    })
    .await
    .expect("both closes finish");
    both.0.unwrap();
    both.1.unwrap();
    use resilient_redis_fallback::Journal;
    assert_eq!(store.pending_writes(), 0);
}

/// What the metrics hear besides the outcome: each repeated attempt (as `Retried`, once per
/// call), and an error reply's code (`db.response.status_code`).
#[tokio::test(start_paused = true)]
async fn retries_and_error_reply_codes_reach_the_metrics() {
    use redis_test::{MockCmd, MockRedisConnection};
    use resilient_redis_metrics::Event;
    let mut p = parts();
    p.breaker
        .expect_try_acquire()
        .returning(|| Ok(Permit::new(1)));
    p.breaker.expect_on_success().return_const(());
    p.breaker.expect_on_error().return_const(());
    // A read refused twice, then answered: two retries.
    let mut get = redis::cmd("GET");
    get.arg("k");
    let mut hget = redis::cmd("HGET");
    hget.arg("k").arg("f");
    let conn = MockRedisConnection::new(vec![
        MockCmd::new(get, Ok("v")),
        MockCmd::new(
            hget,
            Err::<String, _>(redis::make_extension_error(
                "WRONGTYPE".to_owned(),
                Some("Operation against a key holding the wrong kind of value".to_owned()),
            )),
        ),
    ]);
    let refusals = std::sync::atomic::AtomicU32::new(2);
    p.pool.expect_shared().returning(move || {
        if refusals.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            refusals.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(refused());
        }
        Ok(resilient_redis_pool::SharedConnection::from_connection(
            conn.clone(),
        ))
    });
    p.metrics
        .expect_record_event()
        .withf(|e| {
            *e == Event::Retried {
                operation: "get",
                retries: 2,
            }
        })
        .times(1)
        .return_const(());
    p.metrics
        .expect_record_operation_at()
        .withf(|op, _, o, _| op == "get" && *o == Outcome::Success)
        .times(1)
        .return_const(());
    p.metrics
        .expect_record_operation_at()
        .withf(|op, _, o, _| op == "hget" && *o == Outcome::ServerError("WRONGTYPE"))
        .times(1)
        .return_const(());
    let mut config = RedisConfig::default();
    config.max_retries = 3;
    config.fallback.enabled = false;
    let m = manager_with(p, config).await;
    assert_eq!(m.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    let err = m.hget(b"k", b"f").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server, "{err}");
}
