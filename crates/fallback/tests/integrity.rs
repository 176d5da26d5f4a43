//! The promise across lifetimes, odd inputs and races: no acknowledged write is lost or applied
//! twice. Each test names the first version's behaviour it fails on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use resilient_redis_config::FallbackConfig;
use resilient_redis_fallback::{
    Batch, BatchId, BatchOutcome, Clock, FallbackError, FallbackStore, FallbackStoreExt, Journal,
    ManualClock, MemoryStore, ModelTarget, ModelValue, Op, SyncError, SyncTarget, inspect_journal,
};

const T0: u64 = 1_700_000_000_000;

fn config(journal: Option<&Path>) -> FallbackConfig {
    let mut c = FallbackConfig::default();
    c.journal_path = journal.map(Path::to_owned);
    c.replay_batch_size = 4;
    c
}

fn open(config: &FallbackConfig, clock: &Arc<ManualClock>, server: &str) -> MemoryStore {
    MemoryStore::builder(config)
        .clock(Arc::clone(clock) as Arc<dyn Clock>)
        .server(server)
        .build()
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn str_of(target: &ModelTarget, key: &str) -> Option<Vec<u8>> {
    match target.snapshot(T0).get(key.as_bytes()) {
        Some((ModelValue::Str(v), _)) => Some(v.clone()),
        _ => None,
    }
}

/// Fails on the first version: a drained journal kept its instance id and restarted its
/// sequence numbers, so the next process on the same file produced the same batch ids, the
/// previous process's markers said "already applied", and all its writes were dropped.
#[test]
fn three_processes_in_turn_on_one_journal_file_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.journal");
    let clock = ManualClock::new(T0);
    let redis = Arc::new(ModelTarget::new());
    let mut instances = Vec::new();
    for process in 0..3 {
        let store = open(&config(Some(&path)), &clock, "127.0.0.1:6379/0");
        instances.push(store.instance());
        for i in 0..20 {
            store
                .set(format!("p{process}:k{i}").as_bytes(), b"v", None)
                .unwrap();
        }
        store.incr_by(b"counter", 1).unwrap();
        let report = rt().block_on(store.replay(redis.clone())).unwrap();
        assert_eq!(report.pending, 0);
        assert_eq!(
            report.batches_skipped, 0,
            "process {process}: nothing skipped"
        );
        store.close().unwrap();
    }
    for process in 0..3 {
        for i in 0..20 {
            assert_eq!(
                str_of(&redis, &format!("p{process}:k{i}")).as_deref(),
                Some(&b"v"[..]),
                "process {process}, key {i}"
            );
        }
    }
    assert_eq!(str_of(&redis, "counter").as_deref(), Some(&b"3"[..]));
    instances.dedup();
    assert_eq!(instances.len(), 3, "a new instance after every drain");
}

/// A target that records what it is asked, and applies into a model.
struct Recording {
    model: ModelTarget,
    retired: std::sync::Mutex<Vec<u128>>,
}

#[async_trait::async_trait]
impl SyncTarget for Recording {
    async fn apply(&self, batch: &Batch<'_>) -> Result<BatchOutcome, SyncError> {
        if let Some(r) = batch.retire {
            self.retired.lock().unwrap().push(r);
        }
        self.model.apply(batch).await
    }
}

/// The marker of a drained journal is retired by the first batch of the next instance, so
/// markers neither pile up nor need a TTL (which, in the first version, could expire before a
/// restored journal was replayed and let it apply a batch twice).
#[test]
fn the_next_instance_retires_the_previous_marker() {
    let clock = ManualClock::new(T0);
    let store = open(&config(None), &clock, "");
    let target = Arc::new(Recording {
        model: ModelTarget::new(),
        retired: std::sync::Mutex::new(Vec::new()),
    });
    store.set(b"a", b"1", None).unwrap();
    let first = store.instance();
    rt().block_on(store.replay(target.clone())).unwrap();
    assert!(target.retired.lock().unwrap().is_empty());
    store.set(b"b", b"2", None).unwrap();
    rt().block_on(store.replay(target.clone())).unwrap();
    assert_eq!(*target.retired.lock().unwrap(), [first]);
}

