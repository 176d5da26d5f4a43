//! Unit tests of the store's replay state machine against a damaged or interrupted journal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::*;
use crate::journal::Header;
use crate::{FallbackStoreExt, ModelTarget};

fn config(path: &std::path::Path, batch: u32) -> FallbackConfig {
    let mut c = FallbackConfig::default();
    c.journal_path = Some(path.to_owned());
    c.replay_batch_size = batch;
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn counter(model: &ModelTarget, key: &[u8]) -> Option<Vec<u8>> {
    match model.snapshot(0).get(key) {
        Some((crate::ModelValue::Str(v), _)) => Some(v.clone()),
        _ => None,
    }
}

/// A target that, on its first call, writes to the store (an entry after the seal) and
/// makes the store's next journal append fail, then applies the batch.
struct Meddler {
    store: std::sync::Weak<MemoryStore>,
    model: ModelTarget,
    calls: AtomicU8,
    fail_after: usize,
}

#[async_trait::async_trait]
impl SyncTarget for Meddler {
    async fn apply(&self, batch: &Batch<'_>) -> Result<BatchOutcome, crate::replay::SyncError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0
            && let Some(store) = self.store.upgrade()
        {
            store.set(b"late", b"1", None).unwrap();
            if let Some(f) = &mut store.lock().file {
                f.fail_next_after = Some(self.fail_after);
            }
        }
        self.model.apply(batch).await
    }
}

/// Found by review: the last batch applied, then the journal's `Done` failed to append; the
/// first version had already dropped the sealed entries from memory, sealed again over the
/// next writes, and after a restart that new seal's first batch re-sent every entry of the
/// old one, which its marker did not cover: every increment applied twice.
#[test]
fn a_seal_whose_done_never_reached_the_file_is_not_replayed_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let store = Arc::new(MemoryStore::new(&config(&path, 10)).unwrap());
    for _ in 0..3 {
        store.incr_by(b"c", 1).unwrap();
    }
    let target = Arc::new(Meddler {
        store: Arc::downgrade(&store),
        model: ModelTarget::new(),
        calls: AtomicU8::new(0),
        fail_after: 0,
    });
    assert!(rt().block_on(store.replay(target.clone())).is_err());
    assert_eq!(store.pending_writes(), 4, "nothing left memory");
    drop(store); // a crash
    let restored = MemoryStore::new(&config(&path, 10)).unwrap();
    let report = rt().block_on(restored.replay(target.clone())).unwrap();
    assert_eq!(report.pending, 0);
    assert_eq!(counter(&target.model, b"c").as_deref(), Some(&b"3"[..]));
    assert_eq!(counter(&target.model, b"late").as_deref(), Some(&b"1"[..]));
}

/// Found by review: a failed append of a batch's dead letters was logged and forgotten, so a
/// crash lost the refusals. Now the batch is sent again and its marker gives them back.
#[test]
fn dead_letters_whose_append_failed_come_back_from_the_marker() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let store = Arc::new(MemoryStore::new(&config(&path, 1)).unwrap());
    store.hset(b"s", &[(b"f".to_vec(), b"v".to_vec())]).unwrap();
    store.set(b"t", b"1", None).unwrap();
    let model = ModelTarget::new();
    model.apply_direct(
        &Op::Set {
            key: b"s".to_vec(),
            value: b"text".to_vec(),
            expire_at: None,
        },
        0,
    );
    let target = Arc::new(Meddler {
        store: Arc::downgrade(&store),
        model,
        calls: AtomicU8::new(0),
        fail_after: 3,
    });
    assert!(rt().block_on(store.replay(target.clone())).is_err());
    assert!(
        store.dead_letters().is_empty(),
        "not kept before the file has it"
    );
    drop(store);
    let restored = MemoryStore::new(&config(&path, 1)).unwrap();
    rt().block_on(restored.replay(target.clone())).unwrap();
    assert_eq!(restored.dead_letters().len(), 1);
    assert_eq!(restored.pending_writes(), 0);
}

