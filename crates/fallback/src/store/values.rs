//! The values memory holds: reading them, writing them (journal first, then memory, under one
//! lock), their byte costs and the budget that bounds them; and the store side of the trait.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::{Answer, FallbackStore, ReadCmd, Ttl, WriteCmd};

pub(super) fn entry_bytes(op: &Op) -> u64 {
    op.heap_bytes() + ENTRY_OVERHEAD
}

pub(super) fn dead_bytes(d: &DeadLetter) -> u64 {
    entry_bytes(&d.entry.op) + d.reason.len() as u64
}

/// At most the bytes the written value `op` leaves takes (`local_bytes` of it): a counter's
/// digits, a hash's fields with their overhead.
pub(super) fn value_bound(op: &Op) -> u64 {
    let of_key = |k: &[u8]| k.len() as u64 + VALUE_OVERHEAD;
    match op {
        // As `local_bytes` of the string, without building it.
        Op::Set { key, value, .. } => of_key(key) + value.len() as u64,
        Op::Del { keys } => keys.iter().map(|k| of_key(k)).sum(),
        Op::ExpireAt { key, .. } | Op::HDel { key, .. } => of_key(key),
        // i64::MIN is 20 characters.
        Op::IncrBy { key, .. } => of_key(key) + 20,
        Op::HSet { key, fields } => {
            of_key(key)
                + fields
                    .iter()
                    .map(|(f, v)| (f.len() + v.len()) as u64 + FIELD_OVERHEAD)
                    .sum::<u64>()
        }
    }
}

pub(super) fn local_bytes(key: &[u8], value: &Local) -> u64 {
    let v = match value {
        Local::Str(s) => s.len(),
        Local::Hash(m) => m
            .iter()
            .map(|(f, v)| (f.len() + v.len()) as u64 + FIELD_OVERHEAD)
            .sum::<u64>() as usize,
        Local::Gone => 0,
    };
    (key.len() + v) as u64 + VALUE_OVERHEAD
}

/// Drops every shadow-like written value (already replayed) to make room, but those of `keep`.
pub(super) fn evict_settled(
    state: &mut State,
    shadow: Option<&moka::sync::Cache<Vec<u8>, Arc<Shadow>>>,
    keep: &[&[u8]],
) {
    if state.settled == 0 {
        return;
    }
    let mut kept = 0;
    state.written.retain(|key, w| {
        if !w.settled {
            return true;
        }
        if keep.contains(&key.as_slice()) {
            kept += w.bytes;
            return true;
        }
        if let Some(cache) = shadow {
            cache.invalidate(key);
        }
        false
    });
    state.settled = kept;
}

