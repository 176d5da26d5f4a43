//! [`MemoryStore`]: the in-memory fallback with its journal.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use resilient_redis_config::FallbackConfig;

use crate::journal::{Contents, Cut, Header, JournalFile, is_locked};
use crate::op::{DeadLetter, Entry, Op, Record};
use crate::replay::{Batch, BatchId, BatchOutcome, Rejection, ReplayReport, SyncTarget};
use crate::{
    Answer, Clock, FallbackError, FallbackStore, Journal, ReadCmd, SystemClock, Ttl, WriteCmd,
};

/// Largest key, field or value Redis accepts by default (`proto-max-bulk-len`, 512 MiB): a
/// longer one is refused at the call, since Redis would refuse its replay.
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// Latest deadline Redis accepts, Unix milliseconds: a TTL that ends later is refused at the call.
pub const MAX_DEADLINE_MS: u64 = i64::MAX as u64;

/// Most argument bytes in one replay batch (a batch holds at least one entry): keeps each
/// script call far below Redis's query buffer limit.
pub const REPLAY_BATCH_BYTES: u64 = 16 * 1024 * 1024;

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
    /// Held by shadow copies and by values already replayed (readable until fallback mode
    /// ends): evicted first.
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
    /// The last journal entry that wrote it.
    last_seq: u64,
    bytes: u64,
    /// That entry has been replayed: the value stays readable until fallback mode ends (or
    /// its room is needed), but it is no longer pinned.
    settled: bool,
    /// Memory knows the whole value (it was set, deleted, or written over a value it knew); a
    /// hash built from fields written during an outage, or a counter counted from an unknown
    /// base, is not: Redis may hold more.
    complete: bool,
}

#[derive(Clone, Debug)]
struct Shadow {
    value: Option<Vec<u8>>,
    expire_at: Option<u64>,
}

#[derive(Clone, Debug)]
struct Seal {
    last: u64,
    /// The sequence number each batch ends at (inclusive), fixed when the replay began.
    ends: Vec<u64>,
    /// Batches applied.
    done: u32,
}

struct State {
    written: HashMap<Vec<u8>, Written>,
    journal: VecDeque<(Entry, u64)>,
    next_seq: u64,
    seal: Option<Seal>,
    /// Pending entries, the written values they leave, and dead letters: never evicted.
    pinned: u64,
    /// Written values already replayed: evictable.
    settled: u64,
    file: Option<JournalFile>,
    header: Header,
    dead: Vec<DeadLetter>,
    closed: bool,
}

/// The fallback store: written values and a journal in memory (bounded by bytes, never evicted,
/// a write that does not fit is refused), shadow copies in a moka cache (evicted first), and an
/// optional journal file appended before each write is acknowledged.
pub struct MemoryStore {
    state: Mutex<State>,
    shadow: Option<moka::sync::Cache<Vec<u8>, Arc<Shadow>>>,
    /// Writes arrived since the last [`FallbackStore::settle`]: values already replayed stay
    /// readable, since the manager may still be answering from memory.
    serving: AtomicBool,
    replaying: tokio_free::Flag,
    clock: Arc<dyn Clock>,
    config: FallbackConfig,
    cut: Option<Cut>,
}

/// Builds a [`MemoryStore`]: its clock and the server its journal replays into.
#[must_use]
pub struct MemoryStoreBuilder {
    config: FallbackConfig,
    clock: Arc<dyn Clock>,
    server: String,
}

impl MemoryStoreBuilder {
    /// Reads time from `clock` (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The server the journal replays into, as `host:port/db` (never a password). It is
    /// written in the journal file's header; a journal with pending writes for another server
    /// is refused at build unless `fallback.replay_to_other_server` is set.
    pub fn server(mut self, server: impl Into<String>) -> Self {
        self.server = server.into();
        self
    }

    /// Opens the store, restoring the journal file if one is configured and exists.
    ///
    /// # Errors
    /// [`FallbackError::Config`]; [`FallbackError::JournalInUse`] when another store holds the
    /// journal file; [`FallbackError::OtherServer`]; [`FallbackError::Journal`] when the file
    /// cannot be opened, read or repaired.
    pub fn build(self) -> Result<MemoryStore, FallbackError> {
        MemoryStore::open(&self.config, self.clock, self.server)
    }
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
            .field("pending", &self.pending_writes())
            .field("memory", &self.memory())
            .finish_non_exhaustive()
    }
}

fn entry_bytes(op: &Op) -> u64 {
    op.heap_bytes() + ENTRY_OVERHEAD
}