/// A journal file where a seal was followed by another without its `Done` (written by a
/// version that could do so): the first seal counts as finished.
#[test]
fn a_second_seal_finishes_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let header = Header::fresh(0, String::new());
    let e = |seq| {
        Record::Entry(Entry::new(
            seq,
            1,
            Op::IncrBy {
                key: b"c".to_vec(),
                delta: 1,
            },
        ))
    };
    {
        let mut f = JournalFile::open(&path, false, None).unwrap().file;
        f.rewrite(
            &header,
            &[
                e(1),
                e(2),
                Record::Seal {
                    last: 2,
                    ends: vec![2],
                },
                e(3),
                Record::Seal {
                    last: 3,
                    ends: vec![3],
                },
            ],
        )
        .unwrap();
    }
    let store = MemoryStore::new(&config(&path, 10)).unwrap();
    assert_eq!(store.pending_writes(), 1);
}

/// Found by review: batches were cut by position, so an entry left out of a damaged
/// journal shifted every later batch and a restored replay skipped a write. Batches are
/// defined by sequence numbers now.
#[test]
fn a_restored_replay_resumes_by_sequence_number_not_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let header = Header::fresh(0, String::new());
    let set = |seq: u64| {
        Record::Entry(Entry::new(
            seq,
            1,
            Op::Set {
                key: format!("k{seq}").into_bytes(),
                value: b"v".to_vec(),
                expire_at: None,
            },
        ))
    };
    // Entry 3 was lost to damage; batch 0 (entries 1..=5) was applied.
    let mut records: Vec<Record> = (1..=10).filter(|s| *s != 3).map(set).collect();
    records.push(Record::Seal {
        last: 10,
        ends: vec![5, 10],
    });
    records.push(Record::Progress(1));
    {
        let mut f = JournalFile::open(&path, false, None).unwrap().file;
        f.rewrite(&header, &records).unwrap();
    }
    let store = MemoryStore::new(&config(&path, 5)).unwrap();
    let model = Arc::new(ModelTarget::new());
    rt().block_on(store.replay(model.clone())).unwrap();
    let keys: std::collections::BTreeSet<Vec<u8>> = model.snapshot(0).into_keys().collect();
    let expected: std::collections::BTreeSet<Vec<u8>> =
        (6..=10).map(|s| format!("k{s}").into_bytes()).collect();
    assert_eq!(keys, expected, "batch 1 is entries 6..=10");
}

/// A journal sealed with `fallback.journal_key_file`: restored by the next process with the
/// same key (pending writes intact, then replayed); another key or none is an error at start
/// that names the setting, and leaves the file as it was (nothing lost).
#[test]
fn a_sealed_journal_survives_a_restart_with_its_key_and_refuses_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let key_file = dir.path().join("journal.key");
    std::fs::write(&key_file, format!("{}\n", "5a".repeat(32))).unwrap();
    let mut c = config(&path, 10);
    c.journal_key_file = Some(key_file.clone());
    c.persist_on_shutdown = true;
    let store = MemoryStore::builder(&c).build().unwrap();
    store.set(b"session:1", b"alice-secret", None).unwrap();
    store.incr_by(b"visits", 3).unwrap();
    store.close().unwrap();
    drop(store);
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !bytes.windows(12).any(|w| w == b"alice-secret"),
        "values sealed"
    );
    assert!(!bytes.windows(9).any(|w| w == b"session:1"), "keys sealed");

    // Another key: refused at start, the file untouched.
    let other = dir.path().join("other.key");
    std::fs::write(&other, "00".repeat(32)).unwrap();
    let mut wrong = c.clone();
    wrong.journal_key_file = Some(other);
    let err = MemoryStore::builder(&wrong)
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another key"), "{err}");
    // No key at all: refused, naming the setting.
    let mut none = c.clone();
    none.journal_key_file = None;
    let err = MemoryStore::builder(&none)
        .build()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("journal_key_file"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing changed");

    // The right key: everything pending comes back and replays.
    let store = MemoryStore::builder(&c).build().unwrap();
    assert_eq!(store.pending_writes(), 2);
    let model = Arc::new(ModelTarget::new());
    rt().block_on(store.replay(Arc::clone(&model) as Arc<dyn SyncTarget>))
        .unwrap();
    assert_eq!(counter(&model, b"visits"), Some(b"3".to_vec()));
    assert_eq!(
        counter(&model, b"session:1"),
        Some(b"alice-secret".to_vec())
    );
}
