//! SIGKILL and restart: the pool serves again within one validation cycle and leaks nothing.

mod common;

use std::time::Duration;

use resilient_redis_config::ErrorKind;
use resilient_redis_pool::{ConnectionPool, RedisPool};
use resilient_redis_tests::RedisServer;

/// Waits, a validation cycle at a time, until a shared PING works; returns the cycles taken.
async fn cycles_until_served(pool: &RedisPool) -> u32 {
    for cycle in 0..50 {
        if common::ping(pool).await.is_ok() {
            return cycle;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not served after 50 validation cycles: {}", pool.status());
}

#[tokio::test]
async fn a_killed_server_is_served_again_after_restart_with_no_leaked_connections() {
    let mut server = RedisServer::start();
    let pool = RedisPool::new(&common::config(&server.url()))
        .await
        .unwrap();
    assert_eq!(common::ping(&pool).await.unwrap(), "PONG");
    let baseline = pool.status();
    assert_eq!(
        (baseline.open, baseline.shared_up, baseline.in_use),
        (2, 1, 0),
        "{baseline}"
    );

    // One exclusive handle checked out while the server dies.
    let mut held = pool.get().await.unwrap();
    server.kill();

    let err = common::ping(&pool).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    let err = held.query::<String>(&redis::cmd("PING")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(
        held.is_broken(),
        "an I/O failure takes the connection out of service"
    );
    drop(held);
    // While it is down, new exclusive checkouts fail fast with the reason.
    let err = pool.get().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");

    server.restart();
    let cycles = cycles_until_served(&pool).await;
    assert!(
        cycles <= 2,
        "served again within about one validation cycle, took {cycles}"
    );
    let mut fresh = pool.get().await.unwrap();
    assert_eq!(
        fresh.query::<String>(&redis::cmd("PING")).await.unwrap(),
        "PONG"
    );
    drop(fresh);

    // Back to baseline: the broken connections were closed, nothing leaked.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = pool.status();
    assert_eq!(after.in_use, 0, "{after}");
    assert_eq!(after.shared_up, 1, "{after}");
    assert!(after.open <= baseline.open, "{after} vs {baseline}");
    assert!(
        after.closed >= 2,
        "the dead connections were closed: {after}"
    );
}

#[tokio::test]
async fn idle_connections_found_dead_after_a_restart_are_replaced_not_handed_out() {
    let mut server = RedisServer::start();
    let mut config = common::config(&server.url());
    // PING every exclusive connection on checkout, so a dead idle one is caught.
    config.pool.validate_after_idle = Duration::from_millis(1);
    let pool = RedisPool::new(&config).await.unwrap();
    assert_eq!(pool.status().idle, 1);
    server.kill();
    server.restart();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The idle connection is dead; checkout validates it, drops it and opens a new one.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        conn.query::<String>(&redis::cmd("PING")).await.unwrap(),
        "PONG"
    );
    assert!(pool.status().validation_failures >= 1, "{}", pool.status());
}
