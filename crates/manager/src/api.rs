//! The typed API: [`RedisApi`] (bytes, object-safe, mockable) and [`RedisApiExt`] (any
//! `ToRedisArgs` / `FromRedisValue` type).

use std::time::Duration;

use redis::{Cmd, FromRedisValue, Pipeline, ToRedisArgs, Value};
use resilient_redis_fallback::{Fields, Ttl};

use crate::compat::{Memory, slice_pairs, slices};
use crate::request::{Kind, Request, Scope};
use crate::{Error, RedisManager};
use resilient_redis_fallback::{FallbackStore, FallbackStoreExt};

fn decode<T: FromRedisValue>(v: Value) -> Result<T, Error> {
    redis::from_redis_value(v).map_err(|e| Error::Validation(e.to_string()))
}

/// A command with room for `args` more arguments of `bytes` bytes in all: built in one
/// allocation per buffer, not grown argument by argument (it is built on every call).
fn command(name: &str, args: usize, bytes: usize) -> Cmd {
    // 20: room for an integer argument's digits.
    let mut cmd = Cmd::with_capacity(args + 1, name.len() + bytes + 20);
    cmd.arg(name);
    cmd
}

fn ttl_of(ms: i64) -> Ttl {
    match ms {
        -2 => Ttl::Missing,
        n if n < 0 => Ttl::Persistent,
        n => Ttl::ExpiresIn(Duration::from_millis(n.unsigned_abs())),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Refuses a TTL whose deadline Redis would refuse (past Unix time `i64::MAX` ms), in every
/// mode, so the caller sees the same error whether Redis or memory would have answered.
fn check_ttl(ttl: Duration) -> Result<(), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    if now.saturating_add(ttl.as_millis()) > u128::from(resilient_redis_fallback::MAX_DEADLINE_MS) {
        return Err(Error::Validation(format!(
            "ttl of {} ms ends past the latest deadline Redis accepts",
            ttl.as_millis()
        )));
    }
    Ok(())
}

/// Refuses an empty argument list Redis would refuse (`wrong number of arguments`).
fn non_empty<T>(what: &str, command: &str, items: &[T]) -> Result<(), Error> {
    if items.is_empty() {
        return Err(Error::Validation(format!(
            "{what}: {command} needs at least one"
        )));
    }
    Ok(())
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServedBy {
    /// Redis answered.
    Redis,
    /// Redis was unreachable; memory answered from what it knows of the key (written during
    /// the outage, or seen before it when `fallback.shadow` is on: possibly stale).
    Memory,
    /// Redis was unreachable and memory knows nothing of the key: a read says missing and a
    /// counter counts from 0 (its delta is journaled and replays exactly), but Redis may hold
    /// something else.
    MemoryUnknownKey,
}

/// An answer and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Served<T> {
    /// The answer.
    pub value: T,
    /// Who gave it.
    pub by: ServedBy,
}

/// Redis's answer, converted and labelled.
fn from_redis<T: FromRedisValue>(v: Value) -> Result<Served<T>, Error> {
    decode(v).map(|value| Served {
        value,
        by: ServedBy::Redis,
    })
}

fn by_memory(s: &dyn FallbackStore, key: &[u8]) -> ServedBy {
    if s.knows(key) {
        ServedBy::Memory
    } else {
        ServedBy::MemoryUnknownKey
    }
}

/// Declares each operation once: the inherent method on [`RedisManager`] (no boxed future),
/// the [`RedisApi`] trait method (object-safe, mockable), and the forwarding between them.
/// Written `fn name(&self, arg: [Type]) -> [Return] { body }`: the brackets hand the types to
/// the trait's mock (mockall) as plain tokens.
macro_rules! operations {
    ($(
        $(#[doc = $doc:expr])*
        fn $name:ident(&$self:ident $(, $arg:ident: [$($ty:tt)+])* $(,)?) -> [$($ret:tt)+] $body:block
    )*) => {
/// The operations applications call. Implemented by [`RedisManager`]; with the `mock` feature
        /// `MockRedisApi` (mockall) implements it, so code that uses Redis can be unit-tested without a
        /// server.
        ///
        /// Reads and writes of strings, counters and hashes are served by the fallback store while
        /// Redis is down. A read (or an increment) of a key memory knows nothing about then fails with
        /// a fallback error of its own (`FallbackError::Unknown`) rather than answer "missing" or count
        /// from 0 as if Redis had said so; `fallback.unknown_keys = "miss"` answers as a cache instead,
        /// and `get_with_source` / `incr_by_with_source` always answer, saying who did ([`ServedBy`]).
        #[cfg_attr(any(test, feature = "mock"), mockall::automock)]
        #[async_trait::async_trait]
        #[allow(unreachable_pub, reason = "re-exported by lib.rs; the lint does not see through the macro")]
        pub trait RedisApi: Send + Sync {
            $(
                $(#[doc = $doc])*
                async fn $name(&self $(, $arg: $($ty)+)*) -> $($ret)+;
            )*
        }

        /// The operations as inherent methods: called on a `RedisManager` directly they cost
        /// no boxed future; [`RedisApi`] forwards to them.
        impl RedisManager {
            $(
                $(#[doc = $doc])*
                ///
                /// # Errors
                /// See [`crate::Error`].
                pub async fn $name(&$self $(, $arg: $($ty)+)*) -> $($ret)+ $body
            )*
        }

        #[async_trait::async_trait]
        impl RedisApi for RedisManager {
            $(
                async fn $name(&self $(, $arg: $($ty)+)*) -> $($ret)+ {
                    RedisManager::$name(self $(, $arg)*).await
                }
            )*
        }
    };
}

operations! {
    /// `GET`.
    fn get(&self, key: [&[u8]]) -> [Result<Option<Vec<u8>>, Error>] {
        let mut cmd = command("GET", 1, key.len());
        cmd.arg(key);
        self.memory_call(&Memory::Get(key), &cmd, decode).await
    }

    /// `SET`, with `PX` when `ttl` is given.
    fn set(&self, key: [&[u8]], value: [&[u8]], ttl: [Option<Duration>]) -> [Result<(), Error>] {
        ttl.map_or(Ok(()), check_ttl)?;
        let mut cmd = command("SET", 4, key.len() + value.len() + 2);
        cmd.arg(key).arg(value);
        if let Some(t) = ttl {
            cmd.arg("PX").arg(millis(t));
        }
        self.memory_call(&Memory::Set(key, value, ttl), &cmd, decode).await
    }

    /// `DEL`; the number deleted (while Redis is down: the number the fallback knew).
    fn del(&self, keys: [&[Vec<u8>]]) -> [Result<u64, Error>] {
        non_empty("keys", "DEL", keys)?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys);
        self.memory_call(&Memory::Del(slices(keys)), &cmd, decode).await
    }

    /// `EXISTS` of one key.
    fn exists(&self, key: [&[u8]]) -> [Result<bool, Error>] {
        let mut cmd = command("EXISTS", 1, key.len());
        cmd.arg(key);
        self.memory_call(&Memory::Exists(key), &cmd, decode).await
    }

    /// `PEXPIRE`; whether the key existed.
    fn expire(&self, key: [&[u8]], ttl: [Duration]) -> [Result<bool, Error>] {
        check_ttl(ttl)?;
        let mut cmd = command("PEXPIRE", 2, key.len());
        cmd.arg(key).arg(millis(ttl));
        self.memory_call(&Memory::Expire(key, ttl), &cmd, decode).await
    }

    /// `PTTL`.
    fn ttl(&self, key: [&[u8]]) -> [Result<Ttl, Error>] {
        let mut cmd = command("PTTL", 1, key.len());
        cmd.arg(key);
        self.memory_call(&Memory::Ttl(key, false), &cmd, decode::<i64>).await.map(ttl_of)
    }

    /// `INCRBY`; the new value. Never applied twice: see [`Error::Ambiguous`].
    fn incr_by(&self, key: [&[u8]], delta: [i64]) -> [Result<i64, Error>] {
        let mut cmd = command("INCRBY", 2, key.len());
        cmd.arg(key).arg(delta);
        self.memory_call(&Memory::IncrBy(key, delta), &cmd, decode).await
    }

    /// `MGET`.
    fn mget(&self, keys: [&[Vec<u8>]]) -> [Result<Vec<Option<Vec<u8>>>, Error>] {
        non_empty("keys", "MGET", keys)?;
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        self.memory_call(&Memory::MGet(slices(keys)), &cmd, decode).await
    }

    /// `MSET`.
    fn mset(&self, pairs: [&[(Vec<u8>, Vec<u8>)]]) -> [Result<(), Error>] {
        non_empty("pairs", "MSET", pairs)?;
        let mut cmd = redis::cmd("MSET");
        for (k, v) in pairs {
            cmd.arg(k).arg(v);
        }
        self.memory_call(&Memory::MSet(slice_pairs(pairs)), &cmd, decode).await
    }

    /// `HGET`.
    fn hget(&self, key: [&[u8]], field: [&[u8]]) -> [Result<Option<Vec<u8>>, Error>] {
        let mut cmd = command("HGET", 2, key.len() + field.len());
        cmd.arg(key).arg(field);
        self.memory_call(&Memory::HGet(key, field), &cmd, decode).await
    }

    /// `HSET`; the number of new fields.
    fn hset(&self, key: [&[u8]], fields: [&[(Vec<u8>, Vec<u8>)]]) -> [Result<u64, Error>] {
        non_empty("fields", "HSET", fields)?;
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        for (f, v) in fields {
            cmd.arg(f).arg(v);
        }
        self.memory_call(&Memory::HSet(key, slice_pairs(fields)), &cmd, decode).await
    }

    /// `HDEL`; the number removed.
    fn hdel(&self, key: [&[u8]], fields: [&[Vec<u8>]]) -> [Result<u64, Error>] {
        non_empty("fields", "HDEL", fields)?;
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(key).arg(fields);
        self.memory_call(&Memory::HDel(key, slices(fields)), &cmd, decode).await
    }

    /// `HGETALL`.
    fn hgetall(&self, key: [&[u8]]) -> [Result<Fields, Error>] {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        self.memory_call(&Memory::HGetAll(key), &cmd, decode).await
    }

    /// Any command through the whole stack: retried by its class (reads and harmless writes;
    /// others only when they certainly never left), answered from memory while Redis is down
    /// for the commands the fallback supports, failing fast otherwise.
    fn execute(&self, cmd: [&Cmd]) -> [Result<Value, Error>] {
        self.command(cmd).await
    }

    /// A pipeline (atomic or not) as one request: breaker, deadline and metrics apply; retried
    /// only when it only reads; never answered from memory.
    fn pipeline(&self, pipeline: [&Pipeline]) -> [Result<Vec<Value>, Error>] {
        // redis-rs decides which replies a pipeline (atomic or not) returns; the typed error of
        // the request it makes is kept aside.
        let mut capture = Capture {
            manager: self,
            error: None,
        };
        match pipeline.query_async::<Vec<Value>>(&mut capture).await {
            Ok(values) => Ok(values),
            Err(e) => Err(capture.error.take().unwrap_or(Error::Server {
                code: e.code().map(str::to_owned),
                message: e.to_string(),
                source: Some(e),
            })),
        }
    }
}

/// The typed API's helpers and provenance-reporting variants.
impl RedisManager {
    pub(crate) fn strict(&self) -> bool {
        self.inner.config.fallback.unknown_keys == resilient_redis_config::UnknownKeys::Error
    }

    /// `GET`, saying who answered: Redis, memory, or memory that knows nothing of the key
    /// (never an error for an unknown key, whatever `fallback.unknown_keys` says).
    ///
    /// # Errors
    /// See [`crate::Error`].
    pub async fn get_with_source(&self, key: &[u8]) -> Result<Served<Option<Vec<u8>>>, Error> {
        let mut cmd = command("GET", 1, key.len());
        cmd.arg(key);
        self.call(
            "get",
            Kind::Read,
            Scope::Key(key),
            Request::Cmd(&cmd),
            from_redis,
            Some(&|s| {
                Ok(Served {
                    value: s.get(key)?,
                    by: by_memory(s, key),
                })
            }),
            |s, v| Memory::Get(key).observe(s, v),
        )
        .await
    }

    /// `INCRBY`, saying who answered. While Redis is unreachable the increment is journaled even
    /// for a counter memory does not know (`MemoryUnknownKey`: the value returned counts from 0;
    /// the delta replays exactly). Never applied twice: see [`Error::Ambiguous`].
    ///
    /// # Errors
    /// See [`crate::Error`].
    pub async fn incr_by_with_source(&self, key: &[u8], delta: i64) -> Result<Served<i64>, Error> {
        let mut cmd = command("INCRBY", 2, key.len());
        cmd.arg(key).arg(delta);
        self.call(
            "incrby",
            Kind::NonIdempotentWrite,
            Scope::Key(key),
            Request::Cmd(&cmd),
            from_redis,
            Some(&|s| {
                let by = by_memory(s, key);
                Ok(Served {
                    value: s.incr_by(key, delta)?,
                    by,
                })
            }),
            |s, v| Memory::IncrBy(key, delta).observe(s, v),
        )
        .await
    }
}

/// A connection for redis-rs's pipeline logic that keeps the manager's typed error.
struct Capture<'m> {
    manager: &'m RedisManager,
    error: Option<Error>,
}

impl redis::aio::ConnectionLike for Capture<'_> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            self.manager.command(cmd).await.map_err(|e| {
                let r = redis::make_extension_error("CAPTURED".into(), Some(e.to_string()));
                self.error = Some(e);
                r
            })
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.manager
                .packed(pipeline, offset, count)
                .await
                .map_err(|e| {
                    let r = redis::make_extension_error("CAPTURED".into(), Some(e.to_string()));
                    self.error = Some(e);
                    r
                })
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

