//! The replay of fallback journals into Redis: [`RedisSyncTarget`] applies each batch with one
//! Lua script call ([`REPLAY_SCRIPT`]), atomic and at most once.
//!
//! Each journal instance has one marker hash in Redis ([`marker_key`]) recording the last batch
//! applied (fields `seal`, `index`, and the refusals of that batch); a batch the marker covers
//! is skipped. The marker has no TTL while the journal may need it; the first batch of the next
//! instance gives it [`RETIRED_MARKER_TTL_MS`].

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError};

use resilient_redis_config::ErrorKind;
use resilient_redis_fallback::{Batch, BatchOutcome, Entry, Op, Rejection, SyncError, SyncTarget};
use resilient_redis_pool::ConnectionPool;

/// How long the marker of a drained journal instance is kept once the next instance has begun
/// replaying (24 h): long enough for a script call still in flight on a dead connection to find
/// it.
pub const RETIRED_MARKER_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// The marker hash of a journal instance.
#[must_use]
pub fn marker_key(instance: u128) -> String {
    format!("resilient-redis:journal:{instance:032x}")
}

/// The hash that holds a replay's virtual deadlines until its last batch.
#[must_use]
pub fn deadlines_key(instance: u128) -> String {
    format!("resilient-redis:journal:{instance:032x}:deadlines")
}

/// The marker hash of a journal instance in one Redis Cluster slot (its hash tag puts it
/// there).
#[must_use]
pub fn slot_marker_key(instance: u128, slot: u16) -> String {
    format!(
        "resilient-redis:journal:{{{}}}:{instance:032x}",
        resilient_redis_pool::slot_tag(slot)
    )
}

/// The virtual deadlines hash of a journal instance in one Redis Cluster slot.
#[must_use]
pub fn slot_deadlines_key(instance: u128, slot: u16) -> String {
    format!("{}:deadlines", slot_marker_key(instance, slot))
}

/// The set of Redis Cluster slots a journal instance has replayed into (so that its last batch
/// can settle every slot's virtual deadlines, and the next instance can retire its markers).
#[must_use]
pub fn slots_key(instance: u128) -> String {
    format!("resilient-redis:journal:{instance:032x}:slots")
}

/// The set of Redis Cluster slots where a journal instance's replay may have left virtual
/// deadlines (a write whose deadline had passed by the time it was replayed): the slots its
/// last batch settles.
#[must_use]
pub fn deadline_slots_key(instance: u128) -> String {
    format!("resilient-redis:journal:{instance:032x}:deadline-slots")
}

/// Replays fallback batches into Redis with [`REPLAY_SCRIPT`], over the pool's shared
/// connection.
///
/// Against a Redis Cluster ([`RedisSyncTarget::per_slot`]) a batch is cut into runs of
/// consecutive entries whose keys share a slot: each run is one script call on that slot's
/// primary, declaring all its keys (so a slot being migrated is refused before anything runs),
/// with a marker of its own in the same slot, so no script touches two slots. Runs are applied
/// one after another, in the journal's order. A batch is then no longer applied all at once,
/// but each run at most once: a batch that fails part-way is retried, and the runs whose
/// markers cover it are skipped.
pub struct RedisSyncTarget {
    pool: Arc<dyn ConnectionPool>,
    script: redis::Script,
    per_slot: bool,
    /// Cluster mode: the slots where each journal instance may have left virtual deadlines,
    /// as this process recorded them (merged with Redis's record before settling, in case
    /// that was lost to a failover).
    deadline_slots: std::sync::Mutex<std::collections::HashMap<u128, BTreeSet<u16>>>,
}

/// Runs of a batch are numbered within it: a run's marker position is
/// `index * RUNS_PER_BATCH + run`.
const RUNS_PER_BATCH: u64 = 1 << 20;

/// Cluster requests sent at once by the settling and retiring steps.
const CONCURRENT_REQUESTS: usize = 64;

impl RedisSyncTarget {
    /// A target over `pool`, for one Redis (standalone or a Sentinel's primary).
    #[must_use]
    pub fn new(pool: Arc<dyn ConnectionPool>) -> Self {
        Self {
            pool,
            script: redis::Script::new(REPLAY_SCRIPT),
            per_slot: false,
            deadline_slots: std::sync::Mutex::default(),
        }
    }

