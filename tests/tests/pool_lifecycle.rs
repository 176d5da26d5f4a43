//! Idle reaping, max lifetime and fair (first come, first served) waiting, observed through
//! `status()`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use resilient_redis_pool::{ConnectionPool, RedisPool};
use resilient_redis_tests::RedisServer;

#[tokio::test]
async fn the_reaper_closes_idle_connections_down_to_min_size() {
    let server = RedisServer::start();
    let mut config = common::config(&server.url());
    config.pool.idle_timeout = Duration::from_millis(200);
    config.pool.reap_interval = Duration::from_secs(3_600); // driven by reap_now()
    let pool = RedisPool::new(&config).await.unwrap();
    // Open the three exclusive connections, then give them back.
    let held: Vec<_> = check_out(&pool, 3).await;
    drop(held);
    let status = pool.status();
    assert_eq!((status.open, status.idle), (4, 3), "{status}");

    assert_eq!(pool.reap_now().await, 0, "nothing is idle long enough yet");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // min_size 2 = the shared connection + one exclusive kept warm.
    assert_eq!(pool.reap_now().await, 2);
    let status = pool.status();
    assert_eq!(
        (status.open, status.idle, status.closed),
        (2, 1, 2),
        "{status}"
    );
    // What is left still serves.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(
        conn.query::<String>(&redis::cmd("PING")).await.unwrap(),
        "PONG"
    );
}

#[tokio::test]
async fn the_reaper_runs_on_its_own_every_reap_interval() {
    let server = RedisServer::start();
    let mut config = common::config(&server.url());
    config.pool.min_size = 1;
    config.pool.idle_timeout = Duration::from_millis(100);
    config.pool.reap_interval = Duration::from_millis(100);
    let pool = RedisPool::new(&config).await.unwrap();
    drop(check_out(&pool, 2).await);
    assert_eq!(pool.status().idle, 2);
    for _ in 0..30 {
        if pool.status().idle == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("idle connections were never reaped: {}", pool.status());
}

#[tokio::test]
async fn shared_connections_are_replaced_after_max_lifetime() {
    let server = RedisServer::start();
    let mut config = common::config(&server.url());
    config.pool.max_lifetime = Duration::from_millis(300);
    config.pool.validation_interval = Duration::from_secs(3_600); // driven by validate_now()
    let pool = RedisPool::new(&config).await.unwrap();
    let created = pool.status().created;
    pool.validate_now().await;
    assert_eq!(pool.status().created, created, "young connections are kept");
    tokio::time::sleep(Duration::from_millis(350)).await;
    pool.validate_now().await;
    let status = pool.status();
    assert_eq!(
        status.created,
        created + 1,
        "the old shared connection was replaced: {status}"
    );
    assert_eq!(status.shared_up, 1);
    assert_eq!(common::ping(&pool).await.unwrap(), "PONG");
}

#[tokio::test]
async fn close_waits_for_checked_out_connections_and_refuses_new_ones() {
    let server = RedisServer::start();
    let pool = RedisPool::new(&common::config(&server.url()))
        .await
        .unwrap();
    let held = pool.get().await.unwrap();
    let closing = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.close(Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !closing.is_finished(),
        "close waits for the checked-out connection"
    );
    assert!(pool.shared().is_err());
    assert!(pool.get().await.is_err());
    drop(held);
    closing.await.unwrap();
    let status = pool.status();
    assert_eq!((status.open, status.in_use), (0, 0), "{status}");
}

/// 16 tasks share 3 exclusive connections for a while: waiting is first come, first served, so
/// the least-served task still gets a fair share (bb8 starved some tasks for seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_fair_to_every_task() {
    let server = RedisServer::start();
    let mut config = common::config(&server.url());
    config.pool.acquire_timeout = Duration::from_secs(5);
    let pool = RedisPool::new(&config).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (pool, stop) = (pool.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut served = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let mut conn = pool
                        .get()
                        .await
                        .expect("no task waits past acquire_timeout");
                    let _: String = conn.query(&redis::cmd("PING")).await.unwrap();
                    served += 1;
                }
                served
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap());
    }
    let total: u32 = counts.iter().sum();
    let least = *counts.iter().min().unwrap();
    let mean = f64::from(total) / counts.len() as f64;
    assert!(total > 100, "the pool served work: {counts:?}");
    assert!(
        f64::from(least) >= 0.5 * mean,
        "the least-served task got {least}, mean {mean:.0}: {counts:?}"
    );
}

/// Checks out `n` exclusive connections at once (each PINGed, so each really opened).
async fn check_out(pool: &RedisPool, n: usize) -> Vec<resilient_redis_pool::PooledConnection> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut conn = pool.get().await.expect("check out");
        let _: String = conn.query(&redis::cmd("PING")).await.expect("PING");
        held.push(conn);
    }
    held
}
