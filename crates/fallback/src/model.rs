//! [`ModelTarget`]: Redis in memory, for testing replays without a server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::op::{Entry, Op};
use crate::replay::{Batch, BatchOutcome, Rejection, SyncError, SyncTarget};

/// A value in the model.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelValue {
    /// A string.
    Str(Vec<u8>),
    /// A hash.
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    value: ModelValue,
    expire_at: Option<u64>,
}

#[derive(Default)]
struct State {
    keys: HashMap<Vec<u8>, Slot>,
    /// The last batch applied per journal instance: `(seal, index)`.
    markers: HashMap<u128, (u64, u32, Vec<Rejection>)>,
    /// Virtual deadlines of replays in progress, by journal instance.
    virtual_deadlines: HashMap<u128, HashMap<Vec<u8>, u64>>,
    batches: u32,
}

/// An in-memory model of the Redis commands a replay uses, with Redis's TTL rules. Apply writes
/// directly at their time with [`ModelTarget::apply_direct`], or replay batches into it as a
/// [`SyncTarget`] (the same algorithm as the manager's Redis replay script), then compare
/// [`ModelTarget::snapshot`]s.
#[derive(Default)]
pub struct ModelTarget {
    state: Mutex<State>,
    /// Fail the call with this index (0-based, counting every `apply`), once.
    fail_at: Mutex<Option<u32>>,
}

/// Live keys at a time: value and deadline.
pub type Snapshot = BTreeMap<Vec<u8>, (ModelValue, Option<u64>)>;

