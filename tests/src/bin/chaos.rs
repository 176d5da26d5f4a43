//! A seeded fault campaign with a history checker: several application processes (this binary
//! re-executed), each a `RedisManager` with its own journal file, run a workload against one
//! durable `redis-server` behind a fault proxy while a schedule drawn from the seed kills and
//! restarts Redis, blackholes it, slows it past the socket timeout, resets every connection, and
//! SIGKILLs application processes and restarts them on their journals. Every call is written to
//! a history (JSON lines); after the run and a final drain the checker holds Redis and the
//! histories against the promises:
//!
//! - every owner key (one writer) holds its last acknowledged write, or a later write whose
//!   outcome the caller does not know (an acknowledged write is never lost);
//! - every shared counter lies within [acknowledged increments, that + the unknown ones] (an
//!   increment is never applied twice, nor lost once acknowledged);
//! - no read returned a value that was never written to its key;
//! - no call took longer than its bound; every application closed with nothing pending;
//! - each application audits itself: its fallback store never held more than its bound (sampled
//!   every 5 ms), its breaker is not still open 10 s after its calls ended, and after `close` no task
//!   it started is alive and no file descriptor is left open.
//!
//! `chaos run [--seed N] [--duration 20s] [--apps 2] [--dir DIR] [--only FAULT] [--sabotage]
//! [--report FILE] [--schedule STEPS] [--shrink] [--fail-if FAULT]` (`--report`: the table of
//! calls by fault class, as Markdown, to FILE as well; `--schedule`: an exact schedule as a run
//! prints it, in place of the one drawn from the seed; `--shrink`: after a failure, rerun on ever shorter
//! schedules and print the shortest that still fails; `--fail-if`: the shrinker's self-test, a
//! violation whenever the schedule holds that fault);
//! a violation prints the seed, the schedule and the first offending history entries, and the
//! exit code is 1. `--only blackhole` keeps one kind of fault; `--sabotage` corrupts what the checker reads
//! (one owner key, one counter, one hash field) and leaks a task in one application, to show that the checker
//! and the application's own audit catch them. `chaos app ...` is the application
//! process (started by `run`). Besides the faults above: `maxmemory` with `noeviction` (OOM
//! replies), `maxclients 1`, `requirepass` set and removed, one-way partitions (replies held
//! while requests run, or requests held), replies cut mid-way with the connection reset, replies
//! sliced into pieces of a few bytes, replies slowed to 64 KiB/s, Redis restarted into
//! `LOADING`, one call in ten abandoned by its caller, and one application whose fallback store
//! is small enough to fill. The workload: SET (values up to 1 MiB, TTLs from 1 ms to a day),
//! MSET, DEL, PEXPIRE, GET, INCRBY, HSET and HDEL.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use resilient_redis_manager::{Error, RedisManager, ServedBy};
use resilient_redis_tests::{Fault, FaultProxy, RedisServer};

/// Owner keys per application task, tasks per application, shared counters.
const KEYS_PER_TASK: usize = 3;
/// Keys with PEXPIRE per application task.
const EXPIRING_PER_TASK: usize = 2;
/// A workload call, boxed so the branches of a step can pick one.
type Call = std::pin::Pin<Box<dyn Future<Output = Result<u64, Error>> + Send>>;
/// Hashes per application task, and fields per hash.
const HASHES_PER_TASK: usize = 2;
const FIELDS: usize = 3;
const TASKS: usize = 3;
const COUNTERS: usize = 3;
/// The longest any call may take: the manager's whole-call deadline (socket timeout × attempts)
/// plus room for a loaded 2-core machine.
const CALL_BOUND: Duration = Duration::from_secs(3);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// FNV-1a: values are recorded by hash.
fn hash(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("app") => app(&args[1..]),
        Some("run") => run(&args[1..]),
        _ => {
            eprintln!(
                "usage: chaos run [--seed N] [--duration 20s] [--apps 2] [--dir DIR]\n       \
                 chaos app (started by run)"
            );
            2
        }
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------------
// The application process.

/// One history line.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug)]
struct Event {
    /// `inv` before a write, `ok`, `err` (never applied), `unk` (outcome unknown) after a call.
    t: String,
    /// `{app}.{incarnation}.{n}`: the same for a call's `inv` and its outcome.
    id: String,
    op: String,
    key: String,
    /// The value written (hash; `null` for a delete) or read (`null`: missing).
    v: Option<String>,
    /// An increment's delta; a SET's time to live in ms (0: none).
    d: i64,
    start: u64,
    end: u64,
    /// The error, for `err` and `unk`.
    why: Option<String>,
    /// Who answered a read: `redis` or `memory`.
    #[serde(default)]
    src: Option<String>,
}

struct History(Mutex<std::fs::File>);

impl History {
    fn write(&self, e: &Event) {
        let mut line = serde_json::to_vec(e).unwrap_or_default();
        line.push(b'\n');
        let mut f = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One write(2) per line: a SIGKILL loses at most the line being written.
        let _ = f.write_all(&line);
    }
}

fn app_config(url: &str, journal: &Path) -> resilient_redis_config::RedisConfig {
    let mut c = resilient_redis_config::RedisConfig::default();
    c.url = resilient_redis_config::RedisUrl::new(url);
    c.connect_timeout = Duration::from_secs(1);
    c.socket_timeout = Duration::from_millis(300);
    c.max_retries = 1;
    c.retry_delay = Duration::from_millis(20);
    c.pool.acquire_timeout = Duration::from_millis(300);
    c.pool.validation_interval = Duration::from_millis(100);
    c.health.check_interval = Duration::from_millis(100);
    c.health.timeout = Duration::from_millis(100);
    c.health.failure_threshold = 1;
    c.health.success_threshold = 1;
    c.fallback.sync_interval = Duration::from_millis(100);
    c.fallback.journal_path = Some(journal.to_owned());
    c
}

/// App 1 runs with a fallback store of 256 KiB, so long outages fill it: writes past the bound
/// must be refused, never dropped.
fn app_bound(id: usize, c: &mut resilient_redis_config::RedisConfig) {
    if id == 1 {
        c.fallback.max_memory_size = 256 * 1024;
    }
}

fn app(args: &[String]) -> i32 {
    let (Some(id), Some(url), Some(dir), Some(until), Some(seed)) = (
        arg(args, "--id").and_then(|s| s.parse::<usize>().ok()),
        arg(args, "--url"),
        arg(args, "--dir").map(PathBuf::from),
        arg(args, "--until").and_then(|s| s.parse::<u64>().ok()),
        arg(args, "--seed").and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("chaos app: missing arguments");
        return 2;
    };
    let incarnation = arg(args, "--incarnation").unwrap_or("0").to_owned();
    let history = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("history-{id}.jsonl")))
    {
        Ok(mut f) => {
            // A line cut by the previous incarnation's SIGKILL must not swallow our first one.
            let _ = f.write_all(b"\n");
            Arc::new(History(Mutex::new(f)))
        }
        Err(e) => {
            eprintln!("chaos app {id}: history: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos app {id}: runtime: {e}");
            return 2;
        }
    };
    rt.block_on(async move {
        let mut config = app_config(url, &dir.join(format!("app-{id}.journal")));
        app_bound(id, &mut config);
        let fds_before = open_fds();
        // The store is built here, as the manager would build it, to watch its memory.
        let store = match resilient_redis_fallback::MemoryStore::builder(&config.fallback)
            .server(resilient_redis_manager::server_identity(
                config.url.expose(),
            ))
            .build()
        {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("chaos app {id}: store: {e}");
                return 2;
            }
        };
        let manager = match RedisManager::builder(config)
            .fallback(Arc::clone(&store))
            .build()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                eprintln!("chaos app {id}: build: {e}");
                return 2;
            }
        };
        // The store's bound holds at every instant, not only at the end.
        let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let over_bound = {
            let store = Arc::clone(&store);
            let watching = Arc::clone(&watching);
            tokio::spawn(async move {
                let mut worst = None;
                while watching.load(std::sync::atomic::Ordering::Relaxed) {
                    let m = store.memory();
                    if m.pinned + m.shadow > m.limit {
                        worst = Some(m);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                worst
            })
        };
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let m = manager.clone();
                let h = Arc::clone(&history);
                let tag = format!("{id}.{incarnation}.{t}");
                let seed = seed ^ ((id as u64) << 32) ^ ((t as u64) << 16) ^ hash_u64(&incarnation);
                tokio::spawn(workload(m, h, id, t, tag, seed, until))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        if args.iter().any(|a| a == "--leak") {
            // The audit's own test (`run --sabotage`): a task nobody ends.
            tokio::spawn(std::future::pending::<()>());
        }
        let mut code = 0;
        // The faults end about when the calls do (a restart into LOADING can run past its
        // step): once Redis is back the recovery loop half-opens the breaker within a health
        // check or two. One still open 10 s later is wedged. (A drain, the final one, has no
        // faults to look back on.)
        if until > 0 {
            let closed = |s| {
                matches!(
                    s,
                    resilient_redis_breaker::BreakerState::Closed
                        | resilient_redis_breaker::BreakerState::HalfOpen
                )
            };
            let mut state = manager.breaker().state();
            for _ in 0..200 {
                if closed(state) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                state = manager.breaker().state();
            }
            if !closed(state) {
                eprintln!(
                    "chaos app {id}: the breaker is still {state:?} 10 s after the calls ended"
                );
                code = 4;
            }
        }
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Ok(Some(m)) = over_bound.await {
            eprintln!(
                "chaos app {id}: the fallback store held {} bytes past its bound of {}",
                m.pinned + m.shadow,
                m.limit
            );
            code = 4;
        }
        if let Err(e) = manager.close(Duration::from_secs(10)).await {
            eprintln!("chaos app {id}: close: {e}");
            return 3;
        }
        drop(manager);
        drop(store);
        // Nothing the manager started outlives it: no task, no socket, no file.
        let mut tasks_left = usize::MAX;
        let mut fds_after = usize::MAX;
        // Up to 3 s: a pool keeper in the middle of a reconnect ends within its connect
        // timeout (1 s here).
        for _ in 0..150 {
            tasks_left = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            fds_after = open_fds();
            if tasks_left == 0 && fds_after <= fds_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if tasks_left > 0 {
            eprintln!("chaos app {id}: {tasks_left} tasks still alive after close");
            code = 4;
        }
        if fds_after > fds_before {
            eprintln!(
                "chaos app {id}: {fds_after} file descriptors open after close, {fds_before} before"
            );
            code = 4;
        }
        code
    })
}

