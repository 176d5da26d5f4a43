//! An exclusive connection given back with session state (an open MULTI, a WATCH, a SELECT)
//! never reaches the next borrower.

mod common;

use redis::AsyncCommands;
use resilient_redis_pool::{ConnectionPool, RedisPool};
use resilient_redis_tests::RedisServer;

/// Fails on the first version: a connection dropped between MULTI and EXEC went back to the
/// pool; the next borrower's `SET` was answered `QUEUED` (which a `()` caller takes for
/// success) and never ran.
#[tokio::test]
async fn a_connection_dropped_inside_a_transaction_is_closed_not_reused() {
    let server = RedisServer::start();
    let mut config = common::config(&server.url());
    config.pool.min_size = 0;
    config.pool.max_size = 2; // one shared lane, one exclusive connection
    let pool = RedisPool::new(&config).await.unwrap();
    let mut direct = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    // A clean transaction keeps its connection in the pool.
    let mut conn = pool.get().await.unwrap();
    let first: i64 = conn
        .query(&redis::cmd("CLIENT").arg("ID").to_owned())
        .await
        .unwrap();
    let () = conn.query(&redis::cmd("MULTI")).await.unwrap();
    let () = conn
        .query(redis::cmd("SET").arg("a").arg("1"))
        .await
        .unwrap();
    let _: redis::Value = conn.query(&redis::cmd("EXEC")).await.unwrap();
    assert!(!conn.carries_session_state());
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    let again: i64 = conn
        .query(&redis::cmd("CLIENT").arg("ID").to_owned())
        .await
        .unwrap();
    assert_eq!(first, again, "reused after EXEC");

    // One abandoned inside MULTI is closed.
    let () = conn.query(&redis::cmd("MULTI")).await.unwrap();
    assert!(conn.carries_session_state());
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    let () = conn
        .query(redis::cmd("SET").arg("k").arg("v"))
        .await
        .unwrap();
    drop(conn);
    let v: Option<String> = direct.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"), "the next borrower's SET ran");

    // So is one that selected another database.
    let mut conn = pool.get().await.unwrap();
    let () = conn.query(redis::cmd("SELECT").arg(3)).await.unwrap();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    let () = conn
        .query(redis::cmd("SET").arg("in-db-0").arg("x"))
        .await
        .unwrap();
    let v: Option<String> = direct.get("in-db-0").await.unwrap();
    assert_eq!(
        v.as_deref(),
        Some("x"),
        "the next borrower is on database 0"
    );
}

/// Fails on the first version: a blocking command on an exclusive connection timed out at the
/// socket timeout (and the connection was thrown away). Its deadline is now its block time plus
/// the socket timeout.
#[tokio::test]
async fn a_blocking_command_waits_its_block_time_not_the_socket_timeout() {
    // `hz 100`: Redis ends a blocked command within 10 ms of its block time (at the default
    // `hz 10`, up to 100 ms late, which ate into the 200 ms of slack below).
    let server = RedisServer::builder().config("hz", "100").start();
    let mut config = common::config(&server.url());
    config.socket_timeout = std::time::Duration::from_millis(200);
    let pool = RedisPool::new(&config).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let started = std::time::Instant::now();
    let popped: Option<(String, String)> = conn
        .query(redis::cmd("BLPOP").arg("empty-list").arg("0.6"))
        .await
        .unwrap();
    assert_eq!(popped, None, "nothing to pop: the block time ran out");
    assert!(started.elapsed() >= std::time::Duration::from_millis(550));
    assert!(!conn.is_broken());
}

/// Found by review: a blocking pop whose caller gave up went back to the pool still blocked on
/// the server, and the next element pushed was popped into a reply nobody read. A connection
/// whose request was abandoned is closed.
#[tokio::test]
async fn an_abandoned_blocking_pop_does_not_swallow_the_next_element() {
    let server = RedisServer::start();
    let mut config = common::config(&server.url());
    config.pool.min_size = 0;
    config.pool.max_size = 2;
    let pool = RedisPool::new(&config).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    let blpop = redis::cmd("BLPOP").arg("jobs").arg(0).to_owned();
    let pop = conn.query::<Option<(String, String)>>(&blpop);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), pop)
            .await
            .is_err(),
        "nothing to pop: it blocks"
    );
    drop(conn);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut direct = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = direct.lpush("jobs", "job-1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let len: i64 = direct.llen("jobs").await.unwrap();
    assert_eq!(len, 1, "the element is still there for the next consumer");
}
