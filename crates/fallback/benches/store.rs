//! In-memory get/set and journal appends. `cargo bench -p resilient-redis-fallback`.
//!
//! `set` journals every write: "memory" keeps the journal in memory, "file" also appends it to a
//! journal file (one `write(2)` per write, no fsync). Writes cycle over 10 000 keys and the
//! journal is drained (replayed into a model) between samples so the bound is never reached.
#![allow(
    missing_docs,
    reason = "criterion_group! generates undocumented functions"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use resilient_redis_config::FallbackConfig;
use resilient_redis_fallback::{FallbackStoreExt, Journal, MemoryStore, ModelTarget};

const KEYS: usize = 10_000;

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("user:session:{i:06}").into_bytes())
        .collect()
}

fn store(journal: Option<std::path::PathBuf>) -> MemoryStore {
    let mut config = FallbackConfig::default();
    config.max_memory_size = 1 << 32;
    config.journal_path = journal;
    MemoryStore::new(&config).expect("store")
}

fn drain(store: &MemoryStore, rt: &tokio::runtime::Runtime) {
    rt.block_on(store.replay(Arc::new(ModelTarget::new())))
        .expect("replay");
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let keys = keys();
    let value = vec![b'v'; 64];
    let mut group = c.benchmark_group("fallback");

    let s = store(None);
    for k in &keys {
        s.set(k, &value, Some(Duration::from_secs(600)))
            .expect("set");
    }
    let mut i = 0;
    group.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(s.get(&keys[i]).expect("get"));
        });
    });
    drain(&s, &rt);

    let s = store(None);
    group.bench_function("set_journal_in_memory", |b| {
        b.iter_batched(
            || drain(&s, &rt),
            |()| {
                for k in keys.iter().take(100) {
                    s.set(k, &value, None).expect("set");
                }
            },
            criterion::BatchSize::PerIteration,
        );
    });

    let dir = tempfile::tempdir().expect("dir");
    let s = store(Some(dir.path().join("bench.journal")));
    group.bench_function("set_journal_file_no_fsync", |b| {
        b.iter_batched(
            || drain(&s, &rt),
            |()| {
                for k in keys.iter().take(100) {
                    s.set(k, &value, None).expect("set");
                }
            },
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group! {
    name = store_benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(store_benches);