/// File descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn hash_u64(s: &str) -> u64 {
    u64::from_str_radix(&hash(s.as_bytes()), 16).unwrap_or(0)
}

/// A write that failed may still have been applied: an ambiguous one by definition, and an
/// idempotent one that was sent and then failed (its caller may repeat it safely, but cannot
/// know). Only errors raised before anything was sent are "not applied"; from outside they
/// cannot be told apart, so every failed write counts as of unknown outcome.
fn outcome(_e: &Error) -> &'static str {
    "unk"
}

/// A failed call's reason, its kind first: `[timeout_error] ...`.
fn why(e: &Error) -> String {
    format!("[{}] {e}", e.kind().as_str())
}

/// One call in ten is abandoned by its caller after 0-20 ms (a timeout around it): `None`.
async fn cancel<T>(
    rng: &mut fastrand::Rng,
    call: impl std::future::Future<Output = T>,
) -> Option<T> {
    if rng.u8(..10) == 0 {
        tokio::time::timeout(Duration::from_millis(rng.u64(..20)), call)
            .await
            .ok()
    } else {
        Some(call.await)
    }
}

async fn workload(
    m: RedisManager,
    h: Arc<History>,
    app: usize,
    task: usize,
    tag: String,
    seed: u64,
    until: u64,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut n = 0u64;
    // What this task last wrote to each of its `exp:` keys (`None`: deleted).
    let mut expiring: BTreeMap<String, Option<String>> = BTreeMap::new();
    while now_ms() < until {
        n += 1;
        let id = format!("{tag}.{n}");
        let key = format!("own:{app}:{task}:{}", rng.usize(..KEYS_PER_TASK));
        let roll = rng.u8(..100);
        let start = now_ms();
        let event =
            |t: &str, op: &str, key: &str, v: Option<String>, d: i64, why: Option<String>| Event {
                t: t.to_owned(),
                id: id.clone(),
                op: op.to_owned(),
                key: key.to_owned(),
                v,
                d,
                start,
                end: now_ms(),
                why,
                src: None,
            };
        if roll < 6 {
            // MSET of two of this task's keys: both or neither (each key's history gets the
            // write, under its own id).
            let first = rng.usize(..KEYS_PER_TASK);
            let second = (first + 1 + rng.usize(..KEYS_PER_TASK - 1)) % KEYS_PER_TASK;
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = [first, second]
                .iter()
                .map(|k| {
                    let len = rng.usize(..256);
                    (
                        format!("own:{app}:{task}:{k}").into_bytes(),
                        (0..len).map(|_| rng.u8(..)).collect(),
                    )
                })
                .collect();
            let each = |t: &str, why: Option<String>| -> Vec<Event> {
                pairs
                    .iter()
                    .enumerate()
                    .map(|(i, (k, v))| Event {
                        t: t.to_owned(),
                        id: format!("{id}/{i}"),
                        op: "set".to_owned(),
                        key: String::from_utf8_lossy(k).into_owned(),
                        v: Some(hash(v)),
                        d: 0,
                        start,
                        end: now_ms(),
                        why: why.clone(),
                        src: None,
                    })
                    .collect()
            };
            for e in each("inv", None) {
                h.write(&e);
            }
            let r = cancel(&mut rng, m.mset(&pairs)).await;
            let (t, why) = match r {
                Some(Ok(())) => ("ok", None),
                Some(Err(e)) => (outcome(&e), Some(why(&e))),
                None => ("unk", Some("cancelled by its caller".to_owned())),
            };
            for e in each(t, why) {
                h.write(&e);
            }
        } else if roll < 40 {
            // Empty, small, and now and then 64 KiB or 1 MiB (larger than the small
            // application's whole fallback store).
            let len = match rng.u8(..40) {
                0 => 0,
                1 | 2 => 64 * 1024,
                3 => 1024 * 1024,
                _ => rng.usize(1..512),
            };
            let value: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let v = Some(hash(&value));
            // One SET in four expires: mostly 50 ms to 3 s later (the deadline must hold across
            // a replay: neither lost early nor kept late), now and then after the odd times
            // callers pass (1 or 2 ms, an hour, a day).
            let ttl = if rng.u8(..4) == 0 {
                match rng.u8(..10) {
                    0 => 1,
                    1 => 2,
                    2 => 3_600_000,
                    3 => 86_400_000,
                    _ => rng.i64(50..3000),
                }
            } else {
                0
            };
            let px = (ttl > 0).then(|| Duration::from_millis(ttl.unsigned_abs()));
            h.write(&event("inv", "set", &key, v.clone(), ttl, None));
            let r = cancel(&mut rng, m.set(key.as_bytes(), &value, px)).await;
            h.write(&match r {
                Some(Ok(())) => event("ok", "set", &key, v, ttl, None),
                Some(Err(e)) => event(outcome(&e), "set", &key, v, ttl, Some(why(&e))),
                None => event(
                    "unk",
                    "set",
                    &key,
                    v,
                    ttl,
                    Some("cancelled by its caller".into()),
                ),
            });
        } else if roll < 50 {
            h.write(&event("inv", "del", &key, None, 0, None));
            let r = cancel(&mut rng, m.del(&[key.clone().into_bytes()])).await;
            h.write(&match r {
                Some(Ok(_)) => event("ok", "del", &key, None, 0, None),
                Some(Err(e)) => event(outcome(&e), "del", &key, None, 0, Some(why(&e))),
                None => event(
                    "unk",
                    "del",
                    &key,
                    None,
                    0,
                    Some("cancelled by its caller".into()),
                ),
            });
        } else if roll < 56 {
            // Keys with PEXPIRE (`exp:`): a SET without a TTL, a PEXPIRE of 1 ms to an hour,
            // or a DEL. To the checker a PEXPIRE is a write of the value this task last wrote
            // to the key, with that TTL (the key's only writer knows what it holds, unless a
            // write of unknown outcome intervened, which the checker allows for anyway).
            let key = format!("exp:{app}:{task}:{}", rng.usize(..EXPIRING_PER_TASK));
            let (op, v, ttl, call): (&str, Option<String>, i64, Call) = match rng.u8(..3) {
                0 => {
                    let value: Vec<u8> = (0..rng.usize(..128)).map(|_| rng.u8(..)).collect();
                    let v = Some(hash(&value));
                    let (m, k) = (m.clone(), key.clone());
                    let call: Call =
                        Box::pin(
                            async move { m.set(k.as_bytes(), &value, None).await.map(|()| 0) },
                        );
                    ("set", v, 0, call)
                }
                1 => {
                    let ttl = match rng.u8(..5) {
                        0 => 1,
                        1 => 3_600_000,
                        _ => rng.i64(50..3000),
                    };
                    let believed = expiring.get(&key).cloned().flatten();
                    let (m, k) = (m.clone(), key.clone());
                    let d = Duration::from_millis(ttl.unsigned_abs());
                    let call: Call =
                        Box::pin(async move { m.expire(k.as_bytes(), d).await.map(u64::from) });
                    ("expire", believed, ttl, call)
                }
                _ => {
                    let (m, k) = (m.clone(), key.clone());
                    let call: Call = Box::pin(async move { m.del(&[k.into_bytes()]).await });
                    ("del", None, 0, call)
                }
            };
            if op != "expire" {
                expiring.insert(key.clone(), v.clone());
            }
            h.write(&event("inv", op, &key, v.clone(), ttl, None));
            let r = cancel(&mut rng, call).await;
            h.write(&match r {
                Some(Ok(_)) => event("ok", op, &key, v, ttl, None),
                Some(Err(e)) => event(outcome(&e), op, &key, v, ttl, Some(why(&e))),
                None => event(
                    "unk",
                    op,
                    &key,
                    v,
                    ttl,
                    Some("cancelled by its caller".into()),
                ),
            });
        } else if roll < 80 {
            let r = m.get_with_source(key.as_bytes()).await;
            h.write(&match r {
                Ok(s) => {
                    // Who answered: a read from Redis must respect the order of acknowledged
                    // writes; one from memory may be stale by design.
                    let src = if s.by == ServedBy::Redis {
                        "redis"
                    } else {
                        "memory"
                    };
                    let mut e = event("ok", "get", &key, s.value.as_deref().map(hash), 0, None);
                    e.src = Some(src.to_owned());
                    e
                }
                Err(e) => event("err", "get", &key, None, 0, Some(why(&e))),
            });
        } else if roll < 86 {
            // A field of one of this task's hashes, set or deleted: each field is a register
            // of its own to the checker (`hsh:...#field`).
            let key = format!("hsh:{app}:{task}:{}", rng.usize(..HASHES_PER_TASK));
            let field = format!("f{}", rng.usize(..FIELDS));
            let register = format!("{key}#{field}");
            let (op, v, call) = if rng.u8(..4) == 0 {
                let fields = vec![field.clone().into_bytes()];
                let m = m.clone();
                let key = key.clone();
                let call: Call = Box::pin(async move { m.hdel(key.as_bytes(), &fields).await });
                ("del", None, call)
            } else {
                let len = rng.usize(..128);
                let value: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                let v = Some(hash(&value));
                let pairs = vec![(field.clone().into_bytes(), value)];
                let m = m.clone();
                let key = key.clone();
                let call: Call = Box::pin(async move { m.hset(key.as_bytes(), &pairs).await });
                ("set", v, call)
            };
            h.write(&event("inv", op, &register, v.clone(), 0, None));
            let r = cancel(&mut rng, call).await;
            h.write(&match r {
                Some(Ok(_)) => event("ok", op, &register, v, 0, None),
                Some(Err(e)) => event(outcome(&e), op, &register, v, 0, Some(why(&e))),
                None => event(
                    "unk",
                    op,
                    &register,
                    v,
                    0,
                    Some("cancelled by its caller".into()),
                ),
            });
        } else {
            let key = format!("ctr:{}", rng.usize(..COUNTERS));
            let d = rng.i64(1..100);
            h.write(&event("inv", "incr", &key, None, d, None));
            let r = cancel(&mut rng, m.incr_by(key.as_bytes(), d)).await;
            h.write(&match r {
                Some(Ok(_)) => event("ok", "incr", &key, None, d, None),
                Some(Err(e)) => event(outcome(&e), "incr", &key, None, d, Some(why(&e))),
                None => event(
                    "unk",
                    "incr",
                    &key,
                    None,
                    d,
                    Some("cancelled by its caller".into()),
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(1..5))).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The controller.

#[derive(Clone, Copy, Debug)]
enum Step {
    KillRedis(Duration),
    Blackhole(Duration),
    Latency(Duration),
    ResetAll,
    KillApp(usize, Duration),
    /// `maxmemory` far below the dataset with `noeviction`: writes answered `OOM`.
    Oom(Duration),
    /// `maxclients 1`: new connections are refused (existing ones keep working).
    MaxClients(Duration),
    /// `requirepass` set: new connections fail to authenticate (existing ones stay in).
    Password(Duration),
    /// A one-way partition: requests reach Redis and run, replies are held.
    HoldReplies(Duration),
    /// The other way: requests are held, replies flow.
    HoldRequests(Duration),
    /// Every reply cut half-way and its connection reset.
    CutReplies(Duration),
    /// Replies sliced into pieces of a few bytes.
    /// (how long, bytes per piece).
    Slice(Duration, usize),
    /// Redis SIGKILLed and restarted on a dataset that takes about a second to load (written
    /// the first time): it answers `LOADING` meanwhile.
    Loading(Duration),
    /// Replies slowed to 64 KiB/s.
    Bandwidth(Duration),
    Calm(Duration),
}

/// When a step of the schedule ran, wall clock (Unix ms).
struct Window {
    name: &'static str,
    start: u64,
    end: u64,
}

impl Step {
    /// The fault class, for the report.
    fn name(&self) -> &'static str {
        match self {
            Step::KillRedis(_) => "Redis SIGKILLed and restarted",
            Step::Blackhole(_) => "blackhole",
            Step::Latency(_) => "latency 400 ms (past the socket timeout)",
            Step::ResetAll => "every connection reset",
            Step::KillApp(..) => "an application SIGKILLed and restarted",
            Step::Oom(_) => "maxmemory + noeviction (OOM)",
            Step::MaxClients(_) => "maxclients 1",
            Step::Password(_) => "requirepass set",
            Step::HoldReplies(_) => "one-way partition (replies held)",
            Step::HoldRequests(_) => "one-way partition (requests held)",
            Step::CutReplies(_) => "replies cut mid-way, connection reset",
            Step::Slice(..) => "replies sliced into 1-7 byte pieces",
            Step::Loading(_) => "Redis restarted into LOADING (1M keys)",
            Step::Bandwidth(_) => "replies slowed to 64 KiB/s",
            Step::Calm(_) => "calm",
        }
    }

    /// The fault named `name` (as printed in the schedule, lower case) lasting `d`.
    fn named(name: &str, d: Duration, app: usize) -> Option<Step> {
        Some(match name {
            "killredis" => Step::KillRedis(d),
            "blackhole" => Step::Blackhole(d),
            "latency" => Step::Latency(d),
            "resetall" => Step::ResetAll,
            "killapp" => Step::KillApp(app, d),
            "oom" => Step::Oom(d),
            "maxclients" => Step::MaxClients(d),
            "password" => Step::Password(d),
            "holdreplies" => Step::HoldReplies(d),
            "holdrequests" => Step::HoldRequests(d),
            "cutreplies" => Step::CutReplies(d),
            "slice" => Step::Slice(d, 1 + app % 7),
            "loading" => Step::Loading(d),
            "bandwidth" => Step::Bandwidth(d),
            _ => return None,
        })
    }

    fn length(&self) -> Duration {
        match *self {
            Step::ResetAll => Duration::from_millis(200),
            Step::KillRedis(d)
            | Step::Blackhole(d)
            | Step::Latency(d)
            | Step::KillApp(_, d)
            | Step::Oom(d)
            | Step::MaxClients(d)
            | Step::Password(d)
            | Step::HoldReplies(d)
            | Step::HoldRequests(d)
            | Step::CutReplies(d)
            | Step::Slice(d, _)
            | Step::Loading(d)
            | Step::Bandwidth(d)
            | Step::Calm(d) => d,
        }
    }

    /// The step as `--schedule` writes it: `killredis:1200ms`, `killapp1:600ms`, `resetall`.
    fn text(&self) -> String {
        let d = self.length().as_millis();
        match self {
            Step::ResetAll => "resetall".to_owned(),
            Step::KillApp(i, _) => format!("killapp{i}:{d}ms"),
            Step::Slice(_, bytes) => format!("slice{bytes}:{d}ms"),
            Step::Calm(_) => format!("calm:{d}ms"),
            other => {
                let name = format!("{other:?}").to_lowercase();
                let name = name.split('(').next().unwrap_or_default().to_owned();
                format!("{name}:{d}ms")
            }
        }
    }

    /// Reads one step written by [`Step::text`].
    fn parse(text: &str) -> Option<Step> {
        let (name, d) = match text.split_once(':') {
            Some((name, d)) => (name, parse_duration(d)?),
            None => (text, Duration::from_millis(200)),
        };
        if name == "calm" {
            return Some(Step::Calm(d));
        }
        if let Some(i) = name.strip_prefix("killapp")
            && !i.is_empty()
        {
            return Some(Step::KillApp(i.parse().ok()?, d));
        }
        if let Some(bytes) = name.strip_prefix("slice")
            && !bytes.is_empty()
        {
            return Some(Step::Slice(d, bytes.parse().ok().filter(|b| *b > 0)?));
        }
        Step::named(name, d, 0)
    }

    fn cut(self, left: Duration) -> Step {
        let d = self.length().min(left);
        match self {
            Step::KillRedis(_) => Step::KillRedis(d),
            Step::Blackhole(_) => Step::Blackhole(d),
            Step::Latency(_) => Step::Latency(d),
            Step::KillApp(i, _) => Step::KillApp(i, d),
            Step::Oom(_) => Step::Oom(d),
            Step::MaxClients(_) => Step::MaxClients(d),
            Step::Password(_) => Step::Password(d),
            Step::HoldReplies(_) => Step::HoldReplies(d),
            Step::HoldRequests(_) => Step::HoldRequests(d),
            Step::CutReplies(_) => Step::CutReplies(d),
            Step::Slice(_, bytes) => Step::Slice(d, bytes),
            Step::Loading(_) => Step::Loading(d),
            Step::Bandwidth(_) => Step::Bandwidth(d),
            Step::Calm(_) => Step::Calm(d),
            Step::ResetAll => Step::ResetAll,
        }
    }
}

fn schedule(seed: u64, length: Duration, apps: usize) -> Vec<Step> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    while total < length {
        let d = Duration::from_millis(rng.u64(300..2500));
        let step = match rng.u8(..15) {
            0 => Step::KillRedis(d),
            1 => Step::Blackhole(d),
            2 => Step::Latency(d),
            3 => Step::ResetAll,
            4 => Step::KillApp(rng.usize(..apps), d),
            5 => Step::Oom(d),
            6 => Step::MaxClients(d),
            7 => Step::Password(d),
            8 => Step::HoldReplies(d),
            9 => Step::HoldRequests(d),
            10 => Step::CutReplies(d),
            11 => Step::Slice(d, rng.usize(1..8)),
            12 => Step::Loading(d),
            13 => Step::Bandwidth(d),
            _ => Step::Calm(d),
        };
        // The plan ends with the campaign: the last fault is cut, not left running.
        let step = step.cut(length.saturating_sub(total));
        total += step.length();
        steps.push(step);
    }
    steps
}

/// What every application process of one campaign shares.
struct Apps<'a> {
    exe: &'a Path,
    dir: &'a Path,
    seed: u64,
    /// How many.
    count: usize,
}

/// Starts application `id`'s `incarnation`, calling until `until` (Unix ms; 0: drain only).
fn spawn_app(
    apps: &Apps<'_>,
    id: usize,
    incarnation: u32,
    url: &str,
    until: u64,
    leak: bool,
) -> Option<Child> {
    let Apps { exe, dir, seed, .. } = *apps;
    Command::new(exe)
        .args([
            "app",
            "--id",
            &id.to_string(),
            "--incarnation",
            &incarnation.to_string(),
        ])
        .args([
            "--url",
            url,
            "--until",
            &until.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .arg("--dir")
        .arg(dir)
        .args(leak.then_some("--leak"))
        .env("RUST_LOG", "off")
        .spawn()
        .map_err(|e| eprintln!("chaos: cannot start app {id}: {e}"))
        .ok()
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    s.strip_suffix("ms")
        .and_then(|n| n.parse().ok().map(Duration::from_millis))
        .or_else(|| {
            s.strip_suffix('s')
                .and_then(|n| n.parse().ok().map(Duration::from_secs))
        })
        .or_else(|| s.parse().ok().map(Duration::from_secs))
}

fn run(args: &[String]) -> i32 {
    let seed = arg(args, "--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_ms);
    let duration = arg(args, "--duration")
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(20));
    let apps: usize = arg(args, "--apps")
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .max(1);
    let keep = tempfile::Builder::new().prefix("chaos-").tempdir();
    let (dir, _guard) = match (arg(args, "--dir"), keep) {
        (Some(d), _) => {
            let d = PathBuf::from(d);
            if let Err(e) = std::fs::create_dir_all(&d) {
                eprintln!("chaos: {}: {e}", d.display());
                return 2;
            }
            if std::fs::read_dir(&d).map_or(true, |mut e| e.next().is_some()) {
                eprintln!(
                    "chaos: {} is not empty (histories and journals of another run?)",
                    d.display()
                );
                return 2;
            }
            (d, None)
        }
        (None, Ok(t)) => (t.path().to_owned(), Some(t)),
        (None, Err(e)) => {
            eprintln!("chaos: temporary directory: {e}");
            return 2;
        }
    };
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("chaos: cannot find my own executable");
        return 2;
    };
    let mut steps = schedule(seed, duration, apps);
    if let Some(only) = arg(args, "--only") {
        // One kind of fault (its name as printed in the schedule, lower case) in place of
        // every fault the seed drew, with the same timings.
        let mut apps_rng = fastrand::Rng::with_seed(seed);
        for step in &mut steps {
            if matches!(step, Step::Calm(_)) {
                continue;
            }
            let d = step.length();
            let Some(one) = Step::named(only, d, apps_rng.usize(..apps)) else {
                eprintln!(
                    "chaos: no fault named {only:?} (killredis, blackhole, latency, resetall, \
                     killapp, oom, maxclients, password, holdreplies, holdrequests, cutreplies, \
                     slice, loading, bandwidth)"
                );
                return 2;
            };
            *step = one;
        }
    }
    let mut duration = duration;
    if let Some(text) = arg(args, "--schedule") {
        // An exact schedule (as printed by a run) in place of the one drawn from the seed,
        // which still drives the workload.
        let parsed: Option<Vec<Step>> = text.split(',').map(|t| Step::parse(t.trim())).collect();
        let Some(parsed) = parsed.filter(|p| !p.is_empty()) else {
            eprintln!("chaos: cannot read the schedule {text:?}");
            return 2;
        };
        steps = parsed;
        duration = steps.iter().map(Step::length).sum();
        if let Some(bad) = steps
            .iter()
            .find(|s| matches!(s, Step::KillApp(i, _) if *i >= apps))
        {
            eprintln!(
                "chaos: {} names an application past --apps {apps}",
                bad.text()
            );
            return 2;
        }
    }
    let text = schedule_text(&steps);
    println!(
        "chaos: seed {seed}, {apps} apps, {duration:?}; rerun with `cargo xtask chaos --seed {seed} --apps {apps} --schedule {text}`"
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: runtime: {e}");
            return 2;
        }
    };
    let mut server = match RedisServer::builder().durable().try_start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chaos: {e}");
            return 2;
        }
    };
    let started = Instant::now();
    let sabotage = args.iter().any(|a| a == "--sabotage");
    let campaign = Apps {
        exe: &exe,
        dir: &dir,
        seed,
        count: apps,
    };
    let (app_failures, windows) =
        rt.block_on(drive(&mut server, &campaign, duration, &steps, sabotage));
    let checked_at = now_ms();
    let read = rt.block_on(read_redis(&server.url(), apps));
    // The keys are read one after another between these two instants: a value may have
    // expired by the second, and must have by the first.
    let read_done = now_ms();
    let mut redis_state = match read {
        Ok(state) => state,
        Err(e) => {
            println!("chaos: seed {seed}: cannot read Redis at the end: {e}");
            return 1;
        }
    };
    if sabotage {
        // The checker's own test: a value nobody wrote, a counter far above every increment, a
        // hash field nobody set.
        redis_state.insert("own:0:0:0".into(), Some(b"a value nobody wrote".to_vec()));
        redis_state.insert("ctr:0".into(), Some(b"999999999999".to_vec()));
        redis_state.insert("hsh:0:0:0#f0".into(), Some(b"a field nobody set".to_vec()));
    }
    let report = check(&dir, apps, &redis_state, (checked_at, read_done));
    let table = fault_table(&dir, apps, &windows);
    println!("{table}");
    if let Some(path) = arg(args, "--report")
        && let Err(e) = std::fs::write(path, &table)
    {
        eprintln!("chaos: {path}: {e}");
    }
    println!(
        "chaos: {} calls in {:.1} s ({} ok, {} refused, {} unknown outcome); worst call {} ms",
        report.calls,
        started.elapsed().as_secs_f64(),
        report.ok,
        report.refused,
        report.unknown,
        report.worst_ms
    );
    println!(
        "chaos: {} keys and hash fields checked ({} holding their last acknowledged write, the \
         rest a write of unknown outcome or an expiry), {} counters",
        report.keys_checked, report.keys_last_acked, report.counters_checked
    );
    let mut violations = report.violations;
    violations.extend(app_failures);
    if let Some(fault) = arg(args, "--fail-if")
        && steps.iter().any(|s| s.text().starts_with(fault))
    {
        // The shrinker's own test: a violation exactly when the schedule holds this fault.
        violations.push(format!("--fail-if {fault}: the schedule holds it"));
    }
    if sabotage {
        let caught = |key: &str| violations.iter().any(|v| v.starts_with(&format!("{key}:")));
        let leak_caught = violations
            .iter()
            .any(|v| v.starts_with("app 0: the final drain exited with exit status: 4"));
        return if caught("own:0:0:0") && caught("ctr:0") && caught("hsh:0:0:0#f0") && leak_caught {
            println!(
                "chaos: the checker caught the sabotaged key, counter and hash field, and the leak"
            );
            0
        } else {
            println!("chaos: the checker MISSED the sabotage: {violations:?}");
            1
        };
    }
    if violations.is_empty() {
        println!("chaos: seed {seed}: every promise held");
        0
    } else {
        println!("chaos: seed {seed}: {} violations", violations.len());
        for v in violations.iter().take(20) {
            println!("  - {v}");
        }
        println!("schedule: {text}");
        println!("histories kept in {}", dir.display());
        if let Some(g) = _guard {
            let _ = g.keep();
        }
        if args.iter().any(|a| a == "--shrink") {
            // A rerun counts only when it fails the same way (the same kind of violation), not
            // when some other failure happens on the shorter schedule.
            let wanted = violations.first().map(|v| signature(v)).unwrap_or_default();
            let small = shrink(steps, |candidate| {
                let text = schedule_text(candidate);
                println!("chaos: shrinking: trying {text}");
                let mut again = Command::new(&exe);
                again.args([
                    "run",
                    "--seed",
                    &seed.to_string(),
                    "--apps",
                    &apps.to_string(),
                ]);
                again.args(["--schedule", &text]);
                if let Some(fault) = arg(args, "--fail-if") {
                    again.args(["--fail-if", fault]);
                }
                let out = again.stderr(std::process::Stdio::null()).output();
                let printed = out
                    .as_ref()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let same = out.is_ok_and(|o| o.status.code() == Some(1))
                    && printed
                        .lines()
                        .filter_map(|l| l.strip_prefix("  - "))
                        .any(|v| signature(v) == wanted);
                if same && let Some(kept) = printed.lines().find(|l| l.starts_with("histories")) {
                    println!("chaos: shrinking: still fails ({kept})");
                } else {
                    println!(
                        "chaos: shrinking: {}",
                        if same { "still fails" } else { "holds" }
                    );
                }
                same
            });
            println!(
                "chaos: shrunk to {} steps; rerun with `cargo xtask chaos --seed {seed} --apps {apps} --schedule {}`",
                small.len(),
                schedule_text(&small)
            );
        }
        1
    }
}

