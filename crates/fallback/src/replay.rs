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

    /// The hash in Redis that records the last batch of this journal instance applied (fields
    /// `seal`, `index` and `reply`). It has no TTL while the journal may need it; the first batch
    /// of the next instance gives it [`RETIRED_MARKER_TTL_MS`] ([`Batch::retire`]), long enough
    /// for a script call still in flight on a dead connection to find it.
    #[must_use]
    pub fn marker_key(&self) -> String {
        marker_key(self.instance)
    }

    /// The hash that holds the replay's virtual deadlines until its last batch.
    #[must_use]
    pub fn deadlines_key(&self) -> String {
        deadlines_key(self.instance)
    }

    /// Whether a marker recording `(seal, index)` as applied covers this batch.
    #[must_use]
    pub fn covered_by(&self, seal: u64, index: u32) -> bool {
        seal > self.seal || (seal == self.seal && index >= self.index)
    }
}

/// How long the marker of a drained journal instance is kept once the next instance has begun
/// replaying (24 h).
pub const RETIRED_MARKER_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// The marker hash of a journal instance.
#[must_use]
pub fn marker_key(instance: u128) -> String {
    format!("resilient-redis:journal:{instance:032x}")
}

/// The virtual-deadlines hash of a journal instance.
#[must_use]
pub fn deadlines_key(instance: u128) -> String {
    format!("resilient-redis:journal:{instance:032x}:deadlines")
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
    /// A previous, fully replayed journal instance whose marker the target may let expire
    /// (after [`RETIRED_MARKER_TTL_MS`]).
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

impl BatchOutcome {
    /// The outcome from [`REPLAY_SCRIPT`]'s reply: `["1", index, reason, ...]` when the batch
    /// ran now, `["0", index, reason, ...]` when its marker showed it had run before (indexes
    /// of refused entries, from 1).
    ///
    /// # Errors
    /// A [`SyncError`] of kind `Server` for a reply of another shape.
    pub fn from_script_reply(reply: &[String]) -> Result<Self, SyncError> {
        let bad = || SyncError {
            kind: resilient_redis_config::ErrorKind::Server,
            message: format!("unexpected replay script reply ({} items)", reply.len()),
        };
        let rejected = |rest: &[String]| {
            rest.chunks(2)
                .map(|pair| {
                    let index: usize = pair[0].parse().map_err(|_| bad())?;
                    let index = index.checked_sub(1).ok_or_else(bad)?;
                    Ok(Rejection::new(index, pair.get(1).ok_or_else(bad)?.clone()))
                })
                .collect::<Result<Vec<_>, SyncError>>()
        };
        match reply.split_first() {
            Some((flag, rest)) if flag == "1" && rest.len() % 2 == 0 => Ok(BatchOutcome::Applied {
                rejected: rejected(rest)?,
            }),
            Some((flag, rest)) if flag == "0" && rest.len() % 2 == 0 => {
                Ok(BatchOutcome::AlreadyApplied {
                    rejected: rejected(rest)?,
                })
            }
            _ => Err(bad()),
        }
    }
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

/// Where a replay goes: the manager implements it over Redis with [`REPLAY_SCRIPT`];
/// [`crate::ModelTarget`] implements it in memory for tests.
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

/// The Lua script that applies one batch on Redis (`EVAL` with no keys; everything in `ARGV`,
/// see [`script_args`]). Redis runs a script atomically. It first checks the whole batch's
/// shape and writes nothing if it is malformed; then each write is `pcall`ed so that one refused
/// write (`WRONGTYPE`, not an integer) is reported as a dead letter instead of stopping the
/// batch half-way. Hash writes go in chunks of at most 1000 arguments (Lua's `unpack` has a
/// limit of a few thousand). An `OOM` refusal can only come before the script's first write, so it
/// aborts the whole batch, to be retried. Deadlines travel as 20-digit strings and are compared
/// without floating point, so every deadline Redis accepts replays exactly. The marker (the last
/// batch applied, per journal instance) is set last.
pub const REPLAY_SCRIPT: &str = r"
local marker, vdkey = ARGV[1], ARGV[2]
local seal, index = tonumber(ARGV[3]), tonumber(ARGV[4])
local now, last = ARGV[5], ARGV[6]
local retire, retire_vd = ARGV[7], ARGV[8]
local ZERO = '00000000000000000000'
local function cmp(a, b)
  local x, y = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if x == y then x, y = tonumber(string.sub(a, 11)), tonumber(string.sub(b, 11)) end
  if x < y then return -1 elseif x > y then return 1 end
  return 0
end
local function int(s)
  local r = string.gsub(s, '^0+', '')
  if r == '' then return '0' end
  return r
end
local function digits(s) return type(s) == 'string' and #s == 20 and not string.find(s, '%D') end
-- Check the whole batch before writing anything.
local ops, i, n = {}, 9, #ARGV
local width = {S = 5, E = 4, I = 4}
while i <= n do
  local op = ARGV[i]
  local size
  if width[op] then
    size = width[op]
  elseif op == 'D' or op == 'H' or op == 'h' then
    local c = tonumber(ARGV[i + (op == 'D' and 2 or 3)])
    if not c or c < 1 then return redis.error_reply('resilient-redis replay: bad count') end
    size = (op == 'D') and (3 + c) or (4 + ((op == 'H') and 2 or 1) * c)
  else
    return redis.error_reply('resilient-redis replay: unknown op ' .. tostring(op))
  end
  if i + size - 1 > n or not digits(ARGV[i + 1]) then
    return redis.error_reply('resilient-redis replay: malformed batch')
  end
  if (op == 'S' or op == 'E') and not digits(ARGV[i + size - 1]) then
    return redis.error_reply('resilient-redis replay: malformed deadline')
  end
  ops[#ops + 1] = {op, i}
  i = i + size
end
local ms = redis.call('HMGET', marker, 'seal', 'index', 'reply')
if ms[1] then
  local s, x = tonumber(ms[1]), tonumber(ms[2])
  if s == seal and x == index and ms[3] then
    -- The batch last applied: give back what it refused, in case that was never recorded.
    local r = cjson.decode(ms[3])
    r[1] = '0'
    return r
  end
  if s > seal or (s == seal and x >= index) then return {'0'} end
end
local reply = {'1'}
local function try(e, ...)
  local ok, err = pcall(redis.call, ...)
  if ok then return true end
  local msg = type(err) == 'table' and err.err or tostring(err)
  if string.sub(msg, 1, 3) == 'OOM' or string.sub(msg, 1, 4) == '-OOM' then error(err) end
  reply[#reply + 1] = tostring(e)
  reply[#reply + 1] = msg
  return false
end
local function settle(k, t)
  local d = redis.call('HGET', vdkey, k)
  if d and cmp(d, t) <= 0 then
    redis.call('DEL', k)
    redis.call('HDEL', vdkey, k)
  end
end
local function deadline(k, d)
  if cmp(d, now) > 0 then
    redis.call('PEXPIREAT', k, int(d))
    redis.call('HDEL', vdkey, k)
  else
    redis.call('PERSIST', k)
    redis.call('HSET', vdkey, k, d)
  end
end
local function chunks(e, cmd, k, from, count, per)
  local done = 0
  while done < count do
    local take = math.min(per, count - done)
    local args = {}
    for j = 1, take do args[j] = ARGV[from + done + j - 1] end
    if not try(e, cmd, k, unpack(args)) then return end
    done = done + take
  end
end
if retire ~= '' then
  redis.call('PEXPIRE', retire, 86400000)
  redis.call('DEL', retire_vd)
end
for e, o in ipairs(ops) do
  local op, i = o[1], o[2]
  local t, k = ARGV[i + 1], ARGV[i + 2]
  if op == 'S' then
    settle(k, t)
    if try(e, 'SET', k, ARGV[i + 3]) then
      redis.call('HDEL', vdkey, k)
      if ARGV[i + 4] ~= ZERO then deadline(k, ARGV[i + 4]) end
    end
  elseif op == 'D' then
    for j = 1, tonumber(ARGV[i + 2]) do
      local key = ARGV[i + 2 + j]
      redis.call('DEL', key)
      redis.call('HDEL', vdkey, key)
    end
  elseif op == 'E' then
    settle(k, t)
    if redis.call('EXISTS', k) == 1 then deadline(k, ARGV[i + 3]) end
  elseif op == 'I' then
    settle(k, t)
    try(e, 'INCRBY', k, ARGV[i + 3])
  else
    settle(k, t)
    local c = tonumber(ARGV[i + 3])
    if op == 'H' then
      chunks(e, 'HSET', k, i + 4, 2 * c, 2 * 500)
    else
      chunks(e, 'HDEL', k, i + 4, c, 1000)
    end
    -- HDEL of the last field deletes the key, and its deadline with it.
    if redis.call('EXISTS', k) == 0 then redis.call('HDEL', vdkey, k) end
  end
end
if last == '1' then
  local vd = redis.call('HGETALL', vdkey)
  for j = 1, #vd, 2 do
    if cmp(vd[j + 1], now) <= 0 then redis.call('DEL', vd[j]) else redis.call('PEXPIREAT', vd[j], int(vd[j + 1])) end
  end
  redis.call('DEL', vdkey)
end
redis.call('HSET', marker, 'seal', ARGV[3], 'index', ARGV[4], 'reply', cjson.encode(reply))
return reply
";

/// A Unix-millisecond time or deadline as the script reads it: 20 digits.
fn padded(n: u64) -> Vec<u8> {
    format!("{n:020}").into_bytes()
}

/// The `ARGV` of [`REPLAY_SCRIPT`] for `batch`: marker, deadlines hash, seal, index, now, last
/// flag, the retired instance's marker and deadlines hash (or empty), then each entry as
/// `code, time, ...`.
#[must_use]
pub fn script_args(batch: &Batch<'_>) -> Vec<Vec<u8>> {
    let (retire, retire_vd) = batch.retire.map_or((Vec::new(), Vec::new()), |r| {
        (marker_key(r).into_bytes(), deadlines_key(r).into_bytes())
    });
    let mut argv: Vec<Vec<u8>> = vec![
        batch.id.marker_key().into_bytes(),
        batch.id.deadlines_key().into_bytes(),
        batch.id.seal.to_string().into_bytes(),
        batch.id.index.to_string().into_bytes(),
        padded(batch.now),
        if batch.last {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        },
        retire,
        retire_vd,
    ];
    for e in batch.entries {
        let t = padded(e.at);
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
                padded(expire_at.unwrap_or(0)),
            ]),
            Op::Del { keys } => {
                argv.extend([b"D".to_vec(), t, keys.len().to_string().into_bytes()]);
                argv.extend(keys.iter().cloned());
            }
            Op::ExpireAt { key, at } => {
                argv.extend([b"E".to_vec(), t, key.clone(), padded(*at)]);
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
