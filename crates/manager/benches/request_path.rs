//! What the request path itself costs per call, with the network taken out: the manager over a
//! connection that answers at once, against the same connection used directly.
//!
//! `cargo bench -p resilient-redis-manager --bench request_path` (or `cargo xtask bench`).
//! Every contender runs the same `GET` against the same instant connection, so the differences
//! are the manager's own work: the breaker, the deadline, metrics, the span, the command's
//! class, and (for the redis-rs path) the boxed future redis-rs's `ConnectionLike` asks for.
//! The `direct_*` benchmarks are the baselines `cargo xtask bench` divides by.

#![allow(
    missing_docs,
    reason = "criterion_group! generates undocumented functions"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use resilient_redis_config::{PoolStatus, RedisConfig};
use resilient_redis_manager::RedisManager;
use resilient_redis_pool::{ConnectionPool, PoolError, PooledConnection, SharedConnection};

const VALUE: &[u8] = &[b'x'; 64];

/// A connection that answers every command with the same 64-byte value, at once.
#[derive(Clone)]
struct Instant0;

impl ConnectionLike for Instant0 {
    fn req_packed_command<'a>(&'a mut self, _cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(std::future::ready(Ok(Value::BulkString(VALUE.to_vec()))))
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        _pipeline: &'a Pipeline,
        _offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(std::future::ready(Ok(vec![
            Value::BulkString(
                VALUE.to_vec()
            );
            count
        ])))
    }
    fn get_db(&self) -> i64 {
        0
    }
}

struct InstantPool;

#[async_trait::async_trait]
impl ConnectionPool for InstantPool {
    fn shared(&self) -> Result<SharedConnection, PoolError> {
        Ok(SharedConnection::from_connection(Instant0))
    }
    async fn get(&self) -> Result<PooledConnection, PoolError> {
        Ok(PooledConnection::from_connection(Instant0))
    }
    fn status(&self) -> PoolStatus {
        PoolStatus::default()
    }
    async fn close(&self, _deadline: Duration) {}
}

fn get() -> Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg("bench:key");
    cmd
}

/// Runs `iters` calls of `one` on one task and returns their total time.
fn timed<F: Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    iters: u64,
    mut one: impl FnMut() -> F,
) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            one().await;
        }
        start.elapsed()
    })
}

fn request_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let manager = runtime
        .block_on(
            RedisManager::builder(RedisConfig::default())
                .pool(Arc::new(InstantPool))
                .background_tasks(false)
                .build(),
        )
        .expect("manager");
    let cmd = get();
    let mut group = c.benchmark_group("request_path");
    group.bench_function("direct_query_async", |b| {
        b.iter_custom(|iters| {
            timed(&runtime, iters, || async {
                let mut conn = Instant0;
                let v: Vec<u8> = cmd.query_async(&mut conn).await.expect("direct");
                std::hint::black_box(v);
            })
        });
    });
    group.bench_function("direct_shared_connection_query", |b| {
        b.iter_custom(|iters| {
            timed(&runtime, iters, || async {
                let mut conn = SharedConnection::from_connection(Instant0);
                let v: Vec<u8> = conn.query(&cmd).await.expect("shared");
                std::hint::black_box(v);
            })
        });
    });
    group.bench_function("resilient_redis_typed_get", |b| {
        b.iter_custom(|iters| {
            timed(&runtime, iters, || async {
                let v = manager.get(b"bench:key").await.expect("typed");
                std::hint::black_box(v);
            })
        });
    });
    let conn = manager.redis_connection();
    group.bench_function("resilient_redis_via_redis_rs", |b| {
        b.iter_custom(|iters| {
            timed(&runtime, iters, || async {
                let mut conn = conn.clone();
                let v: Vec<u8> = cmd.query_async(&mut conn).await.expect("via redis-rs");
                std::hint::black_box(v);
            })
        });
    });
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
