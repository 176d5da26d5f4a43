//! What a [`FallbackStore`] is asked ([`ReadCmd`], [`WriteCmd`]) and answers ([`Answer`]), and
//! [`FallbackStoreExt`]: one typed method per command over the two trait methods.

use std::time::Duration;

use crate::{FallbackError, FallbackStore, Fields, Ttl};

/// A read the fallback store answers while Redis is down. Keys and fields are borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadCmd<'a> {
    /// `GET key`: [`Answer::Value`].
    Get(&'a [u8]),
    /// `EXISTS key`: [`Answer::Bool`].
    Exists(&'a [u8]),
    /// `PTTL key`: [`Answer::Ttl`].
    Ttl(&'a [u8]),
    /// `HGET key field`: [`Answer::Value`].
    HGet(&'a [u8], &'a [u8]),
    /// `HGETALL key`: [`Answer::Fields`].
    HGetAll(&'a [u8]),
    /// `MGET key...`: [`Answer::Values`], one per key.
    MGet(&'a [&'a [u8]]),
}

impl<'a> ReadCmd<'a> {
    /// The command's name, lower case (`"get"`, `"mget"`, ...).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            ReadCmd::Get(_) => "get",
            ReadCmd::Exists(_) => "exists",
            ReadCmd::Ttl(_) => "ttl",
            ReadCmd::HGet(..) => "hget",
            ReadCmd::HGetAll(_) => "hgetall",
            ReadCmd::MGet(_) => "mget",
        }
    }

    /// The keys it reads.
    #[must_use]
    pub fn keys(&self) -> Vec<&'a [u8]> {
        match *self {
            ReadCmd::Get(k)
            | ReadCmd::Exists(k)
            | ReadCmd::Ttl(k)
            | ReadCmd::HGet(k, _)
            | ReadCmd::HGetAll(k) => vec![k],
            ReadCmd::MGet(ks) => ks.to_vec(),
        }
    }
}

/// A write the fallback store takes (and journals) while Redis is down, as the caller made it:
/// times to live are relative to now. Keys, fields and values are borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteCmd<'a> {
    /// `SET key value [PX ttl]`: [`Answer::Ok`].
    Set {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// Time to live; `None` = no expiry.
        ttl: Option<Duration>,
    },
    /// `DEL key...`: [`Answer::Count`] of the keys known to exist.
    Del(&'a [&'a [u8]]),
    /// `PEXPIRE key ttl`: [`Answer::Bool`], whether the key was known.
    Expire {
        /// Key.
        key: &'a [u8],
        /// Time to live.
        ttl: Duration,
    },
    /// `INCRBY key delta`: [`Answer::Int`], the new value.
    IncrBy {
        /// Key.
        key: &'a [u8],
        /// Delta.
        delta: i64,
    },
    /// `HSET key field value...`: [`Answer::Count`] of new fields.
    HSet {
        /// Key.
        key: &'a [u8],
        /// Fields and values.
        fields: &'a [(&'a [u8], &'a [u8])],
    },
    /// `HDEL key field...`: [`Answer::Count`] of fields removed.
    HDel {
        /// Key.
        key: &'a [u8],
        /// Fields.
        fields: &'a [&'a [u8]],
    },
    /// `MSET key value...`: [`Answer::Ok`]; all or none.
    MSet(&'a [(&'a [u8], &'a [u8])]),
}

impl<'a> WriteCmd<'a> {
    /// The command's name, lower case (`"set"`, `"incrby"`, ...).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            WriteCmd::Set { .. } => "set",
            WriteCmd::Del(_) => "del",
            WriteCmd::Expire { .. } => "expire",
            WriteCmd::IncrBy { .. } => "incrby",
            WriteCmd::HSet { .. } => "hset",
            WriteCmd::HDel { .. } => "hdel",
            WriteCmd::MSet(_) => "mset",
        }
    }

    /// The keys it writes.
    #[must_use]
    pub fn keys(&self) -> Vec<&'a [u8]> {
        match *self {
            WriteCmd::Set { key, .. }
            | WriteCmd::Expire { key, .. }
            | WriteCmd::IncrBy { key, .. }
            | WriteCmd::HSet { key, .. }
            | WriteCmd::HDel { key, .. } => vec![key],
            WriteCmd::Del(ks) => ks.to_vec(),
            WriteCmd::MSet(kv) => kv.iter().map(|(k, _)| *k).collect(),
        }
    }
}

/// What the store answered; each command's doc names the variant it expects.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// Done (`SET`, `MSET`).
    Ok,
    /// Yes or no (`EXISTS`, `PEXPIRE`).
    Bool(bool),
    /// A count (`DEL`, `HSET`, `HDEL`).
    Count(u64),
    /// An integer (`INCRBY`).
    Int(i64),
    /// A remaining life (`PTTL`).
    Ttl(Ttl),
    /// One value, or missing (`GET`, `HGET`).
    Value(Option<Vec<u8>>),
    /// One value or missing per key (`MGET`).
    Values(Vec<Option<Vec<u8>>>),
    /// The fields of a hash (`HGETALL`).
    Fields(Fields),
}

