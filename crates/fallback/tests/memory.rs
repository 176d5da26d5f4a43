//! The memory bound is measured, not guessed: a counting allocator checks that what the store
//! says it holds covers what it really allocated.
#![allow(
    unsafe_code,
    reason = "a global allocator that counts bytes must implement the unsafe GlobalAlloc"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use resilient_redis_config::FallbackConfig;
use resilient_redis_fallback::{FallbackStoreExt, MemoryStore};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// Forwards to the system allocator and counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn measure(key_len: usize, value_len: usize, writes: usize) -> (i64, u64) {
    let mut config = FallbackConfig::default();
    config.shadow = false;
    config.max_memory_size = 1 << 30;
    let store = MemoryStore::new(&config).unwrap();
    let value = vec![b'v'; value_len];
    let keys: Vec<Vec<u8>> = (0..writes)
        .map(|i| format!("{i:0>width$}", width = key_len).into_bytes())
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    for key in &keys {
        store.set(key, &value, None).unwrap();
    }
    for key in keys.iter().step_by(3) {
        store.incr_by(key, 1).unwrap_err(); // not an integer: refused, nothing held
    }
    let real = LIVE.load(Ordering::Relaxed) - before;
    (real, store.memory().pinned)
}

#[test]
fn accounted_bytes_cover_real_allocations() {
    for (key_len, value_len) in [(8, 8), (16, 64), (40, 1_000), (200, 10)] {
        let (real, accounted) = measure(key_len, value_len, 5_000);
        eprintln!("key {key_len} B, value {value_len} B: allocated {real}, accounted {accounted}");
        assert!(
            accounted as i64 >= real,
            "key {key_len} B, value {value_len} B: accounted {accounted} < allocated {real}"
        );
        assert!(
            (accounted as i64) < real * 3,
            "key {key_len} B, value {value_len} B: accounted {accounted} is far above allocated {real}"
        );
    }
}