fn one_arg<K: ToRedisArgs>(key: &K) -> Result<Vec<u8>, Error> {
    let mut args = key.to_redis_args();
    if args.len() == 1 {
        Ok(args.swap_remove(0))
    } else {
        Err(Error::Validation(format!(
            "a key or value must be one argument, this one is {}",
            args.len()
        )))
    }
}

/// Typed helpers over any [`RedisApi`], for keys and values of any redis-rs `ToRedisArgs` /
/// `FromRedisValue` type. Kept out of `RedisApi` so it stays object-safe.
#[async_trait::async_trait]
pub trait RedisApiExt: RedisApi {
    /// `GET`, converted.
    ///
    /// # Errors
    /// As [`RedisApi::get`], and [`Error::Validation`] when the value does not convert.
    async fn get_as<K, V>(&self, key: K) -> Result<Option<V>, Error>
    where
        K: ToRedisArgs + Send + Sync,
        V: FromRedisValue + Send,
    {
        match self.get(&one_arg(&key)?).await? {
            None => Ok(None),
            Some(bytes) => decode(Value::BulkString(bytes)).map(Some),
        }
    }

    /// `SET` of any value.
    ///
    /// # Errors
    /// As [`RedisApi::set`].
    async fn set_as<K, V>(&self, key: K, value: V, ttl: Option<Duration>) -> Result<(), Error>
    where
        K: ToRedisArgs + Send + Sync,
        V: ToRedisArgs + Send + Sync,
    {
        self.set(&one_arg(&key)?, &one_arg(&value)?, ttl).await
    }

    /// `INCR`.
    ///
    /// # Errors
    /// As [`RedisApi::incr_by`].
    async fn incr<K: ToRedisArgs + Send + Sync>(&self, key: K) -> Result<i64, Error> {
        self.incr_by(&one_arg(&key)?, 1).await
    }
}

impl<T: RedisApi + ?Sized> RedisApiExt for T {}
