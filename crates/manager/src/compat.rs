//! `redis::aio::ConnectionLike` for [`RedisManager`]: code written against redis-rs
//! (`AsyncCommands`, `Script::invoke_async`, `redis::pipe().query_async`, typed
//! `FromRedisValue` replies) runs through the whole stack by changing one constructor.
//!
//! Every command is classified by name: reads are retried; writes whose repetition is harmless
//! (`SET` without `NX`/`XX`/`GET`, `DEL`, `HSET`, `EXPIRE`, ...) are retried; anything else
//! (`INCR`, `LPUSH`, `EVAL`, unknown commands) is retried only when it certainly never left,
//! and otherwise fails with the code [`crate::error::AMBIGUOUS_CODE`]. The commands the
//! fallback store supports (strings, counters, hashes) are answered from memory while Redis is
//! down, as the typed API does; the rest fail fast.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Arg, Cmd, Pipeline, RedisFuture, Value};

use resilient_redis_fallback::{Answer, FallbackError, FallbackStore, ReadCmd, WriteCmd};

use crate::request::{Kind, Request, Scope};
use crate::{Error, RedisManager, Ttl};

/// A command's name, upper case.
fn name_of(cmd: &Cmd) -> Vec<u8> {
    match cmd.args_iter().next() {
        Some(Arg::Simple(b)) => b.to_ascii_uppercase(),
        _ => Vec::new(),
    }
}

/// Commands that only read.
const READS: &[&str] = &[
    "get",
    "mget",
    "exists",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "type",
    "strlen",
    "getrange",
    "hget",
    "hmget",
    "hgetall",
    "hkeys",
    "hvals",
    "hlen",
    "hexists",
    "hstrlen",
    "lrange",
    "llen",
    "lindex",
    "smembers",
    "sismember",
    "smismember",
    "scard",
    "zrange",
    "zrangebyscore",
    "zrevrange",
    "zrevrangebyscore",
    "zscore",
    "zmscore",
    "zcard",
    "zcount",
    "zrank",
    "zrevrank",
    "ping",
    "echo",
    "dbsize",
    "scan",
    "sscan",
    "hscan",
    "zscan",
    "keys",
    "time",
    "info",
    "xrange",
    "xrevrange",
    "xlen",
    "bitcount",
    "getbit",
    "pfcount",
    "eval_ro",
    "evalsha_ro",
    "fcall_ro",
];

/// Writes that leave the same state and give the same reply when applied twice (a write that
/// answers a count, like `DEL` or `SADD`, answers differently the second time, so it is not
/// retried once it may have been sent).
const IDEMPOTENT_WRITES: &[&str] = &["mset", "hmset", "setex", "psetex"];

/// Expiry commands: idempotent without options (`NX`, `XX`, `GT`, `LT` change the reply).
const EXPIRES: &[&str] = &["expire", "pexpire", "expireat", "pexpireat"];

fn is(name: &[u8], table: &[&str]) -> bool {
    table
        .iter()
        .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
}

/// The name, lower case, as a static string for metrics and spans (a bounded set: unknown
/// commands are `command`).
fn static_name(name: &[u8]) -> &'static str {
    READS
        .iter()
        .chain(IDEMPOTENT_WRITES)
        .chain(EXPIRES)
        .chain(&[
            "set", "incr", "incrby", "decr", "decrby", "append", "lpush", "rpush", "lpop", "rpop",
            "spop", "eval", "evalsha", "fcall", "getdel", "getset", "zadd", "zincrby", "hincrby",
            "xadd", "publish", "script", "del", "unlink", "hset", "hdel", "sadd", "srem", "zrem",
            "persist", "setbit", "pfadd",
        ])
        .find(|t| t.as_bytes().eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("command")
}

