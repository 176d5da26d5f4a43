//! Replay into a live redis-server: every key, value and TTL equals what applying each write at
//! its own time gives (the fallback crate's model), and a replay cut mid-way resumes exactly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use resilient_redis_config::FallbackConfig;
use resilient_redis_fallback::{
    Clock, FallbackStoreExt, Journal, ManualClock, MemoryStore, ModelTarget, ModelValue, Op,
    Snapshot, SystemClock,
};
use resilient_redis_manager::RedisSyncTarget;
use resilient_redis_pool::RedisPool;
use resilient_redis_tests::{Fault, FaultProxy, RedisServer};

/// The production replay target (the manager's), over a pool on `url`.
async fn redis_target(url: &str) -> Arc<RedisSyncTarget> {
    let mut c = resilient_redis_config::RedisConfig::default();
    c.url = resilient_redis_config::RedisUrl::new(url);
    c.pool.min_size = 1;
    c.pool.max_size = 2;
    let pool = RedisPool::new(&c).await.unwrap();
    Arc::new(RedisSyncTarget::new(Arc::new(pool)))
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Everything in Redis but the replay's own bookkeeping, with deadlines (PEXPIRETIME).
async fn redis_snapshot(conn: &mut redis::aio::MultiplexedConnection) -> Snapshot {
    let keys: Vec<Vec<u8>> = conn.keys("*").await.unwrap();
    let mut out = BTreeMap::new();
    for key in keys {
        if key.starts_with(b"resilient-redis:journal:") {
            continue;
        }
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        let value = match kind.as_str() {
            "string" => ModelValue::Str(conn.get(&key).await.unwrap()),
            "hash" => {
                let map: BTreeMap<Vec<u8>, Vec<u8>> = conn.hgetall(&key).await.unwrap();
                ModelValue::Hash(map)
            }
            other => panic!("unexpected type {other}"),
        };
        let at: i64 = redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        out.insert(key, (value, u64::try_from(at).ok()));
    }
    out
}

/// A mixed outage: strings with and without TTLs (some already past), deletes, counters, hashes,
/// deadlines on keys Redis already had. Returns the store, the model of applying each write at its
/// time, and the replay time.
async fn outage(
    conn: &mut redis::aio::MultiplexedConnection,
    batch: u32,
) -> (MemoryStore, ModelTarget, u64) {
    let now = SystemClock.now_ms();
    // The writes happened over the last 20 s.
    let clock = ManualClock::new(now - 20_000);
    let direct = ModelTarget::new();
    // Redis already held some keys before the outage; the model must hold them too.
    for (k, v) in [
        ("pre:string", "p"),
        ("pre:counter", "40"),
        ("pre:expiring", "e"),
    ] {
        let () = conn.set(k, v).await.unwrap();
        direct.apply_direct(
            &Op::Set {
                key: k.into(),
                value: v.into(),
                expire_at: None,
            },
            now - 20_000,
        );
    }
    let mut config = FallbackConfig::default();
    config.replay_batch_size = batch;
    config.shadow = false;
    let store = MemoryStore::with_clock(&config, Arc::clone(&clock) as Arc<dyn Clock>).unwrap();
    let ms = |n: u64| Duration::from_millis(n);
    let step = |op: Op, f: &dyn Fn(&MemoryStore)| {
        f(&store);
        direct.apply_direct(&op, clock.now_ms());
        clock.advance(ms(500));
    };
    for i in 0..20u32 {
        let key = format!("s:{i}").into_bytes();
        let ttl = [None, Some(1_000), Some(60_000)][i as usize % 3];
        let at = clock.now_ms();
        step(
            Op::Set {
                key: key.clone(),
                value: vec![b'a' + (i % 26) as u8; 3],
                expire_at: ttl.map(|t| at + t),
            },
            &|s| {
                s.set(&key, &[b'a' + (i % 26) as u8; 3], ttl.map(ms))
                    .unwrap();
            },
        );
    }
    step(
        Op::IncrBy {
            key: b"c".to_vec(),
            delta: 5,
        },
        &|s| {
            s.incr_by(b"c", 5).unwrap();
        },
    );
    step(
        Op::IncrBy {
            key: b"pre:counter".to_vec(),
            delta: 2,
        },
        &|s| {
            s.incr_by(b"pre:counter", 2).unwrap();
        },
    );
    let at = clock.now_ms();
    step(
        Op::ExpireAt {
            key: b"pre:expiring".to_vec(),
            at: at + 700,
        },
        &|s| {
            s.expire(b"pre:expiring", ms(700)).unwrap();
        },
    );
    step(
        Op::ExpireAt {
            key: b"pre:string".to_vec(),
            at: at + 500 + 120_000,
        },
        &|s| {
            s.expire(b"pre:string", ms(120_000)).unwrap();
        },
    );
    step(
        Op::Del {
            keys: vec![b"s:3".to_vec(), b"s:4".to_vec()],
        },
        &|s| {
            s.delete(&[b"s:3".to_vec(), b"s:4".to_vec()]).unwrap();
        },
    );
    step(
        Op::HSet {
            key: b"h".to_vec(),
            fields: vec![
                (b"f1".to_vec(), b"v1".to_vec()),
                (b"f2".to_vec(), b"v2".to_vec()),
            ],
        },
        &|s| {
            s.hset(
                b"h",
                &[
                    (b"f1".to_vec(), b"v1".to_vec()),
                    (b"f2".to_vec(), b"v2".to_vec()),
                ],
            )
            .unwrap();
        },
    );
    step(
        Op::HDel {
            key: b"h".to_vec(),
            fields: vec![b"f1".to_vec()],
        },
        &|s| {
            s.hdel(b"h", &[b"f1".to_vec()]).unwrap();
        },
    );
    // A counter set with a short TTL, then incremented before it expired: gone at replay time.
    let at = clock.now_ms();
    step(
        Op::Set {
            key: b"brief".to_vec(),
            value: b"1".to_vec(),
            expire_at: Some(at + 1_200),
        },
        &|s| {
            s.set(b"brief", b"1", Some(ms(1_200))).unwrap();
        },
    );
    step(
        Op::IncrBy {
            key: b"brief".to_vec(),
            delta: 1,
        },
        &|s| {
            s.incr_by(b"brief", 1).unwrap();
        },
    );
    step(
        Op::IncrBy {
            key: b"brief".to_vec(),
            delta: 1,
        },
        &|s| {
            s.incr_by(b"brief", 1).unwrap();
        },
    );
    // Redis is back: the replay runs now.
    clock.advance(ms(SystemClock.now_ms().saturating_sub(clock.now_ms())));
    let replay_at = clock.now_ms();
    (store, direct, replay_at)
}

#[tokio::test]
async fn a_replay_into_real_redis_matches_applying_each_write_on_time() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let (store, direct, replay_at) = outage(&mut conn, 4).await;
    let pending = store.pending_writes();
    let target = redis_target(&server.url()).await;
    let report = store.replay(target).await.unwrap();
    assert_eq!(
        (report.entries_applied, report.pending, report.rejected),
        (pending, 0, 0)
    );
    let expected = direct.snapshot(replay_at.max(SystemClock.now_ms()));
    assert_eq!(redis_snapshot(&mut conn).await, expected);
    assert!(
        expected.contains_key(b"pre:counter".as_slice()),
        "the counter merged with Redis's value"
    );
    assert_eq!(
        expected[&b"pre:counter".to_vec()].0,
        ModelValue::Str(b"42".to_vec())
    );
    assert!(
        !expected.contains_key(b"brief".as_slice()),
        "incremented before it expired: gone"
    );
}

