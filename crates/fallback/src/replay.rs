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

use crate::op::{Entry, Op};

/// Identifies one batch of one replay, for at-most-once application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct BatchId {
    /// The journal's instance (random, kept in the journal file).
    pub instance: u64,
    /// The replay: the last sequence number it covers.
    pub seal: u64,
    /// The batch's position in the replay, from 0.
    pub index: u32,
}

impl BatchId {
    /// The key that marks the batch as applied (kept for [`MARKER_TTL_MS`]).
    #[must_use]
    pub fn marker_key(&self) -> String {
        format!(
            "resilient-redis:replay:{:016x}:{}:{}",
            self.instance, self.seal, self.index
        )
    }

    /// The hash that holds the replay's virtual deadlines until its last batch.
    #[must_use]
    pub fn deadlines_key(&self) -> String {
        format!(
            "resilient-redis:replay:{:016x}:{}:deadlines",
            self.instance, self.seal
        )
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{}/{}", self.instance, self.seal, self.index)
    }
}

/// How long a batch marker lives: long enough to cover any retry of the same replay.
pub const MARKER_TTL_MS: u64 = 24 * 60 * 60 * 1000;

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
    /// The entries, in order.
    pub entries: &'a [Entry],
}

/// What the target did with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchOutcome {
    /// Applied now; `rejected` writes were refused by the target (a `WRONGTYPE`, say) and
    /// skipped, the rest applied.
    Applied {
        /// Writes the target refused.
        rejected: u32,
    },
    /// Applied before (its marker exists): nothing done.
    AlreadyApplied,
}

impl BatchOutcome {
    /// The outcome from [`REPLAY_SCRIPT`]'s reply `{applied, rejected}` (applied is 1 when the
    /// batch ran now, 0 when its marker showed it had run before).
    #[must_use]
    pub fn from_script_reply(applied: i64, rejected: i64) -> Self {
        if applied == 1 {
            BatchOutcome::Applied {
                rejected: u32::try_from(rejected).unwrap_or(u32::MAX),
            }
        } else {
            BatchOutcome::AlreadyApplied
        }
    }
}

/// A target's failure to apply a batch. The batch either fully applied or not at all; the
/// replay stops and resumes from this batch next time.
#[derive(Debug, thiserror::Error)]
#[error("replay target failed ({kind}): {message}")]
pub struct SyncError {
    /// How the failure classifies.
    pub kind: resilient_redis_config::ErrorKind,
    /// What went wrong.
    pub message: String,
}

/// Where a replay goes: the manager implements it over Redis with [`REPLAY_SCRIPT`];
/// [`crate::ModelTarget`] implements it in memory for tests.
#[async_trait::async_trait]
pub trait SyncTarget: Send + Sync {
    /// Applies `batch` atomically (all or nothing) and at most once (a batch whose marker
    /// exists is skipped).
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
    /// Writes the target refused (counted, not retried).
    pub rejected: u64,
    /// Entries still pending after this call (written during the replay, or left by a failure).
    pub pending: u64,
}

/// The Lua script that applies one batch on Redis (`EVAL` with no keys; everything in `ARGV`,
/// see [`script_args`]). Redis runs a script atomically; each write is `pcall`ed so that one
/// refused write does not stop the others, and the marker is set last.
pub const REPLAY_SCRIPT: &str = r"
local marker, vdkey = ARGV[1], ARGV[2]
local now, last, ttl = tonumber(ARGV[3]), ARGV[4], ARGV[5]
if redis.call('EXISTS', marker) == 1 then return {0, 0} end
local rejected = 0
local function settle(k, t)
  local d = redis.call('HGET', vdkey, k)
  if d and tonumber(d) <= t then
    redis.call('DEL', k)
    redis.call('HDEL', vdkey, k)
  end
end
local function deadline(k, d)
  if d > now then
    redis.call('PEXPIREAT', k, d)
    redis.call('HDEL', vdkey, k)
  else
    redis.call('PERSIST', k)
    redis.call('HSET', vdkey, k, d)
  end