    /// Cuts every batch by Redis Cluster key slot (for a pool of a Redis Cluster).
    #[must_use]
    pub fn per_slot(mut self) -> Self {
        self.per_slot = true;
        self
    }

    fn conn(&self) -> Result<resilient_redis_pool::SharedConnection, SyncError> {
        self.pool
            .shared()
            .map_err(|e| SyncError::new(e.kind(), e.to_string()))
    }

    /// Runs the script over `args`, declaring `keys` (the first one routes it).
    async fn invoke(&self, keys: &[&[u8]], args: Vec<Vec<u8>>) -> Result<BatchOutcome, SyncError> {
        let mut conn = self.conn()?;
        let mut invocation = self.script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(command_failed)?;
        outcome_of(&reply)
    }

    /// A cluster batch: retire the previous instance's markers, record the slots, apply each
    /// run in order, and after the last batch settle every slot's virtual deadlines.
    async fn apply_per_slot(&self, batch: &Batch<'_>) -> Result<BatchOutcome, SyncError> {
        let instance = batch.id.instance;
        if let Some(retired) = batch.retire {
            self.retire_slots(retired).await?;
        }
        let runs = split_into_runs(batch.entries);
        // Recorded before the runs, so a crash part-way cannot leave a slot unknown.
        let slots: BTreeSet<u16> = runs.iter().map(|r| r.slot).collect();
        if !slots.is_empty() {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(slots_key(instance))
                .arg(slots.iter().collect::<Vec<_>>());
            self.query::<i64>(&sadd).await?;
        }
        let expired: BTreeSet<u16> = runs
            .iter()
            .filter(|r| {
                r.entries
                    .iter()
                    .any(|e| expired_on_replay(&e.op, batch.now))
            })
            .map(|r| r.slot)
            .collect();
        if !expired.is_empty() {
            self.deadline_slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(instance)
                .or_default()
                .extend(expired.iter().copied());
            let mut sadd = redis::cmd("SADD");
            sadd.arg(deadline_slots_key(instance))
                .arg(expired.iter().collect::<Vec<_>>());
            self.query::<i64>(&sadd).await?;
        }
        let mut applied_now = false;
        let mut rejected = Vec::new();
        for (n, run) in runs.iter().enumerate() {
            let sub = Batch::new(batch.id, batch.now, false, &run.entries);
            let marker = slot_marker_key(instance, run.slot);
            let vd = slot_deadlines_key(instance, run.slot);
            let position = u64::from(batch.id.index) * RUNS_PER_BATCH + n as u64;
            let mut keys: Vec<&[u8]> = vec![marker.as_bytes(), vd.as_bytes()];
            for e in &run.entries {
                keys.extend(e.op.keys());
            }
            let outcome = self
                .invoke(&keys, script_args(&sub, position, &marker, &vd, None))
                .await?;
            let (run_rejected, now) = match outcome {
                BatchOutcome::Applied { rejected } => (rejected, true),
                BatchOutcome::AlreadyApplied { rejected } => (rejected, false),
                other => {
                    return Err(SyncError::new(
                        ErrorKind::Server,
                        format!("unexpected replay outcome {other:?}"),
                    ));
                }
            };
            applied_now |= now;
            for r in run_rejected {
                let original = run.origin.get(r.index).copied().ok_or_else(|| {
                    SyncError::new(ErrorKind::Server, "replay script refused an unknown entry")
                })?;
                rejected.push(Rejection::new(original, r.reason));
            }
        }
        if batch.last {
            self.settle_slots(instance, batch.now).await?;
        }
        rejected.sort_by_key(|r| r.index);
        rejected.dedup_by_key(|r| r.index);
        Ok(if applied_now {
            BatchOutcome::Applied { rejected }
        } else {
            BatchOutcome::AlreadyApplied { rejected }
        })
    }

