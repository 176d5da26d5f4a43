//! Existing redis-rs code runs unchanged on a `RedisManager`: only the constructor changes, and
//! the code gets the breaker, deadlines, retries and the fallback through an outage.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use resilient_redis_config::RedisConfig;
use resilient_redis_manager::{FALLBACK_CODE, RedisManager, UNAVAILABLE_CODE};
use resilient_redis_tests::RedisServer;

/// Application code written against redis-rs, generic over the connection.
async fn sign_in<C: ConnectionLike + Send + Sync>(
    con: &mut C,
    user: u32,
) -> redis::RedisResult<i64> {
    let () = con
        .set_ex(format!("session:{user}"), format!("token-{user}"), 600)
        .await?;
    let token: String = con.get(format!("session:{user}")).await?;
    assert_eq!(token, format!("token-{user}"));
    let () = con
        .hset(format!("profile:{user}"), "name", format!("user {user}"))
        .await?;
    con.incr("sign-ins", 1).await
}

fn config(url: &str) -> RedisConfig {
    let mut c = common::outage_config(url);
    // Copies of what was read and written before the outage, so that memory knows the counter
    // when Redis goes (without them an increment of a counter memory never saw is refused:
    // fallback.unknown_keys).
    c.fallback.shadow = true;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_async_commands_workload_runs_through_an_outage() {
    let mut server = RedisServer::builder().durable().start();
    // The one line that changes: a RedisManager where a MultiplexedConnection was.
    let manager = RedisManager::builder(config(&server.url()))
        .build()
        .await
        .unwrap();
    let mut con = manager.redis_connection();

    // Normal operation: typed replies, scripts (EVALSHA, NOSCRIPT, load, retry), pipelines.
    assert_eq!(sign_in(&mut con, 1).await.unwrap(), 1);
    let profile: HashMap<String, String> = con.hgetall("profile:1").await.unwrap();
    assert_eq!(profile["name"], "user 1");
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let n: i64 = script
        .key("by-script")
        .arg(5)
        .invoke_async(&mut con)
        .await
        .unwrap();
    assert_eq!(n, 5);
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("a", 1)
        .incr("b", 2)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!((a, b), (1, 2));
    let (x,): (Option<String>,) = redis::pipe()
        .get("missing")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(x, None);
    let err = redis::cmd("MULTI")
        .query_async::<()>(&mut con)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exclusive"), "{err}");

    // Redis dies: the same code keeps working from memory.
    server.kill();
    for user in 2..=4 {
        sign_in(&mut con, user).await.unwrap();
    }
    let token: String = con.get("session:3").await.unwrap();
    assert_eq!(token, "token-3");
    // What memory cannot serve fails fast with an inspectable code, never hangs.
    let started = std::time::Instant::now();
    let err = script
        .key("by-script")
        .arg(1)
        .invoke_async::<i64>(&mut con)
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Some(c) if c == UNAVAILABLE_CODE || c == FALLBACK_CODE),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // Redis is back: every write made through the outage is there, each increment once.
    server.restart();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !manager.is_settled() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the journal drains");
    let direct = redis::Client::open(server.url()).unwrap();
    let mut direct = direct.get_multiplexed_async_connection().await.unwrap();
    let sign_ins: i64 = direct.get("sign-ins").await.unwrap();
    assert_eq!(sign_ins, 4);
    for user in 2..=4 {
        let token: String = direct.get(format!("session:{user}")).await.unwrap();
        assert_eq!(token, format!("token-{user}"));
        let ttl: i64 = direct.ttl(format!("session:{user}")).await.unwrap();
        assert!(ttl > 500, "the TTL travelled with it: {ttl}");
        let name: String = direct
            .hget(format!("profile:{user}"), "name")
            .await
            .unwrap();
        assert_eq!(name, format!("user {user}"));
    }
    // Generic code over ConnectionLike takes the manager itself as well.
    assert_eq!(sign_in(&mut manager.clone(), 9).await.unwrap(), 5);
    manager.close(Duration::from_secs(1)).await.unwrap();
}
