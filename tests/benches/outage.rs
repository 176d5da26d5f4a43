//! Calls through a Redis outage: how long the worst call waits before it is answered (from
//! memory or with an error), how many calls fail, and whether every acknowledged write is in
//! Redis afterwards. `RedisManager` against redis-rs's `ConnectionManager` and fred, in the
//! same run, against one local redis-server (AOF, fsync always): each contender gets the same
//! schedule, Redis gone from 1 s to 3 s of a 5 s run, with every library's own timeouts at
//! 200 ms. Twice: the server SIGKILLed and restarted (connections refused: a certain failure),
//! and a proxy in front of it blackholing traffic (every call meets its timeout).
//!
//! `cargo bench -p resilient-redis-tests --bench outage` (also run by `cargo xtask bench`).
//! `OUTAGE_BENCH_TASKS` sets the number of tasks (default 8). Each task alternates `SET` and
//! `GET` of its own key, 1 ms apart. The manager runs with `fallback.shadow` on, so memory knows
//! the keys it saw before the outage; without it, a read of a key memory never saw is refused
//! with `fallback_error` rather than passed off as Redis's answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, KeysInterface};
use resilient_redis_manager::RedisManager;
use resilient_redis_tests::{Fault, FaultProxy, RedisServer};

const TIMEOUT: Duration = Duration::from_millis(200);
const RUN: Duration = Duration::from_secs(5);
const KILL_AT: Duration = Duration::from_secs(1);
const RESTART_AT: Duration = Duration::from_secs(3);

#[derive(Clone)]
enum Client {
    Manager(RedisManager),
    ConnectionManager(redis::aio::ConnectionManager),
    Fred(fred::prelude::Client),
}

impl Client {
    fn name(&self) -> &'static str {
        match self {
            Client::Manager(_) => "resilient-redis manager",
            Client::ConnectionManager(_) => "redis-rs ConnectionManager",
            Client::Fred(_) => "fred",
        }
    }

    async fn connect(name: &str, url: &str) -> Client {
        match name {
            "resilient-redis manager" => {
                let mut c = resilient_redis_config::RedisConfig::default();
                c.url = resilient_redis_config::RedisUrl::new(url);
                // Its least (connects happen in the background: no call waits on one).
                c.connect_timeout = Duration::from_secs(1);
                c.socket_timeout = TIMEOUT;
                c.pool.acquire_timeout = TIMEOUT;
                c.health.check_interval = Duration::from_millis(100);
                c.health.timeout = Duration::from_millis(100);
                c.fallback.sync_interval = Duration::from_millis(100);
                c.fallback.shadow = true;
                Client::Manager(RedisManager::builder(c).build().await.expect("manager"))
            }
            "redis-rs ConnectionManager" => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_response_timeout(Some(TIMEOUT))
                    .set_connection_timeout(Some(TIMEOUT));
                let client = redis::Client::open(url).expect("url");
                Client::ConnectionManager(
                    client
                        .get_connection_manager_with_config(config)
                        .await
                        .expect("connection manager"),
                )
            }
            _ => {
                let config = fred::prelude::Config::from_url(url).expect("url");
                let client = fred::prelude::Builder::from_config(config)
                    .with_connection_config(|c| {
                        c.connection_timeout = TIMEOUT;
                        c.internal_command_timeout = TIMEOUT;
                    })
                    .with_performance_config(|p| p.default_command_timeout = TIMEOUT)
                    .set_policy(fred::prelude::ReconnectPolicy::new_constant(0, 100))
                    .build()
                    .expect("fred client");
                client.init().await.expect("fred init");
                Client::Fred(client)
            }
        }
    }

    /// `SET key value`: whether it was acknowledged.
    async fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match self {
            Client::Manager(m) => m
                .set(key.as_bytes(), value.as_bytes(), None)
                .await
                .map_err(|e| e.kind().as_str().to_owned()),
            Client::ConnectionManager(c) => redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(c)
                .await
                .map_err(|e| format!("{:?}", e.kind())),
            Client::Fred(c) => c
                .set::<(), _, _>(key, value, None, None, false)
                .await
                .map_err(|e| format!("{:?}", e.kind())),
        }
    }

    async fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        match self {
            Client::Manager(m) => m
                .get(key.as_bytes())
                .await
                .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .map_err(|e| e.kind().as_str().to_owned()),
            Client::ConnectionManager(c) => redis::cmd("GET")
                .arg(key)
                .query_async(c)
                .await
                .map_err(|e| format!("{:?}", e.kind())),
            Client::Fred(c) => c.get(key).await.map_err(|e| format!("{:?}", e.kind())),
        }
    }
}

#[derive(Default)]
struct Tally {
    calls: u64,
    errors: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    worst_in_outage: Duration,
    /// Per key with an acknowledged write: the values Redis may hold afterwards (the last one
    /// acknowledged, or one written after it whose outcome the caller does not know).
    acceptable: BTreeMap<String, Vec<String>>,
    /// Values read that no write of the task ever wrote (a read from nowhere).
    foreign_reads: u64,
}