fn dead_bytes(d: &DeadLetter) -> u64 {
    entry_bytes(&d.entry.op) + d.reason.len() as u64
}

fn local_bytes(key: &[u8], value: &Local) -> u64 {
    let v = match value {
        Local::Str(s) => s.len(),
        Local::Hash(m) => m.iter().map(|(f, v)| f.len() + v.len() + 64).sum(),
        Local::Gone => 0,
    };
    (key.len() + v) as u64 + VALUE_OVERHEAD
}

fn invalid(reason: impl Into<String>) -> FallbackError {
    FallbackError::InvalidWrite {
        reason: reason.into(),
    }
}

/// Refuses what Redis would refuse when the write is replayed, so that no acknowledged write
/// can fail its replay for its shape.
fn validate(op: &Op) -> Result<(), FallbackError> {
    let bulk = |what: &str, b: &[u8]| {
        if b.len() > MAX_BULK_LEN {
            Err(invalid(format!(
                "{what} of {} bytes is longer than Redis accepts ({MAX_BULK_LEN} bytes)",
                b.len()
            )))
        } else {
            Ok(())
        }
    };
    let deadline = |at: u64| {
        if at > MAX_DEADLINE_MS {
            Err(invalid(format!(
                "ttl ends at Unix time {at} ms, past the latest Redis accepts ({MAX_DEADLINE_MS} ms)"
            )))
        } else {
            Ok(())
        }
    };
    match op {
        Op::Set {
            key,
            value,
            expire_at,
        } => {
            bulk("key", key)?;
            bulk("value", value)?;
            expire_at.map_or(Ok(()), deadline)
        }
        Op::Del { keys } => {
            if keys.is_empty() {
                return Err(invalid("keys: DEL needs at least one key"));
            }
            keys.iter().try_for_each(|k| bulk("key", k))
        }
        Op::ExpireAt { key, at } => {
            bulk("key", key)?;
            deadline(*at)
        }
        Op::IncrBy { key, .. } => bulk("key", key),
        Op::HSet { key, fields } => {
            bulk("key", key)?;
            if fields.is_empty() {
                return Err(invalid("fields: HSET needs at least one field"));
            }
            fields
                .iter()
                .try_for_each(|(f, v)| bulk("field", f).and_then(|()| bulk("value", v)))
        }
        Op::HDel { key, fields } => {
            bulk("key", key)?;
            if fields.is_empty() {
                return Err(invalid("fields: HDEL needs at least one field"));
            }
            fields.iter().try_for_each(|f| bulk("field", f))
        }
    }
}

/// What one entry weighs in a replay batch (its argument bytes).
fn batch_weight(op: &Op) -> u64 {
    op.heap_bytes() + 64
}

/// Cuts the sealed entries into batches: at most `size` entries and `bytes` bytes each (one
/// entry at least). Deterministic, so a restored replay cuts the same batches.
fn cut_batches(entries: impl Iterator<Item = u64>, size: u32, bytes: u64) -> Vec<usize> {
    let size = size.max(1) as usize;
    let mut bounds = Vec::new();
    let (mut count, mut weight, mut at) = (0usize, 0u64, 0usize);
    for w in entries {
        if count > 0 && (count == size || weight.saturating_add(w) > bytes) {
            bounds.push(at);
            count = 0;
            weight = 0;
        }
        count += 1;
        weight = weight.saturating_add(w);
        at += 1;
    }
    if count > 0 {
        bounds.push(at);
    }
    bounds
}

/// The batches of a new seal over `entries` (the sealed ones, in order): the sequence number
/// each batch ends at.
fn seal_ends<'a>(entries: impl Iterator<Item = &'a Entry> + Clone, size: u32) -> Vec<u64> {
    let seqs: Vec<u64> = entries.clone().map(|e| e.seq).collect();
    cut_batches(
        entries.map(|e| batch_weight(&e.op)),
        size,
        REPLAY_BATCH_BYTES,
    )
    .into_iter()
    .map(|end| seqs[end - 1])
    .collect()
}

fn journal_error(path: &std::path::Path, source: std::io::Error) -> FallbackError {
    FallbackError::Journal {
        path: path.to_owned(),
        source,
    }
}

impl MemoryStore {
    /// A store on the `[fallback]` settings and the system clock, restoring the journal file if
    /// one is configured and exists.
    ///
    /// # Errors
    /// As [`MemoryStoreBuilder::build`].
    pub fn new(config: &FallbackConfig) -> Result<Self, FallbackError> {
        Self::builder(config).build()
    }