fn unexpected(operation: &'static str, answer: &Answer) -> FallbackError {
    FallbackError::BadAnswer {
        operation,
        answer: format!("{answer:?}").chars().take(80).collect(),
    }
}

macro_rules! expect {
    ($answer:expr, $op:expr, $pat:pat => $out:expr) => {
        match $answer {
            $pat => Ok($out),
            other => Err(unexpected($op, &other)),
        }
    };
}

/// One typed method per command, over [`FallbackStore::read`] and [`FallbackStore::write`]: for
/// tests, tools and code that talks to a store directly. Implemented for every store.
///
/// # Errors
/// Each method fails as the store does, and with [`FallbackError::BadAnswer`] when a store
/// answers with another variant than the command expects.
pub trait FallbackStoreExt: FallbackStore {
    /// `GET`.
    ///
    /// # Errors
    /// See the trait.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, FallbackError> {
        expect!(self.read(&ReadCmd::Get(key))?, "get", Answer::Value(v) => v)
    }
    /// `SET`, with an optional time to live.
    ///
    /// # Errors
    /// See the trait.
    fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<(), FallbackError> {
        expect!(self.write(&WriteCmd::Set { key, value, ttl })?, "set", Answer::Ok => ())
    }
    /// `DEL`; how many keys the store knew to exist.
    ///
    /// # Errors
    /// See the trait.
    fn delete(&self, keys: &[Vec<u8>]) -> Result<u64, FallbackError> {
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        expect!(self.write(&WriteCmd::Del(&keys))?, "del", Answer::Count(n) => n)
    }
    /// `EXISTS` of one key.
    ///
    /// # Errors
    /// See the trait.
    fn exists(&self, key: &[u8]) -> Result<bool, FallbackError> {
        expect!(self.read(&ReadCmd::Exists(key))?, "exists", Answer::Bool(b) => b)
    }
    /// `PEXPIRE`; whether the store knew the key.
    ///
    /// # Errors
    /// See the trait.
    fn expire(&self, key: &[u8], ttl: Duration) -> Result<bool, FallbackError> {
        expect!(self.write(&WriteCmd::Expire { key, ttl })?, "expire", Answer::Bool(b) => b)
    }
    /// `PTTL`.
    ///
    /// # Errors
    /// See the trait.
    fn ttl(&self, key: &[u8]) -> Result<Ttl, FallbackError> {
        expect!(self.read(&ReadCmd::Ttl(key))?, "ttl", Answer::Ttl(t) => t)
    }
    /// `INCRBY`; the new value.
    ///
    /// # Errors
    /// See the trait.
    fn incr_by(&self, key: &[u8], delta: i64) -> Result<i64, FallbackError> {
        expect!(self.write(&WriteCmd::IncrBy { key, delta })?, "incrby", Answer::Int(n) => n)
    }
    /// `HGET`.
    ///
    /// # Errors
    /// See the trait.
    fn hget(&self, key: &[u8], field: &[u8]) -> Result<Option<Vec<u8>>, FallbackError> {
        expect!(self.read(&ReadCmd::HGet(key, field))?, "hget", Answer::Value(v) => v)
    }
    /// `HSET`; how many fields were new.
    ///
    /// # Errors
    /// See the trait.
    fn hset(&self, key: &[u8], fields: &[(Vec<u8>, Vec<u8>)]) -> Result<u64, FallbackError> {
        let fields: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(f, v)| (f.as_slice(), v.as_slice()))
            .collect();
        let cmd = WriteCmd::HSet {
            key,
            fields: &fields,
        };
        expect!(self.write(&cmd)?, "hset", Answer::Count(n) => n)
    }
    /// `HDEL`; how many fields the store knew.
    ///
    /// # Errors
    /// See the trait.
    fn hdel(&self, key: &[u8], fields: &[Vec<u8>]) -> Result<u64, FallbackError> {
        let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let cmd = WriteCmd::HDel {
            key,
            fields: &fields,
        };
        expect!(self.write(&cmd)?, "hdel", Answer::Count(n) => n)
    }
    /// `HGETALL`: the fields the store knows.
    ///
    /// # Errors
    /// See the trait.
    fn hgetall(&self, key: &[u8]) -> Result<Fields, FallbackError> {
        expect!(self.read(&ReadCmd::HGetAll(key))?, "hgetall", Answer::Fields(f) => f)
    }
    /// `MGET`.
    ///
    /// # Errors
    /// See the trait.
    fn mget(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, FallbackError> {
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        expect!(self.read(&ReadCmd::MGet(&keys))?, "mget", Answer::Values(v) => v)
    }
    /// `MSET`: all or none.
    ///
    /// # Errors
    /// See the trait.
    fn mset(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), FallbackError> {
        let pairs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        expect!(self.write(&WriteCmd::MSet(&pairs))?, "mset", Answer::Ok => ())
    }
}

impl<T: FallbackStore + ?Sized> FallbackStoreExt for T {}
