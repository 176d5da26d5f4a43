//! [`MemoryStore`]: the in-memory fallback with its journal. The types and the store's shape
//! are here; `values` reads and writes them, `validate` refuses what Redis would refuse,
//! `seal` replays, `restore` opens a journal file.

mod restore;
mod seal;
#[cfg(test)]
mod tests;
mod validate;
mod values;

use seal::{finish_seal, records_of};
use validate::{invalid, validate};
use values::{apply_local, dead_bytes, entry_bytes};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use resilient_redis_config::FallbackConfig;

use crate::journal::{Contents, Cut, Header, JournalFile, is_locked};
use crate::op::{DeadLetter, Entry, Op, Record};
use crate::replay::{Batch, BatchId, BatchOutcome, Rejection, ReplayReport, SyncTarget};
use crate::{Clock, FallbackError, Journal, SystemClock};

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
/// Bytes one hash field costs in a written value beyond its field and value bytes.
pub(crate) const FIELD_OVERHEAD: u64 = 64;
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
    /// `pinned + settled` as of the last time the state was unlocked: what a shadow copy, stored
    /// without the lock, has to leave room for.
    held: AtomicU64,
    shadow: Option<moka::sync::Cache<Vec<u8>, Arc<Shadow>>>,
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
    key: Option<crate::JournalKey>,
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

    /// Seals the journal file with `key` (from a secret manager, say) instead of the one in
    /// `fallback.journal_key_file`.
    pub fn journal_key(mut self, key: crate::JournalKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Opens the store, restoring the journal file if one is configured and exists.
    ///
    /// # Errors
    /// [`FallbackError::Config`]; [`FallbackError::JournalInUse`] when another store holds the
    /// journal file; [`FallbackError::OtherServer`]; [`FallbackError::Journal`] when the file
    /// cannot be opened, read or repaired.
    pub fn build(self) -> Result<MemoryStore, FallbackError> {
        MemoryStore::open(&self.config, self.clock, self.server, self.key)
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
            key: None,
        }
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
        // One snapshot, under the lock: settled values move into the shadow cache under it, and
        // read apart they could be counted in both.
        let state = self.lock();
        MemoryUsage {
            pinned: state.pinned,
            shadow: self.shadow_bytes() + state.settled,
            limit: self.config.max_memory_size,
        }
    }

    fn lock(&self) -> Locked<'_> {
        Locked {
            state: self.state.lock().unwrap_or_else(PoisonError::into_inner),
            held: &self.held,
        }
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
}

/// The store's state, locked; on unlock it publishes `pinned + settled` for the shadow copies
/// stored without the lock.
struct Locked<'a> {
    state: MutexGuard<'a, State>,
    held: &'a AtomicU64,
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.held.store(
            self.state.pinned.saturating_add(self.state.settled),
            Ordering::Relaxed,
        );
    }
}
