//! Journaled writes, and their binary form in the journal file.

use std::fmt;

/// A write as journaled: what the caller asked for, with absolute deadlines (Unix ms).
///
/// Deliberately exhaustive: a replay target must apply every kind of write, so a new kind is a
/// breaking change that stops every target from compiling until it handles it, rather than a
/// write some target would silently skip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `SET key value [PXAT at]`.
    Set {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Absolute expiry, Unix milliseconds; `None` = no expiry.
        expire_at: Option<u64>,
    },
    /// `DEL key...`.
    Del {
        /// Keys.
        keys: Vec<Vec<u8>>,
    },
    /// `PEXPIREAT key at`.
    ExpireAt {
        /// Key.
        key: Vec<u8>,
        /// Absolute expiry, Unix milliseconds.
        at: u64,
    },
    /// `INCRBY key delta`: replayed as a delta, so several instances merge.
    IncrBy {
        /// Key.
        key: Vec<u8>,
        /// Delta.
        delta: i64,
    },
    /// `HSET key field value...`.
    HSet {
        /// Key.
        key: Vec<u8>,
        /// Fields and values.
        fields: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// `HDEL key field...`.
    HDel {
        /// Key.
        key: Vec<u8>,
        /// Fields.
        fields: Vec<Vec<u8>>,
    },
}

impl Op {
    /// Heap bytes the op holds (for the memory bound).
    pub(crate) fn heap_bytes(&self) -> u64 {
        let n: usize = match self {
            Op::Set { key, value, .. } => key.len() + value.len(),
            Op::Del { keys } => keys.iter().map(|k| k.len() + 24).sum(),
            Op::ExpireAt { key, .. } | Op::IncrBy { key, .. } => key.len(),
            Op::HSet { key, fields } => {
                key.len()
                    + fields
                        .iter()
                        .map(|(f, v)| f.len() + v.len() + 48)
                        .sum::<usize>()
            }
            Op::HDel { key, fields } => {
                key.len() + fields.iter().map(|f| f.len() + 24).sum::<usize>()
            }
        };
        n as u64
    }

    /// The keys it writes.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Op::Del { keys } => keys.iter().map(Vec::as_slice).collect(),
            Op::Set { key, .. }
            | Op::ExpireAt { key, .. }
            | Op::IncrBy { key, .. }
            | Op::HSet { key, .. }
            | Op::HDel { key, .. } => vec![key.as_slice()],
        }
    }
}

/// One journal entry: a write, its sequence number and when it was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// Position in the journal; strictly increasing.
    pub seq: u64,
    /// When it was accepted, Unix milliseconds.
    pub at: u64,
    /// The write.
    pub op: Op,
}

/// A record of the journal file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Entry(Entry),
    /// A replay began over the entries up to `last`, cut into batches that end at the
    /// sequence numbers `ends` (kept, so a restored replay sends the same batches even if a
    /// damaged entry had to be left out).
    Seal {
        last: u64,
        ends: Vec<u64>,
    },
    /// The replay in progress has applied this many batches.
    Progress(u32),
    /// The replay in progress finished: its entries are gone.
    Done,
    /// A replayed write the target refused: kept, never dropped silently.
    DeadLetter(DeadLetter),
}

/// A journaled write that Redis refused when it was replayed (a `WRONGTYPE`, an `INCRBY` on a
/// value that is not an integer): it was acknowledged to its caller, so it is kept in the
/// journal's dead-letter section, counted and listed, instead of being dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The write.
    pub entry: Entry,
    /// Redis's reply, as it refused the write.
    pub reason: String,
}

impl DeadLetter {
    /// A dead letter of `entry`, refused for `reason`.
    #[must_use]
    pub fn new(entry: Entry, reason: impl Into<String>) -> Self {
        Self {
            entry,
            reason: reason.into(),
        }
    }
}

impl Entry {
    /// An entry: the write `op`, at position `seq`, accepted at `at` (Unix milliseconds).
    #[must_use]
    pub fn new(seq: u64, at: u64, op: Op) -> Self {
        Self { seq, at, op }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Commands and key counts only: keys and values may be sensitive.
        match self {
            Op::Set { .. } => f.write_str("SET"),
            Op::Del { keys } => write!(f, "DEL ({} keys)", keys.len()),
            Op::ExpireAt { .. } => f.write_str("PEXPIREAT"),
            Op::IncrBy { .. } => f.write_str("INCRBY"),
            Op::HSet { fields, .. } => write!(f, "HSET ({} fields)", fields.len()),
            Op::HDel { fields, .. } => write!(f, "HDEL ({} fields)", fields.len()),
        }
    }
}

// ---- binary form ----------------------------------------------------------------------------
//
// A record is `len: u32 LE | crc32(payload): u32 LE | payload`. The payload starts with a type
// byte; byte strings are `len: u32 LE | bytes`; integers are little-endian.