    /// As [`MemoryStore::new`], reading time from `clock`.
    ///
    /// # Errors
    /// As [`MemoryStoreBuilder::build`].
    pub fn with_clock(
        config: &FallbackConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, FallbackError> {
        Self::builder(config).clock(clock).build()
    }

    /// A builder on the `[fallback]` settings.
    pub fn builder(config: &FallbackConfig) -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            config: config.clone(),
            clock: Arc::new(SystemClock),
            server: String::new(),
        }
    }

    fn open(
        config: &FallbackConfig,
        clock: Arc<dyn Clock>,
        server: String,
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
            settled: 0,
            file: None,
            header: Header::fresh(0, server.clone()),
            dead: Vec::new(),
            closed: false,
        };
        let mut cut = None;
        if let Some(path) = &config.journal_path {
            let opened = JournalFile::open(path, config.journal_fsync).map_err(|source| {
                if is_locked(&source) {
                    FallbackError::JournalInUse {
                        path: path.clone(),
                        reason: source.to_string(),
                    }
                } else {
                    journal_error(path, source)
                }
            })?;
            let mut file = opened.file;
            match opened.contents {
                None => {
                    file.rewrite(&state.header, &[])
                        .map_err(|e| journal_error(path, e))?;
                }
                Some(contents) => {
                    cut = contents.cut.clone();
                    restore(&mut state, contents, &server, config, path)?;
                    let records = records_of(&state);
                    file.rewrite(&state.header, &records)
                        .map_err(|e| journal_error(path, e))?;
                }
            }
            if let Some(c) = &cut {
                tracing::warn!(
                    offset = c.offset,
                    dropped = c.dropped,
                    truncated = c.truncated,
                    "journal file held damaged bytes; kept every whole record around them"
                );
            }
            state.file = Some(file);
        }
        let store = Self {
            state: Mutex::new(state),
            shadow,
            serving: AtomicBool::new(false),
            replaying: tokio_free::Flag::default(),
            clock,
            config: config.clone(),
            cut,
        };
        // Values whose writes were replayed before the restart are not needed.
        store.release_settled(&mut store.lock());
        Ok(store)
    }

    /// What restoring the journal file found damaged: `None` when it was whole.
    #[must_use]
    pub fn restore_cut(&self) -> Option<&Cut> {
        self.cut.as_ref()
    }

    /// The journal's current instance id (in every batch id of its replays; renewed each time
    /// the journal is drained).
    #[must_use]
    pub fn instance(&self) -> u128 {
        self.lock().header.instance
    }

    /// Writes Redis refused at replay: kept (in the journal file too), never dropped silently.
    #[must_use]
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead.clone()
    }

    /// Forgets the dead letters (after an operator has dealt with them); returns how many.
    ///
    /// # Errors
    /// [`FallbackError::Journal`] when the journal file cannot be rewritten without them.
    pub fn discard_dead_letters(&self) -> Result<usize, FallbackError> {
        let mut state = self.lock();
        let n = state.dead.len();
        let freed: u64 = state.dead.iter().map(dead_bytes).sum();
        let kept = std::mem::take(&mut state.dead);
        if state.file.is_some() {
            let records = records_of(&state);
            let header = state.header.clone();
            if let Some(file) = &mut state.file
                && let Err(e) = file.rewrite(&header, &records)
            {
                let path = file.path().to_owned();
                state.dead = kept;
                return Err(journal_error(&path, e));
            }
        }
        state.pinned = state.pinned.saturating_sub(freed);
        Ok(n)
    }

    /// Drops every shadow copy. Pending writes and what they wrote are kept: nothing
    /// acknowledged is dropped.
    pub fn clear(&self) {
        if let Some(shadow) = &self.shadow {
            shadow.invalidate_all();
            shadow.run_pending_tasks();
        }
    }

    /// Bytes held and the bound.
    #[must_use]
    pub fn memory(&self) -> MemoryUsage {
        let (pinned, settled) = {
            let state = self.lock();
            (state.pinned, state.settled)
        };
        MemoryUsage {
            pinned,
            shadow: self.shadow_bytes() + settled,
            limit: self.config.max_memory_size,
        }
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

    /// The deadline `ttl` from now, or a refusal when Redis would not accept it.
    fn deadline(&self, ttl: Duration) -> Result<u64, FallbackError> {
        let at = u64::try_from(ttl.as_millis())
            .ok()
            .and_then(|ms| self.clock.now_ms().checked_add(ms))
            .filter(|at| *at <= MAX_DEADLINE_MS);
        at.ok_or_else(|| {
            invalid(format!(
                "ttl of {} ms ends past the latest deadline Redis accepts (Unix time {MAX_DEADLINE_MS} ms)",
                ttl.as_millis()
            ))
        })
    }

    /// The value the store holds for `key` now (written first, then shadow).
    fn read_key(&self, state: &State, key: &[u8]) -> (Option<Local>, Option<u64>) {
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
    fn journal_ops(&self, ops: Vec<Op>) -> Result<(), FallbackError> {
        self.write_with(ops, |_| Ok(()))
    }

    /// Journals `ops` and applies them locally, all under one lock: `inspect` reads values as
    /// they are before the write, may refuse it (a wrong type, say), and gives the answer, so
    /// no other writer can slip between what the caller is told and what is journaled.
    /// A value known only as a shadow copy is carried into the written values first, so that
    /// INCRBY and PEXPIREAT apply to it locally.
    fn write_with<T>(
        &self,
        ops: Vec<Op>,
        inspect: impl FnOnce(&dyn Fn(&[u8]) -> Option<Local>) -> Result<T, FallbackError>,
    ) -> Result<T, FallbackError> {
        ops.iter().try_for_each(validate)?;
        let mut state = self.lock();
        if state.closed {
            return Err(FallbackError::Closed);
        }
        let answer = {
            let st = &*state;
            inspect(&|k: &[u8]| self.read_key(st, k).0)?
        };
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
        if state.pinned + needed > limit / 2
            && state.pinned + state.settled + needed + self.shadow_bytes() > limit
        {
            // Shadow copies and values already replayed give way to writes.
            if let Some(shadow) = &self.shadow {
                shadow.invalidate_all();
                shadow.run_pending_tasks();
            }
            evict_settled(&mut state, self.shadow.as_ref());
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
                .map_err(|source| journal_error(file.path(), source))?;
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
                settled: false,
                complete: true,
            },
        );
    }

    /// Drops the values already replayed; string values become shadow copies when shadowing is
    /// on. Called when fallback mode ends (reads go to Redis again).
    fn release_settled(&self, state: &mut State) {
        if state.settled == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let shadow = self.shadow.as_ref();
        state.written.retain(|key, w| {
            if !w.settled {
                return true;
            }
            if let Some(cache) = shadow {
                match &w.value {
                    Local::Str(v) if w.expire_at.is_none_or(|d| d > now) => cache.insert(
                        key.clone(),
                        Arc::new(Shadow {
                            value: Some(v.clone()),
                            expire_at: w.expire_at,
                        }),
                    ),
                    // A delete, an expiry or a hash: an older copy must not answer for it.
                    _ => cache.invalidate(key),
                }
            }
            false
        });
        state.settled = 0;
    }

    /// The sealed entries are all replayed: the journal file records it first (with the
    /// batch's new dead letters), then they leave the journal; their values stay readable while
    /// fallback mode is on. A drained journal starts a new instance, so batch ids never repeat,
    /// and keeps only its dead letters. On a file error nothing changes in memory.
    fn complete_seal(
        &self,
        state: &mut State,
        buried: Vec<DeadLetter>,
    ) -> Result<(), FallbackError> {
        let last = state.seal.as_ref().map_or(0, |s| s.last);
        let drained = state.journal.back().is_none_or(|(e, _)| e.seq <= last);
        let header = Header::fresh(state.header.instance, state.header.server.clone());
        if let Some(file) = &mut state.file {
            let result = if drained {
                let records: Vec<Record> = state
                    .dead
                    .iter()
                    .chain(&buried)
                    .cloned()
                    .map(Record::DeadLetter)
                    .collect();
                file.rewrite(&header, &records)
            } else {
                let mut records: Vec<Record> =
                    buried.iter().cloned().map(Record::DeadLetter).collect();
                records.push(Record::Done);
                file.append(&records)
            };
            result.map_err(|e| journal_error(file.path(), e))?;
        }
        keep_dead(state, buried);
        finish_seal(state);
        if !self.serving.load(Ordering::Acquire) {
            self.release_settled(state);
        }
        if drained {
            state.header = header;
            state.next_seq = 1;
        }
        Ok(())
    }

    /// The writes the target refused, as dead letters (not yet kept).
    fn bury(id: BatchId, entries: &[Entry], rejected: Vec<Rejection>) -> Vec<DeadLetter> {
        rejected
            .into_iter()
            .filter_map(|r| {
                let entry = entries.get(r.index)?;
                let key = entry
                    .op
                    .keys()
                    .first()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                tracing::error!(
                    batch = %id,
                    seq = entry.seq,
                    op = %entry.op,
                    key = %key,
                    reason = %r.reason,
                    "replay: Redis refused an acknowledged write; kept as a dead letter in the journal"
                );
                Some(DeadLetter::new(entry.clone(), r.reason))
            })
            .collect()
    }
}

