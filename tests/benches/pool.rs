//! Pooled GET throughput against a local redis-server, ours (the pool's shared connection, and
//! the whole `RedisManager` request path: breaker, pool, metrics, shadow copy) against a raw
//! redis-rs `MultiplexedConnection`, deadpool-redis and bb8-redis, in the same run.
//!
//! `cargo bench -p resilient-redis-tests --bench pool` (or `cargo xtask bench`).
//! `POOL_BENCH_SECONDS` sets each measurement's length (default 1). Prints ops/s, the
//! least-served task's share of the mean, and ratios to the raw connection.
//! `POOL_BENCH_SHARED` overrides `pool.shared_connections` (default 1).
//! `POOL_BENCH_OP=set` measures SET of the same 64 B value instead of GET.
//! `POOL_BENCH_TASKS=64,256` picks the concurrency levels (default 1,16,64,256).
//! `POOL_BENCH_ONLY=manager` keeps the contenders whose name contains it (and the raw baseline),
//! for profiling one path.
//! Contenders: the raw connection (redis-rs's defaults, so a 500 ms response timeout on every
//! request), the same without a response timeout (no bound on a request), our pool's shared connection, the manager's typed `get`/`set`,
//! the manager through redis-rs (`redis_connection()`, `AsyncCommands`-style `query_async`),
//! deadpool-redis and bb8-redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use resilient_redis_pool::{ConnectionPool, RedisPool};
use resilient_redis_tests::RedisServer;

const KEY: &str = "bench:key";
const VALUE: &[u8] = &[b'x'; 64];

/// Read once: reading the environment on every operation showed up in profiles (1 %).
fn is_set() -> bool {
    static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        std::env::var("POOL_BENCH_OP").is_ok_and(|op| op.eq_ignore_ascii_case("set"))
    })
}
const CONCURRENCY: [usize; 4] = [1, 16, 64, 256];
const POOL_SIZE: u32 = 16;
const ROUNDS: usize = 3;

/// The run with the median throughput (its least-served share with it).
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    runs.swap_remove(runs.len() / 2)
}

#[derive(Clone)]
enum Contender {
    Raw(MultiplexedConnection),
    /// The same without redis-rs's response timeout: requests may wait for ever.
    RawUntimed(MultiplexedConnection),
    Ours(RedisPool),
    Deadpool(deadpool_redis::Pool),
    Bb8(bb8::Pool<bb8_redis::RedisConnectionManager>),
    Manager(resilient_redis_manager::RedisManager),
    Managed(resilient_redis_manager::ManagedConnection),
}

impl Contender {
    fn name(&self) -> &'static str {
        match self {
            Contender::Raw(_) => "raw redis-rs multiplexed",
            Contender::RawUntimed(_) => "raw redis-rs, no timeout",
            Contender::Ours(_) => "resilient-redis shared",
            Contender::Deadpool(_) => "deadpool-redis",
            Contender::Bb8(_) => "bb8-redis",
            Contender::Manager(_) => "resilient-redis manager",
            Contender::Managed(_) => "resilient-redis via redis-rs",
        }
    }

    async fn get(&mut self, cmd: &redis::Cmd) -> Vec<u8> {
        let set = is_set();
        match self {
            Contender::Raw(conn) | Contender::RawUntimed(conn) if set => {
                let () = cmd.query_async(conn).await.expect("raw SET");
                VALUE.to_vec()
            }
            Contender::Managed(conn) if set => {
                let () = cmd.query_async(conn).await.expect("managed SET");
                VALUE.to_vec()
            }
            Contender::Manager(m) if set => {
                m.set(KEY.as_bytes(), VALUE, None)
                    .await
                    .expect("manager SET");
                VALUE.to_vec()
            }
            Contender::Ours(pool) if set => {
                let () = pool
                    .shared()
                    .expect("shared")
                    .query(cmd)
                    .await
                    .expect("our SET");
                VALUE.to_vec()
            }
            Contender::Deadpool(pool) if set => {
                let mut conn = pool.get().await.expect("deadpool get");
                let () = cmd.query_async(&mut *conn).await.expect("deadpool SET");
                VALUE.to_vec()
            }
            Contender::Bb8(pool) if set => {
                let mut conn = pool.get().await.expect("bb8 get");
                let () = cmd.query_async(&mut *conn).await.expect("bb8 SET");
                VALUE.to_vec()
            }
            Contender::Raw(conn) | Contender::RawUntimed(conn) => {
                cmd.query_async(conn).await.expect("raw GET")
            }
            Contender::Managed(conn) => cmd.query_async(conn).await.expect("managed GET"),
            Contender::Ours(pool) => pool
                .shared()
                .expect("shared")
                .query(cmd)
                .await
                .expect("our GET"),
            Contender::Deadpool(pool) => {
                let mut conn = pool.get().await.expect("deadpool get");
                cmd.query_async(&mut *conn).await.expect("deadpool GET")
            }
            Contender::Bb8(pool) => {
                let mut conn = pool.get().await.expect("bb8 get");
                cmd.query_async(&mut *conn).await.expect("bb8 GET")
            }
            Contender::Manager(m) => m
                .get(KEY.as_bytes())
                .await
                .expect("manager GET")
                .expect("the key exists"),
        }
    }
}

