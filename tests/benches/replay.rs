//! Replay throughput into a local redis-server: entries per second through the replay script,
//! sent by the manager's own replay target.
//!
//! `cargo bench -p resilient-redis-tests --bench replay` (also run by `cargo xtask bench`).
//! `REPLAY_BENCH_ENTRIES` sets the journal length (default 200 000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use resilient_redis_config::FallbackConfig;
use resilient_redis_fallback::{FallbackStoreExt, Journal, MemoryStore};
use resilient_redis_manager::RedisSyncTarget;
use resilient_redis_pool::RedisPool;
use resilient_redis_tests::RedisServer;

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let entries: u64 = std::env::var("REPLAY_BENCH_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let entries = if benching { entries } else { 1_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let server = RedisServer::start();
        // The production replay target (the manager's) over a pool.
        let mut pool_config = resilient_redis_config::RedisConfig::default();
        pool_config.url = resilient_redis_config::RedisUrl::new(server.url().as_str());
        let pool: Arc<dyn resilient_redis_pool::ConnectionPool> =
            Arc::new(RedisPool::new(&pool_config).await.expect("pool"));
        println!(
            "replay of {entries} journal entries (64 B SETs, 1 in 4 with a TTL, 1 in 4 INCRBY)"
        );
        println!("{:>10} {:>14} {:>12}", "batch", "entries/s", "elapsed");
        for batch in [100u32, 500, 1_000] {
            let mut config = FallbackConfig::default();
            config.shadow = false;
            config.max_memory_size = 1 << 32;
            config.replay_batch_size = batch;
            let store = MemoryStore::new(&config).expect("store");
            let value = [b'v'; 64];
            for i in 0..entries {
                let key = format!("bench:{batch}:{}", i % 50_000);
                match i % 4 {
                    0 => store
                        .set(key.as_bytes(), &value, Some(Duration::from_secs(600)))
                        .expect("set"),
                    1 => {
                        store
                            .incr_by(format!("bench:{batch}:counter:{}", i % 100).as_bytes(), 1)
                            .expect("incr");
                    }
                    _ => store.set(key.as_bytes(), &value, None).expect("set"),
                }
            }
            let target = Arc::new(RedisSyncTarget::new(Arc::clone(&pool)));
            let started = Instant::now();
            let report = store.replay(target).await.expect("replay");
            let elapsed = started.elapsed();
            assert_eq!(report.pending, 0);
            println!(
                "{batch:>10} {:>14.0} {:>11.2}s",
                report.entries_applied as f64 / elapsed.as_secs_f64(),
                elapsed.as_secs_f64()
            );
        }
    });
}