/// Keeps dead letters in memory (the journal file already holds them).
fn keep_dead(state: &mut State, buried: Vec<DeadLetter>) {
    for letter in buried {
        state.pinned += dead_bytes(&letter);
        state.dead.push(letter);
    }
}

/// The records that reproduce `state`'s journal: dead letters, pending entries, and the replay
/// in progress.
fn records_of(state: &State) -> Vec<Record> {
    let mut records: Vec<Record> = state.dead.iter().cloned().map(Record::DeadLetter).collect();
    records.extend(state.journal.iter().map(|(e, _)| Record::Entry(e.clone())));
    if let Some(seal) = &state.seal {
        records.push(Record::Seal {
            last: seal.last,
            ends: seal.ends.clone(),
        });
        if seal.done > 0 {
            records.push(Record::Progress(seal.done));
        }
    }
    records
}

/// Rebuilds the store's state from a journal file's contents.
fn restore(
    state: &mut State,
    contents: Contents,
    server: &str,
    config: &FallbackConfig,
    path: &std::path::Path,
) -> Result<(), FallbackError> {
    let Contents {
        header,
        records,
        v1,
        ..
    } = contents;
    state.header = header;
    for record in records {
        match record {
            Record::Entry(e) => {
                state.next_seq = state.next_seq.max(e.seq + 1);
                apply_local(state, &e);
                let b = entry_bytes(&e.op);
                state.pinned += b;
                state.journal.push_back((e, b));
            }
            Record::Seal { last, ends } => {
                // A seal is only begun once the one before it finished: if its `Done` never
                // reached the file, it finished all the same.
                finish_seal(state);
                state.seal = Some(Seal {
                    last,
                    ends,
                    done: 0,
                });
            }
            Record::Progress(done) => {
                if let Some(seal) = &mut state.seal {
                    seal.done = done;
                }
            }
            Record::Done => finish_seal(state),
            Record::DeadLetter(d) => {
                state.pinned += dead_bytes(&d);
                state.dead.push(d);
            }
        }
    }
    let pending = !state.journal.is_empty() || state.seal.is_some();
    if v1 {
        if state.seal.is_some() {
            return Err(journal_error(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "this journal was written by an earlier version and a replay of it is in \
                     progress: finish it with that version first",
                ),
            ));
        }
        // Its entries were never replayed: a new instance in the current format. Entries the
        // earlier version accepted but Redis would refuse become dead letters now.
        state.header = Header::fresh(0, server.to_owned());
        let journal = std::mem::take(&mut state.journal);
        for (e, b) in journal {
            match validate(&e.op) {
                Ok(()) => state.journal.push_back((e, b)),
                Err(why) => {
                    state.pinned = state.pinned.saturating_sub(b);
                    let letter = DeadLetter::new(e, format!("refused at restore: {why}"));
                    state.pinned += dead_bytes(&letter);
                    state.dead.push(letter);
                }
            }
        }
    }
    if !server.is_empty() && state.header.server != server {
        if pending && !state.header.server.is_empty() && !config.replay_to_other_server {
            return Err(FallbackError::OtherServer {
                path: path.to_owned(),
                journal: state.header.server.clone(),
                configured: server.to_owned(),
            });
        }
        if pending && !state.header.server.is_empty() {
            tracing::warn!(
                journal = %state.header.server,
                configured = %server,
                "replaying a journal written for another server (fallback.replay_to_other_server)"
            );
        }
        state.header.server = server.to_owned();
    }
    Ok(())
}