const REC_ENTRY: u8 = 1;
const REC_SEAL: u8 = 2;
const REC_PROGRESS: u8 = 3;
const REC_DONE: u8 = 4;
const REC_DEAD_LETTER: u8 = 5;

const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;
const OP_EXPIRE_AT: u8 = 3;
const OP_INCR_BY: u8 = 4;
const OP_HSET: u8 = 5;
const OP_HDEL: u8 = 6;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

/// Appends the framed record to `out`, its checksum keyed with `key` (the journal instance), so
/// that bytes inside a value can never pass for a record of this journal.
#[cfg(test)]
pub(crate) fn encode(record: &Record, key: Option<u128>, out: &mut Vec<u8>) {
    frame(&payload(record), key, out);
}

/// A record's payload: its type byte, then its fields.
pub(crate) fn payload(record: &Record) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    match record {
        Record::Seal { last, ends } => {
            p.push(REC_SEAL);
            put_u64(&mut p, *last);
            put_u64(&mut p, ends.len() as u64);
            for e in ends {
                put_u64(&mut p, *e);
            }
        }
        Record::DeadLetter(d) => {
            p.push(REC_DEAD_LETTER);
            put_entry(&mut p, &d.entry);
            put_bytes(&mut p, d.reason.as_bytes());
        }
        Record::Progress(n) => {
            p.push(REC_PROGRESS);
            put_u64(&mut p, u64::from(*n));
        }
        Record::Done => p.push(REC_DONE),
        Record::Entry(e) => {
            p.push(REC_ENTRY);
            put_entry(&mut p, e);
        }
    }
    p
}

/// The checksum of a payload: CRC-32 of the key's bytes (when keyed) and the payload.
fn checksum(p: &[u8], key: Option<u128>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if let Some(k) = key {
        h.update(&k.to_le_bytes());
    }
    h.update(p);
    h.finalize()
}

/// Frames a payload: `len | crc32 | payload`.
pub(crate) fn frame(p: &[u8], key: Option<u128>, out: &mut Vec<u8>) {
    out.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&checksum(p, key).to_le_bytes());
    out.extend_from_slice(p);
}

fn put_entry(p: &mut Vec<u8>, e: &Entry) {
    put_u64(p, e.seq);
    put_u64(p, e.at);
    match &e.op {
        Op::Set {
            key,
            value,
            expire_at,
        } => {
            p.push(OP_SET);
            put_bytes(p, key);
            put_bytes(p, value);
            put_u64(p, expire_at.unwrap_or(0));
        }
        Op::Del { keys } => {
            p.push(OP_DEL);
            put_u64(p, keys.len() as u64);
            for k in keys {
                put_bytes(p, k);
            }
        }
        Op::ExpireAt { key, at } => {
            p.push(OP_EXPIRE_AT);
            put_bytes(p, key);
            put_u64(p, *at);
        }
        Op::IncrBy { key, delta } => {
            p.push(OP_INCR_BY);
            put_bytes(p, key);
            p.extend_from_slice(&delta.to_le_bytes());
        }
        Op::HSet { key, fields } => {
            p.push(OP_HSET);
            put_bytes(p, key);
            put_u64(p, fields.len() as u64);
            for (f, v) in fields {
                put_bytes(p, f);
                put_bytes(p, v);
            }
        }
        Op::HDel { key, fields } => {
            p.push(OP_HDEL);
            put_bytes(p, key);
            put_u64(p, fields.len() as u64);
            for f in fields {
                put_bytes(p, f);
            }
        }
    }
}

/// Why decoding stopped before the end of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The input ends inside a record (a write cut short).
    Truncated,
    /// A record's checksum or contents are wrong.
    Corrupt,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let len = self
            .take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)?;
        self.take(len as usize).map(<[u8]>::to_vec)
    }
    fn count(&mut self) -> Option<usize> {
        // A count larger than what is left cannot be right; refuse it before allocating.
        let n = usize::try_from(self.u64()?).ok()?;
        (n <= self.buf.len()).then_some(n)
    }
}

fn read_entry(r: &mut Reader<'_>) -> Option<Entry> {
    let seq = r.u64()?;
    let at = r.u64()?;
    let op = match r.u8()? {
        OP_SET => {
            let key = r.bytes()?;
            let value = r.bytes()?;
            let expire_at = Some(r.u64()?).filter(|t| *t != 0);
            Op::Set {
                key,
                value,
                expire_at,
            }
        }
        OP_DEL => {
            let n = r.count()?;
            Op::Del {
                keys: (0..n).map(|_| r.bytes()).collect::<Option<_>>()?,
            }
        }
        OP_EXPIRE_AT => Op::ExpireAt {
            key: r.bytes()?,
            at: r.u64()?,
        },
        OP_INCR_BY => {
            let key = r.bytes()?;
            let delta = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
            Op::IncrBy { key, delta }
        }
        OP_HSET => {
            let key = r.bytes()?;
            let n = r.count()?;
            let fields = (0..n)
                .map(|_| Some((r.bytes()?, r.bytes()?)))
                .collect::<Option<_>>()?;
            Op::HSet { key, fields }
        }
        OP_HDEL => {
            let key = r.bytes()?;
            let n = r.count()?;
            Op::HDel {
                key,
                fields: (0..n).map(|_| r.bytes()).collect::<Option<_>>()?,
            }
        }
        _ => return None,
    };
    Some(Entry { seq, at, op })
}