/// What kind of violation a line reports, without the key it names: `own:1:2:0: Redis holds
/// ...` and `own:0:1:2: Redis holds ...` are the same failure to the shrinker.
fn signature(violation: &str) -> String {
    let body = match violation.split_once(": ") {
        Some((key, rest))
            if ["own:", "ctr:", "hsh:", "exp:"]
                .iter()
                .any(|p| key.starts_with(p)) =>
        {
            rest
        }
        _ => violation,
    };
    // Its words, without what varies: quoted values, what is in brackets, numbers, ids,
    // `Some`/`None`.
    let mut plain = String::new();
    let mut depth = 0usize;
    for (i, part) in body.split('"').enumerate() {
        if i % 2 == 1 {
            continue;
        }
        for c in part.chars() {
            match c {
                '(' | '[' => depth += 1,
                ')' | ']' => depth = depth.saturating_sub(1),
                c if depth == 0 => plain.push(c),
                _ => {}
            }
        }
    }
    plain
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| w.len() >= 4 && *w != "Some" && *w != "None")
        .collect::<Vec<_>>()
        .join(" ")
}

/// A schedule as `--schedule` reads it.
fn schedule_text(steps: &[Step]) -> String {
    steps.iter().map(Step::text).collect::<Vec<_>>().join(",")
}

