//! Replay: journal entries go to a [`SyncTarget`] in order, in batches that apply atomically and
//! at most once.
//!
//! # How time-dependent writes stay exact
//!
//! A journaled write happened at time `t` but reaches Redis later, at `now`. A TTL deadline that
//! fell between the two must act as if it had fired on time: a counter incremented before its key
//! expired must be gone, one incremented after must start from the delta. Each op therefore
//! carries its time `t`. A deadline still in the future is set as a real `PEXPIREAT`; one already
//! past is kept *virtual* (in a helper hash beside the batch markers) while the key lives on, and
//! each later op first checks it against the op's own time, deleting the key if it had expired by
//! then. The last batch of a replay settles every virtual deadline (all past by then: the key is
//! deleted). Within a replay, so the result equals applying every write at its own time.

use std::fmt;

use crate::op::Entry;

/// Identifies one batch of one replay, for at-most-once application.
///
/// A journal's `instance` is random and renewed every time the journal is drained, so a batch
/// id is never reused: not by the next process on the same journal file, not after a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BatchId {
    /// The journal's instance (random, kept in the journal file's header).
    pub instance: u128,
    /// The replay: the last sequence number it covers.
    pub seal: u64,
    /// The batch's position in the replay, from 0.
    pub index: u32,
}

impl BatchId {
    /// A batch id.
    #[must_use]
    pub fn new(instance: u128, seal: u64, index: u32) -> Self {
        Self {
            instance,
            seal,
            index,
        }
    }

    /// Whether a marker recording `(seal, index)` as applied covers this batch.
    #[must_use]
    pub fn covered_by(&self, seal: u64, index: u32) -> bool {
        seal > self.seal || (seal == self.seal && index >= self.index)
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}/{}/{}", self.instance, self.seal, self.index)
    }
}

/// One batch to apply.
#[derive(Debug)]
#[non_exhaustive]
pub struct Batch<'a> {
    /// Identity, for at-most-once application.
    pub id: BatchId,
    /// The time of application, Unix milliseconds (the store's clock).
    pub now: u64,
    /// Whether this is the replay's last batch (it settles the virtual deadlines).
    pub last: bool,
    /// A previous, fully replayed journal instance whose at-most-once bookkeeping the target
    /// may now let expire (after a delay long enough for a call still in flight on a dead
    /// connection to find it: the manager's Redis target keeps it a day).
    pub retire: Option<u128>,
    /// The entries, in order.
    pub entries: &'a [Entry],
}

impl<'a> Batch<'a> {
    /// A batch of `entries` (for targets and tests outside this crate).
    #[must_use]
    pub fn new(id: BatchId, now: u64, last: bool, entries: &'a [Entry]) -> Self {
        Self {
            id,
            now,
            last,
            retire: None,
            entries,
        }
    }
}

/// A write of a batch that the target refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// Its position in [`Batch::entries`].
    pub index: usize,
    /// The target's reply (`WRONGTYPE ...`).
    pub reason: String,
}

impl Rejection {
    /// Entry `index` of the batch was refused for `reason`.
    #[must_use]
    pub fn new(index: usize, reason: impl Into<String>) -> Self {
        Self {
            index,
            reason: reason.into(),
        }
    }
}

/// What the target did with a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchOutcome {
    /// Applied now, except the `rejected` writes, which the target refused (a `WRONGTYPE`,
    /// say); they become dead letters.
    Applied {
        /// Writes the target refused.
        rejected: Vec<Rejection>,
    },
    /// Applied before (its marker covers it): nothing done now. When it was the last batch
    /// applied, `rejected` repeats what it refused then (so a crash before that was recorded
    /// loses no dead letter).
    AlreadyApplied {
        /// Writes the target refused when it applied the batch (when known).
        rejected: Vec<Rejection>,
    },
}

/// A target's failure to apply a batch. The batch either fully applied or not at all; the
/// replay stops and resumes from this batch next time.
#[derive(Debug, thiserror::Error)]
#[error("replay target failed ({kind}): {message}")]
#[non_exhaustive]
pub struct SyncError {
    /// How the failure classifies.
    pub kind: resilient_redis_config::ErrorKind,
    /// What went wrong.
    pub message: String,
}

impl SyncError {
    /// A failure of `kind`.
    #[must_use]
    pub fn new(kind: resilient_redis_config::ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Where a replay goes: the manager implements it over Redis (a Lua script per batch);
/// `ModelTarget` (feature `test-util`) implements it in memory for tests.
#[async_trait::async_trait]
pub trait SyncTarget: Send + Sync {
    /// Applies `batch` atomically (all or nothing: refused writes are reported, never half
    /// applied) and at most once (a batch its instance's marker covers is skipped).
    ///
    /// # Errors
    /// [`SyncError`] when the outcome is a failure or unknown; the batch is tried again later.
    async fn apply(&self, batch: &Batch<'_>) -> Result<BatchOutcome, SyncError>;
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Batches applied by this call.
    pub batches_applied: u32,
    /// Batches found applied already (an earlier, interrupted attempt got them through).
    pub batches_skipped: u32,
    /// Journal entries that reached the target.
    pub entries_applied: u64,
    /// Writes the target refused: kept as dead letters, never retried.
    pub rejected: u64,
    /// Entries still pending after this call (written during the replay, or left by a failure).
    pub pending: u64,
}
