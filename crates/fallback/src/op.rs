//! Journaled writes, and their binary form in the journal file.

use std::fmt;

/// A write as journaled: what the caller asked for, with absolute deadlines (Unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// A replay began over the entries up to `last`, cut into batches of `batch_size`.
    Seal {
        last: u64,
        batch_size: u32,
    },
    /// The replay in progress has applied this many batches.
    Progress(u32),
    /// The replay in progress finished: its entries are gone.
    Done,
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

/// Appends the framed record to `out`.
pub(crate) fn encode(record: &Record, out: &mut Vec<u8>) {
    let mut p = Vec::with_capacity(64);
    match record {
        Record::Seal { last, batch_size } => {
            p.push(REC_SEAL);
            put_u64(&mut p, *last);
            put_u64(&mut p, u64::from(*batch_size));
        }
        Record::Progress(n) => {
            p.push(REC_PROGRESS);
            put_u64(&mut p, u64::from(*n));
        }
        Record::Done => p.push(REC_DONE),
        Record::Entry(e) => {
            p.push(REC_ENTRY);
            put_u64(&mut p, e.seq);
            put_u64(&mut p, e.at);
            match &e.op {
                Op::Set {
                    key,
                    value,
                    expire_at,
                } => {
                    p.push(OP_SET);
                    put_bytes(&mut p, key);
                    put_bytes(&mut p, value);
                    put_u64(&mut p, expire_at.unwrap_or(0));
                }
                Op::Del { keys } => {
                    p.push(OP_DEL);
                    put_u64(&mut p, keys.len() as u64);
                    for k in keys {
                        put_bytes(&mut p, k);
                    }
                }
                Op::ExpireAt { key, at } => {
                    p.push(OP_EXPIRE_AT);
                    put_bytes(&mut p, key);
                    put_u64(&mut p, *at);
                }
                Op::IncrBy { key, delta } => {
                    p.push(OP_INCR_BY);
                    put_bytes(&mut p, key);
                    p.extend_from_slice(&delta.to_le_bytes());
                }
                Op::HSet { key, fields } => {
                    p.push(OP_HSET);
                    put_bytes(&mut p, key);
                    put_u64(&mut p, fields.len() as u64);
                    for (f, v) in fields {
                        put_bytes(&mut p, f);
                        put_bytes(&mut p, v);
                    }
                }
                Op::HDel { key, fields } => {
                    p.push(OP_HDEL);
                    put_bytes(&mut p, key);
                    put_u64(&mut p, fields.len() as u64);
                    for f in fields {
                        put_bytes(&mut p, f);
                    }
                }
            }
        }
    }
    out.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    out.extend_from_slice(&p);
}

/// Why decoding stopped before the end of the input.
#[derive(Debug, PartialEq, Eq)]
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

fn decode_payload(p: &[u8]) -> Option<Record> {
    let mut r = Reader { buf: p };
    let record = match r.u8()? {
        REC_SEAL => Record::Seal {
            last: r.u64()?,
            batch_size: u32::try_from(r.u64()?).ok()?,
        },
        REC_PROGRESS => Record::Progress(u32::try_from(r.u64()?).ok()?),
        REC_DONE => Record::Done,
        REC_ENTRY => {
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
            Record::Entry(Entry { seq, at, op })
        }
        _ => return None,
    };
    r.buf.is_empty().then_some(record)
}

/// Decodes records from the start of `buf`. Returns them, the length of the valid prefix, and
/// why decoding stopped early, if it did.
pub(crate) fn decode_all(buf: &[u8]) -> (Vec<Record>, usize, Option<Stop>) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < 8 {
            return (records, at, Some(Stop::Truncated));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(payload) = rest.get(8..8 + len) else {
            return (records, at, Some(Stop::Truncated));
        };
        if crc32fast::hash(payload) != crc {
            return (records, at, Some(Stop::Corrupt));
        }
        let Some(record) = decode_payload(payload) else {
            return (records, at, Some(Stop::Corrupt));
        };
        records.push(record);
        at += 8 + len;
    }
    (records, at, None)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                batch_size: 2,
            },
            Record::Progress(1),
            Record::Done,
        ]
    }

    #[test]
    fn every_record_round_trips() {
        let mut buf = Vec::new();
        for r in sample() {
            encode(&r, &mut buf);
        }
        let (records, len, stop) = decode_all(&buf);
        assert_eq!(records, sample());
        assert_eq!((len, stop), (buf.len(), None));
    }

    #[test]
    fn a_flipped_byte_is_corruption_and_keeps_the_prefix() {
        let mut buf = Vec::new();
        for r in sample() {
            encode(&r, &mut buf);
        }
        let mut first = Vec::new();
        encode(&sample()[0], &mut first);
        let last = buf.len() - 1;
        buf[last] ^= 0xFF;
        let (records, _, stop) = decode_all(&buf);
        assert_eq!(stop, Some(Stop::Corrupt));
        assert_eq!(records.len(), sample().len() - 1);
        buf[first.len() + 9] ^= 0xFF; // inside the second record
        let (records, len, stop) = decode_all(&buf);
        assert_eq!(
            (records.len(), len, stop),
            (1, first.len(), Some(Stop::Corrupt))
        );
    }
}