/// How a failure of `cmd` may be handled.
fn kind_of(name: &[u8], args: &[&[u8]]) -> Kind {
    if is(name, READS) {
        return Kind::Read;
    }
    if is(name, IDEMPOTENT_WRITES) || (is(name, EXPIRES) && args.len() == 3) {
        return Kind::IdempotentWrite;
    }
    if name == b"SET" {
        // Only a plain SET (with an optional EX/PX/EXAT/PXAT) can be repeated safely: NX, XX
        // and GET answer differently the second time.
        let plain = args.iter().skip(3).step_by(2).all(|opt| {
            matches!(
                opt.to_ascii_uppercase().as_slice(),
                b"EX" | b"PX" | b"EXAT" | b"PXAT"
            )
        }) && args.len() % 2 == 1;
        if plain {
            return Kind::IdempotentWrite;
        }
    }
    Kind::NonIdempotentWrite
}

fn refuse_exclusive(cmd: &Cmd) -> Result<(), Error> {
    resilient_redis_pool::shared_refusal(cmd).map_or(Ok(()), |why| Err(Error::Validation(why)))
}

fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn bulk(v: Option<Vec<u8>>) -> Value {
    v.map_or(Value::Nil, Value::BulkString)
}

/// An integer as Redis reads one: an optional `-`, no `+`, no leading zero, no `-0`.
fn number<T: TryFrom<i64>>(b: &[u8]) -> Option<T> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let canonical = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits == b"0" || digits[0] != b'0')
        && b != b"-0";
    if !canonical {
        return None;
    }
    let n: i64 = std::str::from_utf8(b).ok()?.parse().ok()?;
    T::try_from(n).ok()
}

/// Redis's reply to a zero or negative expiry (`SET k v EX 0`, `SETEX k 0 v`).
fn invalid_expire(command: &str) -> Error {
    Error::Server {
        code: Some("ERR".into()),
        message: format!("invalid expire time in '{command}' command"),
        source: None,
    }
}

