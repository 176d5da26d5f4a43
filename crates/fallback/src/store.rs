//! [`MemoryStore`]: the in-memory fallback with its journal.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use resilient_redis_config::FallbackConfig;

use crate::journal::{Cut, JournalFile};
use crate::op::{Entry, Op, Record};
use crate::replay::{Batch, BatchId, BatchOutcome, ReplayReport, SyncTarget};
use crate::{Clock, FallbackError, FallbackStore, SystemClock, Ttl};

/// Heap and table bytes one written value costs beyond its key and value bytes: the map slot
/// (key `Vec`, value struct) plus the hash table's control byte and spare capacity.
/// Checked against a counting allocator in `tests/memory.rs`.
pub(crate) const VALUE_OVERHEAD: u64 = 192;
/// Bytes one journal entry costs beyond the bytes it carries.
pub(crate) const ENTRY_OVERHEAD: u64 = 128;
/// Bytes one shadow copy costs in the cache beyond its key and value bytes.
pub(crate) const SHADOW_OVERHEAD: u64 = 256;

/// Bytes the store holds, and its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryUsage {
    /// Held by pending writes and the values they wrote: never evicted.
    pub pinned: u64,
    /// Held by shadow copies: evicted first.
    pub shadow: u64,
    /// `fallback.max_memory_size`.
    pub limit: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Local {
    Str(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    /// Deleted while journaling: hides any shadow copy.
    Gone,
}

#[derive(Clone, Debug)]
struct Written {
    value: Local,
    expire_at: Option<u64>,
    /// The last journal entry that wrote it: it may leave memory once that entry is replayed.
    last_seq: u64,
    bytes: u64,
}

#[derive(Clone, Debug)]
struct Shadow {
    value: Option<Vec<u8>>,
    expire_at: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Seal {
    last: u64,
    batch_size: u32,
    done: u32,
}

struct State {
    written: HashMap<Vec<u8>, Written>,
    journal: VecDeque<(Entry, u64)>,
    next_seq: u64,
    seal: Option<Seal>,
    pinned: u64,
    file: Option<JournalFile>,
    instance: u64,
}

/// The fallback store: written values and a journal in memory (bounded by bytes, never evicted,
/// a write that does not fit is refused), shadow copies in a moka cache (evicted first), and an
/// optional journal file appended before each write is acknowledged.
pub struct MemoryStore {
    state: Mutex<State>,
    shadow: Option<moka::sync::Cache<Vec<u8>, Arc<Shadow>>>,
    active: AtomicBool,
    replaying: tokio_free::Flag,
    clock: Arc<dyn Clock>,
    config: FallbackConfig,
    cut: Option<Cut>,
}

/// A flag that marks one replay in progress (no Tokio needed).
mod tokio_free {
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    pub(crate) struct Flag(AtomicBool);

    pub(crate) struct Held<'a>(&'a AtomicBool);

    impl Flag {
        pub(crate) fn try_hold(&self) -> Option<Held<'_>> {
            self.0
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .ok()
                .map(|_| Held(&self.0))
        }
    }

    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("fallback_mode", &self.is_fallback_mode())
            .field("pending", &self.pending_writes())
            .field("memory", &self.memory())
            .finish_non_exhaustive()
    }
}

fn entry_bytes(op: &Op) -> u64 {
    op.heap_bytes() + ENTRY_OVERHEAD
}

fn local_bytes(key: &[u8], value: &Local) -> u64 {
    let v = match value {
        Local::Str(s) => s.len(),
        Local::Hash(m) => m.iter().map(|(f, v)| f.len() + v.len() + 64).sum(),
        Local::Gone => 0,
    };
    (key.len() + v) as u64 + VALUE_OVERHEAD
}