/// Fails on the first version: `set(k, v, Some(Duration::MAX))` was accepted, and its replay
/// failed half-way through a batch, forever (the batch's earlier writes applied again and
/// again). Now it is refused at the call, naming the TTL and its problem.
#[test]
fn a_ttl_redis_would_refuse_is_refused_at_the_call() {
    let clock = ManualClock::new(T0);
    let store = open(&config(None), &clock, "");
    store.incr_by(b"c", 1).unwrap();
    let err = store
        .set(b"k", b"v", Some(Duration::MAX))
        .expect_err("refused");
    assert!(matches!(err, FallbackError::InvalidWrite { .. }), "{err}");
    assert!(err.to_string().contains("ttl"), "{err}");
    assert_eq!(
        err.kind(),
        resilient_redis_config::ErrorKind::Validation,
        "the caller's mistake, not an outage"
    );
    let err = store.expire(b"c", Duration::MAX).expect_err("refused");
    assert!(matches!(err, FallbackError::InvalidWrite { .. }), "{err}");
    // The latest deadline Redis accepts is still accepted.
    let edge = Duration::from_millis(i64::MAX as u64 - T0);
    store.set(b"edge", b"v", Some(edge)).unwrap();
    store.set(b"after", b"y", None).unwrap();
    assert_eq!(
        store.pending_writes(),
        3,
        "the refused writes were not journaled"
    );
    for empty in [
        store.hset(b"h", &[]).map(drop),
        store.hdel(b"h", &[]).map(drop),
        store.delete(&[]).map(drop),
    ] {
        assert!(matches!(empty, Err(FallbackError::InvalidWrite { .. })));
    }
    let redis = Arc::new(ModelTarget::new());
    rt().block_on(store.replay(redis.clone())).unwrap();
    assert_eq!(str_of(&redis, "c").as_deref(), Some(&b"1"[..]));
    assert_eq!(str_of(&redis, "after").as_deref(), Some(&b"y"[..]));
    assert_eq!(
        redis.snapshot(T0)[&b"edge".to_vec()].1,
        Some(i64::MAX as u64),
        "the edge deadline replays exactly"
    );
}

/// Fails on the first version: a write Redis refused at replay (here an INCRBY of a key that
/// is a hash in Redis) was dropped after being acknowledged, with only a `warn!`.
#[test]
fn a_write_refused_at_replay_becomes_a_dead_letter_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.journal");
    let clock = ManualClock::new(T0);
    let redis = Arc::new(ModelTarget::new());
    redis.apply_direct(
        &Op::HSet {
            key: b"h".to_vec(),
            fields: vec![(b"f".to_vec(), b"v".to_vec())],
        },
        T0,
    );
    {
        let store = open(&config(Some(&path)), &clock, "s:1/0");
        store.set(b"before", b"1", None).unwrap();
        assert_eq!(store.incr_by(b"h", 5).unwrap(), 5, "memory never saw h");
        store.set(b"after", b"2", None).unwrap();
        let report = rt().block_on(store.replay(redis.clone())).unwrap();
        assert_eq!(
            (report.rejected, report.entries_applied, report.pending),
            (1, 2, 0)
        );
        let dead = store.dead_letters();
        assert_eq!(dead.len(), 1);
        assert!(matches!(&dead[0].entry.op, Op::IncrBy { key, delta: 5 } if key == b"h"));
        assert!(
            dead[0].reason.starts_with("WRONGTYPE"),
            "{}",
            dead[0].reason
        );
    }
    assert_eq!(str_of(&redis, "before").as_deref(), Some(&b"1"[..]));
    assert_eq!(str_of(&redis, "after").as_deref(), Some(&b"2"[..]));
    // The next process still has it, and so does an operator reading the file.
    let report = inspect_journal(&path).unwrap();
    assert_eq!(report.dead_letters.len(), 1);
    assert_eq!(report.server, "s:1/0");
    assert!(report.pending.is_empty());
    let next = open(&config(Some(&path)), &clock, "s:1/0");
    assert_eq!(next.dead_letters().len(), 1);
    assert_eq!(next.pending_writes(), 0);
    assert_eq!(next.discard_dead_letters().unwrap(), 1);
    drop(next);
    assert!(inspect_journal(&path).unwrap().dead_letters.is_empty());
}

