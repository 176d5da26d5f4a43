#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod cipher;
mod command;
mod inspect;
mod journal;
#[cfg(any(test, feature = "test-util"))]
mod model;
mod op;
mod replay;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use resilient_redis_config::ErrorKind;

pub use cipher::JournalKey;
pub use command::{Answer, FallbackStoreExt, ReadCmd, WriteCmd};
pub use inspect::{JournalReport, inspect_journal, inspect_journal_with_key};
pub use journal::Cut;
#[cfg(any(test, feature = "test-util"))]
pub use model::{ModelTarget, ModelValue, Snapshot};
pub use op::{DeadLetter, Entry, Op};
pub use replay::{Batch, BatchId, BatchOutcome, Rejection, ReplayReport, SyncError, SyncTarget};
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
    /// The store does not serve this command (a cache that refuses writes while Redis is down,
    /// say).
    #[error("{operation}: this fallback store does not serve it")]
    Unsupported {
        /// The command, lower case.
        operation: &'static str,
    },
    /// The store answered a command with another kind of answer than it expects (a custom
    /// store's bug).
    #[error("{operation}: the fallback store answered {answer}, which does not fit")]
    BadAnswer {
        /// The command, lower case.
        operation: &'static str,
        /// The answer, shortened.
        answer: String,
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
            | FallbackError::Unsupported { .. }
            | FallbackError::BadAnswer { .. }
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

/// A clock that moves only when told to, for tests (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

#[cfg(any(test, feature = "test-util"))]
impl ManualClock {
    /// A clock showing `now_ms`.
    #[must_use]
    pub fn new(now_ms: u64) -> Arc<Self> {
        Arc::new(Self(std::sync::atomic::AtomicU64::new(now_ms)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            u64::try_from(by.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::SeqCst,
        );
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The in-memory side of the fallback: answers reads and takes writes while Redis is down, and
/// keeps shadow copies of what Redis answered before. Five methods; [`FallbackStoreExt`] adds
/// a typed method per command. Object-safe, so the manager holds an `Arc<dyn FallbackStore>`;
/// with the `mock` feature, `MockFallbackStore` (mockall) implements it.
///
/// Whether the application is in fallback mode is the manager's business, not the store's:
/// the manager calls [`read`](FallbackStore::read) and [`write`](FallbackStore::write) only
/// while Redis is unreachable (or while journaled writes are pending), and
/// [`settle`](FallbackStore::settle) when it goes back to Redis.
///
/// A store that journals writes also implements [`Journal`], so they reach Redis when it is
/// back. A store that cannot keep a write refuses it with an error (never acknowledges it).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait FallbackStore: Send + Sync {
    /// Answers a read from memory: the values written during the outage, then the shadow
    /// copies. What the store never saw reads as missing; [`knows`](FallbackStore::knows) says
    /// whether that is an answer or a guess.
    ///
    /// # Errors
    /// [`FallbackError::WrongType`] (a hash where a string is expected, say),
    /// [`FallbackError::Unsupported`] for a read the store does not serve.
    fn read<'a>(&self, cmd: &ReadCmd<'a>) -> Result<Answer, FallbackError>;
    /// Applies a write to memory and journals it, or refuses it whole.
    ///
    /// # Errors
    /// [`FallbackError::Full`], [`FallbackError::Journal`], [`FallbackError::InvalidWrite`],
    /// [`FallbackError::WrongType`], [`FallbackError::NotAnInteger`],
    /// [`FallbackError::Unsupported`] for a write the store does not take.
    fn write<'a>(&self, cmd: &WriteCmd<'a>) -> Result<Answer, FallbackError>;
    /// Whether memory holds an answer for `key`: a value or a deletion written while Redis was
    /// down (or restored, or already replayed and still kept), or a shadow copy (a value or
    /// "missing") seen before. A key it does not know may hold anything in Redis.
    fn knows(&self, key: &[u8]) -> bool;
    /// Keeps a shadow copy of a value Redis answered (`None`: known missing), evictable.
    fn observe(&self, key: &[u8], value: Option<Vec<u8>>, ttl: Option<Duration>);
    /// Fallback mode ended: reads go to Redis again, so values kept only to answer them (writes
    /// already replayed) may go. Pending writes and what they wrote stay.
    fn settle(&self);
}

/// The durable side of the fallback: the writes taken while Redis was down, in order, until
/// they are replayed into Redis. Three methods. With the `mock` feature, `MockJournal`
/// (mockall) implements it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait Journal: Send + Sync {
    /// Journaled writes not yet replayed.
    fn pending_writes(&self) -> u64;
    /// Replays pending writes in order, in batches, into `target`; resumes where an earlier,
    /// interrupted replay stopped. Writes made meanwhile queue behind it.
    ///
    /// # Errors
    /// [`FallbackError::Sync`] when a batch failed (it is retried next time),
    /// [`FallbackError::Journal`].
    async fn replay(&self, target: Arc<dyn SyncTarget>) -> Result<ReplayReport, FallbackError>;
    /// Stops taking writes and leaves the journal for the next process (with
    /// `persist_on_shutdown`).
    ///
    /// # Errors
    /// [`FallbackError::PendingAtClose`] when writes are pending and cannot be persisted,
    /// [`FallbackError::Journal`].
    fn close(&self) -> Result<(), FallbackError>;
}

/// A journal with nothing in it, for a store that journals nothing (a cache that refuses
/// writes while Redis is down, say).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoJournal;

#[async_trait::async_trait]
impl Journal for NoJournal {
    fn pending_writes(&self) -> u64 {
        0
    }
    async fn replay(&self, _target: Arc<dyn SyncTarget>) -> Result<ReplayReport, FallbackError> {
        Ok(ReplayReport::default())
    }
    fn close(&self) -> Result<(), FallbackError> {
        Ok(())
    }
}

const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn FallbackStore>();
    assert_send_sync::<dyn Journal>();
    assert_send_sync::<dyn SyncTarget>();
};