/// The shortest schedule found that still fails: drops steps one at a time while the campaign
/// still fails without them, then halves the length of each step left while it still fails.
/// `fails` reruns the campaign on a candidate (timing on a real machine varies, so this finds a
/// short failing schedule, not the shortest).
fn shrink(mut steps: Vec<Step>, mut fails: impl FnMut(&[Step]) -> bool) -> Vec<Step> {
    let mut i = 0;
    while i < steps.len() && steps.len() > 1 {
        let mut fewer = steps.clone();
        fewer.remove(i);
        if fails(&fewer) {
            steps = fewer;
        } else {
            i += 1;
        }
    }
    for i in 0..steps.len() {
        // An application is restarted no sooner than 600 ms after its kill, whatever the step
        // says: shorter would not be what ran.
        let least = match steps[i] {
            Step::ResetAll => Duration::MAX,
            Step::KillApp(..) => Duration::from_millis(1200),
            _ => Duration::from_millis(400),
        };
        while steps[i].length() >= least {
            let mut shorter = steps.clone();
            shorter[i] = steps[i].cut(steps[i].length() / 2);
            if fails(&shorter) {
                steps = shorter;
            } else {
                break;
            }
        }
    }
    steps
}

async fn drive(
    server: &mut RedisServer,
    campaign: &Apps<'_>,
    duration: Duration,
    steps: &[Step],
    sabotage: bool,
) -> (Vec<String>, Vec<Window>) {
    let apps = campaign.count;
    let mut windows = Vec::new();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut admin = Admin {
        url: server.url(),
        con: None,
        failed: false,
    };
    admin.connect().await;
    // Calls stop a little after the faults, so the last outage is seen and recovered from.
    let until = now_ms() + u64::try_from(duration.as_millis()).unwrap_or(u64::MAX) + 2000;
    let url = proxy.url();
    let mut incarnations = vec![0u32; apps];
    let mut loaded = false;
    let mut children: Vec<Option<Child>> = (0..apps)
        .map(|i| spawn_app(campaign, i, 0, &url, until, false))
        .collect();
    let began = Instant::now();
    for step in steps {
        // Faults end with the campaign: the last one is cut short rather than left running.
        let Some(left) = duration.checked_sub(began.elapsed()) else {
            break;
        };
        let step = step.cut(left);
        let start = now_ms();
        let name = step.name();
        match step {
            Step::KillRedis(d) | Step::Loading(d) => {
                let pause = if matches!(step, Step::Loading(_)) {
                    if !loaded {
                        // Once: the dataset stays, so every later restart loads it too.
                        admin.fill_big().await;
                        loaded = true;
                    }
                    d.min(Duration::from_millis(300))
                } else {
                    d
                };
                server.kill();
                tokio::time::sleep(pause).await;
                // Returns once the server answers PING, that is once it has loaded.
                if let Err(e) = server.try_restart() {
                    for c in children.iter_mut().flatten() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return (
                        vec![format!("the harness could not restart redis-server: {e}")],
                        windows,
                    );
                }
                admin.connect().await;
            }
            Step::Blackhole(d) => {
                proxy.set(Fault::Blackhole);
                tokio::time::sleep(d).await;
                proxy.set(Fault::Pass);
            }
            Step::Latency(d) => {
                proxy.set(Fault::Latency(Duration::from_millis(400)));
                tokio::time::sleep(d).await;
                proxy.set(Fault::Pass);
            }
            Step::ResetAll => {
                proxy.reset_all();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Step::KillApp(i, d) => {
                if let Some(mut c) = children[i].take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                // At least 600 ms: bytes the dead process sent may still sit in the proxy's
                // latency (400 ms), and nothing can fence a dead process's connections.
                tokio::time::sleep(d.max(Duration::from_millis(600))).await;
                incarnations[i] += 1;
                children[i] = spawn_app(campaign, i, incarnations[i], &url, until, false);
            }
            Step::Oom(d) => {
                admin
                    .run(&[
                        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
                        &["CONFIG", "SET", "maxmemory", "1"],
                    ])
                    .await;
                tokio::time::sleep(d).await;
                admin.run(&[&["CONFIG", "SET", "maxmemory", "0"]]).await;
            }
            Step::MaxClients(d) => {
                let before = admin.get("maxclients").await;
                admin.run(&[&["CONFIG", "SET", "maxclients", "1"]]).await;
                tokio::time::sleep(d).await;
                admin
                    .run(&[&["CONFIG", "SET", "maxclients", &before]])
                    .await;
            }
            Step::Password(d) => {
                admin
                    .run(&[&["CONFIG", "SET", "requirepass", "chaos-changed-it"]])
                    .await;
                tokio::time::sleep(d).await;
                admin.run(&[&["CONFIG", "SET", "requirepass", ""]]).await;
            }
            // Faults of the proxy, one at a time: held bytes are delivered when the next step
            // begins, so none of them sits in the proxy while an app is killed (a dead
            // process's request delivered late cannot be fenced).
            Step::HoldReplies(d) => {
                proxy.set(Fault::HoldReplies);
                tokio::time::sleep(d).await;
                proxy.set(Fault::Pass);
            }
            Step::HoldRequests(d) => {
                proxy.set(Fault::HoldRequests);
                tokio::time::sleep(d).await;
                proxy.set(Fault::Pass);
            }
            Step::CutReplies(d) => {
                proxy.set(Fault::CutReplies);
                tokio::time::sleep(d).await;
                proxy.set(Fault::Pass);
            }
            Step::Slice(d, bytes) => {
                // No pause between pieces: a timer's millisecond would make every large reply
                // a timeout (a blackhole, not a slicer); each piece is its own write.
                proxy.set(Fault::Slice {
                    bytes,
                    delay: Duration::ZERO,
                });
                tokio::time::sleep(d).await;
                proxy.set(Fault::Pass);
            }
            Step::Bandwidth(d) => {
                proxy.set(Fault::Bandwidth(64 * 1024));
                tokio::time::sleep(d).await;
                proxy.set(Fault::Pass);
            }
            Step::Calm(d) => tokio::time::sleep(d).await,
        }
        windows.push(Window {
            name,
            start,
            end: now_ms(),
        });
    }
    proxy.set(Fault::Pass);
    let mut failures = Vec::new();
    if admin.failed {
        failures.push("the harness lost its admin connection: some faults were not applied".into());
    }
    for (i, c) in children.iter_mut().enumerate() {
        let Some(c) = c else {
            failures.push(format!("app {i} could not be started"));
            continue;
        };
        match tokio::task::block_in_place(|| c.wait()) {
            Ok(s) if s.success() => {}
            Ok(s) => failures.push(format!(
                "app {i} exited with {s} (3: writes still pending at close; 4: a breaker \
                 wedged, the fallback store past its bound, or tasks or files left open: \
                 see its output)"
            )),
            Err(e) => failures.push(format!("app {i}: {e}")),
        }
    }
    // The final drain: each journal is opened once more and replayed, as a restarted process
    // would (a close cut short by a fault leaves its writes there, not lost).
    for (i, incarnation) in incarnations.iter().enumerate() {
        // Sabotage: app 0's drain leaks a task, which its own audit must report.
        let leak = sabotage && i == 0;
        let Some(mut c) = spawn_app(campaign, i, incarnation + 1, &url, 0, leak) else {
            failures.push(format!("app {i}: the final drain could not start"));
            continue;
        };
        match tokio::task::block_in_place(|| c.wait()) {
            Ok(s) if s.success() => {}
            Ok(s) => failures.push(format!("app {i}: the final drain exited with {s}")),
            Err(e) => failures.push(format!("app {i}: the final drain: {e}")),
        }
    }
    (failures, windows)
}

/// A connection of the harness's own, straight to the server (not through the proxy), opened
/// before any fault: with `maxclients` reached or a password set, a new connection would be
/// refused, but this one stays in. Reopened after Redis restarts.
struct Admin {
    url: String,
    con: Option<redis::aio::MultiplexedConnection>,
    /// A connect failed: the server-side faults after it were not applied.
    failed: bool,
}

impl Admin {
    async fn connect(&mut self) {
        self.con = match redis::Client::open(self.url.as_str()) {
            Ok(c) => c.get_multiplexed_async_connection().await.ok(),
            Err(_) => None,
        };
        if self.con.is_none() {
            eprintln!("chaos: the admin connection to redis-server failed");
            self.failed = true;
        }
    }

    /// Writes a million keys of 100 bytes (`big:*`, never checked) and rewrites the AOF, so a
    /// restart spends about a second in `LOADING` (measured: 0.9 s here).
    async fn fill_big(&mut self) {
        let Some(con) = self.con.as_mut() else {
            return;
        };
        let value = vec![b'x'; 100];
        for batch in 0..500u32 {
            let mut mset = redis::cmd("MSET");
            for i in 0..2000u32 {
                mset.arg(format!("big:{}", batch * 2000 + i)).arg(&value);
            }
            if let Err(e) = mset.query_async::<()>(con).await {
                eprintln!("chaos: admin MSET big:*: {e}");
                return;
            }
        }
        // Redis may have begun a rewrite of its own (the AOF grew): waiting for it does too.
        if let Err(e) = redis::cmd("BGREWRITEAOF")
            .query_async::<redis::Value>(con)
            .await
            && !e.to_string().contains("already in progress")
        {
            eprintln!("chaos: admin BGREWRITEAOF: {e}");
        }
        for _ in 0..100 {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(con)
                .await
                .unwrap_or_default();
            if info.contains("aof_rewrite_in_progress:0")
                && info.contains("aof_rewrite_scheduled:0")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("chaos: the AOF rewrite did not finish within 10 s");
    }

    /// A configuration value (`CONFIG GET`), as the server has it now.
    async fn get(&mut self, name: &str) -> String {
        let Some(con) = self.con.as_mut() else {
            return String::new();
        };
        let pair: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(con)
            .await;
        pair.ok()
            .and_then(|p| p.get(1).cloned())
            .unwrap_or_default()
    }

    async fn run(&mut self, commands: &[&[&str]]) {
        let Some(con) = self.con.as_mut() else {
            return;
        };
        for c in commands {
            let mut cmd = redis::cmd(c[0]);
            for a in &c[1..] {
                cmd.arg(*a);
            }
            if let Err(e) = cmd.query_async::<redis::Value>(con).await {
                eprintln!("chaos: admin {c:?}: {e}");
            }
        }
    }
}

/// Every key's value in Redis at the end (hashes of values; counters as numbers).
async fn read_redis(
    url: &str,
    apps: usize,
) -> Result<BTreeMap<String, Option<Vec<u8>>>, redis::RedisError> {
    let mut out = BTreeMap::new();
    let mut con = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut keys: Vec<String> = (0..COUNTERS).map(|c| format!("ctr:{c}")).collect();
    for a in 0..apps {
        for t in 0..TASKS {
            for k in 0..KEYS_PER_TASK {
                keys.push(format!("own:{a}:{t}:{k}"));
            }
            for k in 0..EXPIRING_PER_TASK {
                keys.push(format!("exp:{a}:{t}:{k}"));
            }
        }
    }
    for k in keys {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query_async(&mut con).await?;
        out.insert(k, v);
    }
    for a in 0..apps {
        for t in 0..TASKS {
            for k in 0..HASHES_PER_TASK {
                let key = format!("hsh:{a}:{t}:{k}");
                for f in 0..FIELDS {
                    let field = format!("f{f}");
                    let v: Option<Vec<u8>> = redis::cmd("HGET")
                        .arg(&key)
                        .arg(&field)
                        .query_async(&mut con)
                        .await?;
                    out.insert(format!("{key}#{field}"), v);
                }
            }
        }
    }
    Ok(out)
}

/// Calls by the fault in force when they started: outcomes, who answered reads, worst latency.
fn fault_table(dir: &Path, apps: usize, windows: &[Window]) -> String {
    #[derive(Default)]
    struct Row {
        calls: u64,
        ok: u64,
        unknown: u64,
        refused: u64,
        from_memory: u64,
        worst: u64,
        /// Failed or abandoned calls by the error's kind.
        kinds: BTreeMap<String, u64>,
    }
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    // Reads with who answered them, by start: (start, end, from memory).
    let mut reads: Vec<(u64, u64, bool)> = Vec::new();
    for a in 0..apps {
        let Ok(f) = std::fs::File::open(dir.join(format!("history-{a}.jsonl"))) else {
            continue;
        };
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            let Ok(e) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if e.t == "inv" {
                continue;
            }
            let class = windows
                .iter()
                .find(|w| w.start <= e.start && e.start < w.end)
                .map_or("calm", |w| w.name);
            let row = rows.entry(class).or_default();
            row.calls += 1;
            match e.t.as_str() {
                "ok" => row.ok += 1,
                "unk" => row.unknown += 1,
                _ => row.refused += 1,
            }
            if e.src.as_deref() == Some("memory") {
                row.from_memory += 1;
            }
            if e.t != "ok" {
                let kind = match e.why.as_deref() {
                    Some(w) if w.starts_with('[') => {
                        w[1..].split(']').next().unwrap_or("other").to_owned()
                    }
                    Some("cancelled by its caller") => "abandoned by its caller".to_owned(),
                    _ => "other".to_owned(),
                };
                *row.kinds.entry(kind).or_default() += 1;
            }
            if let Some(src) = &e.src {
                reads.push((e.start, e.end, src == "memory"));
            }
            row.worst = row.worst.max(e.end.saturating_sub(e.start));
        }
    }
    reads.sort_unstable();
    let (detect, recover) = detection(windows, &reads);
    let mut out = String::from(
        "| fault in force when the call started | calls | ok | unknown outcome | refused | failures by kind | reads from memory | worst call | detected in (median, max) | Redis serves again after (median, max) |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let spread = |v: Option<&Vec<u64>>| match v {
        Some(v) if !v.is_empty() => {
            let mut v = v.clone();
            v.sort_unstable();
            format!(
                "{} ms, {} ms ({} of the fault's windows)",
                v[v.len() / 2],
                v[v.len() - 1],
                v.len()
            )
        }
        _ => "not seen".to_owned(),
    };
    for (name, r) in rows {
        let mut kinds: Vec<(&String, &u64)> = r.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        let kinds = kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} ms | {} | {} |\n",
            r.calls,
            r.ok,
            r.unknown,
            r.refused,
            if kinds.is_empty() {
                "-".to_owned()
            } else {
                kinds
            },
            r.from_memory,
            r.worst,
            spread(detect.get(name)),
            spread(recover.get(name)),
        ));
    }
    out
}

