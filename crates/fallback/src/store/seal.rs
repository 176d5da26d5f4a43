//! The replay as a state machine: a seal fixes which entries a replay covers and where its
//! batches end; progress and completion reach the journal file before memory; refused writes
//! become dead letters.

use std::sync::Arc;

use super::*;
use crate::Journal;

/// What one entry weighs in a replay batch (its argument bytes).
pub(super) fn batch_weight(op: &Op) -> u64 {
    op.heap_bytes() + 64
}

/// Cuts the sealed entries into batches: at most `size` entries and `bytes` bytes each (one
/// entry at least). Deterministic, so a restored replay cuts the same batches.
pub(super) fn cut_batches(entries: impl Iterator<Item = u64>, size: u32, bytes: u64) -> Vec<usize> {
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

/// The batches of a new seal over `entries` (the sealed ones, in order): the sequence number
/// each batch ends at.
pub(super) fn seal_ends<'a>(
    entries: impl Iterator<Item = &'a Entry> + Clone,
    size: u32,
) -> Vec<u64> {
    let seqs: Vec<u64> = entries.clone().map(|e| e.seq).collect();
    cut_batches(
        entries.map(|e| batch_weight(&e.op)),
        size,
        REPLAY_BATCH_BYTES,
    )
    .into_iter()
    .map(|end| seqs[end - 1])
    .collect()
}

/// The records that reproduce `state`'s journal: dead letters, pending entries, and the replay
/// in progress.
pub(super) fn records_of(state: &State) -> Vec<Record> {
    let mut records: Vec<Record> = state.dead.iter().cloned().map(Record::DeadLetter).collect();
    records.extend(state.journal.iter().map(|(e, _)| Record::Entry(e.clone())));
    if let Some(seal) = &state.seal {
        records.push(Record::Seal {
            last: seal.last,
            ends: seal.ends.clone(),
        });
        if seal.done > 0 {
            records.push(Record::Progress(seal.done));
        }
    }
    records
}

/// The sealed entries are replayed: drops them from the journal; the written values only they
/// wrote are settled (readable, no longer pinned).
pub(super) fn finish_seal(state: &mut State) {
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

impl MemoryStore {
    /// Keeps dead letters in memory (the journal file already holds them). They are never
    /// dropped: past the bound, shadow copies and values already replayed give way to them,
    /// and if that is not enough the store holds more than its bound until an operator
    /// discards them.
    pub(super) fn keep_dead(&self, state: &mut State, buried: Vec<DeadLetter>) {
        if buried.is_empty() {
            return;
        }
        for letter in buried {
            state.pinned += dead_bytes(&letter);
            state.dead.push(letter);
        }
        if state.pinned + state.settled + self.shadow_bytes() > self.config.max_memory_size {
            self.make_room(state, &[]);
        }
    }

    /// The sealed entries are all replayed: the journal file records it first (with the
    /// batch's new dead letters), then they leave the journal; their values stay readable while
    /// fallback mode is on. A drained journal starts a new instance, so batch ids never repeat,
    /// and keeps only its dead letters. On a file error nothing changes in memory.
    pub(super) fn complete_seal(
        &self,
        state: &mut State,
        buried: Vec<DeadLetter>,
    ) -> Result<(), FallbackError> {
        let last = state.seal.as_ref().map_or(0, |s| s.last);
        let drained = state.journal.back().is_none_or(|(e, _)| e.seq <= last);
        let header = Header::fresh(state.header.instance, state.header.server.clone());
        if let Some(file) = &mut state.file {
            let result = if drained {
                let records: Vec<Record> = state
                    .dead
                    .iter()
                    .chain(&buried)
                    .cloned()
                    .map(Record::DeadLetter)
                    .collect();
                file.rewrite(&header, &records)
            } else {
                let mut records: Vec<Record> =
                    buried.iter().cloned().map(Record::DeadLetter).collect();
                records.push(Record::Done);
                file.append(&records)
            };
            result.map_err(|e| journal_error(file.path(), e))?;
        }
        self.keep_dead(state, buried);
        // Values this seal settled stay readable until `settle` (fallback mode ended): the
        // manager may still be answering from memory (writes queued behind the seal, a new
        // outage). They are no longer pinned, so they give way under memory pressure.
        finish_seal(state);
        if drained {
            state.header = header;
            state.next_seq = 1;
        }
        Ok(())
    }

    /// The writes the target refused, as dead letters (not yet kept).
    pub(super) fn bury(
        id: BatchId,
        entries: &[Entry],
        rejected: Vec<Rejection>,
    ) -> Vec<DeadLetter> {
        rejected
            .into_iter()
            .filter_map(|r| {
                let entry = entries.get(r.index)?;
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
                Some(DeadLetter::new(entry.clone(), r.reason))
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Journal for MemoryStore {
    fn pending_writes(&self) -> u64 {
        self.lock().journal.len() as u64
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
                    let ends = seal_ends(
                        state.journal.iter().map(|(e, _)| e),
                        self.config.replay_batch_size,
                    );
                    if let Some(file) = &mut state.file {
                        file.append(&[Record::Seal {
                            last,
                            ends: ends.clone(),
                        }])
                        .map_err(|e| journal_error(file.path(), e))?;
                    }
                    state.seal = Some(Seal {
                        last,
                        ends,
                        done: 0,
                    });
                }
                let Some(seal) = state.seal.as_ref() else {
                    break;
                };
                let index = seal.done as usize;
                let Some(&end) = seal.ends.get(index) else {
                    self.complete_seal(&mut state, Vec::new())?;
                    continue;
                };
                let start = index.checked_sub(1).map_or(0, |i| seal.ends[i]);
                let last = index + 1 == seal.ends.len();
                let id = BatchId::new(state.header.instance, seal.last, seal.done);
                let entries: Vec<Entry> = state
                    .journal
                    .iter()
                    .map(|(e, _)| e)
                    .skip_while(|e| e.seq <= start)
                    .take_while(|e| e.seq <= end)
                    .cloned()
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
            let (rejected, applied) = match outcome {
                BatchOutcome::Applied { rejected } => (rejected, true),
                BatchOutcome::AlreadyApplied { rejected } => (rejected, false),
            };
            let refused = rejected.len();
            let buried = Self::bury(id, &entries, rejected);
            // The file learns of the batch (and what it refused) before memory does; if that
            // fails, the batch is sent again next time and the marker gives its refusals back.
            if last {
                self.complete_seal(&mut state, buried)?;
            } else {
                let done = state.seal.as_ref().map_or(0, |s| s.done) + 1;
                if let Some(file) = &mut state.file {
                    let mut records: Vec<Record> =
                        buried.iter().cloned().map(Record::DeadLetter).collect();
                    records.push(Record::Progress(done));
                    file.append(&records)
                        .map_err(|e| journal_error(file.path(), e))?;
                }
                self.keep_dead(&mut state, buried);
                if let Some(seal) = &mut state.seal {
                    seal.done = done;
                }
            }
            report.rejected += refused as u64;
            if applied {
                report.batches_applied += 1;
                report.entries_applied += (entries.len() - refused) as u64;
            } else {
                report.batches_skipped += 1;
            }
        }
        report.pending = self.pending_writes();
        Ok(report)
    }

    fn close(&self) -> Result<(), FallbackError> {
        let mut state = self.lock();
        state.closed = true;
        let pending = state.journal.len() as u64;
        if state.file.is_none() && pending == 0 && !state.dead.is_empty() {
            return Err(FallbackError::DeadLettersAtClose {
                dead_letters: state.dead.len() as u64,
            });
        }
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