/// Applies a journaled write to the written values (no journaling, no checks).
pub(super) fn apply_local(state: &mut State, e: &Entry) {
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

impl MemoryStore {
    /// The value the store holds for `key` now (written first, then shadow).
    pub(super) fn read_key(&self, state: &State, key: &[u8]) -> (Option<Local>, Option<u64>) {
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
    pub(super) fn journal_ops(&self, ops: Vec<Op>) -> Result<(), FallbackError> {
        self.write_with(ops, |_| Ok(()))
    }

    /// Journals `ops` and applies them locally, all under one lock: `inspect` reads values as
    /// they are before the write, may refuse it (a wrong type, say), and gives the answer, so
    /// no other writer can slip between what the caller is told and what is journaled.
    /// A value known only as a shadow copy is carried into the written values first, so that
    /// INCRBY and PEXPIREAT apply to it locally.
    pub(super) fn write_with<T>(
        &self,
        ops: Vec<Op>,
        inspect: impl FnOnce(&dyn Fn(&[u8]) -> Option<Local>) -> Result<T, FallbackError>,
    ) -> Result<T, FallbackError> {
        ops.iter().try_for_each(validate)?;
        let mut state = self.lock();
        if state.closed {
            return Err(FallbackError::Closed);
        }
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
        // An upper bound of what the write adds: its entries and the values they leave. (A
        // shadow copy it carries into a written value leaves the cache, which held it for more.)
        let needed: u64 = entries
            .iter()
            .map(|e| entry_bytes(&e.op) + value_bound(&e.op))
            .sum();
        let limit = self.config.max_memory_size;
        // Shadow copies stored meanwhile (without the lock) see what this write may take, and
        // give way (published again, as it is, when the lock is released).
        self.held.store(
            state.pinned + state.settled + needed,
            std::sync::atomic::Ordering::SeqCst,
        );
        // The shadow cache holds at most half the bound, so below half nothing needs checking.
        if state.pinned + state.settled + needed > limit / 2
            && state.pinned + state.settled + needed + self.shadow_bytes() > limit
        {
            // Shadow copies and values already replayed give way to writes.
            let keys: Vec<&[u8]> = entries.iter().flat_map(|e| e.op.keys()).collect();
            self.make_room(&mut state, &keys);
            // (Values the write's own keys kept, replayed or not, still count.)
            if state.pinned + state.settled + needed + self.shadow_bytes() > limit {
                return Err(FallbackError::Full {
                    needed,
                    used: state.pinned,
                    limit,
                });
            }
        }
        // Read after making room: the answer comes from the values the write is applied to.
        let answer = {
            let st = &*state;
            inspect(&|k: &[u8]| self.read_key(st, k).0)?
        };
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

    /// Drops every shadow copy and every value already replayed, but those of `keep` (the keys
    /// of the write being made, which answers from them): room for what must be kept.
    pub(super) fn make_room(&self, state: &mut State, keep: &[&[u8]]) {
        if let Some(shadow) = &self.shadow {
            if keep.is_empty() {
                shadow.invalidate_all();
            } else {
                // One by one (only on the way to the bound): a copy put back after
                // `invalidate_all` in the same clock tick would count as invalidated too.
                for (key, _) in shadow.iter() {
                    if !keep.contains(&key.as_slice()) {
                        shadow.invalidate(key.as_slice());
                    }
                }
            }
            shadow.run_pending_tasks();
        }
        evict_settled(state, self.shadow.as_ref(), keep);
    }

    /// A key written now that the store knows only as a live shadow copy: its value becomes a
    /// written value (so local INCRBY/PEXPIREAT start from it); Redis still gets the op alone.
    /// The shadow copy goes: the written value answers for the key from now on.
    pub(super) fn carry_shadow(&self, state: &mut State, key: &[u8], seq: u64) {
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
        if let Some(shadow) = &self.shadow {
            shadow.invalidate(key);
        }
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
    pub(super) fn release_settled(&self, state: &mut State) {
        if state.settled == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let shadow = self.shadow.as_ref();
        // Copies only while what stays pinned leaves the cache its half of the bound.
        let copies = state.pinned <= self.config.max_memory_size / 2;
        state.written.retain(|key, w| {
            if !w.settled {
                return true;
            }
            if let Some(cache) = shadow {
                match &w.value {
                    Local::Str(v) if copies && w.expire_at.is_none_or(|d| d > now) => cache.insert(
                        key.clone(),
                        Arc::new(Shadow {
                            value: Some(v.clone()),
                            expire_at: w.expire_at,
                        }),
                    ),
                    // A delete, an expiry or a hash (or no room): an older copy must not
                    // answer for it.
                    _ => cache.invalidate(key),
                }
            }
            false
        });
        state.settled = 0;
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
        // The cache may fill half the bound; past that, pending writes, dead letters and the
        // values already replayed use it, and a copy (only ever a convenience) is not kept.
        let half = self.config.max_memory_size / 2;
        if self.held.load(std::sync::atomic::Ordering::SeqCst) > half {
            shadow.invalidate(key);
            return;
        }
        let Ok(expire_at) = ttl.map(|t| self.deadline(t)).transpose() else {
            return;
        };
        shadow.insert(key.to_vec(), Arc::new(Shadow { value, expire_at }));
        // A write that took the room meanwhile (it publishes what it may take before it counts
        // the cache): this copy goes again.
        if self.held.load(std::sync::atomic::Ordering::SeqCst) > half {
            shadow.invalidate(key);
        }
    }

    fn settle(&self) {
        // Reads go to Redis again: the values already replayed are no longer needed.
        self.release_settled(&mut self.lock());
    }
}