/// Decodes one payload. `v1` reads the first format's seal (without a byte bound).
fn decode_payload(p: &[u8], v1: bool) -> Option<Record> {
    let mut r = Reader { buf: p };
    let record = match r.u8()? {
        REC_SEAL if v1 => {
            // The first format cut batches by count alone; the store refuses to resume such a
            // replay (its markers are not this format's), so the batches are not needed.
            let last = r.u64()?;
            let _batch_size = r.u64()?;
            Record::Seal {
                last,
                ends: Vec::new(),
            }
        }
        REC_SEAL => {
            let last = r.u64()?;
            let n = r.count()?;
            let ends = (0..n).map(|_| r.u64()).collect::<Option<Vec<_>>>()?;
            Record::Seal { last, ends }
        }
        REC_PROGRESS => Record::Progress(u32::try_from(r.u64()?).ok()?),
        REC_DONE => Record::Done,
        REC_ENTRY => Record::Entry(read_entry(&mut r)?),
        REC_DEAD_LETTER if !v1 => {
            let entry = read_entry(&mut r)?;
            let reason = String::from_utf8_lossy(&r.bytes()?).into_owned();
            Record::DeadLetter(DeadLetter { entry, reason })
        }
        _ => return None,
    };
    r.buf.is_empty().then_some(record)
}

/// One framed payload at the start of `buf`: `Ok(Some((payload, framed_len)))`, `Ok(None)` when
/// `buf` ends inside the frame, `Err(())` when its checksum is wrong.
pub(crate) fn unframe(buf: &[u8], key: Option<u128>) -> Result<Option<(&[u8], usize)>, ()> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let Some(payload) = buf.get(8..8 + len) else {
        return Ok(None);
    };
    if checksum(payload, key) == crc {
        Ok(Some((payload, 8 + len)))
    } else {
        Err(())
    }
}

/// A cheap look before the checksum: a length that fits and a known record type.
fn plausible(buf: &[u8]) -> bool {
    buf.len() > 8
        && (u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize) <= buf.len() - 8
        && (REC_ENTRY..=REC_DEAD_LETTER).contains(&buf[8])
}

/// Damage found while decoding: bytes skipped at `offset` (from the start of the decoded
/// buffer), and whether they ran to the end of it (a write cut short).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Damage {
    pub(crate) offset: usize,
    pub(crate) skipped: usize,
    pub(crate) at_end: bool,
    pub(crate) stop: Stop,
}

/// Decodes every record of `buf`. A damaged record does not hide the ones after it: decoding
/// resumes after it when its length still leads to a whole record (or the end), else at the
/// next offset where a whole record checks out under this journal's key (which bytes inside a
/// value cannot forge).
#[cfg(test)]
pub(crate) fn decode_all(buf: &[u8], v1: bool, key: Option<u128>) -> (Vec<Record>, Vec<Damage>) {
    decode_all_with(buf, v1, key, None)
}

/// Turns a record's payload as stored (at this offset of the decoded buffer) into its plain
/// payload (an encrypted journal's), or `None` when it does not open.
pub(crate) type Open<'a> = &'a dyn Fn(usize, &[u8]) -> Option<Vec<u8>>;

