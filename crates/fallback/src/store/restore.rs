//! Opening a store: the journal file is locked, read and restored into memory.

use std::sync::Arc;

use super::*;

impl MemoryStore {
    pub(super) fn open(
        config: &FallbackConfig,
        clock: Arc<dyn Clock>,
        server: String,
        key: Option<crate::JournalKey>,
    ) -> Result<Self, FallbackError> {
        let mut whole = resilient_redis_config::RedisConfig::default();
        whole.fallback = config.clone();
        whole.validate()?;
        let key = match (key, &config.journal_key_file) {
            (Some(key), _) => Some(key),
            (None, Some(file)) => Some(crate::JournalKey::from_file(file)?),
            (None, None) => None,
        };
        let shadow = config.shadow.then(|| {
            moka::sync::Cache::builder()
                .max_capacity((config.max_memory_size / 2).max(1))
                .weigher(|k: &Vec<u8>, v: &Arc<Shadow>| {
                    let bytes = k.len() as u64
                        + v.value.as_ref().map_or(0, |x| x.len() as u64)
                        + SHADOW_OVERHEAD;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build()
        });
        let mut state = State {
            written: HashMap::new(),
            journal: VecDeque::new(),
            next_seq: 1,
            seal: None,
            pinned: 0,
            settled: 0,
            file: None,
            header: Header::fresh(0, server.clone()),
            dead: Vec::new(),
            closed: false,
        };
        let mut cut = None;
        if let Some(path) = &config.journal_path {
            let opened = JournalFile::open(path, config.journal_fsync, key).map_err(|source| {
                if is_locked(&source) {
                    FallbackError::JournalInUse {
                        path: path.clone(),
                        reason: source.to_string(),
                    }
                } else {
                    journal_error(path, source)
                }
            })?;
            let mut file = opened.file;
            match opened.contents {
                None => {
                    file.rewrite(&state.header, &[])
                        .map_err(|e| journal_error(path, e))?;
                }
                Some(contents) => {
                    cut = contents.cut.clone();
                    restore(&mut state, contents, &server, config, path)?;
                    let records = records_of(&state);
                    file.rewrite(&state.header, &records)
                        .map_err(|e| journal_error(path, e))?;
                }
            }
            if let Some(c) = &cut {
                tracing::warn!(
                    offset = c.offset,
                    dropped = c.dropped,
                    truncated = c.truncated,
                    "journal file held damaged bytes; kept every whole record around them"
                );
            }
            state.file = Some(file);
        }
        let store = Self {
            held: std::sync::atomic::AtomicU64::new(state.pinned + state.settled),
            state: Mutex::new(state),
            shadow,
            replaying: tokio_free::Flag::default(),
            clock,
            config: config.clone(),
            cut,
        };
        // Values whose writes were replayed before the restart are not needed.
        store.release_settled(&mut store.lock());
        Ok(store)
    }
}

/// Rebuilds the store's state from a journal file's contents.
pub(super) fn restore(
    state: &mut State,
    contents: Contents,
    server: &str,
    config: &FallbackConfig,
    path: &std::path::Path,
) -> Result<(), FallbackError> {
    let Contents {
        header,
        records,
        v1,
        ..
    } = contents;
    state.header = header;
    for record in records {
        match record {
            Record::Entry(e) => {
                state.next_seq = state.next_seq.max(e.seq + 1);
                apply_local(state, &e);
                let b = entry_bytes(&e.op);
                state.pinned += b;
                state.journal.push_back((e, b));
            }
            Record::Seal { last, ends } => {
                // A seal is only begun once the one before it finished: if its `Done` never
                // reached the file, it finished all the same.
                finish_seal(state);
                state.seal = Some(Seal {
                    last,
                    ends,
                    done: 0,
                });
            }
            Record::Progress(done) => {
                if let Some(seal) = &mut state.seal {
                    seal.done = done;
                }
            }
            Record::Done => finish_seal(state),
            Record::DeadLetter(d) => {
                state.pinned += dead_bytes(&d);
                state.dead.push(d);
            }
        }
    }
    let pending = !state.journal.is_empty() || state.seal.is_some();
    if v1 {
        if state.seal.is_some() {
            return Err(journal_error(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "this journal was written by an earlier version and a replay of it is in \
                     progress: finish it with that version first",
                ),
            ));
        }
        // Its entries were never replayed: a new instance in the current format. Entries the
        // earlier version accepted but Redis would refuse become dead letters now.
        state.header = Header::fresh(0, server.to_owned());
        let journal = std::mem::take(&mut state.journal);
        for (e, b) in journal {
            match validate(&e.op) {
                Ok(()) => state.journal.push_back((e, b)),
                Err(why) => {
                    state.pinned = state.pinned.saturating_sub(b);
                    let letter = DeadLetter::new(e, format!("refused at restore: {why}"));
                    state.pinned += dead_bytes(&letter);
                    state.dead.push(letter);
                }
            }
        }
    }
    if !server.is_empty() && state.header.server != server {
        if pending && !state.header.server.is_empty() && !config.replay_to_other_server {
            return Err(FallbackError::OtherServer {
                path: path.to_owned(),
                journal: state.header.server.clone(),
                configured: server.to_owned(),
            });
        }
        if pending && !state.header.server.is_empty() {
            tracing::warn!(
                journal = %state.header.server,
                configured = %server,
                "replaying a journal written for another server (fallback.replay_to_other_server)"
            );
        }
        state.header.server = server.to_owned();
    }
    Ok(())
}
