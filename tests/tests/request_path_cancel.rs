//! Callers that give up: a call whose future is dropped (the application's own timeout around
//! it) gives back everything it held.

use std::time::Duration;

use resilient_redis_breaker::BreakerState;
use resilient_redis_config::{RedisConfig, RedisUrl};
use resilient_redis_manager::{ErrorKind, RedisManager};
use resilient_redis_tests::{Fault, FaultProxy, RedisServer};

/// Fails on the first version: trial calls abandoned by a 5 ms timeout kept their permits, and
/// the HALF_OPEN breaker refused every later call (with `max_wait_in_half_open = 0`, forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_by_their_callers_give_their_breaker_permits_back() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut c = RedisConfig::default();
    c.url = RedisUrl::new(proxy.url());
    c.socket_timeout = Duration::from_secs(2);
    c.fallback.enabled = false;
    c.circuit_breaker.sliding_window_size = 4;
    c.circuit_breaker.minimum_calls = 2;
    c.circuit_breaker.half_open_permitted_calls = 2;
    c.circuit_breaker.reset_timeout = Duration::from_secs(600);
    c.circuit_breaker.max_reset_timeout = Duration::from_secs(600);
    let m = RedisManager::builder(c).build().await.unwrap();
    m.set(b"k", b"v", None).await.unwrap();
    m.breaker().transition_to(BreakerState::Open).unwrap();
    m.breaker().transition_to(BreakerState::HalfOpen).unwrap();
    proxy.set(Fault::Latency(Duration::from_millis(300)));
    for round in 0..4 {
        let abandoned = tokio::time::timeout(Duration::from_millis(5), m.get(b"k")).await;
        assert!(
            abandoned.is_err(),
            "round {round}: the call was let through and then abandoned, not refused: {abandoned:?}"
        );
    }
    proxy.set(Fault::Pass);
    for _ in 0..2 {
        match m.get(b"k").await {
            Ok(v) => assert_eq!(v.as_deref(), Some(&b"v"[..])),
            Err(e) => assert_ne!(e.kind(), ErrorKind::CircuitBreaker, "{e}"),
        }
    }
    assert_eq!(
        m.breaker().state(),
        BreakerState::Closed,
        "the trial calls closed it"
    );
    m.close(Duration::from_secs(1)).await.unwrap();
}

/// Fails on the first version: a call in flight when `close()` ran (here waiting on a slow
/// Redis) was answered from memory after close and journaled behind it, where nobody would
/// replay it. Now it gets `Closed`, and close's `Ok` means nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_at_close_is_refused_not_journaled_behind_it() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut c = RedisConfig::default();
    c.url = RedisUrl::new(proxy.url());
    c.socket_timeout = Duration::from_millis(300);
    let m = RedisManager::builder(c).build().await.unwrap();
    m.set(b"warm", b"up", None).await.unwrap();
    proxy.set(Fault::Blackhole);
    let call = tokio::spawn({
        let m = m.clone();
        async move { m.set(b"k", b"v", None).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    m.close(Duration::from_millis(100)).await.unwrap();
    let answer = call.await.unwrap();
    assert!(
        matches!(answer, Err(resilient_redis_manager::Error::Closed)),
        "{answer:?}"
    );
    assert_eq!(
        m.journal().pending_writes(),
        0,
        "nothing journaled after close"
    );
}

/// A handle with a timeout of its own answers within it, whatever the configured deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_timeout_bounds_the_whole_call() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut c = RedisConfig::default();
    c.url = RedisUrl::new(proxy.url());
    c.socket_timeout = Duration::from_secs(2);
    let m = RedisManager::builder(c).build().await.unwrap();
    m.set(b"k", b"v", None).await.unwrap();
    proxy.set(Fault::Latency(Duration::from_millis(600)));
    let quick = m.with_options(
        resilient_redis_manager::CallOptions::new().timeout(Duration::from_millis(50)),
    );
    let started = std::time::Instant::now();
    let err = quick.get(b"k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // Well under the 2 s socket timeout it would otherwise wait (not a speed check).
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Found by review: the caller's own deadline says nothing about Redis. It neither turns
    // fallback mode on for everyone nor journals a write that Redis may still apply.
    assert!(!m.is_fallback_mode());
    let err = quick.set(b"k", b"w", None).await.unwrap_err();
    assert!(
        matches!(err, resilient_redis_manager::Error::Ambiguous { .. }),
        "{err}"
    );
    assert_eq!(m.journal().pending_writes(), 0);
    assert_eq!(m.breaker().state(), BreakerState::Closed);
    m.close(Duration::from_secs(1)).await.ok();
}