impl ModelTarget {
    /// An empty model.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`-th `apply` call from now (0 = the next) fail with an unknown outcome:
    /// half of the time after applying the batch (as when a reply is lost), half before.
    pub fn fail_call(&self, n: u32) {
        let batches = self.lock().batches;
        *self
            .fail_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(batches + n);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies one write at time `at`, as Redis would have then.
    pub fn apply_direct(&self, op: &Op, at: u64) {
        let mut s = self.lock();
        for key in op.keys() {
            purge(&mut s.keys, key, at);
        }
        match op {
            Op::Set {
                key,
                value,
                expire_at,
            } => {
                if expire_at.is_some_and(|d| d <= at) {
                    s.keys.remove(key);
                } else {
                    s.keys.insert(
                        key.clone(),
                        Slot {
                            value: ModelValue::Str(value.clone()),
                            expire_at: *expire_at,
                        },
                    );
                }
            }
            Op::Del { keys } => {
                for k in keys {
                    s.keys.remove(k);
                }
            }
            Op::ExpireAt { key, at: deadline } => {
                if *deadline <= at {
                    s.keys.remove(key);
                } else if let Some(slot) = s.keys.get_mut(key) {
                    slot.expire_at = Some(*deadline);
                }
            }
            Op::IncrBy { .. } | Op::HSet { .. } | Op::HDel { .. } => {
                let _ = write_value(&mut s.keys, op);
            }
        }
    }

    /// The live keys at `now` (replay bookkeeping excluded).
    #[must_use]
    pub fn snapshot(&self, now: u64) -> Snapshot {
        let s = self.lock();
        s.keys
            .iter()
            .filter(|(_, slot)| slot.expire_at.is_none_or(|d| d > now))
            .map(|(k, slot)| (k.clone(), (slot.value.clone(), slot.expire_at)))
            .collect()
    }

    /// Batches received (including failed and skipped ones).
    #[must_use]
    pub fn calls(&self) -> u32 {
        self.lock().batches
    }

    fn apply_batch(s: &mut State, batch: &Batch<'_>) -> BatchOutcome {
        if let Some((seal, index, rejected)) = s.markers.get(&batch.id.instance)
            && batch.id.covered_by(*seal, *index)
        {
            let same = (*seal, *index) == (batch.id.seal, batch.id.index);
            return BatchOutcome::AlreadyApplied {
                rejected: if same { rejected.clone() } else { Vec::new() },
            };
        }
        if let Some(old) = batch.retire {
            s.markers.remove(&old);
            s.virtual_deadlines.remove(&old);
        }
        let vd_key = batch.id.instance;
        let mut vd = s.virtual_deadlines.remove(&vd_key).unwrap_or_default();
        let now = batch.now;
        let mut rejected = Vec::new();
        for (index, Entry { at, op, .. }) in batch.entries.iter().enumerate() {
            let t = *at;
            let mut settle = |keys: &mut HashMap<Vec<u8>, Slot>, k: &[u8]| {
                purge(keys, k, now);
                if vd.get(k).is_some_and(|d| *d <= t) {
                    keys.remove(k);
                    vd.remove(k);
                }
            };
            match op {
                Op::Set {
                    key,
                    value,
                    expire_at,
                } => {
                    settle(&mut s.keys, key);
                    s.keys.insert(
                        key.clone(),
                        Slot {
                            value: ModelValue::Str(value.clone()),
                            expire_at: None,
                        },
                    );
                    vd.remove(key);
                    if let Some(d) = expire_at {
                        set_deadline(&mut s.keys, &mut vd, key, *d, now);
                    }
                }
                Op::Del { keys } => {
                    for k in keys {
                        s.keys.remove(k);
                        vd.remove(k);
                    }
                }
                Op::ExpireAt { key, at: d } => {
                    settle(&mut s.keys, key);
                    if s.keys.contains_key(key) {
                        set_deadline(&mut s.keys, &mut vd, key, *d, now);
                    }
                }
                Op::IncrBy { key, .. } | Op::HSet { key, .. } | Op::HDel { key, .. } => {
                    settle(&mut s.keys, key);
                    if let Err(reason) = write_value(&mut s.keys, op) {
                        rejected.push(Rejection::new(index, reason));
                    }
                    if !s.keys.contains_key(key) {
                        // HDEL of the last field deleted the key, and its deadline with it.
                        vd.remove(key);
                    }
                }
            }
        }
        if batch.last {
            for (k, d) in vd.drain() {
                if d <= now {
                    s.keys.remove(&k);
                } else if let Some(slot) = s.keys.get_mut(&k) {
                    slot.expire_at = Some(d);
                }
            }
        } else if !vd.is_empty() {
            s.virtual_deadlines.insert(vd_key, vd);
        }
        s.markers.insert(
            batch.id.instance,
            (batch.id.seal, batch.id.index, rejected.clone()),
        );
        BatchOutcome::Applied { rejected }
    }
}

fn purge(keys: &mut HashMap<Vec<u8>, Slot>, key: &[u8], now: u64) {
    if keys
        .get(key)
        .is_some_and(|slot| slot.expire_at.is_some_and(|d| d <= now))
    {
        keys.remove(key);
    }
}

fn set_deadline(
    keys: &mut HashMap<Vec<u8>, Slot>,
    vd: &mut HashMap<Vec<u8>, u64>,
    key: &[u8],
    d: u64,
    now: u64,
) {
    let Some(slot) = keys.get_mut(key) else {
        return;
    };
    if d > now {
        slot.expire_at = Some(d);
        vd.remove(key);
    } else {
        slot.expire_at = None;
        vd.insert(key.to_vec(), d);
    }
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";

/// INCRBY / HSET / HDEL with Redis's type rules; `Err` with Redis's reply for a wrong type, a
/// non-integer or an overflow (nothing changed then).
fn write_value(keys: &mut HashMap<Vec<u8>, Slot>, op: &Op) -> Result<(), &'static str> {
    match op {
        Op::IncrBy { key, delta } => {
            let n: i64 = match keys.get(key).map(|slot| &slot.value) {
                None => 0,
                Some(ModelValue::Str(text)) => std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or(NOT_INTEGER)?,
                Some(ModelValue::Hash(_)) => return Err(WRONGTYPE),
            };
            let value = ModelValue::Str(
                n.checked_add(*delta)
                    .ok_or(OVERFLOW)?
                    .to_string()
                    .into_bytes(),
            );
            match keys.get_mut(key) {
                Some(slot) => slot.value = value,
                None => {
                    keys.insert(
                        key.clone(),
                        Slot {
                            value,
                            expire_at: None,
                        },
                    );
                }
            }
            Ok(())
        }
        Op::HSet { key, fields } => {
            let slot = keys.entry(key.clone()).or_insert(Slot {
                value: ModelValue::Hash(BTreeMap::new()),
                expire_at: None,
            });
            let ModelValue::Hash(map) = &mut slot.value else {
                return Err(WRONGTYPE);
            };
            for (f, v) in fields {
                map.insert(f.clone(), v.clone());
            }
            Ok(())
        }
        Op::HDel { key, fields } => {
            let Some(slot) = keys.get_mut(key) else {
                return Ok(());
            };
            let ModelValue::Hash(map) = &mut slot.value else {
                return Err(WRONGTYPE);
            };
            for f in fields {
                map.remove(f);
            }
            if map.is_empty() {
                keys.remove(key);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl SyncTarget for ModelTarget {
    async fn apply(&self, batch: &Batch<'_>) -> Result<BatchOutcome, SyncError> {
        let mut s = self.lock();
        let call = s.batches;
        s.batches += 1;
        let fail = {
            let mut f = self
                .fail_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *f == Some(call) {
                *f = None;
                true
            } else {
                false
            }
        };
        let lost_reply = fastrand::bool();
        if fail && !lost_reply {
            return Err(SyncError::new(
                resilient_redis_config::ErrorKind::Connection,
                "connection reset before the batch",
            ));
        }
        let outcome = Self::apply_batch(&mut s, batch);
        if fail {
            return Err(SyncError::new(
                resilient_redis_config::ErrorKind::Connection,
                "connection reset after the batch",
            ));
        }
        Ok(outcome)
    }
}