    /// After an instance's last batch: settles the virtual deadlines of every slot that may
    /// hold some (Redis's record, read on its primary, and this process's), then forgets them.
    async fn settle_slots(&self, instance: u128, now: u64) -> Result<(), SyncError> {
        let mut slots: BTreeSet<u16> = self
            .query::<Vec<u16>>(
                redis::cmd("EVAL")
                    .arg(SMEMBERS_ON_PRIMARY)
                    .arg(1)
                    .arg(deadline_slots_key(instance)),
            )
            .await?
            .into_iter()
            .collect();
        slots.extend(
            self.deadline_slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&instance)
                .into_iter()
                .flatten(),
        );
        let now = padded(now);
        self.each_concurrently(slots.iter().map(|&slot| {
            let mut c = redis::cmd("EVAL");
            c.arg(SETTLE_SCRIPT)
                .arg(1)
                .arg(slot_deadlines_key(instance, slot))
                .arg(&now);
            c
        }))
        .await?;
        if !slots.is_empty() {
            let mut srem = redis::cmd("SREM");
            srem.arg(deadline_slots_key(instance))
                .arg(slots.iter().collect::<Vec<_>>());
            self.query::<i64>(&srem).await?;
        }
        self.deadline_slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&instance);
        Ok(())
    }

    /// Lets a fully replayed instance's per-slot markers expire (after a day) and drops its
    /// virtual deadlines.
    async fn retire_slots(&self, retired: u128) -> Result<(), SyncError> {
        let slots: Vec<u16> = self
            .query(
                redis::cmd("EVAL")
                    .arg(SMEMBERS_ON_PRIMARY)
                    .arg(1)
                    .arg(slots_key(retired)),
            )
            .await?;
        self.each_concurrently(slots.iter().map(|&slot| {
            let mut c = redis::cmd("EVAL");
            c.arg("redis.call('PEXPIRE', KEYS[1], ARGV[1]) redis.call('DEL', KEYS[2]) return 1")
                .arg(2)
                .arg(slot_marker_key(retired, slot))
                .arg(slot_deadlines_key(retired, slot))
                .arg(RETIRED_MARKER_TTL_MS);
            c
        }))
        .await?;
        for key in [slots_key(retired), deadline_slots_key(retired)] {
            self.query::<i64>(redis::cmd("PEXPIRE").arg(key).arg(RETIRED_MARKER_TTL_MS))
                .await?;
        }
        Ok(())
    }

    /// Sends `cmds` (each to its own slot), a few dozen at once; fails with the first failure.
    async fn each_concurrently(
        &self,
        cmds: impl Iterator<Item = redis::Cmd>,
    ) -> Result<(), SyncError> {
        let cmds: Vec<redis::Cmd> = cmds.collect();
        for chunk in cmds.chunks(CONCURRENT_REQUESTS) {
            let mut tasks = tokio::task::JoinSet::new();
            for cmd in chunk {
                let mut conn = self.conn()?;
                let cmd = cmd.clone();
                tasks.spawn(async move { conn.query::<redis::Value>(&cmd).await });
            }
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(pool_failed(e)),
                    Err(e) => return Err(SyncError::new(ErrorKind::Connection, e.to_string())),
                }
            }
        }
        Ok(())
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, SyncError> {
        self.conn()?.query(cmd).await.map_err(pool_failed)
    }
}

/// A set's members read on its primary (a script is never sent to a replica, even with
/// `read_from_replicas`): the replay's records must be current.
const SMEMBERS_ON_PRIMARY: &str = "return redis.call('SMEMBERS', KEYS[1])";

/// Whether replaying `op` at `now` may leave a virtual deadline (its deadline has passed).
fn expired_on_replay(op: &Op, now: u64) -> bool {
    match op {
        Op::Set {
            expire_at: Some(at),
            ..
        }
        | Op::ExpireAt { at, .. } => *at <= now,
        _ => false,
    }
}

fn command_failed(e: redis::RedisError) -> SyncError {
    // Not ready (a failover, a migration): transient, retried at the next sync, never a
    // failure of the journal.
    let kind = if resilient_redis_pool::not_ready(&e) {
        ErrorKind::Connection
    } else {
        resilient_redis_pool::classify(&e)
    };
    SyncError::new(kind, e.to_string())
}

fn pool_failed(e: resilient_redis_pool::PoolError) -> SyncError {
    match e {
        resilient_redis_pool::PoolError::Command { source, .. } => command_failed(source),
        other => SyncError::new(other.kind(), other.to_string()),
    }
}

