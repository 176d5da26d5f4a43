//! [`MemoryStore`]: the in-memory fallback with its journal.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use resilient_redis_config::FallbackConfig;

use crate::journal::{Contents, Cut, Header, JournalFile, is_locked};
use crate::op::{DeadLetter, Entry, Op, Record};
use crate::replay::{Batch, BatchId, BatchOutcome, Rejection, ReplayReport, SyncTarget};
use crate::{Clock, FallbackError, FallbackStore, SystemClock, Ttl};

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
}

#[derive(Clone, Debug)]
struct Shadow {
    value: Option<Vec<u8>>,
    expire_at: Option<u64>,
}

#[derive(Clone, Debug)]
struct Seal {
    last: u64,
    batch_size: u32,
    batch_bytes: u64,
    done: u32,
    /// Where each batch ends (exclusive index into the sealed entries), cut on first use.
    bounds: Option<Vec<usize>>,
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
    active: AtomicBool,
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
            .field("fallback_mode", &self.is_fallback_mode())
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
            active: AtomicBool::new(false),
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
            inspect(&|k: &[u8]| self.read(st, k).0)?
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
            evict_settled(&mut state);
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
            if let (Some(cache), Local::Str(v)) = (shadow, &w.value)
                && w.expire_at.is_none_or(|d| d > now)
            {
                cache.insert(
                    key.clone(),
                    Arc::new(Shadow {
                        value: Some(v.clone()),
                        expire_at: w.expire_at,
                    }),
                );
            }
            false
        });
        state.settled = 0;
    }

    /// The sealed entries are all replayed: they leave the journal; their values stay readable
    /// while fallback mode is on. A drained journal starts a new instance, so batch ids never
    /// repeat, and keeps only its dead letters.
    fn complete_seal(&self, state: &mut State) -> Result<(), FallbackError> {
        finish_seal(state);
        if !self.is_fallback_mode() {
            self.release_settled(state);
        }
        if state.journal.is_empty() {
            let header = Header::fresh(state.header.instance, state.header.server.clone());
            let records = state
                .dead
                .iter()
                .cloned()
                .map(Record::DeadLetter)
                .collect::<Vec<_>>();
            if let Some(file) = &mut state.file {
                file.rewrite(&header, &records)
                    .map_err(|e| journal_error(file.path(), e))?;
            }
            state.header = header;
            state.next_seq = 1;
        } else if let Some(file) = &mut state.file {
            file.append(&[Record::Done])
                .map_err(|e| journal_error(file.path(), e))?;
        }
        Ok(())
    }

    /// Keeps the writes the target refused as dead letters: counted, logged, in the journal.
    fn bury(&self, state: &mut State, id: BatchId, entries: &[Entry], rejected: Vec<Rejection>) {
        let mut records = Vec::new();
        for r in rejected {
            let Some(entry) = entries.get(r.index) else {
                continue;
            };
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
            let letter = DeadLetter::new(entry.clone(), r.reason);
            if state
                .dead
                .iter()
                .any(|d| d.entry.seq == entry.seq && d.entry == letter.entry)
            {
                continue; // reported again for a batch whose outcome was already recorded
            }
            state.pinned += dead_bytes(&letter);
            records.push(Record::DeadLetter(letter.clone()));
            state.dead.push(letter);
        }
        if !records.is_empty()
            && let Some(file) = &mut state.file
            && let Err(e) = file.append(&records)
        {
            // Kept in memory; the next rewrite of the file carries them.
            tracing::error!(error = %e, "cannot append dead letters to the journal file");
        }
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
            batch_size: seal.batch_size,
            batch_bytes: seal.batch_bytes,
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
            Record::Seal {
                last,
                batch_size,
                batch_bytes,
            } => {
                state.seal = Some(Seal {
                    last,
                    batch_size,
                    batch_bytes,
                    done: 0,
                    bounds: None,
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
fn evict_settled(state: &mut State) {
    if state.settled == 0 {
        return;
    }
    state.written.retain(|_, w| !w.settled);
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
    let put = |state: &mut State, key: &[u8], value: Local, expire_at: Option<u64>| {
        let bytes = local_bytes(key, &value);
        if let Some(old) = state.written.insert(
            key.to_vec(),
            Written {
                value,
                expire_at,
                last_seq: e.seq,
                bytes,
                settled: false,
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
        let expire_at = ttl.map(|t| self.deadline(t)).transpose()?;
        self.write(vec![Op::Set {
            key: key.to_vec(),
            value: value.to_vec(),
            expire_at,
        }])
    }

    fn delete(&self, keys: &[Vec<u8>]) -> Result<u64, FallbackError> {
        // Counted under the write's own lock, so the answer matches what was journaled.
        self.write_with(
            vec![Op::Del {
                keys: keys.to_vec(),
            }],
            |read| Ok(keys.iter().filter(|k| read(k).is_some()).count() as u64),
        )
    }

    fn exists(&self, key: &[u8]) -> Result<bool, FallbackError> {
        Ok(self.read(&self.lock(), key).0.is_some())
    }

    fn expire(&self, key: &[u8], ttl: Duration) -> Result<bool, FallbackError> {
        let op = Op::ExpireAt {
            key: key.to_vec(),
            at: self.deadline(ttl)?,
        };
        self.write_with(vec![op], |read| Ok(read(key).is_some()))
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
        self.write_with(vec![op], |read| match read(key).as_ref() {
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
        self.write_with(vec![op], |read| match read(key).as_ref() {
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
        // Reads go to Redis again: the values already replayed are no longer needed.
        self.release_settled(&mut self.lock());
    }

    fn pending_writes(&self) -> u64 {
        self.lock().journal.len() as u64
    }

    fn memory(&self) -> MemoryUsage {
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

    fn observe(&self, key: &[u8], value: Option<Vec<u8>>, ttl: Option<Duration>) {
        let Some(shadow) = &self.shadow else { return };
        let Ok(expire_at) = ttl.map(|t| self.deadline(t)).transpose() else {
            return;
        };
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
            let (id, last, retire, entries) = {
                let mut state = self.lock();
                if state.seal.is_none() {
                    let Some(last) = state.journal.back().map(|(e, _)| e.seq) else {
                        break;
                    };
                    let seal = Seal {
                        last,
                        batch_size: self.config.replay_batch_size,
                        batch_bytes: REPLAY_BATCH_BYTES,
                        done: 0,
                        bounds: None,
                    };
                    if let Some(file) = &mut state.file {
                        file.append(&[Record::Seal {
                            last,
                            batch_size: seal.batch_size,
                            batch_bytes: seal.batch_bytes,
                        }])
                        .map_err(|e| journal_error(file.path(), e))?;
                    }
                    state.seal = Some(seal);
                }
                let instance = state.header.instance;
                let State { seal, journal, .. } = &mut *state;
                let Some(seal) = seal.as_mut() else { break };
                let bounds = seal.bounds.get_or_insert_with(|| {
                    cut_batches(
                        journal
                            .iter()
                            .take_while(|(e, _)| e.seq <= seal.last)
                            .map(|(e, _)| batch_weight(&e.op)),
                        seal.batch_size,
                        seal.batch_bytes,
                    )
                });
                let index = seal.done as usize;
                let Some(&end) = bounds.get(index) else {
                    self.complete_seal(&mut state)?;
                    continue;
                };
                let start = index.checked_sub(1).map_or(0, |i| bounds[i]);
                let last = index + 1 == bounds.len();
                let id = BatchId::new(instance, seal.last, seal.done);
                let entries: Vec<Entry> = state
                    .journal
                    .range(start..end)
                    .map(|(e, _)| e.clone())
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
            match outcome {
                BatchOutcome::Applied { rejected } => {
                    report.batches_applied += 1;
                    report.entries_applied += (entries.len() - rejected.len()) as u64;
                    report.rejected += rejected.len() as u64;
                    self.bury(&mut state, id, &entries, rejected);
                }
                BatchOutcome::AlreadyApplied { rejected } => {
                    report.batches_skipped += 1;
                    self.bury(&mut state, id, &entries, rejected);
                }
            }
            let done = if let Some(seal) = &mut state.seal {
                seal.done += 1;
                seal.done
            } else {
                0
            };
            if last {
                self.complete_seal(&mut state)?;
            } else if let Some(file) = &mut state.file {
                file.append(&[Record::Progress(done)])
                    .map_err(|e| journal_error(file.path(), e))?;
            }
        }
        report.pending = self.pending_writes();
        Ok(report)
    }

    fn close(&self) -> Result<(), FallbackError> {
        let mut state = self.lock();
        state.closed = true;
        let pending = state.journal.len() as u64;
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