/// Drops every shadow-like written value (already replayed) to make room.
fn evict_settled(state: &mut State, shadow: Option<&moka::sync::Cache<Vec<u8>, Arc<Shadow>>>) {
    if state.settled == 0 {
        return;
    }
    state.written.retain(|key, w| {
        if w.settled
            && let Some(cache) = shadow
        {
            cache.invalidate(key);
        }
        !w.settled
    });
    state.settled = 0;
}

/// The sealed entries are replayed: drops them from the journal; the written values only they
/// wrote are settled (readable, no longer pinned).
fn finish_seal(state: &mut State) {
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
    let mut moved = 0;
    for w in state.written.values_mut() {
        if !w.settled && w.last_seq <= seal.last {
            w.settled = true;
            moved += w.bytes;
        }
    }
    state.pinned = state.pinned.saturating_sub(moved);
    state.settled += moved;
}

/// Applies a journaled write to the written values (no journaling, no checks).
fn apply_local(state: &mut State, e: &Entry) {
    let put =
        |state: &mut State, key: &[u8], value: Local, expire_at: Option<u64>, complete: bool| {
            let bytes = local_bytes(key, &value);
            if let Some(old) = state.written.insert(
                key.to_vec(),
                Written {
                    value,
                    expire_at,
                    last_seq: e.seq,
                    bytes,
                    settled: false,
                    complete,
                },
            ) {
                if old.settled {
                    state.settled = state.settled.saturating_sub(old.bytes);
                } else {
                    state.pinned = state.pinned.saturating_sub(old.bytes);
                }
            }
            state.pinned += bytes;
        };
    // The value before the write, its deadline, and whether memory knows it whole (a key it
    // holds no entry for is unknown: Redis may have anything there).
    let current = |state: &State, key: &[u8]| -> (Local, Option<u64>, bool) {
        match state.written.get(key) {
            Some(w) if w.expire_at.is_none_or(|d| d > e.at) => {
                (w.value.clone(), w.expire_at, w.complete)
            }
            Some(w) => (Local::Gone, None, w.complete),
            None => (Local::Gone, None, false),
        }
    };
    match &e.op {
        Op::Set {
            key,
            value,
            expire_at,
        } => put(state, key, Local::Str(value.clone()), *expire_at, true),
        Op::Del { keys } => {
            for k in keys {
                put(state, k, Local::Gone, None, true);
            }
        }
        Op::ExpireAt { key, at } => {
            let (value, _, complete) = current(state, key);
            if value != Local::Gone {
                put(state, key, value, Some(*at), complete);
            }
        }
        Op::IncrBy { key, delta } => {
            let (value, exp, complete) = current(state, key);
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
                complete,
            );
        }
        Op::HSet { key, fields } => {
            let (value, exp, complete) = current(state, key);
            let mut map = match value {
                Local::Hash(m) => m,
                _ => BTreeMap::new(),
            };
            for (f, v) in fields {
                map.insert(f.clone(), v.clone());
            }
            put(state, key, Local::Hash(map), exp, complete);
        }
        Op::HDel { key, fields } => {
            let (value, exp, complete) = current(state, key);
            if let Local::Hash(mut map) = value {
                for f in fields {
                    map.remove(f);
                }
                let value = if map.is_empty() {
                    Local::Gone
                } else {
                    Local::Hash(map)
                };
                put(state, key, value, exp, complete);
            }
        }
    }
}

