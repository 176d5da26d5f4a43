//! The memory bound refuses instead of dropping, and the journal file survives a crash: restore
//! gives back the same pending writes, and a damaged tail is cut and reported.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use resilient_redis_config::FallbackConfig;
use resilient_redis_fallback::{
    FallbackError, FallbackStore, FallbackStoreExt, Journal, ManualClock, MemoryStore, ModelTarget,
};

const T0: u64 = 1_700_000_000_000;

fn config(journal: Option<&Path>) -> FallbackConfig {
    let mut c = FallbackConfig::default();
    c.journal_path = journal.map(Path::to_owned);
    c.replay_batch_size = 3;
    c
}

fn open(config: &FallbackConfig, clock: &Arc<ManualClock>) -> MemoryStore {
    MemoryStore::with_clock(
        config,
        Arc::clone(clock) as Arc<dyn resilient_redis_fallback::Clock>,
    )
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

#[test]
fn a_full_store_refuses_writes_keeps_serving_reads_and_loses_nothing_accepted() {
    let clock = ManualClock::new(T0);
    let mut c = config(None);
    c.max_memory_size = 4 * 1024;
    let store = open(&c, &clock);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..200u32 {
        let key = format!("key:{i}").into_bytes();
        match store.set(&key, &[7u8; 100], None) {
            Ok(()) => accepted.push(key),
            Err(FallbackError::Full {
                needed,
                used,
                limit,
            }) => {
                refused += 1;
                assert_eq!(limit, 4 * 1024);
                assert!(used + needed > limit, "refused only when it does not fit");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        refused > 0 && !accepted.is_empty(),
        "{} accepted, {refused} refused",
        accepted.len()
    );
    let err = store.set(b"one-more", &[7u8; 100], None).unwrap_err();
    assert!(err.to_string().contains("max_memory_size 4096"), "{err}");
    assert!(store.memory().pinned <= 4 * 1024, "{:?}", store.memory());
    // Reads still work, and every accepted write is still there.
    for key in &accepted {
        assert_eq!(store.get(key).unwrap().as_deref(), Some(&[7u8; 100][..]));
    }
    let target = Arc::new(ModelTarget::new());
    rt().block_on(store.replay(target.clone())).unwrap();
    let snapshot = target.snapshot(T0);
    assert_eq!(snapshot.len(), accepted.len());
    // Once replayed, the memory is free for new writes.
    assert_eq!(store.memory().pinned, 0);
    store.set(b"one-more", b"x", None).unwrap();
}

#[test]
fn shadow_copies_give_way_to_writes() {
    let clock = ManualClock::new(T0);
    let mut c = config(None);
    c.max_memory_size = 8 * 1024;
    c.shadow = true;
    let store = open(&c, &clock);
    for i in 0..8u32 {
        store.observe(format!("seen:{i}").as_bytes(), Some(vec![1; 200]), None);
    }
    assert!(store.memory().shadow > 0);
    // Writes that need the room the shadow copies hold are accepted, the copies evicted.
    for i in 0..10u32 {
        store
            .set(format!("w:{i}").as_bytes(), &[2; 200], None)
            .unwrap();
    }
    assert_eq!(store.pending_writes(), 10);
}

#[test]
fn the_journal_file_restores_pending_writes_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallback.journal");
    let clock = ManualClock::new(T0);
    let direct = ModelTarget::new();
    {
        let store = open(&config(Some(&path)), &clock);
        store
            .set(b"a", b"1", Some(Duration::from_secs(60)))
            .unwrap();
        direct.apply_direct(
            &resilient_redis_fallback::Op::Set {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                expire_at: Some(T0 + 60_000),
            },
            T0,
        );
        store.incr_by(b"n", 5).unwrap();
        direct.apply_direct(
            &resilient_redis_fallback::Op::IncrBy {
                key: b"n".to_vec(),
                delta: 5,
            },
            T0,
        );
        store.hset(b"h", &[(b"f".to_vec(), b"v".to_vec())]).unwrap();
        direct.apply_direct(
            &resilient_redis_fallback::Op::HSet {
                key: b"h".to_vec(),
                fields: vec![(b"f".to_vec(), b"v".to_vec())],
            },
            T0,
        );
        store.delete(&[b"gone".to_vec()]).unwrap();
        // Dropped without close(): a crash.
    }
    let restored = open(&config(Some(&path)), &clock);
    assert_eq!(restored.pending_writes(), 4);
    assert_eq!(restored.restore_cut(), None);
    assert_eq!(
        restored.get(b"a").unwrap().as_deref(),
        Some(&b"1"[..]),
        "reads see restored writes"
    );
    let target = Arc::new(ModelTarget::new());
    rt().block_on(restored.replay(target.clone())).unwrap();
    assert_eq!(target.snapshot(T0), direct.snapshot(T0));
    // Drained: the file is back to its header, and a new process finds nothing pending.
    drop(restored);
    assert_eq!(open(&config(Some(&path)), &clock).pending_writes(), 0);
}

#[test]
fn a_replay_interrupted_by_a_crash_resumes_with_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallback.journal");
    let clock = ManualClock::new(T0);
    let target = Arc::new(ModelTarget::new());
    {
        let store = open(&config(Some(&path)), &clock);
        for _ in 0..7 {
            store.incr_by(b"n", 1).unwrap();
        }
        target.fail_call(1); // batch 0 lands, batch 1 fails (maybe after landing)
        assert!(rt().block_on(store.replay(target.clone())).is_err());
    }
    let restored = open(&config(Some(&path)), &clock);
    rt().block_on(restored.replay(target.clone())).unwrap();
    let value = &target.snapshot(T0)[&b"n".to_vec()].0;
    assert_eq!(
        *value,
        resilient_redis_fallback::ModelValue::Str(b"7".to_vec()),
        "every increment exactly once"
    );
}

#[test]
fn a_journal_cut_at_any_byte_of_its_last_record_keeps_exactly_the_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallback.journal");
    let clock = ManualClock::new(T0);
    {
        let store = open(&config(Some(&path)), &clock);
        store.set(b"first", b"1", None).unwrap();
        store.set(b"second", b"2", None).unwrap();
    }
    let full = std::fs::read(&path).unwrap();
    let before_last = {
        // The file as it was with only the first record.
        let one = dir.path().join("one.journal");
        let store = MemoryStore::with_clock(
            &config(Some(&one)),
            Arc::clone(&clock) as Arc<dyn resilient_redis_fallback::Clock>,
        )
        .unwrap();
        store.set(b"first", b"1", None).unwrap();
        std::fs::metadata(&one).unwrap().len() as usize
    };
    for cut in before_last..full.len() {
        std::fs::write(&path, &full[..cut]).unwrap();
        let store = open(&config(Some(&path)), &clock);
        assert_eq!(
            store.pending_writes(),
            1,
            "cut at {cut}: only the whole record survives"
        );
        assert_eq!(store.get(b"first").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(store.get(b"second").unwrap(), None);
        let reported = store.restore_cut().cloned();
        if cut == before_last {
            assert_eq!(reported, None, "a clean end is not a cut");
        } else {
            let c = reported.expect("the cut is reported");
            assert_eq!(
                (c.offset as usize, c.dropped as usize, c.truncated),
                (before_last, cut - before_last, true)
            );
        }
        drop(store);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            before_last,
            "the tail was cut off"
        );
    }
}