/// Milliseconds measured per fault class.
type ByClass<'w> = BTreeMap<&'w str, Vec<u64>>;

/// Per fault class: how long after a window began the first read was answered from memory
/// (the fault detected), and how long after it ended the first read was answered by Redis
/// again (counted only when that happened before the next fault began). A fault that never
/// sent a read to memory was not detected (nor needed to be: slicing, say, is no outage).
fn detection<'w>(windows: &'w [Window], reads: &[(u64, u64, bool)]) -> (ByClass<'w>, ByClass<'w>) {
    let mut detect: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut recover: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (i, w) in windows.iter().enumerate() {
        if w.name == "calm" {
            continue;
        }
        let from = reads.partition_point(|r| r.0 < w.start);
        let Some(first) = reads[from..]
            .iter()
            .take_while(|r| r.0 < w.end)
            .find(|r| r.2)
        else {
            continue;
        };
        detect
            .entry(w.name)
            .or_default()
            .push(first.1.saturating_sub(w.start));
        let next_fault = windows[i + 1..]
            .iter()
            .find(|n| n.name != "calm")
            .map_or(u64::MAX, |n| n.start);
        let after = reads.partition_point(|r| r.0 < w.end);
        if let Some(back) = reads[after..]
            .iter()
            .take_while(|r| r.0 < next_fault)
            .find(|r| !r.2)
        {
            recover
                .entry(w.name)
                .or_default()
                .push(back.1.saturating_sub(w.end));
        }
    }
    (detect, recover)
}