impl FallbackStore for MemoryStore {
    fn read(&self, cmd: &ReadCmd<'_>) -> Result<Answer, FallbackError> {
        let string = |v: Option<Local>| match v {
            None => Ok(None),
            Some(Local::Str(v)) => Ok(Some(v)),
            Some(_) => Err(FallbackError::WrongType),
        };
        let hash = |v: Option<Local>| match v {
            None => Ok(BTreeMap::new()),
            Some(Local::Hash(m)) => Ok(m),
            Some(_) => Err(FallbackError::WrongType),
        };
        Ok(match *cmd {
            ReadCmd::Get(key) => Answer::Value(string(self.read_key(&self.lock(), key).0)?),
            ReadCmd::Exists(key) => Answer::Bool(self.read_key(&self.lock(), key).0.is_some()),
            ReadCmd::Ttl(key) => {
                let now = self.clock.now_ms();
                Answer::Ttl(match self.read_key(&self.lock(), key) {
                    (None, _) => Ttl::Missing,
                    (Some(_), None) => Ttl::Persistent,
                    (Some(_), Some(d)) => {
                        Ttl::ExpiresIn(Duration::from_millis(d.saturating_sub(now)))
                    }
                })
            }
            ReadCmd::HGet(key, field) => Answer::Value(
                hash(self.read_key(&self.lock(), key).0)?
                    .get(field)
                    .cloned(),
            ),
            ReadCmd::HGetAll(key) => Answer::Fields(
                hash(self.read_key(&self.lock(), key).0)?
                    .into_iter()
                    .collect(),
            ),
            ReadCmd::MGet(keys) => {
                let state = self.lock();
                Answer::Values(
                    keys.iter()
                        .map(|k| match self.read_key(&state, k).0 {
                            Some(Local::Str(v)) => Some(v),
                            _ => None,
                        })
                        .collect(),
                )
            }
        })
    }

