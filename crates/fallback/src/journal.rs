//! The journal file: a header naming the journal and its server, then length-prefixed,
//! checksummed records appended in order.
//!
//! - **One writer.** The store holds an exclusive advisory lock on `<path>.lock` for its whole
//!   life; a second store (in this process or another) on the same path fails to build.
//! - **Whole records.** The file is opened `O_APPEND` and each append is one `write` of whole
//!   records made before the write is acknowledged. An append that fails part-way (a full disk)
//!   is cut back to the last whole record before the error is returned, and again before the
//!   next append if that cut failed, so a later record never lands behind a torn one.
//! - **Durable**: with `journal_fsync` every append is fsynced, and so is the directory after
//!   the file is created or replaced.
//! - **Private**: every file it creates has mode `0600`.
//! - **Restore never drops a good record after a bad one**: decoding resumes after damage.
//! - **Encrypted at rest** with a journal key: every record sealed (see `cipher.rs`); the
//!   header of an encrypted journal has its own magic and a key check, so a wrong or missing
//!   key is an error at start. A plain journal opened with a key is rewritten sealed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::cipher::{CHECK_LEN, JournalKey};
use crate::op::{Damage, Record, Stop, decode_all_with, frame, payload, unframe};

/// The current format's magic.
const MAGIC: &[u8; 10] = b"RRJOURNAL2";
/// The current format, its records sealed with a journal key.
const MAGIC_SEALED: &[u8; 10] = b"RRJOURNAL3";
/// The first format: magic, then an 8-byte instance id.
const MAGIC_V1: &[u8; 10] = b"RRJOURNAL1";
const V1_HEADER_LEN: usize = 18;

/// What restoring a journal file found damaged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cut {
    /// Where the first damaged bytes start (from the start of the file).
    pub offset: u64,
    /// Bytes skipped in all (damaged records are dropped; every whole record after them kept).
    pub dropped: u64,
    /// `true` when the damage is a last record cut short (a write interrupted by a crash);
    /// `false` when a record failed its checksum.
    pub truncated: bool,
}

/// Who a journal belongs to: its identity, the identity before it (whose replay markers in
/// Redis may be removed), and the server it replays into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Random, new each time the journal is drained: batch ids never repeat across processes
    /// or resets.
    pub(crate) instance: u128,
    /// The previous instance (0: none).
    pub(crate) previous: u128,
    /// `host:port/db` (never a password); empty when unknown.
    pub(crate) server: String,
}

impl Header {
    pub(crate) fn fresh(previous: u128, server: String) -> Self {
        let mut instance = 0;
        while instance == 0 {
            let mut bytes = [0u8; 16];
            // The operating system's randomness; a clock-seeded generator only if it fails.
            if getrandom::fill(&mut bytes).is_err() {
                bytes = fastrand::u128(..).to_le_bytes();
            }
            instance = u128::from_le_bytes(bytes);
        }
        Self {
            instance,
            previous,
            server,
        }
    }

    /// The fields a key check covers: instance, previous, server.
    fn fields(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(40 + self.server.len());
        p.extend_from_slice(&self.instance.to_le_bytes());
        p.extend_from_slice(&self.previous.to_le_bytes());
        p.extend_from_slice(self.server.as_bytes());
        p
    }

    /// Writes the header; with a key, the sealed format's magic and a key check before the
    /// server's name.
    fn encode(&self, key: Option<&JournalKey>, out: &mut Vec<u8>) {
        let fields = self.fields();
        match key {
            None => {
                out.extend_from_slice(MAGIC);
                frame(&fields, None, out);
            }
            Some(key) => {
                out.extend_from_slice(MAGIC_SEALED);
                let mut p = fields[..32].to_vec();
                p.extend_from_slice(&key.check(&fields));
                p.extend_from_slice(self.server.as_bytes());
                frame(&p, None, out);
            }
        }
    }