impl MemoryStore {
    /// A store on the `[fallback]` settings and the system clock, restoring the journal file if
    /// one is configured and exists.
    ///
    /// # Errors
    /// [`FallbackError::Config`], [`FallbackError::Journal`] when the file cannot be opened.
    pub fn new(config: &FallbackConfig) -> Result<Self, FallbackError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// As [`MemoryStore::new`], reading time from `clock`.
    ///
    /// # Errors
    /// As [`MemoryStore::new`].
    pub fn with_clock(
        config: &FallbackConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, FallbackError> {
        let mut whole = resilient_redis_config::RedisConfig::default();
        whole.fallback = config.clone();
        whole.validate()?;
        let shadow = config.shadow.then(|| {
            moka::sync::Cache::builder()
                .max_capacity((config.max_memory_size / 2).max(1))
                .weigher(|k: &Vec<u8>, v: &Arc<Shadow>| {
                    let bytes = k.len() as u64
                        + v.value.as_ref().map_or(0, |x| x.len() as u64)
                        + SHADOW_OVERHEAD;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build()
        });
        let mut state = State {
            written: HashMap::new(),
            journal: VecDeque::new(),
            next_seq: 1,
            seal: None,
            pinned: 0,
            file: None,
            instance: fastrand::u64(..),
        };
        let mut cut = None;
        if let Some(path) = &config.journal_path {
            let opened = JournalFile::open(path, config.journal_fsync).map_err(|source| {
                FallbackError::Journal {
                    path: path.clone(),
                    source,
                }
            })?;
            state.instance = opened.instance;
            cut = opened.cut;
            if let Some(c) = &cut {
                tracing::warn!(
                    offset = c.offset,
                    dropped = c.dropped,
                    truncated = c.truncated,
                    "journal file ended in a damaged record; kept the records before it"
                );
            }
            for record in opened.records {
                match record {
                    Record::Entry(e) => {
                        state.next_seq = state.next_seq.max(e.seq + 1);
                        apply_local(&mut state, &e);
                        let b = entry_bytes(&e.op);
                        state.pinned += b;
                        state.journal.push_back((e, b));
                    }
                    Record::Seal { last, batch_size } => {
                        state.seal = Some(Seal {
                            last,
                            batch_size,
                            done: 0,
                        })
                    }
                    Record::Progress(done) => {
                        if let Some(seal) = &mut state.seal {
                            seal.done = done;
                        }
                    }
                    Record::Done => finish_seal(&mut state, None),
                }
            }
            state.file = Some(opened.file);
        }
        Ok(Self {
            state: Mutex::new(state),
            shadow,
            active: AtomicBool::new(false),
            replaying: tokio_free::Flag::default(),
            clock,
            config: config.clone(),
            cut,
        })
    }

    /// What restoring the journal file found at its end: `None` when it was whole.
    #[must_use]
    pub fn restore_cut(&self) -> Option<&Cut> {
        self.cut.as_ref()
    }

    /// The journal's instance id (in every batch id of its replays).
    #[must_use]
    pub fn instance(&self) -> u64 {
        self.lock().instance
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes the shadow copies hold, after the cache has settled its pending evictions.
    fn shadow_bytes(&self) -> u64 {
        self.shadow.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.weighted_size()
        })
    }

    fn deadline(&self, ttl: Duration) -> u64 {
        self.clock
            .now_ms()
            .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// The value the store holds for `key` now (written first, then shadow).
    fn read(&self, state: &State, key: &[u8]) -> (Option<Local>, Option<u64>) {
        let now = self.clock.now_ms();
        if let Some(w) = state.written.get(key) {
            if w.expire_at.is_some_and(|d| d <= now) || w.value == Local::Gone {
                return (None, None);
            }
            return (Some(w.value.clone()), w.expire_at);
        }
        if let Some(s) = self.shadow.as_ref().and_then(|c| c.get(key))
            && s.expire_at.is_none_or(|d| d > now)
        {
            return (s.value.clone().map(Local::Str), s.expire_at);
        }
        (None, None)
    }

    /// Journals `ops` (in order) and applies them locally, or refuses them all.
    fn write(&self, ops: Vec<Op>) -> Result<(), FallbackError> {
        self.write_with(ops, |_| Ok(()))
    }

    /// Journals `ops` and applies them locally, all under one lock: `inspect` sees the first
    /// key's value before the write, may refuse it (a wrong type, say), and gives the answer, so
    /// no other writer can slip between what the caller is told and what is journaled.
    /// A value known only as a shadow copy is carried into the written values first, so that
    /// INCRBY and PEXPIREAT apply to it locally.
    fn write_with<T>(
        &self,
        ops: Vec<Op>,
        inspect: impl FnOnce(Option<&Local>) -> Result<T, FallbackError>,
    ) -> Result<T, FallbackError> {
        let mut state = self.lock();
        let first_key = ops
            .first()
            .and_then(|op| op.keys().first().map(|k| k.to_vec()));
        let answer = inspect(
            first_key
                .as_ref()
                .and_then(|k| self.read(&state, k).0)
                .as_ref(),
        )?;
        let at = self.clock.now_ms();
        let entries: Vec<Entry> = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| Entry {
                seq: state.next_seq + i as u64,
                at,
                op,
            })
            .collect();
        // The entry, and the written value it leaves (its bytes again, plus a map slot per key).
        let needed: u64 = entries
            .iter()
            .map(|e| {
                entry_bytes(&e.op)
                    + e.op.heap_bytes()
                    + e.op
                        .keys()
                        .iter()
                        .map(|k| k.len() as u64 + VALUE_OVERHEAD)
                        .sum::<u64>()
            })
            .sum();
        let limit = self.config.max_memory_size;
        // The shadow cache holds at most half the bound, so below half nothing needs checking.
        if state.pinned + needed > limit / 2 && state.pinned + needed + self.shadow_bytes() > limit
        {
            // Shadow copies give way to writes.
            if let Some(shadow) = &self.shadow {
                shadow.invalidate_all();
                shadow.run_pending_tasks();
            }
            if state.pinned + needed + self.shadow_bytes() > limit {
                return Err(FallbackError::Full {
                    needed,
                    used: state.pinned,
                    limit,
                });
            }
        }
        if let Some(file) = &mut state.file {
            let records: Vec<Record> = entries.iter().cloned().map(Record::Entry).collect();
            file.append(&records)
                .map_err(|source| FallbackError::Journal {
                    path: file.path().to_owned(),
                    source,
                })?;
        }
        state.next_seq += entries.len() as u64;
        for e in entries {
            for key in e.op.keys() {
                self.carry_shadow(&mut state, key, e.seq);
            }
            apply_local(&mut state, &e);
            let b = entry_bytes(&e.op);
            state.pinned += b;
            state.journal.push_back((e, b));
        }
        Ok(answer)
    }

    /// A key written now that the store knows only as a live shadow copy: its value becomes a
    /// written value (so local INCRBY/PEXPIREAT start from it); Redis still gets the op alone.
    fn carry_shadow(&self, state: &mut State, key: &[u8], seq: u64) {
        if state.written.contains_key(key) {
            return;
        }
        let now = self.clock.now_ms();
        let Some(copy) = self.shadow.as_ref().and_then(|c| c.get(key)) else {
            return;
        };
        let (Some(value), true) = (&copy.value, copy.expire_at.is_none_or(|d| d > now)) else {
            return;
        };
        let local = Local::Str(value.clone());
        let bytes = local_bytes(key, &local);
        state.pinned += bytes;
        state.written.insert(
            key.to_vec(),
            Written {
                value: local,
                expire_at: copy.expire_at,
                last_seq: seq,
                bytes,
            },
        );
    }

    /// Moves the replayed sealed entries out; their written values become shadow copies.
    fn complete_seal(&self, state: &mut State) -> Result<(), FallbackError> {
        let now = self.clock.now_ms();
        let shadow = self.shadow.as_ref();
        finish_seal(
            state,
            Some(&mut |key: &[u8], w: &Written| {
                if let (Some(cache), Local::Str(v)) = (shadow, &w.value)
                    && w.expire_at.is_none_or(|d| d > now)
                {
                    cache.insert(
                        key.to_vec(),
                        Arc::new(Shadow {
                            value: Some(v.clone()),
                            expire_at: w.expire_at,
                        }),
                    );
                }
            }),
        );
        let instance = state.instance;
        let drained = state.journal.is_empty();
        if let Some(file) = &mut state.file {
            let path = file.path().to_owned();
            let result = if drained {
                file.reset(instance)
            } else {
                file.append(&[Record::Done])
            };
            result.map_err(|source| FallbackError::Journal { path, source })?;
        }
        Ok(())
    }
}

/// What to do with a written value that leaves memory after its replay.
type Keep<'a> = dyn FnMut(&[u8], &Written) + 'a;

/// Drops the sealed entries (all replayed) and the written values only they wrote.
fn finish_seal(state: &mut State, mut keep: Option<&mut Keep<'_>>) {
    let Some(seal) = state.seal.take() else {
        return;
    };
    while state
        .journal
        .front()
        .is_some_and(|(e, _)| e.seq <= seal.last)
    {
        if let Some((_, b)) = state.journal.pop_front() {
            state.pinned = state.pinned.saturating_sub(b);
        }
    }
    let done: Vec<Vec<u8>> = state
        .written
        .iter()
        .filter(|(_, w)| w.last_seq <= seal.last)
        .map(|(k, _)| k.clone())
        .collect();
    for key in done {
        if let Some(w) = state.written.remove(&key) {
            state.pinned = state.pinned.saturating_sub(w.bytes);
            if let Some(f) = keep.as_deref_mut() {
                f(&key, &w);
            }
        }
    }
}

/// Applies a journaled write to the written values (no journaling, no checks).
fn apply_local(state: &mut State, e: &Entry) {
    let put = |state: &mut State, key: &[u8], value: Local, expire_at: Option<u64>| {
        let bytes = local_bytes(key, &value);
        if let Some(old) = state.written.insert(
            key.to_vec(),
            Written {
                value,
                expire_at,
                last_seq: e.seq,
                bytes,
            },
        ) {
            state.pinned = state.pinned.saturating_sub(old.bytes);
        }
        state.pinned += bytes;
    };
    let current = |state: &State, key: &[u8]| -> (Local, Option<u64>) {
        match state.written.get(key) {
            Some(w) if w.expire_at.is_none_or(|d| d > e.at) => (w.value.clone(), w.expire_at),
            _ => (Local::Gone, None),
        }
    };
    match &e.op {
        Op::Set {
            key,
            value,
            expire_at,
        } => put(state, key, Local::Str(value.clone()), *expire_at),
        Op::Del { keys } => {
            for k in keys {
                put(state, k, Local::Gone, None);
            }
        }
        Op::ExpireAt { key, at } => {
            let (value, _) = current(state, key);
            if value != Local::Gone {
                put(state, key, value, Some(*at));
            }
        }
        Op::IncrBy { key, delta } => {
            let (value, exp) = current(state, key);
            let base = match &value {
                Local::Str(s) => std::str::from_utf8(s)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .unwrap_or(0),
                _ => 0,
            };
            put(
                state,
                key,
                Local::Str(base.saturating_add(*delta).to_string().into_bytes()),
                exp,
            );
        }
        Op::HSet { key, fields } => {
            let (value, exp) = current(state, key);
            let mut map = match value {
                Local::Hash(m) => m,
                _ => BTreeMap::new(),
            };
            for (f, v) in fields {
                map.insert(f.clone(), v.clone());
            }
            put(state, key, Local::Hash(map), exp);
        }
        Op::HDel { key, fields } => {
            let (value, exp) = current(state, key);
            if let Local::Hash(mut map) = value {
                for f in fields {
                    map.remove(f);
                }
                let value = if map.is_empty() {
                    Local::Gone
                } else {
                    Local::Hash(map)
                };
                put(state, key, value, exp);
            }
        }
    }
}

#[async_trait::async_trait]
impl FallbackStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FallbackError> {
        match self.read(&self.lock(), key).0 {
            None => Ok(None),
            Some(Local::Str(v)) => Ok(Some(v)),
            Some(_) => Err(FallbackError::WrongType),
        }
    }

    fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<(), FallbackError> {
        let expire_at = ttl.map(|t| self.deadline(t));
        self.write(vec![Op::Set {
            key: key.to_vec(),
            value: value.to_vec(),
            expire_at,
        }])
    }

    fn delete(&self, keys: &[Vec<u8>]) -> Result<u64, FallbackError> {
        let known = {
            let state = self.lock();
            keys.iter()
                .filter(|k| self.read(&state, k).0.is_some())
                .count() as u64
        };
        self.write(vec![Op::Del {
            keys: keys.to_vec(),
        }])?;
        Ok(known)
    }

    fn exists(&self, key: &[u8]) -> Result<bool, FallbackError> {
        Ok(self.read(&self.lock(), key).0.is_some())
    }

    fn expire(&self, key: &[u8], ttl: Duration) -> Result<bool, FallbackError> {
        let op = Op::ExpireAt {
            key: key.to_vec(),
            at: self.deadline(ttl),
        };
        self.write_with(vec![op], |before| Ok(before.is_some()))
    }

    fn ttl(&self, key: &[u8]) -> Result<Ttl, FallbackError> {
        let now = self.clock.now_ms();
        Ok(match self.read(&self.lock(), key) {
            (None, _) => Ttl::Missing,
            (Some(_), None) => Ttl::Persistent,
            (Some(_), Some(d)) => Ttl::ExpiresIn(Duration::from_millis(d.saturating_sub(now))),
        })
    }

    fn incr_by(&self, key: &[u8], delta: i64) -> Result<i64, FallbackError> {
        let op = Op::IncrBy {
            key: key.to_vec(),
            delta,
        };
        self.write_with(vec![op], |before| {
            let base = match before {
                None => 0,
                Some(Local::Str(s)) => std::str::from_utf8(s)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                    .ok_or(FallbackError::NotAnInteger)?,
                Some(_) => return Err(FallbackError::WrongType),
            };
            base.checked_add(delta).ok_or(FallbackError::NotAnInteger)
        })
    }

    fn hget(&self, key: &[u8], field: &[u8]) -> Result<Option<Vec<u8>>, FallbackError> {
        match self.read(&self.lock(), key).0 {
            None => Ok(None),
            Some(Local::Hash(m)) => Ok(m.get(field).cloned()),
            Some(_) => Err(FallbackError::WrongType),
        }
    }

    fn hset(&self, key: &[u8], fields: &[(Vec<u8>, Vec<u8>)]) -> Result<u64, FallbackError> {
        let op = Op::HSet {
            key: key.to_vec(),
            fields: fields.to_vec(),
        };
        self.write_with(vec![op], |before| match before {
            None => Ok(fields.len() as u64),
            Some(Local::Hash(m)) => {
                Ok(fields.iter().filter(|(f, _)| !m.contains_key(f)).count() as u64)
            }
            Some(_) => Err(FallbackError::WrongType),
        })
    }

    fn hdel(&self, key: &[u8], fields: &[Vec<u8>]) -> Result<u64, FallbackError> {
        let op = Op::HDel {
            key: key.to_vec(),
            fields: fields.to_vec(),
        };
        self.write_with(vec![op], |before| match before {
            None => Ok(0),
            Some(Local::Hash(m)) => Ok(fields.iter().filter(|f| m.contains_key(*f)).count() as u64),
            Some(_) => Err(FallbackError::WrongType),
        })
    }

    fn hgetall(&self, key: &[u8]) -> Result<crate::Fields, FallbackError> {
        match self.read(&self.lock(), key).0 {
            None => Ok(Vec::new()),
            Some(Local::Hash(m)) => Ok(m.into_iter().collect()),
            Some(_) => Err(FallbackError::WrongType),
        }
    }

    fn mget(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, FallbackError> {
        let state = self.lock();
        Ok(keys
            .iter()
            .map(|k| match self.read(&state, k).0 {
                Some(Local::Str(v)) => Some(v),
                _ => None,
            })
            .collect())
    }

    fn mset(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), FallbackError> {
        self.write(
            pairs
                .iter()
                .map(|(k, v)| Op::Set {
                    key: k.clone(),
                    value: v.clone(),
                    expire_at: None,
                })
                .collect(),
        )
    }

    fn clear(&self) {
        if let Some(shadow) = &self.shadow {
            shadow.invalidate_all();
            shadow.run_pending_tasks();
        }
    }

    fn is_fallback_mode(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    fn activate(&self) {
        if !self.active.swap(true, Ordering::AcqRel) {
            tracing::warn!("fallback mode on: serving from memory, journaling writes");
        }
    }

    fn deactivate(&self) {
        if self.active.swap(false, Ordering::AcqRel) {
            tracing::info!("fallback mode off");
        }
    }

    fn pending_writes(&self) -> u64 {
        self.lock().journal.len() as u64
    }

    fn memory(&self) -> MemoryUsage {
        MemoryUsage {
            pinned: self.lock().pinned,
            shadow: self.shadow_bytes(),
            limit: self.config.max_memory_size,
        }
    }

    fn observe(&self, key: &[u8], value: Option<Vec<u8>>, ttl: Option<Duration>) {
        let Some(shadow) = &self.shadow else { return };
        let expire_at = ttl.map(|t| self.deadline(t));
        shadow.insert(key.to_vec(), Arc::new(Shadow { value, expire_at }));
    }

    async fn replay(&self, target: Arc<dyn SyncTarget>) -> Result<ReplayReport, FallbackError> {
        let mut report = ReplayReport::default();
        let Some(_one_at_a_time) = self.replaying.try_hold() else {
            report.pending = self.pending_writes();
            return Ok(report);
        };
        loop {
            // Under the lock: seal if needed and copy the next batch out.
            let (id, last, entries) = {
                let mut state = self.lock();
                if state.seal.is_none() {
                    let Some(last) = state.journal.back().map(|(e, _)| e.seq) else {
                        break;
                    };
                    let seal = Seal {
                        last,
                        batch_size: self.config.replay_batch_size,
                        done: 0,
                    };
                    if let Some(file) = &mut state.file {
                        let path = file.path().to_owned();
                        file.append(&[Record::Seal {
                            last,
                            batch_size: seal.batch_size,
                        }])
                        .map_err(|source| FallbackError::Journal { path, source })?;
                    }
                    state.seal = Some(seal);
                }
                let seal = state.seal.unwrap_or(Seal {
                    last: 0,
                    batch_size: 1,
                    done: 0,
                });
                let sealed = state
                    .journal
                    .iter()
                    .take_while(|(e, _)| e.seq <= seal.last)
                    .count();
                let size = seal.batch_size.max(1) as usize;
                let batches = sealed.div_ceil(size);
                let start = seal.done as usize * size;
                if start >= sealed {
                    self.complete_seal(&mut state)?;
                    continue;
                }
                let end = (start + size).min(sealed);
                let entries: Vec<Entry> = state
                    .journal
                    .range(start..end)
                    .map(|(e, _)| e.clone())
                    .collect();
                let id = BatchId {
                    instance: state.instance,
                    seal: seal.last,
                    index: seal.done,
                };
                (id, seal.done as usize + 1 == batches, entries)
            };
            let batch = Batch {
                id,
                now: self.clock.now_ms(),
                last,
                entries: &entries,
            };
            let outcome = target.apply(&batch).await?;
            match outcome {
                BatchOutcome::Applied { rejected } => {
                    report.batches_applied += 1;
                    report.entries_applied += entries.len() as u64;
                    report.rejected += u64::from(rejected);
                    if rejected > 0 {
                        tracing::warn!(batch = %id, rejected, "replay: the target refused some writes");
                    }
                }
                BatchOutcome::AlreadyApplied => report.batches_skipped += 1,
            }
            let mut state = self.lock();
            let done = if let Some(seal) = &mut state.seal {
                seal.done += 1;
                seal.done
            } else {
                0
            };
            if last {
                self.complete_seal(&mut state)?;
            } else if let Some(file) = &mut state.file {
                let path = file.path().to_owned();
                file.append(&[Record::Progress(done)])
                    .map_err(|source| FallbackError::Journal { path, source })?;
            }
        }
        report.pending = self.pending_writes();
        Ok(report)
    }

    fn close(&self) -> Result<(), FallbackError> {
        let mut state = self.lock();
        let pending = state.journal.len() as u64;
        let instance = state.instance;
        let records: Vec<Record> = state
            .journal
            .iter()
            .map(|(e, _)| Record::Entry(e.clone()))
            .collect();
        let replay_in_progress = state.seal.is_some();
        match &mut state.file {
            Some(file) if self.config.persist_on_shutdown => {
                let path = file.path().to_owned();
                // Compact to exactly what is pending; a replay in progress starts over cleanly
                // (its batch ids change with the new seal, which is safe: sealed batches that
                // were applied are gone from the journal only once the whole seal finished).
                let result = if replay_in_progress {
                    file.sync()
                } else {
                    file.rewrite(instance, &records)
                };
                result.map_err(|source| FallbackError::Journal { path, source })
            }
            Some(file) => {
                let path = file.path().to_owned();
                file.sync()
                    .map_err(|source| FallbackError::Journal { path, source })
            }
            None if pending > 0 => Err(FallbackError::PendingAtClose { pending }),
            None => Ok(()),
        }
    }
}
