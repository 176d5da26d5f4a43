//! The memory bound holds after every operation, whatever the mix: writes of every kind, shadow
//! copies of values read from Redis, replays (which leave the replayed values readable until
//! fallback mode ends) and the end of fallback mode. A write that would not fit is refused.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use resilient_redis_config::FallbackConfig;
use resilient_redis_fallback::{
    Clock, FallbackStore, FallbackStoreExt, Journal, ManualClock, MemoryStore, ModelTarget,
};

const T0: u64 = 1_700_000_000_000;
const LIMIT: u64 = 8 * 1024;

#[derive(Clone, Debug)]
enum Step {
    Set(u8, usize),
    IncrBy(u8, i64),
    HSet(u8, u8, usize),
    Expire(u8),
    Del(u8),
    /// A value read from Redis in normal operation (a shadow copy).
    Observe(u8, usize),
    /// Redis is back: the journal is replayed.
    Replay,
    /// Fallback mode ends.
    Settle,
}

fn step() -> impl Strategy<Value = Step> {
    // One-byte keys: the bytes a value adds beyond its key are what an estimate can miss.
    let key = 0u8..12;
    prop_oneof![
        (key.clone(), 0usize..400).prop_map(|(k, n)| Step::Set(k, n)),
        (
            key.clone(),
            prop_oneof![Just(1i64), Just(-1_000_000_000_000_000_000), any::<i64>()]
        )
            .prop_map(|(k, d)| Step::IncrBy(k, d)),
        (key.clone(), 0u8..16, 0usize..200).prop_map(|(k, f, n)| Step::HSet(k, f, n)),
        key.clone().prop_map(Step::Expire),
        key.clone().prop_map(Step::Del),
        (key, 0usize..600).prop_map(|(k, n)| Step::Observe(k, n)),
        Just(Step::Replay),
        Just(Step::Settle),
    ]
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(200), ..ProptestConfig::default() })]

    #[test]
    fn the_store_never_holds_more_than_its_bound(steps in prop::collection::vec(step(), 1..120)) {
        let clock = ManualClock::new(T0);
        let mut config = FallbackConfig::default();
        config.max_memory_size = LIMIT;
        config.shadow = true;
        let store = MemoryStore::builder(&config)
            .clock(Arc::clone(&clock) as Arc<dyn Clock>)
            .build()
            .unwrap();
        let target = Arc::new(ModelTarget::new());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (i, s) in steps.iter().enumerate() {
            let key = |k: &u8| vec![b'a' + k];
            // Refusals (a full store, a wrong type, an overflow) are fine: the bound is the point.
            match s {
                Step::Set(k, n) => drop(store.set(&key(k), &vec![b'v'; *n], None)),
                Step::IncrBy(k, d) => drop(store.incr_by(&key(k), *d)),
                Step::HSet(k, f, n) => drop(store.hset(&key(k), &[(vec![*f], vec![b'h'; *n])])),
                Step::Expire(k) => drop(store.expire(&key(k), Duration::from_secs(60))),
                Step::Del(k) => drop(store.delete(&[key(k)])),
                Step::Observe(k, n) => store.observe(&key(k), Some(vec![b'o'; *n]), None),
                Step::Replay => drop(rt.block_on(store.replay(target.clone()))),
                Step::Settle => store.settle(),
            }
            clock.advance(Duration::from_millis(1));
            let m = store.memory();
            prop_assert!(
                m.pinned + m.shadow <= m.limit,
                "after step {} ({:?}): pinned {} + shadow {} > {}",
                i, s, m.pinned, m.shadow, m.limit
            );
        }
    }
}

fn shadowing(clock: &Arc<ManualClock>) -> MemoryStore {
    let mut config = FallbackConfig::default();
    config.max_memory_size = LIMIT;
    config.shadow = true;
    MemoryStore::builder(&config)
        .clock(Arc::clone(clock) as Arc<dyn Clock>)
        .build()
        .unwrap()
}

/// Found by review: a write that had to make room answered from a copy that making room then
/// threw away (INCRBY answered 101 while memory kept "1"). The write's own keys keep theirs.
#[test]
fn a_write_that_makes_room_keeps_the_values_it_answers_from() {
    let clock = ManualClock::new(T0);
    let store = shadowing(&clock);
    store.observe(b"c", Some(b"100".to_vec()), None);
    // Other copies, which the write below must evict to fit.
    for i in 0..5 {
        store.observe(format!("o{i}").as_bytes(), Some(vec![b'o'; 400]), None);
    }
    // Pending writes up to where the next one (each takes 328 bytes at most) no longer fits
    // beside the copies; nothing was evicted so far.
    let mut i = 0;
    while {
        let m = store.memory();
        m.pinned + 328 + m.shadow <= m.limit
    } {
        store
            .set(format!("k{i:02}").as_bytes(), b"v", None)
            .unwrap();
        i += 1;
    }
    assert!(store.knows(b"c") && store.knows(b"o0"), "evicted too early");
    assert_eq!(store.incr_by(b"c", 1).unwrap(), 101, "the base Redis gave");
    assert_eq!(store.get(b"c").unwrap(), Some(b"101".to_vec()));
    assert!(!store.knows(b"o0"), "the other copies made room");
    let m = store.memory();
    assert!(m.pinned + m.shadow <= m.limit, "{m:?}");
}

/// Found by review: a write that changes nothing (PEXPIRE of a key Redis said does not exist)
/// dropped the copy that says so, and the key became unknown.
#[test]
fn a_write_that_changes_nothing_keeps_what_memory_knew() {
    let clock = ManualClock::new(T0);
    let store = shadowing(&clock);
    store.observe(b"gone", None, None);
    assert!(store.knows(b"gone"));
    assert!(!store.expire(b"gone", Duration::from_secs(5)).unwrap());
    assert!(
        store.knows(b"gone"),
        "memory forgot that the key does not exist"
    );
    assert_eq!(store.get(b"gone").unwrap(), None);
}