    fn write(&self, cmd: &WriteCmd<'_>) -> Result<Answer, FallbackError> {
        self.serving.store(true, Ordering::Release);
        match *cmd {
            WriteCmd::Set { key, value, ttl } => {
                let expire_at = ttl.map(|t| self.deadline(t)).transpose()?;
                self.journal_ops(vec![Op::Set {
                    key: key.to_vec(),
                    value: value.to_vec(),
                    expire_at,
                }])?;
                Ok(Answer::Ok)
            }
            WriteCmd::Del(keys) => {
                let op = Op::Del {
                    keys: keys.iter().map(|k| k.to_vec()).collect(),
                };
                // Counted under the write's own lock, so the answer matches what was journaled.
                self.write_with(vec![op], |read| {
                    // A key named twice counts once, as Redis counts it.
                    let distinct: std::collections::BTreeSet<&[u8]> =
                        keys.iter().copied().collect();
                    Ok(distinct.into_iter().filter(|k| read(k).is_some()).count() as u64)
                })
                .map(Answer::Count)
            }
            WriteCmd::Expire { key, ttl } => {
                let op = Op::ExpireAt {
                    key: key.to_vec(),
                    at: self.deadline(ttl)?,
                };
                self.write_with(vec![op], |read| Ok(read(key).is_some()))
                    .map(Answer::Bool)
            }
            WriteCmd::IncrBy { key, delta } => {
                let op = Op::IncrBy {
                    key: key.to_vec(),
                    delta,
                };
                self.write_with(vec![op], |read| {
                    let base = match read(key).as_ref() {
                        None => 0,
                        Some(Local::Str(s)) => std::str::from_utf8(s)
                            .ok()
                            .and_then(|t| t.parse::<i64>().ok())
                            .ok_or(FallbackError::NotAnInteger)?,
                        Some(_) => return Err(FallbackError::WrongType),
                    };
                    base.checked_add(delta).ok_or(FallbackError::NotAnInteger)
                })
                .map(Answer::Int)
            }
            WriteCmd::HSet { key, fields } => {
                let op = Op::HSet {
                    key: key.to_vec(),
                    fields: fields
                        .iter()
                        .map(|(f, v)| (f.to_vec(), v.to_vec()))
                        .collect(),
                };
                let distinct: std::collections::BTreeSet<&[u8]> =
                    fields.iter().map(|(f, _)| *f).collect();
                self.write_with(vec![op], |read| match read(key).as_ref() {
                    None => Ok(distinct.len() as u64),
                    Some(Local::Hash(m)) => {
                        Ok(distinct.iter().filter(|f| !m.contains_key(**f)).count() as u64)
                    }
                    Some(_) => Err(FallbackError::WrongType),
                })
                .map(Answer::Count)
            }
            WriteCmd::HDel { key, fields } => {
                let op = Op::HDel {
                    key: key.to_vec(),
                    fields: fields.iter().map(|f| f.to_vec()).collect(),
                };
                self.write_with(vec![op], |read| match read(key).as_ref() {
                    None => Ok(0),
                    Some(Local::Hash(m)) => {
                        let distinct: std::collections::BTreeSet<&[u8]> =
                            fields.iter().copied().collect();
                        Ok(distinct.into_iter().filter(|f| m.contains_key(*f)).count() as u64)
                    }
                    Some(_) => Err(FallbackError::WrongType),
                })
                .map(Answer::Count)
            }
            WriteCmd::MSet(pairs) => {
                self.journal_ops(
                    pairs
                        .iter()
                        .map(|(k, v)| Op::Set {
                            key: k.to_vec(),
                            value: v.to_vec(),
                            expire_at: None,
                        })
                        .collect(),
                )?;
                Ok(Answer::Ok)
            }
        }
    }

    fn knows(&self, key: &[u8]) -> bool {
        match self.lock().written.get(key) {
            Some(w) => w.complete,
            None => self.shadow.as_ref().is_some_and(|c| c.contains_key(key)),
        }
    }

    fn observe(&self, key: &[u8], value: Option<Vec<u8>>, ttl: Option<Duration>) {
        let Some(shadow) = &self.shadow else { return };
        let Ok(expire_at) = ttl.map(|t| self.deadline(t)).transpose() else {
            return;
        };
        shadow.insert(key.to_vec(), Arc::new(Shadow { value, expire_at }));
    }