/// [`decode_all`], each payload first opened by `open` when given.
pub(crate) fn decode_all_with(
    buf: &[u8],
    v1: bool,
    key: Option<u128>,
    open: Option<Open<'_>>,
) -> (Vec<Record>, Vec<Damage>) {
    let decode = |at: usize, payload: &[u8]| match open {
        Some(open) => open(at, payload).and_then(|p| decode_payload(&p, v1)),
        None => decode_payload(payload, v1),
    };
    let whole = |q: usize| {
        q == buf.len()
            || (plausible(&buf[q..])
                && matches!(unframe(&buf[q..], key), Ok(Some((payload, _))) if decode(q, payload).is_some()))
    };
    let mut records = Vec::new();
    let mut damage = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let stop = match unframe(&buf[at..], key) {
            Ok(Some((payload, len))) => match decode(at, payload) {
                Some(record) => {
                    records.push(record);
                    at += len;
                    continue;
                }
                None => Stop::Corrupt,
            },
            Ok(None) => Stop::Truncated,
            Err(()) => Stop::Corrupt,
        };
        // Skip the damaged record by its own length if that lands on a whole record; else scan.
        let rest = &buf[at..];
        let by_length = (rest.len() >= 8)
            .then(|| at + 8 + u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize)
            .filter(|&q| q < buf.len() && whole(q));
        let resume = by_length.or_else(|| (at + 1..buf.len()).find(|&q| q < buf.len() && whole(q)));
        let next = resume.unwrap_or(buf.len());
        damage.push(Damage {
            offset: at,
            skipped: next - at,
            at_end: resume.is_none(),
            stop,
        });
        at = next;
    }
    (records, damage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: u128 = 0x1234_5678_9abc_def0_1122_3344_5566_7788;

    fn sample() -> Vec<Record> {
        vec![
            Record::Entry(Entry {
                seq: 1,
                at: 10,
                op: Op::Set {
                    key: b"k".to_vec(),
                    value: vec![0, 255, 10],
                    expire_at: Some(99),
                },
            }),
            Record::Entry(Entry {
                seq: 2,
                at: 11,
                op: Op::Del {
                    keys: vec![b"a".to_vec(), vec![]],
                },
            }),
            Record::Entry(Entry {
                seq: 3,
                at: 12,
                op: Op::ExpireAt {
                    key: b"k".to_vec(),
                    at: 5,
                },
            }),
            Record::Entry(Entry {
                seq: 4,
                at: 13,
                op: Op::IncrBy {
                    key: b"c".to_vec(),
                    delta: -7,
                },
            }),
            Record::Entry(Entry {
                seq: 5,
                at: 14,
                op: Op::HSet {
                    key: b"h".to_vec(),
                    fields: vec![(b"f".to_vec(), b"v".to_vec())],
                },
            }),
            Record::Entry(Entry {
                seq: 6,
                at: 15,
                op: Op::HDel {
                    key: b"h".to_vec(),
                    fields: vec![b"f".to_vec()],
                },
            }),
            Record::Seal {
                last: 6,
                ends: vec![2, 4, 6],
            },
            Record::Progress(1),
            Record::DeadLetter(DeadLetter::new(
                Entry::new(
                    4,
                    13,
                    Op::IncrBy {
                        key: b"c".to_vec(),
                        delta: -7,
                    },
                ),
                "WRONGTYPE Operation against a key holding the wrong kind of value",
            )),
            Record::Done,
        ]
    }

    #[test]
    fn every_record_round_trips() {
        let mut buf = Vec::new();
        for r in sample() {
            encode(&r, Some(KEY), &mut buf);
        }
        let (records, damage) = decode_all(&buf, false, Some(KEY));
        assert_eq!(records, sample());
        assert_eq!(damage, []);
        let (records, _) = decode_all(&buf, false, Some(KEY + 1));
        assert!(records.is_empty(), "another journal's key checks nothing");
    }

    /// Fails on the first journal format, which stopped at the first bad record and dropped
    /// every acknowledged record after it.
    #[test]
    fn a_damaged_record_keeps_the_records_after_it() {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for r in sample() {
            starts.push(buf.len());
            encode(&r, Some(KEY), &mut buf);
        }
        // Inside the second record: its checksum fails, every other record survives.
        buf[starts[1] + 9] ^= 0xFF;
        let (records, damage) = decode_all(&buf, false, Some(KEY));
        let mut expected = sample();
        expected.remove(1);
        assert_eq!(records, expected);
        assert_eq!(
            damage,
            [Damage {
                offset: starts[1],
                skipped: starts[2] - starts[1],
                at_end: false,
                stop: Stop::Corrupt,
            }]
        );
        // A value holding a whole record of this format, framed without the key, inside a
        // damaged record: never taken for a record.
        let mut forged = Vec::new();
        encode(&sample()[3], None, &mut forged);
        let mut evil = Vec::new();
        encode(
            &Record::Entry(Entry::new(
                9,
                9,
                Op::Set {
                    key: b"x".to_vec(),
                    value: forged,
                    expire_at: None,
                },
            )),
            Some(KEY),
            &mut evil,
        );
        evil[9] ^= 0xFF; // damage its header bytes: the scan runs through the value
        evil[0] ^= 0xFF;
        let (records, _) = decode_all(&evil, false, Some(KEY));
        assert!(records.is_empty(), "{records:?}");
        // The last record cut short: reported as a torn end.
        let cut = &buf[..buf.len() - 1];
        let (records, damage) = decode_all(cut, false, Some(KEY));
        assert_eq!(records.len(), sample().len() - 2);
        assert!(
            damage
                .last()
                .is_some_and(|d| d.at_end && d.stop == Stop::Truncated)
        );
    }
}