/// A run of consecutive entries of a batch whose keys share a slot, and each one's index in
/// the batch.
struct SlotRun {
    slot: u16,
    entries: Vec<Entry>,
    origin: Vec<usize>,
}

/// Cuts `entries` into runs of consecutive entries whose keys share a slot, in order; a `DEL`
/// of keys in several slots becomes one `DEL` per slot, in place.
fn split_into_runs(entries: &[Entry]) -> Vec<SlotRun> {
    let mut runs: Vec<SlotRun> = Vec::new();
    let mut push = |slot: u16, entry: Entry, index: usize| match runs.last_mut() {
        Some(run) if run.slot == slot => {
            run.entries.push(entry);
            run.origin.push(index);
        }
        _ => runs.push(SlotRun {
            slot,
            entries: vec![entry],
            origin: vec![index],
        }),
    };
    for (index, e) in entries.iter().enumerate() {
        match &e.op {
            Op::Del { keys } => {
                let mut by_slot: Vec<(u16, Vec<Vec<u8>>)> = Vec::new();
                for key in keys {
                    let slot = resilient_redis_pool::key_slot(key);
                    match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                        Some((_, ks)) => ks.push(key.clone()),
                        None => by_slot.push((slot, vec![key.clone()])),
                    }
                }
                for (slot, keys) in by_slot {
                    push(slot, Entry::new(e.seq, e.at, Op::Del { keys }), index);
                }
            }
            op => {
                let slot = op
                    .keys()
                    .first()
                    .map_or(0, |k| resilient_redis_pool::key_slot(k));
                push(slot, e.clone(), index);
            }
        }
    }
    runs
}

#[async_trait::async_trait]
impl SyncTarget for RedisSyncTarget {
    async fn apply(&self, batch: &Batch<'_>) -> Result<BatchOutcome, SyncError> {
        if self.per_slot {
            return self.apply_per_slot(batch).await;
        }
        let marker = marker_key(batch.id.instance);
        let vd = deadlines_key(batch.id.instance);
        let retire = batch.retire.map(|r| (marker_key(r), deadlines_key(r)));
        let args = script_args(batch, u64::from(batch.id.index), &marker, &vd, retire);
        self.invoke(&[marker.as_bytes()], args).await
    }
}

/// The Lua functions both scripts use on deadlines kept as 20-digit strings: `cmp` compares
/// two without floating point, `int` strips their leading zeros for `PEXPIREAT`.
macro_rules! deadline_functions {
    () => {
        r"local function cmp(a, b)
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
"
    };
}

/// Settles one slot's virtual deadlines at the end of a cluster replay (`KEYS[1]` the
/// deadlines hash, `ARGV[1]` now as 20 digits): what [`REPLAY_SCRIPT`] does for its last batch.
pub const SETTLE_SCRIPT: &str = concat!(
    r"
local vdkey, now = KEYS[1], ARGV[1]
",
    deadline_functions!(),
    r"local vd = redis.call('HGETALL', vdkey)
for j = 1, #vd, 2 do
  if cmp(vd[j + 1], now) <= 0 then redis.call('DEL', vd[j]) else redis.call('PEXPIREAT', vd[j], int(vd[j + 1])) end
end
redis.call('DEL', vdkey)
return #vd / 2
"
);