    /// Reads a header from the start of `bytes`: the header, its length, and for a sealed
    /// journal its key check.
    fn decode(bytes: &[u8]) -> Option<(Self, usize, Option<Vec<u8>>)> {
        let (sealed, rest) = match bytes.strip_prefix(MAGIC) {
            Some(rest) => (false, rest),
            None => (true, bytes.strip_prefix(MAGIC_SEALED)?),
        };
        let (p, len) = unframe(rest, None).ok()??;
        let fixed = if sealed { 32 + CHECK_LEN } else { 32 };
        if p.len() < fixed {
            return None;
        }
        let instance = u128::from_le_bytes(p[..16].try_into().ok()?);
        let previous = u128::from_le_bytes(p[16..32].try_into().ok()?);
        let check = sealed.then(|| p[32..fixed].to_vec());
        let server = String::from_utf8(p[fixed..].to_vec()).ok()?;
        Some((
            Self {
                instance,
                previous,
                server,
            },
            MAGIC.len() + len,
            check,
        ))
    }
}

/// A journal file's contents, read without taking its lock.
pub(crate) struct Contents {
    pub(crate) header: Header,
    pub(crate) records: Vec<Record>,
    pub(crate) cut: Option<Cut>,
    /// Written by the first format (its replay markers are not this format's).
    pub(crate) v1: bool,
    /// Where the records start (the header's length).
    pub(crate) body_at: usize,
}

/// Reads and decodes a journal file's bytes. `Ok(None)` for an empty file. A sealed journal
/// needs its key: without one, or with another, it is an error (never a journal of damaged
/// records).
pub(crate) fn decode_file(
    path: &Path,
    bytes: &[u8],
    key: Option<&JournalKey>,
) -> std::io::Result<Option<Contents>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let invalid = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let mut opener = None;
    let (header, body_at, v1) = if let Some((header, len, check)) = Header::decode(bytes) {
        if let Some(check) = check {
            let Some(key) = key else {
                return Err(invalid(
                    "the journal is encrypted: set fallback.journal_key_file (REDIS_FALLBACK__JOURNAL_KEY_FILE) to the key that wrote it"
                        .to_owned(),
                ));
            };
            if !key.verify(&header.fields(), &check) {
                return Err(invalid(
                    "the journal key does not open this journal: it was written with another key (nothing was read or changed)"
                        .to_owned(),
                ));
            }
            opener = Some((key, header.instance));
        }
        (header, len, false)
    } else if bytes.len() >= V1_HEADER_LEN && bytes.starts_with(MAGIC_V1) {
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[MAGIC_V1.len()..V1_HEADER_LEN]);
        let header = Header {
            instance: u128::from(u64::from_le_bytes(id)),
            previous: 0,
            server: String::new(),
        };
        (header, V1_HEADER_LEN, true)
    } else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{} is not a resilient-redis journal (bad header)",
                path.display()
            ),
        ));
    };
    let crc_key = (!v1).then_some(header.instance);
    let open = opener
        .map(|(key, instance)| move |at: usize, p: &[u8]| key.open_record(instance, at as u64, p));
    let (records, damage) = decode_all_with(
        &bytes[body_at..],
        v1,
        crc_key,
        open.as_ref()
            .map(|f| f as &dyn Fn(usize, &[u8]) -> Option<Vec<u8>>),
    );
    let cut = summarise(&damage, body_at);
    Ok(Some(Contents {
        header,
        records,
        cut,
        v1,
        body_at,
    }))
}

fn summarise(damage: &[Damage], base: usize) -> Option<Cut> {
    let first = damage.first()?;
    Some(Cut {
        offset: (base + first.offset) as u64,
        dropped: damage.iter().map(|d| d.skipped as u64).sum(),
        truncated: damage.len() == 1 && first.at_end && first.stop == Stop::Truncated,
    })
}