struct Run {
    ops_per_sec: f64,
    least_share: f64,
    p99: Duration,
}

async fn measure(contender: &Contender, tasks: usize, length: Duration) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (mut c, stop) = (contender.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let cmd = if is_set() {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(KEY).arg(VALUE);
                    cmd
                } else {
                    let mut cmd = redis::cmd("GET");
                    cmd.arg(KEY);
                    cmd
                };
                let mut n = 0u64;
                let mut latencies = Vec::with_capacity(4096);
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let v = c.get(&cmd).await;
                    latencies.push(t.elapsed());
                    debug_assert_eq!(v.len(), 64);
                    n += 1;
                }
                (n, latencies)
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    let mut latencies = Vec::new();
    for h in handles {
        let (n, l) = h.await.expect("task");
        counts.push(n);
        latencies.extend(l);
    }
    latencies.sort_unstable();
    let p99 = latencies
        .get(latencies.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = counts.iter().sum();
    let mean = total as f64 / tasks as f64;
    let least = counts.iter().copied().min().unwrap_or(0) as f64;
    Run {
        ops_per_sec: total as f64 / elapsed,
        least_share: if mean > 0.0 { least / mean } else { 0.0 },
        p99,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly then.
    let benching = std::env::args().any(|a| a == "--bench");
    let seconds: f64 = std::env::var("POOL_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let length = Duration::from_secs_f64(if benching { seconds } else { 0.05 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let server = RedisServer::start();
        let url = server.url();
        let client = redis::Client::open(url.as_str()).expect("client");
        let mut raw = client
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        let () = redis::cmd("SET")
            .arg(KEY)
            .arg(vec![b'x'; 64])
            .query_async(&mut raw)
            .await
            .expect("SET");

        let untimed = client
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_response_timeout(None),
            )
            .await
            .expect("raw connection without a timeout");

        let mut config = resilient_redis_config::RedisConfig::default();
        config.url = resilient_redis_config::RedisUrl::new(url.as_str());
        config.pool.max_size = POOL_SIZE;
        if let Some(n) = std::env::var("POOL_BENCH_SHARED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            config.pool.shared_connections = n;
        }
        let ours = RedisPool::new(&config).await.expect("our pool");
        let mut dp = deadpool_redis::Config::from_url(url.as_str());
        dp.pool = Some(deadpool_redis::PoolConfig::new(POOL_SIZE as usize));
        let deadpool = dp
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("deadpool");
        let bb8 = bb8::Pool::builder()
            .max_size(POOL_SIZE)
            .build(bb8_redis::RedisConnectionManager::new(url.as_str()).expect("bb8 manager"))
            .await
            .expect("bb8");

        let mut manager_config = config.clone();
        if std::env::var_os("POOL_BENCH_NO_SHADOW").is_some() {
            manager_config.fallback.shadow = false;
        }
        let manager = resilient_redis_manager::RedisManager::builder(manager_config)
            .build()
            .await
            .expect("manager");
        let only = std::env::var("POOL_BENCH_ONLY").ok();
        let contenders: Vec<Contender> = [
            Contender::Raw(raw),
            Contender::RawUntimed(untimed),
            Contender::Ours(ours),
            Contender::Managed(manager.redis_connection()),
            Contender::Manager(manager),
            Contender::Deadpool(deadpool),
            Contender::Bb8(bb8),
        ]
        .into_iter()
        .filter(|c| {
            matches!(c, Contender::Raw(_)) || only.as_deref().is_none_or(|o| c.name().contains(o))
        })
        .collect();
        println!(
            "{} 64 B against a local redis-server; pools of {POOL_SIZE}; median of {ROUNDS} \
             interleaved rounds of {:.1} s per cell",
            if is_set() { "SET" } else { "GET" },
            length.as_secs_f64()
        );
        println!(
            "{:<6} {:<30} {:>12} {:>14} {:>10} {:>10}",
            "tasks", "contender", "ops/s", "least-served", "vs raw", "p99"
        );
        let levels: Vec<usize> = std::env::var("POOL_BENCH_TASKS")
            .ok()
            .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
            .unwrap_or_else(|| CONCURRENCY.to_vec());
        for tasks in levels {
            // Rounds interleave the contenders, so drift in the machine's speed hits them alike.
            let mut runs: Vec<Vec<Run>> = contenders.iter().map(|_| Vec::new()).collect();
            for _ in 0..ROUNDS {
                for (c, into) in contenders.iter().zip(&mut runs) {
                    into.push(measure(c, tasks, length).await);
                }
            }
            let medians: Vec<Run> = runs.into_iter().map(median).collect();
            let raw_ops = medians[0].ops_per_sec;
            for (c, run) in contenders.iter().zip(&medians) {
                println!(
                    "{tasks:<6} {:<30} {:>12.0} {:>13.0}% {:>9.2}x {:>8.2}ms",
                    c.name(),
                    run.ops_per_sec,
                    run.least_share * 100.0,
                    run.ops_per_sec / raw_ops,
                    run.p99.as_secs_f64() * 1000.0
                );
            }
        }
    });
}