#[tokio::test]
async fn a_replay_cut_by_a_connection_reset_resumes_without_doubling() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut direct_conn = connect(&server.url()).await;
    let (store, direct, replay_at) = outage(&mut direct_conn, 2).await;
    let store = Arc::new(store);
    // Replay through the proxy, slowed down, and reset every connection while it runs.
    proxy.set(Fault::Latency(Duration::from_millis(5)));
    let target = redis_target(&proxy.url()).await;
    let first = {
        let (store, target) = (Arc::clone(&store), Arc::clone(&target));
        tokio::spawn(async move { store.replay(target).await })
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    proxy.reset_all();
    let first = first.await.unwrap();
    assert!(first.is_err(), "the reset cut the replay: {first:?}");
    assert!(store.pending_writes() > 0);
    // Resume on a fresh connection: the batch in flight is applied at most once.
    let resumed = store
        .replay(redis_target(&server.url()).await)
        .await
        .unwrap();
    assert_eq!(resumed.pending, 0);
    assert_eq!(
        redis_snapshot(&mut direct_conn).await,
        direct.snapshot(replay_at.max(SystemClock.now_ms()))
    );
}

/// Deadlines at the edge of what Redis accepts replay exactly (the first version sent them
/// through Lua numbers, which lost precision and made Redis refuse them mid-batch); the
/// journal's marker has no TTL, and the next instance's first batch lets it expire a day later.
#[tokio::test]
async fn edge_deadlines_replay_exactly_and_markers_live_as_long_as_needed() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let store = MemoryStore::new(&FallbackConfig::default()).unwrap();
    let now = SystemClock.now_ms();
    let edge = Duration::from_millis(i64::MAX as u64 - now - 60_000);
    store.set(b"edge", b"v", Some(edge)).unwrap();
    store
        .set(b"far", b"v", Some(Duration::from_millis(1 << 53)))
        .unwrap();
    let first = store.instance();
    let target = redis_target(&server.url()).await;
    let report = store.replay(target.clone()).await.unwrap();
    assert_eq!((report.entries_applied, report.rejected), (2, 0));
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg("edge")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(at > i64::MAX - 70_000, "deadline {at}");
    let far: i64 = redis::cmd("PEXPIRETIME")
        .arg("far")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (far - (now as i64 + (1 << 53))).abs() < 60_000,
        "deadline {far}"
    );
    let marker = resilient_redis_manager::replay::marker_key(first);
    let ttl: i64 = conn.pttl(&marker).await.unwrap();
    assert_eq!(
        ttl, -1,
        "the marker does not expire while a journal may need it"
    );
    store.set(b"next", b"1", None).unwrap();
    store.replay(target).await.unwrap();
    let ttl: i64 = conn.pttl(&marker).await.unwrap();
    assert!(
        ttl > 0 && ttl <= resilient_redis_manager::replay::RETIRED_MARKER_TTL_MS as i64,
        "retired by the next instance's first batch: expires after a day ({ttl} ms)"
    );
}

/// A Redis out of memory (`maxmemory`, `noeviction`) refuses the batch before it writes
/// anything: nothing is dropped as a dead letter, nothing half applied; the replay succeeds
/// once there is room, with the counter incremented exactly once.
#[tokio::test]
async fn a_redis_out_of_memory_delays_the_replay_and_loses_nothing() {
    let server = RedisServer::start();
    let mut conn = connect(&server.url()).await;
    let () = conn.set("ballast", vec![0u8; 4 << 20]).await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1mb")
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = MemoryStore::new(&FallbackConfig::default()).unwrap();
    store.incr_by(b"n", 1).unwrap();
    store.set(b"s", b"v", None).unwrap();
    let target = redis_target(&server.url()).await;
    let refused = store.replay(target.clone()).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        refused.unwrap_err().to_string().contains("OOM"),
        "Redis's reason is kept"
    );
    assert_eq!(store.pending_writes(), 2);
    let n: Option<i64> = conn.get("n").await.unwrap();
    assert_eq!(n, None, "nothing applied");
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    let report = store.replay(target).await.unwrap();
    assert_eq!((report.pending, report.rejected), (0, 0));
    let n: i64 = conn.get("n").await.unwrap();
    assert_eq!(n, 1);
}
