//! A fallback store written outside this crate, as a user's crate would write it (only public
//! items): a read-only cache that answers reads from what Redis said before the outage and
//! refuses writes (it journals nothing, so it pairs with `NoJournal`), plugged into the manager.
//! The store is the one in `examples/read_only_cache.rs`.

use std::sync::Arc;
use std::time::Duration;

use resilient_redis_config::{ErrorKind, RedisConfig};
use resilient_redis_fallback::{FallbackError, FallbackStore, NoJournal};
use resilient_redis_manager::{Error, RedisManager};
use resilient_redis_pool::MockConnectionPool;

#[path = "../examples/read_only_cache.rs"]
#[allow(dead_code, reason = "the example's main is not called here")]
mod example;
use example::ReadOnlyCache;

#[tokio::test]
async fn a_read_only_cache_serves_reads_and_refuses_writes_during_an_outage() {
    let cache = Arc::new(ReadOnlyCache::default());
    // What Redis answered before it went away.
    cache.observe(b"flag:beta", Some(b"on".to_vec()), None);
    cache.observe(b"session:gone", None, None);
    cache.observe(b"h", None, None);
    let mut config = RedisConfig::default();
    config.max_retries = 0;
    let m = RedisManager::builder(config)
        .pool(Arc::new(MockConnectionPool::refusing()))
        .fallback_parts(cache.clone(), Arc::new(NoJournal))
        .breaker(Arc::new(resilient_redis_breaker::NoopBreaker::new()))
        .metrics(Arc::new(resilient_redis_metrics::NoopMetrics))
        .background_tasks(false)
        .build()
        .await
        .unwrap();

    assert_eq!(
        m.get(b"flag:beta").await.unwrap().as_deref(),
        Some(&b"on"[..])
    );
    assert_eq!(m.get(b"session:gone").await.unwrap(), None, "known missing");
    assert!(m.is_fallback_mode());
    let unknown = m.get(b"never-seen").await.unwrap_err();
    assert!(
        matches!(unknown, Error::Fallback(FallbackError::Unknown { .. })),
        "{unknown}"
    );

    let refused = m.set(b"flag:beta", b"off", None).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Fallback, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("set: this fallback store does not serve it"),
        "{refused}"
    );
    let refused = m.hget(b"h", b"f").await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("hget: this fallback store does not serve it"),
        "{refused}"
    );
    assert_eq!(m.journal().pending_writes(), 0);
    assert_eq!(
        m.get(b"flag:beta").await.unwrap().as_deref(),
        Some(&b"on"[..]),
        "the refused write changed nothing"
    );
    m.close(Duration::from_millis(10)).await.unwrap();
}
