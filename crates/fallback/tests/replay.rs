//! Replay is lossless: any sequence of writes made in fallback mode, replayed later, leaves the
//! target as applying each write at its own time would have; an interrupted replay resumes
//! without losing or doubling anything.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use resilient_redis_config::FallbackConfig;
use resilient_redis_fallback::{
    FallbackStoreExt, Journal, ManualClock, MemoryStore, ModelTarget, Op, Snapshot,
};

const T0: u64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Write {
    Set(u8, u8, Option<u64>),
    Del(u8),
    Expire(u8, u64),
    Incr(u8, i64),
    HSet(u8, u8, u8),
    HDel(u8, u8),
    Wait(u64),
}

fn write() -> impl Strategy<Value = Write> {
    let key = 0u8..4;
    prop_oneof![
        3 => (key.clone(), any::<u8>(), prop::option::of(1u64..3_000)).prop_map(|(k, v, t)| Write::Set(k, v, t)),
        1 => key.clone().prop_map(Write::Del),
        2 => (key.clone(), 1u64..3_000).prop_map(|(k, t)| Write::Expire(k, t)),
        3 => (key.clone(), -5i64..6).prop_map(|(k, d)| Write::Incr(k, d)),
        2 => (key.clone(), 0u8..3, any::<u8>()).prop_map(|(k, f, v)| Write::HSet(k, f, v)),
        1 => (key, 0u8..3).prop_map(|(k, f)| Write::HDel(k, f)),
        2 => (1u64..1_500).prop_map(Write::Wait),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

fn store(clock: &Arc<ManualClock>, batch: u32) -> MemoryStore {
    let mut config = FallbackConfig::default();
    config.replay_batch_size = batch;
    config.shadow = false;
    MemoryStore::with_clock(
        &config,
        Arc::clone(clock) as Arc<dyn resilient_redis_fallback::Clock>,
    )
    .unwrap()
}

/// Applies `writes` to the store (fallback mode) and directly to `direct` at the same times.
/// Returns the end time. Writes the store refuses (a wrong type) are not applied directly either.
fn run(writes: &[Write], store: &MemoryStore, clock: &ManualClock, direct: &ModelTarget) -> u64 {
    for w in writes {
        let now = clock.now();
        let op = match w {
            Write::Wait(ms) => {
                clock.advance(Duration::from_millis(*ms));
                continue;
            }
            Write::Set(k, v, ttl) => {
                store
                    .set(&key(*k), &[*v], ttl.map(Duration::from_millis))
                    .unwrap();
                Op::Set {
                    key: key(*k),
                    value: vec![*v],
                    expire_at: ttl.map(|t| now + t),
                }
            }
            Write::Del(k) => {
                store.delete(&[key(*k)]).unwrap();
                Op::Del {
                    keys: vec![key(*k)],
                }
            }
            Write::Expire(k, ttl) => {
                store.expire(&key(*k), Duration::from_millis(*ttl)).unwrap();
                Op::ExpireAt {
                    key: key(*k),
                    at: now + ttl,
                }
            }
            Write::Incr(k, d) => {
                if store.incr_by(&key(*k), *d).is_err() {
                    continue;
                }
                Op::IncrBy {
                    key: key(*k),
                    delta: *d,
                }
            }
            Write::HSet(k, f, v) => {
                if store.hset(&key(*k), &[(vec![*f], vec![*v])]).is_err() {
                    continue;
                }
                Op::HSet {
                    key: key(*k),
                    fields: vec![(vec![*f], vec![*v])],
                }
            }
            Write::HDel(k, f) => {
                if store.hdel(&key(*k), &[vec![*f]]).is_err() {
                    continue;
                }
                Op::HDel {
                    key: key(*k),
                    fields: vec![vec![*f]],
                }
            }
        };
        direct.apply_direct(&op, now);
    }
    clock.now()
}

trait Now {
    fn now(&self) -> u64;
}
impl Now for ManualClock {
    fn now(&self) -> u64 {
        resilient_redis_fallback::Clock::now_ms(self)
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn replaying_equals_applying_each_write_at_its_time(
        writes in prop::collection::vec(write(), 0..60),
        batch in 1u32..6,
        later in 0u64..5_000,
    ) {
        let clock = ManualClock::new(T0);
        let store = store(&clock, batch);
        let direct = ModelTarget::new();
        let end = run(&writes, &store, &clock, &direct);
        // Redis comes back a while later.
        clock.advance(Duration::from_millis(later));
        let replayed = Arc::new(ModelTarget::new());
        let report = rt().block_on(store.replay(replayed.clone())).unwrap();
        prop_assert_eq!(report.pending, 0);
        prop_assert_eq!(store.pending_writes(), 0);
        let at = end + later;
        prop_assert_eq!(replayed.snapshot(at), direct.snapshot(at));
    }

    #[test]
    fn an_interrupted_replay_resumes_without_loss_or_doubling(
        writes in prop::collection::vec(write(), 1..40),
        batch in 1u32..4,
        fail_at in 0u32..12,
    ) {
        let clock = ManualClock::new(T0);
        let store = store(&clock, batch);
        let direct = ModelTarget::new();
        let end = run(&writes, &store, &clock, &direct);
        let target = Arc::new(ModelTarget::new());
        target.fail_call(fail_at);
        let rt = rt();
        let mut attempts = 0;
        while store.pending_writes() > 0 {
            attempts += 1;
            prop_assert!(attempts <= 3, "the replay does not finish");
            let _ = rt.block_on(store.replay(target.clone()));
        }
        prop_assert_eq!(target.snapshot(end), direct.snapshot(end));
    }
}

#[test]
fn writes_made_during_a_replay_queue_behind_it() {
    let clock = ManualClock::new(T0);
    let store = store(&clock, 2);
    for i in 0..5 {
        store.incr_by(b"n", i).unwrap();
    }
    let target = Arc::new(ModelTarget::new());
    target.fail_call(1); // the second batch fails
    assert!(rt().block_on(store.replay(target.clone())).is_err());
    store.incr_by(b"n", 100).unwrap(); // written while the replay is half done
    let report = rt().block_on(store.replay(target.clone())).unwrap();
    assert_eq!(report.pending, 0);
    let snapshot: Snapshot = target.snapshot(T0);
    let value = &snapshot[&b"n".to_vec()].0;
    assert_eq!(
        *value,
        resilient_redis_fallback::ModelValue::Str(b"110".to_vec()),
        "0+1+2+3+4+100, each once"
    );
}

#[test]
fn a_replay_with_nothing_pending_does_nothing() {
    let clock = ManualClock::new(T0);
    let store = store(&clock, 10);
    let target = Arc::new(ModelTarget::new());
    let report = rt().block_on(store.replay(target.clone())).unwrap();
    assert_eq!((report.batches_applied, report.pending), (0, 0));
    assert_eq!(target.calls(), 0);
}

/// Cases per property: the default, or `PROPTEST_CASES` for a longer search.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