/// A target that applies a batch, then loses the reply: as a connection dying after Redis ran
/// the script.
struct LoseFirstReply {
    model: ModelTarget,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl SyncTarget for LoseFirstReply {
    async fn apply(&self, batch: &Batch<'_>) -> Result<BatchOutcome, SyncError> {
        let outcome = self.model.apply(batch).await?;
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(SyncError::new(
                resilient_redis_config::ErrorKind::Connection,
                "reply lost",
            ));
        }
        Ok(outcome)
    }
}

/// A batch whose reply was lost is found applied on the retry, and what it refused then is
/// still recorded: the marker keeps the last batch's refusals.
#[test]
fn refusals_of_a_batch_whose_reply_was_lost_are_still_recorded() {
    let clock = ManualClock::new(T0);
    let store = open(&config(None), &clock, "");
    let target = Arc::new(LoseFirstReply {
        model: ModelTarget::new(),
        lost: std::sync::atomic::AtomicBool::new(false),
    });
    target.model.apply_direct(
        &Op::Set {
            key: b"s".to_vec(),
            value: b"text".to_vec(),
            expire_at: None,
        },
        T0,
    );
    store.hset(b"s", &[(b"f".to_vec(), b"v".to_vec())]).unwrap();
    assert!(rt().block_on(store.replay(target.clone())).is_err());
    let report = rt().block_on(store.replay(target.clone())).unwrap();
    assert_eq!((report.batches_skipped, report.pending), (1, 0));
    assert_eq!(store.dead_letters().len(), 1);
}

/// Fails on the first version, which had no lock: two stores (two processes in a rolling
/// deploy) appended to one file and the third process found half the writes missing.
#[test]
fn a_second_store_on_the_same_journal_file_is_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.journal");
    let clock = ManualClock::new(T0);
    let first = open(&config(Some(&path)), &clock, "");
    first.set(b"a", b"1", None).unwrap();
    let err = MemoryStore::builder(&config(Some(&path)))
        .build()
        .expect_err("the file is taken");
    assert!(matches!(err, FallbackError::JournalInUse { .. }), "{err}");
    assert!(err.to_string().contains(".lock"), "{err}");
    drop(first);
    assert_eq!(open(&config(Some(&path)), &clock, "").pending_writes(), 1);
}

/// Fails on the first version: values already replayed left memory at once, so while
/// fallback mode was still on (a replay in several passes, a flap) reads of them said `None`.
#[test]
fn replayed_values_stay_readable_until_fallback_mode_ends() {
    let clock = ManualClock::new(T0);
    let store = open(&config(None), &clock, "");
    store.set(b"k", b"v", None).unwrap();
    rt().block_on(store.replay(Arc::new(ModelTarget::new())))
        .unwrap();
    assert_eq!(store.pending_writes(), 0);
    assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(
        store.memory().pinned,
        0,
        "no longer pinned: it may give way"
    );
    store.settle();
    assert_eq!(store.get(b"k").unwrap(), None, "Redis answers again");
}