/// A command the fallback store can answer, with its arguments: the typed API and the
/// `ConnectionLike` path both plan their commands as one of these, so memory answers each
/// command in one place, as Redis would have.
pub(crate) enum Memory<'a> {
    Get(&'a [u8]),
    Set(&'a [u8], &'a [u8], Option<Duration>),
    Del(Vec<&'a [u8]>),
    Exists(&'a [u8]),
    Expire(&'a [u8], Duration),
    /// `PTTL` (`false`) or `TTL` (`true`: seconds).
    Ttl(&'a [u8], bool),
    IncrBy(&'a [u8], i64),
    MGet(Vec<&'a [u8]>),
    MSet(Vec<(&'a [u8], &'a [u8])>),
    HGet(&'a [u8], &'a [u8]),
    HSet(&'a [u8], Vec<(&'a [u8], &'a [u8])>),
    HDel(&'a [u8], Vec<&'a [u8]>),
    HGetAll(&'a [u8]),
}

/// What the store is asked.
enum Ask<'a> {
    Read(ReadCmd<'a>),
    Write(WriteCmd<'a>),
}

fn pairs<'a>(items: &[&'a [u8]]) -> Vec<(&'a [u8], &'a [u8])> {
    items.chunks_exact(2).map(|p| (p[0], p[1])).collect()
}

/// Borrowed slices of owned keys, fields or values.
pub(crate) fn slices(items: &[Vec<u8>]) -> Vec<&[u8]> {
    items.iter().map(Vec::as_slice).collect()
}

/// Borrowed pairs of owned fields and values.
pub(crate) fn slice_pairs(items: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
    items
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect()
}

impl<'a> Memory<'a> {
    /// The command as one the fallback can answer (upper-case `name`), or `None`; `Err` for an
    /// expiry Redis refuses (zero or negative).
    fn plan(name: &[u8], args: &[&'a [u8]]) -> Option<Result<Self, Error>> {
        let expiry = |n: &[u8], ms: bool, command: &str| -> Option<Result<Duration, Error>> {
            let n: i64 = number(n)?;
            Some(match u64::try_from(n) {
                Ok(n @ 1..) if ms => Ok(Duration::from_millis(n)),
                Ok(n @ 1..) => Ok(Duration::from_secs(n)),
                _ => Err(invalid_expire(command)),
            })
        };
        let with = |ttl: Option<Result<Duration, Error>>, f: &dyn Fn(Duration) -> Self| {
            ttl.map(|t| t.map(f))
        };
        Some(Ok(match (name, args) {
            (b"GET", &[k]) => Memory::Get(k),
            (b"SET", &[k, v]) => Memory::Set(k, v, None),
            (b"SET", &[k, v, unit, n]) => {
                let ms = match unit.to_ascii_uppercase().as_slice() {
                    b"PX" => true,
                    b"EX" => false,
                    _ => return None,
                };
                return with(expiry(n, ms, "set"), &|t| Memory::Set(k, v, Some(t)));
            }
            (b"SETEX", [k, n, v]) => {
                return with(expiry(n, false, "setex"), &|t| Memory::Set(k, v, Some(t)));
            }
            (b"PSETEX", [k, n, v]) => {
                return with(expiry(n, true, "psetex"), &|t| Memory::Set(k, v, Some(t)));
            }
            (b"DEL", ks) if !ks.is_empty() => Memory::Del(ks.to_vec()),
            (b"EXISTS", [k]) => Memory::Exists(k),
            (b"PEXPIRE", [k, n]) => Memory::Expire(
                k,
                Duration::from_millis(number(n).filter(|n: &u64| *n > 0)?),
            ),
            (b"EXPIRE", [k, n]) => {
                Memory::Expire(k, Duration::from_secs(number(n).filter(|n: &u64| *n > 0)?))
            }
            (b"PTTL", [k]) => Memory::Ttl(k, false),
            (b"TTL", [k]) => Memory::Ttl(k, true),
            (b"INCR", [k]) => Memory::IncrBy(k, 1),
            (b"DECR", [k]) => Memory::IncrBy(k, -1),
            (b"INCRBY", [k, d]) => Memory::IncrBy(k, number(d)?),
            (b"DECRBY", [k, d]) => Memory::IncrBy(k, number::<i64>(d)?.checked_neg()?),
            (b"MGET", ks) if !ks.is_empty() => Memory::MGet(ks.to_vec()),
            (b"MSET", kv) if !kv.is_empty() && kv.len() % 2 == 0 => Memory::MSet(pairs(kv)),
            (b"HGET", [k, f]) => Memory::HGet(k, f),
            (b"HSET", [k, kv @ ..]) if !kv.is_empty() && kv.len() % 2 == 0 => {
                Memory::HSet(k, pairs(kv))
            }
            (b"HDEL", [k, fs @ ..]) if !fs.is_empty() => Memory::HDel(k, fs.to_vec()),
            (b"HGETALL", [k]) => Memory::HGetAll(k),
            _ => return None,
        }))
    }

    /// The metrics name and how a failure may be handled.
    pub(crate) fn op(&self) -> (&'static str, Kind) {
        match self {
            Memory::Get(_) => ("get", Kind::Read),
            Memory::Set(..) => ("set", Kind::IdempotentWrite),
            Memory::Del(_) => ("del", Kind::CountingWrite),
            Memory::Exists(_) => ("exists", Kind::Read),
            Memory::Expire(..) => ("expire", Kind::IdempotentWrite),
            Memory::Ttl(..) => ("ttl", Kind::Read),
            Memory::IncrBy(..) => ("incrby", Kind::NonIdempotentWrite),
            Memory::MGet(_) => ("mget", Kind::Read),
            Memory::MSet(_) => ("mset", Kind::IdempotentWrite),
            Memory::HGet(..) => ("hget", Kind::Read),
            Memory::HSet(..) => ("hset", Kind::CountingWrite),
            Memory::HDel(..) => ("hdel", Kind::CountingWrite),
            Memory::HGetAll(_) => ("hgetall", Kind::Read),
        }
    }

    fn ask(&self) -> Ask<'_> {
        match self {
            Memory::Get(k) => Ask::Read(ReadCmd::Get(k)),
            Memory::Exists(k) => Ask::Read(ReadCmd::Exists(k)),
            Memory::Ttl(k, _) => Ask::Read(ReadCmd::Ttl(k)),
            Memory::MGet(ks) => Ask::Read(ReadCmd::MGet(ks)),
            Memory::HGet(k, f) => Ask::Read(ReadCmd::HGet(k, f)),
            Memory::HGetAll(k) => Ask::Read(ReadCmd::HGetAll(k)),
            Memory::Set(key, value, ttl) => Ask::Write(WriteCmd::Set {
                key,
                value,
                ttl: *ttl,
            }),
            Memory::Del(ks) => Ask::Write(WriteCmd::Del(ks)),
            Memory::Expire(key, ttl) => Ask::Write(WriteCmd::Expire { key, ttl: *ttl }),
            Memory::IncrBy(key, delta) => Ask::Write(WriteCmd::IncrBy { key, delta: *delta }),
            Memory::MSet(kv) => Ask::Write(WriteCmd::MSet(kv)),
            Memory::HSet(key, fields) => Ask::Write(WriteCmd::HSet { key, fields }),
            Memory::HDel(key, fields) => Ask::Write(WriteCmd::HDel { key, fields }),
        }
    }

    /// The answer from memory, as Redis would have given it. With `strict`
    /// (`fallback.unknown_keys = "error"`), a read or an increment of a key memory knows
    /// nothing of is refused rather than answered as if Redis had said "missing" or "0".
    pub(crate) fn answer(
        &self,
        s: &dyn FallbackStore,
        strict: bool,
    ) -> Result<Value, FallbackError> {
        let (operation, _) = self.op();
        let check = |keys: Vec<&[u8]>| {
            if strict && keys.iter().any(|k| !s.knows(k)) {
                Err(FallbackError::Unknown { operation })
            } else {
                Ok(())
            }
        };
        let answer = match self.ask() {
            Ask::Read(read) => {
                check(read.keys())?;
                s.read(&read)?
            }
            Ask::Write(write) => {
                if let WriteCmd::IncrBy { key, .. } = write {
                    check(vec![key])?;
                }
                s.write(&write)?
            }
        };
        if !self.fits(&answer) {
            return Err(FallbackError::BadAnswer {
                operation,
                answer: format!("{answer:?}").chars().take(80).collect(),
            });
        }
        Ok(match answer {
            Answer::Ok => Value::Okay,
            Answer::Bool(b) => Value::Int(i64::from(b)),
            Answer::Count(n) => int(n),
            Answer::Int(n) => Value::Int(n),
            Answer::Ttl(Ttl::Missing) => Value::Int(-2),
            // Redis rounds seconds half up.
            Answer::Ttl(Ttl::ExpiresIn(d)) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                int(if matches!(self, Memory::Ttl(_, true)) {
                    ms.saturating_add(500) / 1000
                } else {
                    ms
                })
            }
            Answer::Ttl(_) => Value::Int(-1),
            Answer::Value(v) => bulk(v),
            Answer::Values(vs) => Value::Array(vs.into_iter().map(bulk).collect()),
            Answer::Fields(fs) => Value::Array(
                fs.into_iter()
                    .flat_map(|(f, v)| [Value::BulkString(f), Value::BulkString(v)])
                    .collect(),
            ),
            other => {
                return Err(FallbackError::BadAnswer {
                    operation,
                    answer: format!("{other:?}"),
                });
            }
        })
    }

    /// Calls `f` with each key the command touches.
    pub(crate) fn each_key(&self, mut f: impl FnMut(&[u8])) {
        match self {
            Memory::Get(k)
            | Memory::Set(k, ..)
            | Memory::Exists(k)
            | Memory::Expire(k, _)
            | Memory::Ttl(k, _)
            | Memory::IncrBy(k, _)
            | Memory::HGet(k, _)
            | Memory::HSet(k, _)
            | Memory::HDel(k, _)
            | Memory::HGetAll(k) => f(k),
            Memory::Del(ks) | Memory::MGet(ks) => ks.iter().for_each(|k| f(k)),
            Memory::MSet(kv) => kv.iter().for_each(|(k, _)| f(k)),
        }
    }

    /// Whether a store's answer is the kind this command expects (a custom store may err).
    fn fits(&self, answer: &Answer) -> bool {
        match (self, answer) {
            (Memory::Get(_) | Memory::HGet(..), Answer::Value(_))
            | (Memory::Exists(_) | Memory::Expire(..), Answer::Bool(_))
            | (Memory::Ttl(..), Answer::Ttl(_))
            | (Memory::HGetAll(_), Answer::Fields(_))
            | (Memory::Set(..) | Memory::MSet(_), Answer::Ok)
            | (Memory::Del(_) | Memory::HSet(..) | Memory::HDel(..), Answer::Count(_))
            | (Memory::IncrBy(..), Answer::Int(_)) => true,
            (Memory::MGet(keys), Answer::Values(values)) => keys.len() == values.len(),
            _ => false,
        }
    }

    /// Keeps shadow copies of what Redis answered (with `fallback.shadow`).
    pub(crate) fn observe(&self, s: &dyn FallbackStore, reply: &Value) {
        match (self, reply) {
            (Memory::Get(k), Value::BulkString(v)) => s.observe(k, Some(v.clone()), None),
            (Memory::Get(k), Value::Nil) => s.observe(k, None, None),
            (Memory::Set(k, v, ttl), _) => s.observe(k, Some(v.to_vec()), *ttl),
            (Memory::Del(ks), _) => {
                for k in ks {
                    s.observe(k, None, None);
                }
            }
            (Memory::IncrBy(k, _), Value::Int(n)) => {
                s.observe(k, Some(n.to_string().into_bytes()), None);
            }
            (Memory::MGet(ks), Value::Array(vs)) => {
                // A nil from MGET may be a key of another type (a hash): only values are kept.
                for (k, v) in ks.iter().zip(vs) {
                    if let Value::BulkString(b) = v {
                        s.observe(k, Some(b.clone()), None);
                    }
                }
            }
            (Memory::MSet(kv), _) => {
                for (k, v) in kv {
                    s.observe(k, Some(v.to_vec()), None);
                }
            }
            _ => {}
        }
    }
}

/// What the redis-rs path does with a command.
enum Route<'c> {
    /// Through the whole stack, answered from memory while Redis is down.
    Memory(Memory<'c>),
    /// Through the whole stack, never from memory: its metrics name and class.
    Call(&'static str, Kind),
}

/// Reads `cmd` (its arguments on the stack: no allocation for a few of them) before anything is
/// awaited, so none of this takes room in the request's state.
fn route(cmd: &Cmd) -> Result<Route<'_>, Error> {
    const INLINE: usize = 8;
    let mut inline: [&[u8]; INLINE] = [&[]; INLINE];
    let mut spilled: Vec<&[u8]> = Vec::new();
    let mut n = 0;
    let mut simple = true;
    for a in cmd.args_iter() {
        match a {
            Arg::Simple(b) => {
                if n < INLINE {
                    inline[n] = b;
                } else {
                    if spilled.is_empty() {
                        spilled.extend_from_slice(&inline);
                    }
                    spilled.push(b);
                }
                n += 1;
            }
            _ => simple = false,
        }
    }
    let args: &[&[u8]] = if n <= INLINE { &inline[..n] } else { &spilled };
    let Some(first) = args.first() else {
        return Err(Error::Validation("empty command".into()));
    };
    let word = resilient_redis_pool::CommandName::of(first);
    if let Some(why) = word.shared_refusal(cmd) {
        return Err(Error::Validation(why));
    }
    let name = word.as_slice();
    if simple && let Some(plan) = Memory::plan(name, &args[1..]) {
        return plan.map(Route::Memory);
    }
    let kind = if simple {
        kind_of(name, args)
    } else {
        Kind::NonIdempotentWrite
    };
    Ok(Route::Call(static_name(name), kind))
}

impl RedisManager {
    /// Runs a command the fallback store can answer through the whole stack; Redis's answer
    /// and memory's are decoded alike (and a reply that does not decode is recorded as the
    /// failure it is).
    pub(crate) async fn memory_call<T>(
        &self,
        memory: &Memory<'_>,
        cmd: &Cmd,
        decode: impl Fn(Value) -> Result<T, Error> + Sync,
    ) -> Result<T, Error> {
        let (op, kind) = memory.op();
        let strict = self.strict();
        self.call(
            op,
            kind,
            Scope::Plan(memory),
            Request::Cmd(cmd),
            &decode,
            Some(&|s| {
                memory
                    .answer(s, strict)
                    .map_err(Error::from)
                    .and_then(&decode)
            }),
            |s, v| memory.observe(s, v),
        )
        .await
    }

    /// Runs any command through the whole stack, as the `ConnectionLike` path does: retried by
    /// its class, answered from memory while Redis is down when the fallback supports it.
    ///
    /// # Errors
    /// See [`crate::Error`]; [`Error::Validation`] for a command that needs an exclusive
    /// connection (transactions, `SELECT`, subscriptions, blocking commands).
    pub async fn command(&self, cmd: &Cmd) -> Result<Value, Error> {
        match route(cmd)? {
            Route::Memory(plan) => self.memory_call(&plan, cmd, Ok).await,
            Route::Call(name, kind) => {
                self.call(
                    name,
                    kind,
                    Scope::All,
                    Request::Cmd(cmd),
                    Ok,
                    None,
                    |_, _| {},
                )
                .await
            }
        }
    }

    /// Runs `count` replies' worth of `pipeline` from `offset`, as redis-rs asks a connection
    /// to (`ConnectionLike::req_packed_commands`): one request on the shared connection, with
    /// the breaker, the deadline and metrics; retried only when every command in it only reads;
    /// never answered from memory.
    ///
    /// # Errors
    /// See [`crate::Error`].
    pub async fn packed(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, Error> {
        let mut reads = true;
        for cmd in pipeline.cmd_iter() {
            refuse_exclusive(cmd)?;
            reads &= is(&name_of(cmd), READS);
        }
        let kind = if reads {
            Kind::Read
        } else {
            Kind::NonIdempotentWrite
        };
        let decode = |v: Value| match v {
            Value::Array(items) => Ok(items),
            other => Ok(vec![other]),
        };
        self.call(
            "pipeline",
            kind,
            Scope::All,
            Request::Pipeline(pipeline, offset, count),
            decode,
            None,
            |_, _| {},
        )
        .await
    }
}

/// A [`RedisManager`] seen as a redis-rs connection: `AsyncCommands`, `Script::invoke_async`,
/// `redis::pipe().query_async` and typed replies work on it exactly as on a
/// `MultiplexedConnection`, through the whole stack. It has no methods of its own, so none of
/// the manager's typed methods (`get`, `set`, ...) hides a redis-rs one. Cheap to clone.
///
/// ```no_run
/// use redis::AsyncCommands;
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // Before: let mut con = client.get_multiplexed_async_connection().await?;
/// let mut con = resilient_redis_manager::RedisManager::from_env().await?.redis_connection();
/// let () = con.set("greeting", "hello").await?;
/// let greeting: String = con.get("greeting").await?;
/// let (a, b): (i64, i64) = redis::pipe().incr("a", 1).incr("b", 1).query_async(&mut con).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ManagedConnection(RedisManager);

impl RedisManager {
    /// This manager as a redis-rs connection ([`ManagedConnection`]).
    #[must_use]
    pub fn redis_connection(&self) -> ManagedConnection {
        ManagedConnection(self.clone())
    }
}

impl ManagedConnection {
    /// The manager behind it.
    #[must_use]
    pub fn manager(&self) -> &RedisManager {
        &self.0
    }
}

impl ConnectionLike for ManagedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// `RedisManager` itself is a redis-rs connection too, for code generic over
/// `ConnectionLike` (called as methods on a `RedisManager`, its own typed `get`/`set` win:
/// use [`RedisManager::redis_connection`] there).
impl ConnectionLike for RedisManager {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        crate::recycle::boxed(
            async move { self.command(cmd).await.map_err(Error::into_redis_error) },
        )
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        crate::recycle::boxed(async move {
            self.packed(pipeline, offset, count)
                .await
                .map_err(Error::into_redis_error)
        })
    }

    fn get_db(&self) -> i64 {
        url::Url::parse(self.config().url.expose())
            .ok()
            .and_then(|u| u.path().trim_start_matches('/').parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    fn kind(words: &[&str]) -> Kind {
        let a = args(words);
        let refs: Vec<&[u8]> = a.iter().map(Vec::as_slice).collect();
        kind_of(&a[0].to_ascii_uppercase(), &refs)
    }

    #[test]
    fn commands_are_retried_only_when_repeating_them_is_harmless() {
        assert_eq!(kind(&["GET", "k"]), Kind::Read);
        assert_eq!(kind(&["SET", "k", "v"]), Kind::IdempotentWrite);
        assert_eq!(kind(&["SET", "k", "v", "PX", "10"]), Kind::IdempotentWrite);
        assert_eq!(kind(&["SET", "k", "v", "NX"]), Kind::NonIdempotentWrite);
        assert_eq!(kind(&["SET", "k", "v", "GET"]), Kind::NonIdempotentWrite);
        assert_eq!(kind(&["INCR", "k"]), Kind::NonIdempotentWrite);
        assert_eq!(kind(&["EVAL", "return 1", "0"]), Kind::NonIdempotentWrite);
        assert_eq!(kind(&["FLUSHALL"]), Kind::NonIdempotentWrite);
        assert_eq!(
            kind(&["HSET", "h", "f", "v"]),
            Kind::NonIdempotentWrite,
            "its count changes"
        );
        assert_eq!(
            kind(&["DEL", "k"]),
            Kind::NonIdempotentWrite,
            "its count changes"
        );
        assert_eq!(kind(&["PEXPIRE", "k", "10"]), Kind::IdempotentWrite);
        assert_eq!(kind(&["EXPIRE", "k", "10", "NX"]), Kind::NonIdempotentWrite);
    }

    #[test]
    fn session_and_blocking_commands_never_run_on_the_shared_connection() {
        let cmd = |words: &[&str]| {
            let mut c = redis::cmd(words[0]);
            for w in &words[1..] {
                c.arg(*w);
            }
            c
        };
        for words in [
            &["MULTI"][..],
            &["WATCH", "k"],
            &["SELECT", "1"],
            &["SUBSCRIBE", "c"],
            &["BLPOP", "l", "0"],
            &["WAIT", "1", "0"],
            &["CLIENT", "REPLY", "OFF"],
            &["client", "tracking", "on"],
            &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"],
        ] {
            assert!(refuse_exclusive(&cmd(words)).is_err(), "{words:?}");
        }
        assert!(refuse_exclusive(&cmd(&["GET", "k"])).is_ok());
        assert!(refuse_exclusive(&cmd(&["XREAD", "STREAMS", "s", "0"])).is_ok());
        assert!(refuse_exclusive(&cmd(&["CLIENT", "ID"])).is_ok());
    }

    #[test]
    fn integers_are_read_as_redis_reads_them() {
        assert_eq!(number::<i64>(b"5"), Some(5));
        assert_eq!(number::<i64>(b"-5"), Some(-5));
        assert_eq!(number::<i64>(b"0"), Some(0));
        for bad in [
            &b"+5"[..],
            b"05",
            b"-0",
            b" 5",
            b"",
            b"-",
            b"9223372036854775808",
        ] {
            assert_eq!(
                number::<i64>(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Found by review: a nil in an MGET reply was kept as "known missing", though MGET says
    /// nil for a key of another type (a hash); during an outage EXISTS then answered 0 and
    /// HGETALL `{}` as if memory knew.
    #[test]
    fn a_nil_from_mget_is_not_kept_as_known_missing() {
        use resilient_redis_fallback::{FallbackStore, MemoryStore};
        let mut config = resilient_redis_config::FallbackConfig::default();
        config.shadow = true;
        let store = MemoryStore::new(&config).unwrap();
        Memory::MGet(vec![b"hash", b"string"]).observe(
            &store,
            &Value::Array(vec![Value::Nil, Value::BulkString(b"v".to_vec())]),
        );
        assert!(!store.knows(b"hash"));
        assert!(store.knows(b"string"));
    }
}
