#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod inspect;
mod journal;
mod model;
mod op;
mod replay;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use resilient_redis_config::ErrorKind;

pub use inspect::{JournalReport, inspect_journal};
pub use journal::Cut;
pub use model::{ModelTarget, ModelValue, Snapshot};
pub use op::{DeadLetter, Entry, Op};
pub use replay::{
    Batch, BatchId, BatchOutcome, REPLAY_SCRIPT, RETIRED_MARKER_TTL_MS, Rejection, ReplayReport,
    SyncError, SyncTarget, deadlines_key, marker_key, script_args,
};
pub use store::{
    MAX_BULK_LEN, MAX_DEADLINE_MS, MemoryStore, MemoryStoreBuilder, MemoryUsage, REPLAY_BATCH_BYTES,
};

/// Fields and values of a hash.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The remaining life of a key, as Redis's `PTTL` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ttl {
    /// No such key (`-2`).
    Missing,
    /// The key does not expire (`-1`).
    Persistent,
    /// The key expires after this long.
    ExpiresIn(Duration),
}

/// Errors of the fallback store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FallbackError {
    /// Accepting the write would exceed `fallback.max_memory_size`; it was refused and nothing
    /// already accepted was dropped.
    #[error(
        "fallback store is full: the write needs {needed} bytes, {used} of max_memory_size \
         {limit} are held by pending writes"
    )]
    Full {
        /// Bytes the write needs.
        needed: u64,
        /// Bytes held by pending (not yet replayed) writes.
        used: u64,
        /// `fallback.max_memory_size`.
        limit: u64,
    },
    /// The key holds another kind of value (a string where a hash is expected, say).
    #[error("WRONGTYPE: the key holds a value of another type")]
    WrongType,
    /// `INCRBY` on a value that is not an integer, or one that would overflow.
    #[error("the value is not an integer or the increment would overflow")]
    NotAnInteger,
    /// The journal file could not be written or read.
    #[error("journal file {}: {source}", path.display())]
    Journal {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The replay target failed; the replay resumes from the failed batch next time.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// Entries are still pending at close and there is nowhere to persist them.
    #[error("{pending} journaled writes are still pending and fallback.persist_on_shutdown is off")]
    PendingAtClose {
        /// How many.
        pending: u64,
    },
    /// The configuration breaks a rule.
    #[error("invalid fallback configuration: {0}")]
    Config(#[from] resilient_redis_config::ConfigError),
    /// The write is one Redis would refuse when it is replayed (a TTL past Redis's latest
    /// deadline, an `HSET` with no fields, a value over 512 MiB): refused now, with the
    /// argument and its problem.
    #[error("write refused: {reason}")]
    InvalidWrite {
        /// The argument and its problem (never a key or a value).
        reason: String,
    },
    /// Another store (in this process or another) holds the journal file.
    #[error("journal file {} is in use: {reason}", path.display())]
    JournalInUse {
        /// The journal file.
        path: PathBuf,
        /// Why, with the lock file's name.
        reason: String,
    },
    /// The journal file holds pending writes for another server than the one configured.
    #[error(
        "journal file {} holds pending writes for {journal}, but this process is configured \
         for {configured}; replay it against {journal}, or set \
         fallback.replay_to_other_server = true to send them to {configured}",
        path.display()
    )]
    OtherServer {
        /// The journal file.
        path: PathBuf,
        /// The server in the journal's header (`host:port/db`).
        journal: String,
        /// The server configured now.
        configured: String,
    },
    /// Writes Redis refused at replay exist only in memory (no `journal_path`): they are lost
    /// when the process exits. Each was logged at error level when it was refused.
    #[error(
        "{dead_letters} writes Redis refused at replay are kept only in memory (no \
         fallback.journal_path) and are lost at exit; they were logged when refused"
    )]
    DeadLettersAtClose {
        /// How many.
        dead_letters: u64,
    },
    /// Redis is unreachable and memory knows nothing of the key: its value (or a counter's
    /// base) cannot be answered honestly (with `fallback.unknown_keys = "error"`, the default).
    #[error(
        "{operation}: Redis is unreachable and the fallback store knows nothing of this key \
         (fallback.unknown_keys = \"miss\" answers as a cache miss instead)"
    )]
    Unknown {
        /// The operation.
        operation: &'static str,
    },
    /// The store was closed; it takes no more writes.
    #[error("the fallback store is closed")]
    Closed,
}

impl FallbackError {
    /// The failure kind.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            FallbackError::WrongType | FallbackError::NotAnInteger => ErrorKind::Server,
            FallbackError::Sync(e) => e.kind,
            FallbackError::Config(_) | FallbackError::InvalidWrite { .. } => ErrorKind::Validation,
            FallbackError::Closed => ErrorKind::Closed,
            FallbackError::Full { .. }
            | FallbackError::Journal { .. }
            | FallbackError::JournalInUse { .. }
            | FallbackError::OtherServer { .. }
            | FallbackError::PendingAtClose { .. }
            | FallbackError::Unknown { .. }
            | FallbackError::DeadLettersAtClose { .. } => ErrorKind::Fallback,
        }
    }
}