#[derive(Default)]
struct Report {
    /// Keys and hash fields whose final value was checked; of them, those holding their last
    /// acknowledged write (the others: a write of unknown outcome, an expiry, or never written).
    keys_checked: u64,
    keys_last_acked: u64,
    counters_checked: u64,
    calls: u64,
    ok: u64,
    refused: u64,
    unknown: u64,
    worst_ms: u64,
    violations: Vec<String>,
}

/// How far the checker's clock and the deadline a manager computed may be apart.
const DEADLINE_SLACK_MS: u64 = 250;

/// A value a key may hold: what a write wrote, and when it may (or must) have expired.
#[derive(Clone, Debug)]
struct Candidate {
    v: Option<String>,
    start: u64,
    /// When the write was acknowledged (`u64::MAX`: never, so never "must be gone").
    end: u64,
    ttl: u64,
    /// A PEXPIRE (it writes no value: it sets the deadline of what the key holds, if anything).
    expire: bool,
    /// A PEXPIRE sent when the key may already have been gone (deleted, or past the deadline of
    /// the write before it): it may have found nothing to expire, and then leaves nothing.
    found_nothing: bool,
}

impl Candidate {
    /// It may have expired by `at` (its deadline is at least start + ttl).
    fn may_be_gone(&self, at: u64) -> bool {
        self.ttl > 0 && at + DEADLINE_SLACK_MS >= self.start + self.ttl
    }
    /// It must have expired by `at` (its deadline is at most end + ttl).
    fn must_be_gone(&self, at: u64) -> bool {
        self.ttl > 0 && at > self.end.saturating_add(self.ttl + DEADLINE_SLACK_MS)
    }
    /// Whether a read (or the final state) at `at` may say `v`.
    fn allows(&self, v: &Option<String>, at: u64) -> bool {
        (self.v == *v && !self.must_be_gone(at))
            || (v.is_none() && (self.may_be_gone(at) || self.found_nothing))
    }
}

