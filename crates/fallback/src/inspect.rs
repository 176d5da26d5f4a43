//! Reading a journal file from outside its store: what is pending, what is dead-lettered, which
//! server it belongs to. For operators (`resilient-redis journal inspect PATH`).

use std::path::Path;

use crate::FallbackError;
use crate::journal::{Cut, decode_file};
use crate::op::{DeadLetter, Entry, Record};

/// What a journal file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalReport {
    /// The server its writes replay into (`host:port/db`), empty when unknown.
    pub server: String,
    /// Its instance id (part of every batch id; renewed each time the journal drains).
    pub instance: u128,
    /// Writes acknowledged and not yet replayed, in order.
    pub pending: Vec<Entry>,
    /// A replay in progress: the last sequence number it covers, its number of batches, and
    /// the batches recorded as applied.
    pub replay: Option<(u64, u32, u32)>,
    /// Writes Redis refused at replay.
    pub dead_letters: Vec<DeadLetter>,
    /// Damaged bytes found (a store opening the file drops them, keeping every whole record).
    pub cut: Option<Cut>,
    /// Written by the first journal format.
    pub first_format: bool,
}

/// Reads the journal file at `path` without taking its lock or changing it (a store may be
/// running on it: what it shows is then a moment's picture).
///
/// # Errors
/// [`FallbackError::Journal`] when it cannot be read or is not a journal.
pub fn inspect_journal(path: &Path) -> Result<JournalReport, FallbackError> {
    inspect_journal_with_key(path, None)
}

/// [`inspect_journal`] for a journal sealed with `key` (`fallback.journal_key_file`).
///
/// # Errors
/// As [`inspect_journal`]; also when the journal is sealed and `key` is missing or another.
pub fn inspect_journal_with_key(
    path: &Path,
    key: Option<&crate::JournalKey>,
) -> Result<JournalReport, FallbackError> {
    let err = |source| FallbackError::Journal {
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::read(path).map_err(err)?;
    let Some(contents) = decode_file(path, &bytes, key).map_err(err)? else {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "empty file: not a journal yet",
        )));
    };
    let mut pending: Vec<Entry> = Vec::new();
    let mut replay: Option<(u64, u32, u32)> = None;
    let mut dead_letters = Vec::new();
    for record in contents.records {
        match record {
            Record::Entry(e) => pending.push(e),
            Record::Seal { last, ends } => {
                replay = Some((last, u32::try_from(ends.len()).unwrap_or(u32::MAX), 0));
            }
            Record::Progress(done) => {
                if let Some(r) = &mut replay {
                    r.2 = done;
                }
            }
            Record::Done => {
                if let Some((last, _, _)) = replay.take() {
                    pending.retain(|e| e.seq > last);
                }
            }
            Record::DeadLetter(d) => dead_letters.push(d),
        }
    }
    Ok(JournalReport {
        server: contents.header.server,
        instance: contents.header.instance,
        pending,
        replay,
        dead_letters,
        cut: contents.cut,
        first_format: contents.v1,
    })
}