/// Where the store reads the time: Unix milliseconds. TTL deadlines are absolute, so the store
/// and the replay agree on them across processes.
pub trait Clock: Send + Sync {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_ms`.
    #[must_use]
    pub fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(Self(AtomicU64::new(now_ms)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The in-memory fallback: serves reads and takes writes while Redis is down, journals the writes
/// in order, and replays them through a [`SyncTarget`] when Redis is back.
///
/// Keys and values are bytes. Writes (`set`, `delete`, `expire`, `incr_by`, `hset`, `hdel`,
/// `mset`) are applied to memory and journaled; reads answer from the written values, then from
/// shadow copies kept by [`FallbackStore::observe`] in normal operation. What the store never saw
/// reads as missing. Object-safe, so the manager can hold an `Arc<dyn FallbackStore>`; with the
/// `mock` feature, `MockFallbackStore` (mockall) implements it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait FallbackStore: Send + Sync {
    /// The value of a string key.
    ///
    /// # Errors
    /// [`FallbackError::WrongType`] for a hash.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FallbackError>;
    /// Sets a string, with an optional time to live; journaled.
    ///
    /// # Errors
    /// [`FallbackError::Full`], [`FallbackError::Journal`].
    fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<(), FallbackError>;
    /// Deletes keys; journaled. Returns how many of them the store knew to exist.
    ///
    /// # Errors
    /// [`FallbackError::Full`], [`FallbackError::Journal`].
    fn delete(&self, keys: &[Vec<u8>]) -> Result<u64, FallbackError>;
    /// Whether the key exists (as far as the store knows).
    ///
    /// # Errors
    /// None today; kept fallible like every read.
    fn exists(&self, key: &[u8]) -> Result<bool, FallbackError>;
    /// Sets a time to live; journaled (as an absolute deadline). Returns whether the store knew
    /// the key.
    ///
    /// # Errors
    /// [`FallbackError::Full`], [`FallbackError::Journal`].
    fn expire(&self, key: &[u8], ttl: Duration) -> Result<bool, FallbackError>;
    /// The remaining life of a key.
    ///
    /// # Errors
    /// None today; kept fallible like every read.
    fn ttl(&self, key: &[u8]) -> Result<Ttl, FallbackError>;
    /// Adds to an integer (a missing key counts as 0); journaled as a delta. Returns the value the
    /// store now holds, which is the delta alone for a key it never saw.
    ///
    /// # Errors
    /// [`FallbackError::NotAnInteger`], [`FallbackError::WrongType`], [`FallbackError::Full`],
    /// [`FallbackError::Journal`].
    fn incr_by(&self, key: &[u8], delta: i64) -> Result<i64, FallbackError>;
    /// A field of a hash.
    ///
    /// # Errors
    /// [`FallbackError::WrongType`] for a string.
    fn hget(&self, key: &[u8], field: &[u8]) -> Result<Option<Vec<u8>>, FallbackError>;
    /// Sets fields of a hash; journaled. Returns how many were new to the store.
    ///
    /// # Errors
    /// [`FallbackError::WrongType`], [`FallbackError::Full`], [`FallbackError::Journal`].
    fn hset(&self, key: &[u8], fields: &[(Vec<u8>, Vec<u8>)]) -> Result<u64, FallbackError>;
    /// Deletes fields of a hash; journaled. Returns how many the store knew.
    ///
    /// # Errors
    /// [`FallbackError::WrongType`], [`FallbackError::Full`], [`FallbackError::Journal`].
    fn hdel(&self, key: &[u8], fields: &[Vec<u8>]) -> Result<u64, FallbackError>;
    /// The fields of a hash the store knows (possibly only those written during the outage).
    ///
    /// # Errors
    /// [`FallbackError::WrongType`] for a string.
    fn hgetall(&self, key: &[u8]) -> Result<Fields, FallbackError>;
    /// Several string values.
    ///
    /// # Errors
    /// None for a missing or non-string key (it reads as missing).
    fn mget(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, FallbackError>;
    /// Sets several strings; journaled (all or none: refused whole when they do not fit).
    ///
    /// # Errors
    /// [`FallbackError::Full`], [`FallbackError::Journal`].
    fn mset(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), FallbackError>;
    /// Drops every shadow copy and every value whose write has reached Redis. Pending writes are
    /// kept: nothing acknowledged is dropped.
    fn clear(&self);
    /// Whether the application is in fallback mode (the manager switches it).
    fn is_fallback_mode(&self) -> bool;
    /// Enters fallback mode.
    fn activate(&self);
    /// Leaves fallback mode.
    fn deactivate(&self);
    /// Journaled writes not yet replayed.
    fn pending_writes(&self) -> u64;
    /// Bytes held and the bound.
    fn memory(&self) -> MemoryUsage;
    /// Whether memory holds an answer for `key`: a value or a deletion written while Redis was
    /// down (or restored, or already replayed and still kept), or a shadow copy (a value or
    /// "missing") seen before. A key it does not know may hold anything in Redis.
    fn knows(&self, key: &[u8]) -> bool;
    /// Keeps a shadow copy of a value seen in normal operation (`None`: known missing), evictable.
    fn observe(&self, key: &[u8], value: Option<Vec<u8>>, ttl: Option<Duration>);
    /// Replays pending writes in order, in batches, into `target`; resumes where an earlier,
    /// interrupted replay stopped. Writes made meanwhile queue behind it.
    ///
    /// # Errors
    /// [`FallbackError::Sync`] when a batch failed (it is retried next time),
    /// [`FallbackError::Journal`].
    async fn replay(&self, target: Arc<dyn SyncTarget>) -> Result<ReplayReport, FallbackError>;
    /// Flushes the journal file for the next process (with `persist_on_shutdown`).
    ///
    /// # Errors
    /// [`FallbackError::PendingAtClose`] when writes are pending and cannot be persisted,
    /// [`FallbackError::Journal`].
    fn close(&self) -> Result<(), FallbackError>;
}

const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn FallbackStore>();
    assert_send_sync::<dyn SyncTarget>();
};