    fn settle(&self) {
        self.serving.store(false, Ordering::Release);
        // Reads go to Redis again: the values already replayed are no longer needed.
        self.release_settled(&mut self.lock());
    }
}

#[async_trait::async_trait]
impl Journal for MemoryStore {
    fn pending_writes(&self) -> u64 {
        self.lock().journal.len() as u64
    }

    async fn replay(&self, target: Arc<dyn SyncTarget>) -> Result<ReplayReport, FallbackError> {
        let mut report = ReplayReport::default();
        let Some(_one_at_a_time) = self.replaying.try_hold() else {
            report.pending = self.pending_writes();
            return Ok(report);
        };
        loop {
            // Under the lock: seal if needed and copy the next batch out.
            let (id, last, retire, entries) = {
                let mut state = self.lock();
                if state.seal.is_none() {
                    let Some(last) = state.journal.back().map(|(e, _)| e.seq) else {
                        break;
                    };
                    let ends = seal_ends(
                        state.journal.iter().map(|(e, _)| e),
                        self.config.replay_batch_size,
                    );
                    if let Some(file) = &mut state.file {
                        file.append(&[Record::Seal {
                            last,
                            ends: ends.clone(),
                        }])
                        .map_err(|e| journal_error(file.path(), e))?;
                    }
                    state.seal = Some(Seal {
                        last,
                        ends,
                        done: 0,
                    });
                }
                let Some(seal) = state.seal.as_ref() else {
                    break;
                };
                let index = seal.done as usize;
                let Some(&end) = seal.ends.get(index) else {
                    self.complete_seal(&mut state, Vec::new())?;
                    continue;
                };
                let start = index.checked_sub(1).map_or(0, |i| seal.ends[i]);
                let last = index + 1 == seal.ends.len();
                let id = BatchId::new(state.header.instance, seal.last, seal.done);
                let entries: Vec<Entry> = state
                    .journal
                    .iter()
                    .map(|(e, _)| e)
                    .skip_while(|e| e.seq <= start)
                    .take_while(|e| e.seq <= end)
                    .cloned()
                    .collect();
                let previous = state.header.previous;
                (id, last, (previous != 0).then_some(previous), entries)
            };
            let mut batch = Batch::new(id, self.clock.now_ms(), last, &entries);
            batch.retire = retire;
            let outcome = target.apply(&batch).await?;
            let mut state = self.lock();
            if retire.is_some() {
                state.header.previous = 0;
            }
            let (rejected, applied) = match outcome {
                BatchOutcome::Applied { rejected } => (rejected, true),
                BatchOutcome::AlreadyApplied { rejected } => (rejected, false),
            };
            let refused = rejected.len();
            let buried = Self::bury(id, &entries, rejected);
            // The file learns of the batch (and what it refused) before memory does; if that
            // fails, the batch is sent again next time and the marker gives its refusals back.
            if last {
                self.complete_seal(&mut state, buried)?;
            } else {
                let done = state.seal.as_ref().map_or(0, |s| s.done) + 1;
                if let Some(file) = &mut state.file {
                    let mut records: Vec<Record> =
                        buried.iter().cloned().map(Record::DeadLetter).collect();
                    records.push(Record::Progress(done));
                    file.append(&records)
                        .map_err(|e| journal_error(file.path(), e))?;
                }
                keep_dead(&mut state, buried);
                if let Some(seal) = &mut state.seal {
                    seal.done = done;
                }
            }
            report.rejected += refused as u64;
            if applied {
                report.batches_applied += 1;
                report.entries_applied += (entries.len() - refused) as u64;
            } else {
                report.batches_skipped += 1;
            }
        }
        report.pending = self.pending_writes();
        Ok(report)
    }

    fn close(&self) -> Result<(), FallbackError> {
        let mut state = self.lock();
        state.closed = true;
        let pending = state.journal.len() as u64;
        if state.file.is_none() && pending == 0 && !state.dead.is_empty() {
            return Err(FallbackError::DeadLettersAtClose {
                dead_letters: state.dead.len() as u64,
            });
        }
        let records = records_of(&state);
        let header = state.header.clone();
        match &mut state.file {
            Some(file) if self.config.persist_on_shutdown => file
                .rewrite(&header, &records)
                .map_err(|e| journal_error(file.path(), e)),
            Some(file) => file.sync().map_err(|e| journal_error(file.path(), e)),
            None if pending > 0 => Err(FallbackError::PendingAtClose { pending }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
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
            let mut f = JournalFile::open(&path, false).unwrap().file;
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
            let mut f = JournalFile::open(&path, false).unwrap().file;
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
}