/// Found by review of the store/journal split: a store restored from a journal file started
/// out "not serving", so the first seal it completed dropped the values it settled at once,
/// while the manager (in fallback mode for the writes still pending) went on answering from
/// memory: reads of those keys said "unknown" or "missing". Settled values now go only when
/// fallback mode ends (`settle`).
#[test]
fn after_a_restart_replayed_values_stay_readable_while_writes_are_still_pending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.journal");
    let clock = ManualClock::new(T0);
    {
        let earlier = open(&config(Some(&path)), &clock, "");
        for i in 0..3 {
            earlier.set(format!("k{i}").as_bytes(), b"v", None).unwrap();
        }
        earlier.close().unwrap();
    }
    let store = open(&config(Some(&path)), &clock, "");
    let redis = Arc::new(ModelTarget::new());
    rt().block_on(store.replay(redis.clone())).unwrap();
    // A write queued behind (or made during a new outage): fallback mode goes on.
    store.set(b"later", b"w", None).unwrap();
    let readable = |store: &MemoryStore| {
        for i in 0..3 {
            let key = format!("k{i}");
            assert!(store.knows(key.as_bytes()), "{key}: still known");
            assert_eq!(
                store.get(key.as_bytes()).unwrap().as_deref(),
                Some(&b"v"[..])
            );
        }
    };
    readable(&store);
    rt().block_on(store.replay(redis)).unwrap();
    assert_eq!(store.pending_writes(), 0);
    readable(&store);
    store.settle();
    assert_eq!(
        store.get(b"k0").unwrap(),
        None,
        "fallback mode over: Redis answers"
    );
}

/// Values kept only for reading give way to new writes instead of filling the store.
#[test]
fn replayed_values_give_way_to_new_writes() {
    let clock = ManualClock::new(T0);
    let mut c = config(None);
    c.max_memory_size = 8 * 1024;
    let store = open(&c, &clock, "");
    let mut accepted = 0;
    while store
        .set(format!("a{accepted}").as_bytes(), &[1; 200], None)
        .is_ok()
    {
        accepted += 1;
    }
    rt().block_on(store.replay(Arc::new(ModelTarget::new())))
        .unwrap();
    for i in 0..accepted {
        store
            .set(format!("b{i}").as_bytes(), &[2; 200], None)
            .unwrap();
    }
}

/// A restored journal counts toward `max_memory_size`: a process restarted on a large journal
/// refuses writes that do not fit instead of growing past its bound.
#[test]
fn a_restored_journal_counts_toward_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.journal");
    let clock = ManualClock::new(T0);
    let mut c = config(Some(&path));
    c.max_memory_size = 16 * 1024;
    let mut accepted = 0;
    {
        let store = open(&c, &clock, "");
        while store
            .set(format!("k{accepted}").as_bytes(), &[1; 300], None)
            .is_ok()
        {
            accepted += 1;
        }
    }
    let restored = open(&c, &clock, "");
    assert_eq!(restored.pending_writes(), accepted);
    assert!(restored.memory().pinned > c.max_memory_size / 2);
    assert!(matches!(
        restored.set(b"more", &[1; 300], None),
        Err(FallbackError::Full { .. })
    ));
}

/// Fails on the first version, which recorded no server: a changed `REDIS_URL` replayed one
/// server's pending writes into another.
#[test]
fn a_journal_for_another_server_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.journal");
    let clock = ManualClock::new(T0);
    {
        let store = open(&config(Some(&path)), &clock, "old:6379/0");
        store.set(b"k", b"v", None).unwrap();
    }
    let err = MemoryStore::builder(&config(Some(&path)))
        .server("new:6379/0")
        .build()
        .expect_err("another server");
    assert!(
        matches!(&err, FallbackError::OtherServer { journal, configured, .. }
            if journal == "old:6379/0" && configured == "new:6379/0"),
        "{err}"
    );
    let mut allowed = config(Some(&path));
    allowed.replay_to_other_server = true;
    let store = open(&allowed, &clock, "new:6379/0");
    assert_eq!(store.pending_writes(), 1);
    let redis = Arc::new(ModelTarget::new());
    rt().block_on(store.replay(redis.clone())).unwrap();
    drop(store);
    // Drained: the journal belongs to whoever opens it next.
    assert_eq!(inspect_journal(&path).unwrap().server, "new:6379/0");
    open(&config(Some(&path)), &clock, "third:6379/0");
}