end
local function try(...)
  local ok = pcall(redis.call, ...)
  if not ok then rejected = rejected + 1 end
end
local i = 6
while i <= #ARGV do
  local op, t, k = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if op == 'S' then
    settle(k, t)
    local d = tonumber(ARGV[i + 4])
    redis.call('SET', k, ARGV[i + 3])
    redis.call('HDEL', vdkey, k)
    if d > 0 then deadline(k, d) end
    i = i + 5
  elseif op == 'D' then
    redis.call('DEL', k)
    redis.call('HDEL', vdkey, k)
    i = i + 3
  elseif op == 'E' then
    settle(k, t)
    if redis.call('EXISTS', k) == 1 then deadline(k, tonumber(ARGV[i + 3])) end
    i = i + 4
  elseif op == 'I' then
    settle(k, t)
    try('INCRBY', k, ARGV[i + 3])
    i = i + 4
  elseif op == 'H' or op == 'h' then
    settle(k, t)
    local n = tonumber(ARGV[i + 3])
    local width = (op == 'H') and 2 or 1
    local args = {}
    for j = 1, width * n do args[j] = ARGV[i + 3 + j] end
    if op == 'H' then try('HSET', k, unpack(args)) else try('HDEL', k, unpack(args)) end
    -- HDEL of the last field deletes the key, and its deadline with it.
    if redis.call('EXISTS', k) == 0 then redis.call('HDEL', vdkey, k) end
    i = i + 4 + width * n
  else
    return redis.error_reply('resilient-redis replay: unknown op ' .. tostring(op))
  end
end
if last == '1' then
  local vd = redis.call('HGETALL', vdkey)
  for j = 1, #vd, 2 do
    local d = tonumber(vd[j + 1])
    if d <= now then redis.call('DEL', vd[j]) else redis.call('PEXPIREAT', vd[j], d) end
  end
  redis.call('DEL', vdkey)
end
redis.call('SET', marker, '1', 'PX', ttl)
return {1, rejected}
";

/// The `ARGV` of [`REPLAY_SCRIPT`] for `batch`: marker, deadlines hash, now, last flag, marker
/// TTL, then each op as `code, time, key, args...`.
#[must_use]
pub fn script_args(batch: &Batch<'_>) -> Vec<Vec<u8>> {
    let mut argv: Vec<Vec<u8>> = vec![
        batch.id.marker_key().into_bytes(),
        batch.id.deadlines_key().into_bytes(),
        batch.now.to_string().into_bytes(),
        if batch.last {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        },
        MARKER_TTL_MS.to_string().into_bytes(),
    ];
    for e in batch.entries {
        let t = e.at.to_string().into_bytes();
        match &e.op {
            Op::Set {
                key,
                value,
                expire_at,
            } => argv.extend([
                b"S".to_vec(),
                t,
                key.clone(),
                value.clone(),
                expire_at.unwrap_or(0).to_string().into_bytes(),
            ]),
            Op::Del { keys } => {
                for key in keys {
                    argv.extend([b"D".to_vec(), t.clone(), key.clone()]);
                }
            }
            Op::ExpireAt { key, at } => {
                argv.extend([b"E".to_vec(), t, key.clone(), at.to_string().into_bytes()]);
            }
            Op::IncrBy { key, delta } => {
                argv.extend([
                    b"I".to_vec(),
                    t,
                    key.clone(),
                    delta.to_string().into_bytes(),
                ]);
            }
            Op::HSet { key, fields } => {
                argv.extend([
                    b"H".to_vec(),
                    t,
                    key.clone(),
                    fields.len().to_string().into_bytes(),
                ]);
                for (f, v) in fields {
                    argv.extend([f.clone(), v.clone()]);
                }
            }
            Op::HDel { key, fields } => {
                argv.extend([
                    b"h".to_vec(),
                    t,
                    key.clone(),
                    fields.len().to_string().into_bytes(),
                ]);
                argv.extend(fields.iter().cloned());
            }
        }
    }
    argv
}