/// The outcome from [`REPLAY_SCRIPT`]'s reply: `["1", index, reason, ...]` when the batch ran
/// now, `["0", index, reason, ...]` when its marker showed it had run before (indexes of
/// refused entries, from 1).
fn outcome_of(reply: &[String]) -> Result<BatchOutcome, SyncError> {
    let bad = || {
        SyncError::new(
            ErrorKind::Server,
            format!("unexpected replay script reply ({} items)", reply.len()),
        )
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

/// The Lua script that applies one batch on Redis (`EVAL` with no keys; everything in `ARGV`:
/// the marker and deadlines keys, seal, index, now, last flag, the retired instance's keys,
/// then each write as a one-letter code, its time and its arguments). Redis runs a script atomically. It first checks the whole batch's
/// shape and writes nothing if it is malformed; then each write is `pcall`ed so that one refused
/// write (`WRONGTYPE`, not an integer) is reported as a dead letter instead of stopping the
/// batch half-way. Hash writes go in chunks of at most 1000 arguments (Lua's `unpack` has a
/// limit of a few thousand). An `OOM` refusal can only come before the script's first write, so it
/// aborts the whole batch, to be retried. Deadlines travel as 20-digit strings and are compared
/// without floating point, so every deadline Redis accepts replays exactly. The marker (the last
/// batch applied, per journal instance) is set last.
pub const REPLAY_SCRIPT: &str = concat!(
    r"
local marker, vdkey = ARGV[1], ARGV[2]
local seal, index = tonumber(ARGV[3]), tonumber(ARGV[4])
local now, last = ARGV[5], ARGV[6]
local retire, retire_vd = ARGV[7], ARGV[8]
local ZERO = '00000000000000000000'
",
    deadline_functions!(),
    r"local function digits(s) return type(s) == 'string' and #s == 20 and not string.find(s, '%D') end
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
"
);

/// A Unix-millisecond time or deadline as the script reads it: 20 digits.
fn padded(n: u64) -> Vec<u8> {
    format!("{n:020}").into_bytes()
}

/// The `ARGV` of [`REPLAY_SCRIPT`] for `batch`: marker, deadlines hash, seal, index, now, last
/// flag, the retired instance's marker and deadlines hash (or empty), then each entry as
/// `code, time, ...`.
fn script_args(
    batch: &Batch<'_>,
    position: u64,
    marker: &str,
    deadlines: &str,
    retire: Option<(String, String)>,
) -> Vec<Vec<u8>> {
    let (retire, retire_vd) = retire.map_or((Vec::new(), Vec::new()), |(m, d)| {
        (m.into_bytes(), d.into_bytes())
    });
    let mut argv: Vec<Vec<u8>> = vec![
        marker.as_bytes().to_vec(),
        deadlines.as_bytes().to_vec(),
        batch.id.seal.to_string().into_bytes(),
        position.to_string().into_bytes(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_batch_is_cut_into_runs_in_journal_order() {
        // Keys of two slots, interleaved: B, A, B, then a DEL over both.
        let (a, b) = (b"{a}x".to_vec(), b"{b}x".to_vec());
        assert_ne!(
            resilient_redis_pool::key_slot(&a),
            resilient_redis_pool::key_slot(&b)
        );
        let set = |k: &[u8]| Op::Set {
            key: k.to_vec(),
            value: b"v".to_vec(),
            expire_at: None,
        };
        let entries = vec![
            Entry::new(1, 1, set(&b)),
            Entry::new(2, 1, set(&a)),
            Entry::new(3, 1, set(&b)),
            Entry::new(
                4,
                1,
                Op::Del {
                    keys: vec![b.clone(), a.clone(), b"{b}y".to_vec()],
                },
            ),
        ];
        let runs = split_into_runs(&entries);
        let shape: Vec<(u16, Vec<usize>)> =
            runs.iter().map(|r| (r.slot, r.origin.clone())).collect();
        let (sa, sb) = (
            resilient_redis_pool::key_slot(&a),
            resilient_redis_pool::key_slot(&b),
        );
        // The DEL's B keys join the run before it; its A key follows, as in the journal.
        assert_eq!(
            shape,
            [
                (sb, vec![0]),
                (sa, vec![1]),
                (sb, vec![2, 3]),
                (sa, vec![3])
            ]
        );
        let Op::Del { keys } = &runs[2].entries[1].op else {
            panic!("{:?}", runs[2].entries)
        };
        assert_eq!(keys, &[b.clone(), b"{b}y".to_vec()]);
    }

    #[test]
    fn script_replies_of_another_shape_are_errors_not_outcomes() {
        let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            outcome_of(&s(&["1", "2", "WRONGTYPE"])).unwrap(),
            BatchOutcome::Applied {
                rejected: vec![Rejection::new(1, "WRONGTYPE")]
            }
        );
        assert!(matches!(
            outcome_of(&s(&["0"])).unwrap(),
            BatchOutcome::AlreadyApplied { .. }
        ));
        for bad in [
            &[][..],
            &["2"],
            &["1", "0", "x"],
            &["1", "x", "y"],
            &["1", "3"],
        ] {
            assert!(outcome_of(&s(bad)).is_err(), "{bad:?}");
        }
    }
}
