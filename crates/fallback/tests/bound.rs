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