/// Fails on the first version: `close()` persisted the journal but the store went on taking
/// writes, which no one would replay.
#[test]
fn a_closed_store_refuses_writes() {
    let clock = ManualClock::new(T0);
    let store = open(&config(None), &clock, "");
    store.close().unwrap();
    assert!(matches!(
        store.set(b"k", b"v", None),
        Err(FallbackError::Closed)
    ));
}

/// Batches are bounded by bytes as well as entries, and a restored replay cuts the same ones.
#[test]
fn batches_are_bounded_by_bytes() {
    let clock = ManualClock::new(T0);
    let mut c = config(None);
    c.replay_batch_size = 100;
    c.max_memory_size = 256 * 1024 * 1024;
    let store = open(&c, &clock, "");
    let big = vec![3u8; 6 * 1024 * 1024];
    for i in 0..5 {
        store.set(format!("big{i}").as_bytes(), &big, None).unwrap();
    }
    let redis = Arc::new(ModelTarget::new());
    let report = rt().block_on(store.replay(redis.clone())).unwrap();
    assert_eq!(
        report.batches_applied, 3,
        "16 MiB batches: 2 + 2 + 1 values"
    );
    assert_eq!(redis.snapshot(T0).len(), 5);
}

/// Batch ids carry the seal and index the replay was cut into.
#[test]
fn a_marker_covers_its_batch_and_every_earlier_one() {
    let id = BatchId::new(7, 10, 2);
    assert!(id.covered_by(10, 2));
    assert!(id.covered_by(10, 5));
    assert!(id.covered_by(11, 0));
    assert!(!id.covered_by(10, 1));
    assert!(!id.covered_by(9, 9));
}

/// Found by review: a value read before an outage (a shadow copy), deleted during it and
/// replayed, came back in the next outage: the shadow copy outlived the delete.
#[test]
fn a_replayed_delete_leaves_no_stale_shadow_copy_behind() {
    let clock = ManualClock::new(T0);
    let mut c = config(None);
    c.shadow = true;
    let store = open(&c, &clock, "");
    store.observe(b"k", Some(b"old".to_vec()), None);
    store.delete(&[b"k".to_vec()]).unwrap();
    rt().block_on(store.replay(Arc::new(ModelTarget::new())))
        .unwrap();
    store.settle();
    assert_eq!(store.get(b"k").unwrap(), None);
}

/// Without a journal file, dead letters live only in memory: `close` says so instead of `Ok`.
#[test]
fn close_reports_dead_letters_that_cannot_be_kept() {
    let clock = ManualClock::new(T0);
    let store = open(&config(None), &clock, "");
    let redis = Arc::new(ModelTarget::new());
    redis.apply_direct(
        &Op::Set {
            key: b"s".to_vec(),
            value: b"text".to_vec(),
            expire_at: None,
        },
        T0,
    );
    store.incr_by(b"s", 1).unwrap();
    rt().block_on(store.replay(redis)).unwrap();
    assert!(matches!(
        store.close(),
        Err(FallbackError::DeadLettersAtClose { dead_letters: 1 })
    ));
}

/// Found by review: memory claimed to know a hash built from fields written during an outage
/// (an HGET of another field said nil, HGETALL gave part of it) and a counter counted from an
/// unknown base. Only what memory knows whole counts as known.
#[test]
fn memory_knows_only_what_it_knows_whole() {
    let clock = ManualClock::new(T0);
    let store = open(&config(None), &clock, "");
    store.hset(b"h", &[(b"f".to_vec(), b"v".to_vec())]).unwrap();
    assert!(!store.knows(b"h"), "Redis may hold other fields");
    store.incr_by(b"n", 1).unwrap();
    assert!(!store.knows(b"n"), "counted from an unknown base");
    store.set(b"s", b"v", None).unwrap();
    assert!(store.knows(b"s"));
    store.delete(&[b"d".to_vec()]).unwrap();
    store.incr_by(b"d", 2).unwrap();
    assert!(store.knows(b"d"), "deleted first: counted from a known 0");
    store
        .hset(b"d2", &[(b"f".to_vec(), b"v".to_vec())])
        .unwrap();
    assert!(!store.knows(b"d2"));
}