async fn task(mut client: Client, id: usize, started: Instant, stop: Arc<AtomicBool>) -> Tally {
    let key = format!("outage:{id}");
    let mut t = Tally::default();
    let mut n = 0u64;
    let mut written: Vec<String> = Vec::new();
    let mut last_acked: Option<usize> = None;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let value = format!("{id}:{n:060}");
        let begun = Instant::now();
        let at = begun.duration_since(started);
        let outcome = if n % 2 == 1 {
            let r = client.set(&key, &value).await;
            if r.is_ok() {
                last_acked = Some(written.len());
            }
            written.push(value);
            r.map(drop)
        } else {
            match client.get(&key).await {
                Ok(Some(v)) if !written.contains(&v) => {
                    t.foreign_reads += 1;
                    Ok(())
                }
                other => other.map(drop),
            }
        };
        let took = begun.elapsed();
        t.calls += 1;
        t.latencies.push(took);
        if at >= KILL_AT && at < RESTART_AT {
            t.worst_in_outage = t.worst_in_outage.max(took);
        }
        if let Err(kind) = outcome {
            *t.errors.entry(kind).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Some(i) = last_acked {
        t.acceptable.insert(key, written.split_off(i));
    }
    t
}

struct Row {
    name: &'static str,
    calls: u64,
    errors: BTreeMap<String, u64>,
    worst: Duration,
    p99: Duration,
    worst_in_outage: Duration,
    /// Keys with an acknowledged write.
    acknowledged: usize,
    /// Of them, those whose value in Redis afterwards is the last acknowledged one (or a later
    /// write whose outcome was unknown).
    found: usize,
    foreign_reads: u64,
}

/// How Redis goes away.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// SIGKILL, then a restart on the same port and data: connections are refused meanwhile.
    Kill,
    /// A proxy that stops answering (a hung server, a dead network path): every call meets
    /// its timeout.
    Blackhole,
}

async fn run(name: &str, scenario: Scenario, server: &mut RedisServer, tasks: usize) -> Row {
    let proxy = FaultProxy::start(server.addr()).await;
    let url = match scenario {
        Scenario::Kill => server.url(),
        Scenario::Blackhole => proxy.url(),
    };
    let client = Client::connect(name, &url).await;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..tasks)
        .map(|id| tokio::spawn(task(client.clone(), id, started, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep_until((started + KILL_AT).into()).await;
    match scenario {
        Scenario::Kill => server.kill(),
        Scenario::Blackhole => proxy.set(Fault::Blackhole),
    }
    tokio::time::sleep_until((started + RESTART_AT).into()).await;
    match scenario {
        Scenario::Kill => server.restart(),
        Scenario::Blackhole => proxy.set(Fault::Pass),
    }
    tokio::time::sleep_until((started + RUN).into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for h in handles {
        let t = h.await.expect("task");
        all.calls += t.calls;
        for (k, n) in t.errors {
            *all.errors.entry(k).or_default() += n;
        }
        all.latencies.extend(t.latencies);
        all.worst_in_outage = all.worst_in_outage.max(t.worst_in_outage);
        all.acceptable.extend(t.acceptable);
        all.foreign_reads += t.foreign_reads;
    }
    if let Client::Manager(m) = &client {
        // Writes answered from memory reach Redis by the journal's replay.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !m.is_settled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m.close(Duration::from_secs(5)).await.expect("close");
    }
    let mut check = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("check connection");
    let mut found = 0;
    for (key, values) in &all.acceptable {
        let got: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut check)
            .await
            .expect("check GET");
        if got.is_some_and(|g| values.contains(&g)) {
            found += 1;
        }
    }
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut check)
        .await
        .expect("FLUSHALL");
    all.latencies.sort();
    let p99 = all.latencies[(all.latencies.len() * 99 / 100).min(all.latencies.len() - 1)];
    Row {
        name: client.name(),
        calls: all.calls,
        errors: all.errors,
        worst: all.latencies.last().copied().unwrap_or_default(),
        p99,
        worst_in_outage: all.worst_in_outage,
        acknowledged: all.acceptable.len(),
        found,
        foreign_reads: all.foreign_reads,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let tasks: usize = std::env::var("OUTAGE_BENCH_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut server = RedisServer::builder().durable().start();
    let names = [
        "resilient-redis manager",
        "redis-rs ConnectionManager",
        "fred",
    ];
    for scenario in [Scenario::Kill, Scenario::Blackhole] {
        let rows: Vec<Row> = rt.block_on(async {
            let mut rows = Vec::new();
            for name in names {
                rows.push(run(name, scenario, &mut server, tasks).await);
            }
            rows
        });
        print_table(scenario, tasks, &rows);
    }
}

fn print_table(scenario: Scenario, tasks: usize, rows: &[Row]) {
    let what = match scenario {
        Scenario::Kill => "redis-server SIGKILLed at",
        Scenario::Blackhole => "a proxy in front of it blackholed at",
    };
    println!(
        "\n{tasks} tasks alternating SET/GET 1 ms apart; {what} {:?}, back at {:?}, run {:?}; every timeout {:?}",
        KILL_AT, RESTART_AT, RUN, TIMEOUT
    );
    println!(
        "{:<28} {:>7} {:>8} {:>10} {:>8} {:>12} {:>14}  errors by kind",
        "contender", "calls", "errors", "worst", "p99", "worst in out.", "keys kept"
    );
    for r in rows {
        let errors: u64 = r.errors.values().sum();
        let kinds: Vec<String> = r.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "{:<28} {:>7} {:>8} {:>10} {:>8} {:>12} {:>8}/{:<5}  {}{}",
            r.name,
            r.calls,
            errors,
            ms(r.worst),
            ms(r.p99),
            ms(r.worst_in_outage),
            r.found,
            r.acknowledged,
            kinds.join(", "),
            if r.foreign_reads > 0 {
                format!("; {} reads of values never written", r.foreign_reads)
            } else {
                String::new()
            }
        );
    }
    let ours = &rows[0];
    let bound = TIMEOUT.mul_f64(1.1);
    println!(
        "target: no call of ours waits longer than the socket timeout + 10 % ({}): {} (worst {})",
        ms(bound),
        if ours.worst <= bound {
            "met"
        } else {
            "NOT met"
        },
        ms(ours.worst)
    );
}