/// `<path><suffix>`: a sibling that can never be the path itself.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Options for a file only its owner may read.
fn private() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// fsyncs the directory holding `path`, so a created or renamed entry survives power loss.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

pub(crate) struct JournalFile {
    file: File,
    path: PathBuf,
    fsync: bool,
    /// The instance whose key the records' checksums carry.
    key: u128,
    /// Seals records (and the header) when set.
    cipher: Option<JournalKey>,
    /// Bytes known to be whole records.
    good_len: u64,
    /// Where the records start: a sealed record's place is its offset after this.
    body_at: u64,
    /// An append failed and its bytes could not be cut off yet.
    torn: bool,
    /// Holds the exclusive lock for the store's life.
    _lock: File,
    /// Test hook: the next append writes only this many bytes, then fails.
    #[cfg(test)]
    pub(crate) fail_next_after: Option<usize>,
}

pub(crate) struct Opened {
    pub(crate) file: JournalFile,
    pub(crate) contents: Option<Contents>,
}

/// The error for a journal another store holds.
pub(crate) fn is_locked(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

impl JournalFile {
    /// Locks the journal, then opens it (creating it when missing) and reads what it holds.
    pub(crate) fn open(
        path: &Path,
        fsync: bool,
        cipher: Option<JournalKey>,
    ) -> std::io::Result<Opened> {
        let lock_path = sibling(path, ".lock");
        let lock = private()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "another process (or store) holds the journal's lock {}: one journal \
                         file serves one process at a time; give each process its own \
                         fallback.journal_path",
                        lock_path.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let existed = path.exists();
        let mut file = private().read(true).append(true).create(true).open(path)?;
        if !existed && fsync {
            sync_dir(path)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let contents = decode_file(path, &bytes, cipher.as_ref())?;
        let journal = JournalFile {
            file,
            path: path.to_owned(),
            fsync,
            cipher,
            key: contents.as_ref().map_or(0, |c| c.header.instance),
            good_len: bytes.len() as u64,
            body_at: contents.as_ref().map_or(0, |c| c.body_at as u64),
            torn: false,
            _lock: lock,
            #[cfg(test)]
            fail_next_after: None,
        };
        Ok(Opened {
            file: journal,
            contents,
        })
    }

    fn write_bytes(&mut self, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_next_after.take() {
            self.file.write_all(&buf[..n.min(buf.len())])?;
            return Err(std::io::Error::other("injected: no space left on device"));
        }
        self.file.write_all(buf)
    }

    /// Cuts the file back to its last whole record.
    fn cut_torn(&mut self) -> std::io::Result<()> {
        self.file.set_len(self.good_len)?;
        self.torn = false;
        Ok(())
    }

    /// Appends whole records in one write, before the caller acknowledges anything. On failure
    /// nothing of them stays in the file.
    pub(crate) fn append(&mut self, records: &[Record]) -> std::io::Result<()> {
        if self.torn {
            self.cut_torn()?;
        }
        let mut buf = Vec::with_capacity(64 * records.len());
        let base = self.good_len.saturating_sub(self.body_at);
        for r in records {
            self.put(r, self.key, base + buf.len() as u64, &mut buf);
        }
        if let Err(e) = self.write_bytes(&buf) {
            self.torn = true;
            // Best effort now; retried before the next append if it fails.
            let _ = self.cut_torn();
            return Err(e);
        }
        if self.fsync
            && let Err(e) = self.file.sync_data()
        {
            // The bytes may or may not be on disk: treat them as not written.
            self.torn = true;
            let _ = self.cut_torn();
            return Err(e);
        }
        self.good_len += buf.len() as u64;
        Ok(())
    }

    /// Replaces the file with `header` and exactly `records`, atomically: a sibling file is
    /// created (exclusively, never through a link), written and fsynced, then renamed over the
    /// journal; its handle becomes the journal's, so nothing is reopened after the rename. The
    /// directory is fsynced after it when `journal_fsync` is on (a failure there is logged: the
    /// new file is in place, only its survival of a power loss is in doubt).
    pub(crate) fn rewrite(&mut self, header: &Header, records: &[Record]) -> std::io::Result<()> {
        let tmp = sibling(&self.path, ".rewrite");
        let mut buf = Vec::new();
        header.encode(self.cipher.as_ref(), &mut buf);
        let body_at = buf.len();
        for r in records {
            self.put(r, header.instance, (buf.len() - body_at) as u64, &mut buf);
        }
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut f = private()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = f;
        self.key = header.instance;
        self.body_at = body_at as u64;
        self.good_len = buf.len() as u64;
        self.torn = false;
        if self.fsync
            && let Err(e) = sync_dir(&self.path)
        {
            tracing::error!(
                path = %self.path.display(),
                error = %e,
                "cannot fsync the journal's directory after replacing the file"
            );
        }
        Ok(())
    }

    /// One record, framed (and sealed with the key, when there is one) for journal `instance`,
    /// to be written at `offset` after the header.
    fn put(&self, record: &Record, instance: u128, offset: u64, out: &mut Vec<u8>) {
        let p = payload(record);
        match &self.cipher {
            Some(key) => frame(&key.seal_record(instance, offset, &p), Some(instance), out),
            None => frame(&p, Some(instance), out),
        }
    }

    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        if self.torn {
            self.cut_torn()?;
        }
        self.file.sync_all()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Entry, Op};

    fn entry(seq: u64) -> Record {
        Record::Entry(Entry::new(
            seq,
            1,
            Op::Set {
                key: format!("journal-test-key-{seq}").into_bytes(),
                value: vec![7; 40],
                expire_at: None,
            },
        ))
    }

    /// Fails on the first journal format: a failed append left its partial bytes in the file,
    /// the next appends went after them, and restore stopped at the torn record, dropping every
    /// acknowledged record behind it.
    #[test]
    fn a_torn_append_is_cut_back_before_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let header = Header::fresh(0, String::new());
        let mut j = JournalFile::open(&path, false, None).unwrap().file;
        j.rewrite(&header, &[]).unwrap();
        assert_eq!(j.key, header.instance);
        j.append(&[entry(1)]).unwrap();
        j.fail_next_after = Some(13);
        assert!(
            j.append(&[entry(2)]).is_err(),
            "the failed write is reported"
        );
        j.append(&[entry(3)]).unwrap();
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        let contents = decode_file(&path, &bytes, None).unwrap().unwrap();
        assert_eq!(contents.records, [entry(1), entry(3)]);
        assert_eq!(contents.cut, None, "no torn bytes were left behind");
    }

    /// Fails on the first journal format, which had no lock: two writers on one file
    /// overwrote each other's records.
    #[test]
    fn a_second_opener_of_a_locked_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let first = JournalFile::open(&path, false, None).unwrap();
        let err = JournalFile::open(&path, false, None).err().unwrap();
        assert!(is_locked(&err), "{err}");
        assert!(
            err.to_string()
                .contains("one journal file serves one process")
        );
        drop(first);
        assert!(
            JournalFile::open(&path, false, None).is_ok(),
            "free once closed"
        );
    }

    /// Fails on the first journal format, whose files took the umask's mode (world-readable
    /// values on most systems).
    #[cfg(unix)]
    #[test]
    fn every_file_it_creates_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = JournalFile::open(&path, true, None).unwrap().file;
        j.rewrite(&Header::fresh(0, String::new()), &[entry(1)])
            .unwrap();
        for p in [path.clone(), sibling(&path, ".lock")] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    /// Fails on the first journal format, whose temporary file was `<path>` with its extension
    /// replaced by `compact`: a journal named `x.compact` was its own temporary file.
    #[test]
    fn the_temporary_file_is_never_the_journal_itself() {
        for name in ["x.compact", "x", "x.rewrite", "journal.log"] {
            let p = Path::new("/tmp").join(name);
            assert_ne!(sibling(&p, ".rewrite"), p);
            assert_ne!(sibling(&p, ".lock"), p);
        }
    }

    /// A sealed journal: values unreadable on disk, records back with the key, a wrong or
    /// missing key an error (never a journal of "damaged" records), damage to one record still
    /// confined to it.
    #[test]
    fn a_sealed_journal_opens_only_with_its_key_and_damage_stays_local() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let key = JournalKey::from_bytes(&[9; 32]);
        let header = Header::fresh(0, "cache:6379/0".into());
        let mut j = JournalFile::open(&path, false, Some(key.clone()))
            .unwrap()
            .file;
        j.rewrite(&header, &[entry(1)]).unwrap();
        j.append(&[entry(2), entry(3)]).unwrap();
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(MAGIC_SEALED));
        assert!(
            // Markers long enough that random ciphertext cannot hold them by chance (the
            // two-byte key "k2" it held once in a few hundred runs).
            !bytes.windows(17).any(|w| w == b"journal-test-key-")
                && !bytes.windows(16).any(|w| w == [7; 16]),
            "no key or value in clear"
        );
        let contents = decode_file(&path, &bytes, Some(&key)).unwrap().unwrap();
        assert_eq!(contents.records, [entry(1), entry(2), entry(3)]);
        assert_eq!(contents.header, header);

        let other = JournalKey::from_bytes(&[1; 32]);
        let err = decode_file(&path, &bytes, Some(&other)).err().unwrap();
        assert!(err.to_string().contains("another key"), "{err}");
        let err = decode_file(&path, &bytes, None).err().unwrap();
        assert!(err.to_string().contains("journal_key_file"), "{err}");
        // Opening with the wrong key changes nothing on disk.
        assert!(JournalFile::open(&path, false, Some(other)).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        // One changed byte inside the second of three records: that record is dropped (and
        // reported), the first and the third kept.
        let (_, body_at, _) = Header::decode(&bytes).unwrap();
        let frame_len =
            |at: usize| 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let second = body_at + frame_len(body_at);
        let third = second + frame_len(second);
        let mut damaged = bytes.clone();
        damaged[second + 20] ^= 0x40;
        let contents = decode_file(&path, &damaged, Some(&key)).unwrap().unwrap();
        assert!(contents.cut.is_some(), "the damage is reported");
        assert_eq!(contents.records, [entry(1), entry(3)]);

        // A sealed record copied over another place (a replayed INCRBY, say) does not open
        // there: reported as damage, never applied twice.
        let mut copied = bytes.clone();
        let first = bytes[body_at..second].to_vec();
        copied.truncate(third);
        copied.extend_from_slice(&first);
        let contents = decode_file(&path, &copied, Some(&key)).unwrap().unwrap();
        assert_eq!(contents.records, [entry(1), entry(2)]);
        assert!(contents.cut.is_some());
    }

    /// A plain journal opened with a key: read as it is; the next rewrite (every store does
    /// one when it opens) seals it.
    #[test]
    fn a_plain_journal_is_sealed_by_its_next_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let header = Header::fresh(0, String::new());
        let mut j = JournalFile::open(&path, false, None).unwrap().file;
        j.rewrite(&header, &[entry(1)]).unwrap();
        drop(j);
        let key = JournalKey::from_bytes(&[3; 32]);
        let opened = JournalFile::open(&path, false, Some(key.clone())).unwrap();
        let records = opened.contents.unwrap().records;
        assert_eq!(records, [entry(1)]);
        let mut j = opened.file;
        j.rewrite(&header, &records).unwrap();
        drop(j);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(MAGIC_SEALED));
        let contents = decode_file(&path, &bytes, Some(&key)).unwrap().unwrap();
        assert_eq!(contents.records, [entry(1)]);
    }
}