fn check(
    dir: &Path,
    apps: usize,
    redis: &BTreeMap<String, Option<Vec<u8>>>,
    (checked_at, read_done): (u64, u64),
) -> Report {
    let mut r = Report::default();
    // Per key, in invocation order: (id, what it wrote).
    let mut writes: BTreeMap<String, Vec<(String, Candidate)>> = BTreeMap::new();
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, String> = BTreeMap::new();
    let mut reads: Vec<Event> = Vec::new();
    let mut ordered: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    let mut incrs: Vec<Event> = Vec::new();
    for a in 0..apps {
        let Ok(f) = std::fs::File::open(dir.join(format!("history-{a}.jsonl"))) else {
            r.violations.push(format!("app {a} left no history"));
            continue;
        };
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            // A line cut by a SIGKILL does not parse: its call has no outcome (unknown).
            let Ok(e) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            if e.key.starts_with("own:") {
                ordered.entry(e.key.clone()).or_default().push(e.clone());
            }
            match e.t.as_str() {
                "inv" => match e.op.as_str() {
                    "set" | "del" | "expire" => writes.entry(e.key.clone()).or_default().push((
                        e.id.clone(),
                        Candidate {
                            v: e.v.clone(),
                            start: e.start,
                            end: u64::MAX,
                            ttl: e.d.unsigned_abs(),
                            expire: e.op == "expire",
                            found_nothing: false,
                        },
                    )),
                    _ => incrs.push(e),
                },
                t => {
                    r.calls += 1;
                    match t {
                        "ok" => r.ok += 1,
                        "unk" => r.unknown += 1,
                        _ => r.refused += 1,
                    }
                    r.worst_ms = r.worst_ms.max(e.end.saturating_sub(e.start));
                    if e.end.saturating_sub(e.start)
                        > u64::try_from(CALL_BOUND.as_millis()).unwrap_or(u64::MAX)
                    {
                        r.violations.push(format!(
                            "call {} ({} {}) took {} ms, over {CALL_BOUND:?}",
                            e.id,
                            e.op,
                            e.key,
                            e.end - e.start
                        ));
                    }
                    if e.op == "get" && e.t == "ok" {
                        reads.push(e.clone());
                    }
                    outcomes.insert(e.id.clone(), e.t.clone());
                    if e.t == "ok" {
                        ends.insert(e.id.clone(), e.end);
                    }
                }
            }
        }
    }
    // An acknowledged write's deadline is at most its acknowledgement plus its TTL.
    for ws in writes.values_mut() {
        for (id, c) in ws.iter_mut() {
            if let Some(end) = ends.get(id) {
                c.end = *end;
            }
        }
        // A PEXPIRE after a 1 ms PEXPIRE (or a DEL) may find the key gone: it then sets nothing,
        // whatever value its task believed the key held (found by the campaign: a PEXPIRE of
        // 1 ms, then one of 1468 ms 150 ms later, correctly left no key).
        for i in 1..ws.len() {
            let prev = ws[i - 1].1.clone();
            let c = &mut ws[i].1;
            if c.expire {
                c.found_nothing = prev.v.is_none()
                    || prev.may_be_gone(c.start)
                    || (prev.expire && prev.found_nothing);
            }
        }
    }
    // A key or field nobody ever wrote must not exist (the server starts empty, and every
    // write's invocation is in the history before the write is sent).
    for (key, v) in redis {
        if v.is_some() && !key.starts_with("ctr:") && !writes.contains_key(key) {
            r.violations.push(format!(
                "{key}: Redis holds a value, but nobody ever wrote it"
            ));
        }
    }
    // Owner keys: the last acknowledged write, or any write of unknown outcome; a value whose
    // deadline has passed must be gone, one whose deadline may have passed may be.
    for (key, ws) in &writes {
        let last_ok = ws
            .iter()
            .rposition(|(id, _)| outcomes.get(id).is_some_and(|t| t == "ok"));
        let mut candidates: Vec<&Candidate> = Vec::new();
        if let Some(i) = last_ok {
            candidates.push(&ws[i].1);
        }
        // A write of unknown outcome (failed, abandoned by its caller, or cut by a SIGKILL)
        // may take effect at any time after it was invoked, even after a later acknowledged
        // write (its bytes late on an old connection): it is acceptable wherever it sits.
        // Acknowledged writes are the ones that must not be overtaken by each other.
        candidates.extend(
            ws.iter()
                .filter(|(id, _)| outcomes.get(id).is_none_or(|t| t != "ok"))
                .map(|(_, c)| c),
        );
        let actual = redis.get(key).cloned().flatten().map(|b| hash(&b));
        r.keys_checked += 1;
        if let Some(i) = last_ok
            && ws[i].1.v == actual
        {
            r.keys_last_acked += 1;
        }
        let fits = (last_ok.is_none() && actual.is_none())
            || candidates
                .iter()
                .any(|c| c.allows(&actual, checked_at) || c.allows(&actual, read_done));
        if !fits {
            r.violations.push(format!(
                "{key}: Redis holds {actual:?}, but the last acknowledged write (or one of unknown outcome, or an expiry) allows only {:?}",
                candidates.iter().map(|c| (&c.v, c.ttl)).collect::<Vec<_>>()
            ));
        }
    }
    // Reads served by Redis, in each key's own order (one task writes and reads it, one call at
    // a time): the value of the last acknowledged write before the read, or of a write after
    // it whose outcome is unknown (it may land any time after its invocation), or nothing once
    // a deadline may have passed. A stale value here is an acknowledged write overtaken (a
    // replay out of order, a late write landing); a value past its deadline, a deadline lost.
    for (key, events) in &ordered {
        let Some(ws) = writes.get(key) else { continue };
        let by_id: BTreeMap<&str, &Candidate> = ws.iter().map(|(id, c)| (id.as_str(), c)).collect();
        let mut last_ok: Option<&Candidate> = None;
        let mut unknown: Vec<&Candidate> = Vec::new();
        for e in events {
            match (e.t.as_str(), e.op.as_str()) {
                ("inv", "set" | "del") => {
                    if let Some(c) = by_id.get(e.id.as_str()) {
                        unknown.push(c);
                    }
                }
                ("ok", "set" | "del") => {
                    last_ok = by_id.get(e.id.as_str()).copied();
                    unknown.clear();
                }
                ("ok", "get") if e.src.as_deref() == Some("redis") => {
                    let fits = last_ok
                        .is_none_or(|c| c.allows(&e.v, e.start) || c.allows(&e.v, e.end))
                        || unknown
                            .iter()
                            .any(|c| c.allows(&e.v, e.start) || c.allows(&e.v, e.end));
                    if !fits {
                        r.violations.push(format!(
                            "{key}: read {} served by Redis returned {:?}, but the last acknowledged write before it was {:?} (ttl {} ms; later writes of unknown outcome: {})",
                            e.id,
                            e.v,
                            last_ok.map(|c| &c.v),
                            last_ok.map_or(0, |c| c.ttl),
                            unknown.len()
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    // Reads: only values written to the key (or missing).
    for e in &reads {
        if let Some(v) = &e.v {
            let written = writes
                .get(&e.key)
                .is_some_and(|ws| ws.iter().any(|(_, w)| w.v.as_ref() == Some(v)));
            if !written {
                r.violations.push(format!(
                    "read {} of {} returned {v}, never written to it",
                    e.id, e.key
                ));
            }
        }
    }
    // Counters: within [acknowledged, acknowledged + unknown].
    let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for e in &incrs {
        let s = sums.entry(e.key.clone()).or_default();
        match outcomes.get(&e.id).map(String::as_str) {
            Some("ok") => s.0 += e.d,
            Some("err") => {}
            _ => s.1 += e.d,
        }
    }
    for (key, (acked, unknown)) in sums {
        r.counters_checked += 1;
        let actual: i64 = redis
            .get(&key)
            .cloned()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if actual < acked || actual > acked + unknown {
            r.violations.push(format!(
                "{key}: Redis holds {actual}, outside [{acked}, {}] (acknowledged increments, plus those of unknown outcome)",
                acked + unknown
            ));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_of_one_kind_share_a_signature_whatever_key_they_name() {
        assert_eq!(
            signature("own:1:2:0: Redis holds Some(\"ab\"), but ..."),
            signature("own:0:0:2: Redis holds None, but ...")
        );
        assert_ne!(
            signature("own:1:2:0: Redis holds None, but ..."),
            signature("ctr:1: 12 is outside [3, 9]")
        );
        assert_eq!(
            signature("call 1.0.0.12 (set own:0:0:1) took 3100 ms, over 3s"),
            signature("call 2.1.2.9 (incr ctr:1) took 3005 ms, over 3s"),
        );
        assert_ne!(
            signature("own:1:2:0: Redis holds a value, but nobody ever wrote it"),
            signature("own:1:2:0: Redis holds None, but ...")
        );
    }

    #[test]
    fn a_schedule_reads_back_as_it_was_written() {
        let steps = schedule(3, Duration::from_secs(60), 3);
        let again: Vec<Step> = schedule_text(&steps)
            .split(',')
            .map(|t| Step::parse(t).expect(t))
            .collect();
        assert_eq!(schedule_text(&again), schedule_text(&steps));
        assert!(Step::parse("nosuchfault:1s").is_none());
        assert!(matches!(
            Step::parse("killapp2:600ms"),
            Some(Step::KillApp(2, d)) if d == Duration::from_millis(600)
        ));
    }

    /// A campaign that fails exactly when its schedule holds a Redis kill of at least 300 ms
    /// shrinks to that one kill, at its shortest failing length.
    #[test]
    fn shrinking_keeps_only_what_the_failure_needs() {
        let steps = vec![
            Step::Blackhole(Duration::from_millis(900)),
            Step::Calm(Duration::from_millis(500)),
            Step::KillRedis(Duration::from_millis(2000)),
            Step::ResetAll,
            Step::Oom(Duration::from_millis(700)),
        ];
        let mut runs = 0;
        let small = shrink(steps, |s| {
            runs += 1;
            s.iter()
                .any(|s| matches!(s, Step::KillRedis(d) if *d >= Duration::from_millis(300)))
        });
        assert_eq!(schedule_text(&small), "killredis:500ms");
        assert!(runs < 20, "{runs} reruns");
    }
}