#[test]
fn a_corrupt_record_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallback.journal");
    let clock = ManualClock::new(T0);
    {
        let store = open(&config(Some(&path)), &clock);
        store.set(b"first", b"1", None).unwrap();
        store.set(b"second", b"2", None).unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let store = open(&config(Some(&path)), &clock);
    assert_eq!(store.pending_writes(), 1);
    assert!(
        !store.restore_cut().unwrap().truncated,
        "a checksum failure, not a short write"
    );
}

#[test]
fn close_without_anywhere_to_persist_pending_writes_says_so() {
    let clock = ManualClock::new(T0);
    let store = open(&config(None), &clock);
    store.set(b"k", b"v", None).unwrap();
    assert!(matches!(
        store.close(),
        Err(FallbackError::PendingAtClose { pending: 1 })
    ));
}

#[test]
fn persist_on_shutdown_compacts_the_journal_for_the_next_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fallback.journal");
    let clock = ManualClock::new(T0);
    let mut c = config(Some(&path));
    c.persist_on_shutdown = true;
    let store = open(&c, &clock);
    store.set(b"k", b"v", None).unwrap();
    store.close().unwrap();
    drop(store);
    let next = open(&c, &clock);
    assert_eq!(next.pending_writes(), 1);
    assert_eq!(next.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn writes_to_a_key_known_only_as_a_shadow_copy_start_from_it() {
    let clock = ManualClock::new(T0);
    let mut c = config(None);
    c.shadow = true;
    let store = open(&c, &clock);
    store.observe(b"n", Some(b"5".to_vec()), None);
    store.observe(b"s", Some(b"v".to_vec()), None);
    assert_eq!(store.incr_by(b"n", 2).unwrap(), 7);
    assert_eq!(store.get(b"n").unwrap().as_deref(), Some(&b"7"[..]));
    assert!(
        store.expire(b"s", Duration::from_secs(10)).unwrap(),
        "the copy counts as known"
    );
    assert_eq!(
        store.ttl(b"s").unwrap(),
        resilient_redis_fallback::Ttl::ExpiresIn(Duration::from_secs(10))
    );
    assert!(matches!(
        store.hset(b"s", &[(b"f".to_vec(), b"v".to_vec())]),
        Err(FallbackError::WrongType)
    ));
    assert_eq!(
        store.pending_writes(),
        2,
        "the refused HSET was not journaled"
    );
}
