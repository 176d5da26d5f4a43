//! `resilient-redis demo`: a workload through an outage, a live status line, the report and a
//! ledger check of every acknowledged write.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use resilient_redis_config::{RedisConfig, RedisUrl};
use resilient_redis_manager::{Error, RedisManager, ServedBy};
use resilient_redis_metrics::PrometheusExporter;

use resilient_redis_pool::SharedConnection;
use resilient_redis_tests::{RedisCluster, RedisServer};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// How long the workload runs ("20s", "1m").
    #[arg(long, default_value = "20s", value_parser = resilient_redis_config::units::parse_duration)]
    duration: Duration,
    /// Start a redis-server of its own on a free port (needs redis-server on the PATH).
    #[arg(long)]
    spawn_server: bool,
    /// With its own server: kill it partway through and restart it a few seconds later.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    chaos: bool,
    /// Run without any Redis: everything is served from the in-memory fallback.
    #[arg(long, conflicts_with = "spawn_server")]
    no_redis: bool,
    /// Start a primary, a replica and three Redis Sentinels of its own, and run in sentinel
    /// mode; with --chaos the primary is killed partway (the sentinels promote the replica
    /// and the manager follows it) and restarted later (it rejoins as a replica).
    #[arg(long, conflicts_with = "no_redis")]
    sentinel: bool,
    /// Start a Redis Cluster of its own (3 primaries with a replica each; needs redis-cli),
    /// and run in cluster mode; with --chaos the primary of the demo's counter is killed
    /// partway (its replica takes over its slots) and restarted later (it rejoins as a
    /// replica).
    #[arg(long, conflicts_with_all = ["no_redis", "sentinel"])]
    cluster: bool,
    /// Serve /metrics (Prometheus), /live and /ready on this address while running, e.g.
    /// 127.0.0.1:9187.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    /// Draw the run (ops/s, p99, errors, breaker state, fallback mode, pending writes, the kill
    /// and restart marked) as an SVG picture at this path.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Concurrent workers.
    #[arg(long, default_value_t = 8)]
    workers: usize,
}

#[derive(Default)]
struct Ledger {
    run: String,
    writes: std::sync::Mutex<HashMap<String, String>>,
    increments: AtomicU64,
    ambiguous: AtomicU64,
    ops: AtomicU64,
    errors: AtomicU64,
    /// Answers memory gave about keys it knew nothing of (flagged, not passed off as Redis's).
    unknown: AtomicU64,
    /// Latencies (µs) since the last sample, for the picture's p99.
    latencies: std::sync::Mutex<Vec<u32>>,
}

/// Timeouts short enough that an outage shows within a second or two.
fn demo_config(mut c: RedisConfig) -> RedisConfig {
    c.connect_timeout = Duration::from_secs(1);
    c.socket_timeout = Duration::from_millis(250);
    c.max_retries = 1;
    c.retry_delay = Duration::from_millis(20);
    c.pool.acquire_timeout = Duration::from_millis(500);
    c.pool.create_retry_count = 1;
    c.pool.validation_interval = Duration::from_millis(200);
    c.health.check_interval = Duration::from_millis(250);
    c.health.timeout = Duration::from_millis(200);
    c.health.failure_threshold = 2;
    c.health.success_threshold = 2;
    c.circuit_breaker.reset_timeout = Duration::from_secs(1);
    c.fallback.sync_interval = Duration::from_millis(250);
    c.metrics.retention_period = Duration::from_secs(120);
    c.metrics.collection_interval = Duration::from_millis(500);
    c
}

pub(crate) async fn run(args: Args) -> bool {
    let mut config = match crate::load_config(None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    let mut server = None;
    // In sentinel mode: the replica and the sentinels, alive for the whole run.
    let mut others = Vec::new();
    // In cluster mode: the cluster, alive for the whole run.
    let mut cluster = None;
    if args.cluster {
        match tokio::task::block_in_place(|| RedisCluster::try_start(3, 1)) {
            Ok(c) => {
                config.mode = resilient_redis_config::Mode::Cluster;
                config.nodes = c.urls().into_iter().map(RedisUrl::new).collect();
                // Not used in cluster mode but for its scheme and credentials.
                config.url = RedisUrl::new("redis://127.0.0.1:1");
                println!(
                    "cluster mode: 3 primaries and 3 replicas on ports {}",
                    c.running_ports()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                cluster = Some(c);
            }
            Err(e) => {
                eprintln!("cannot start the cluster: {e}");
                return false;
            }
        }
    } else if args.sentinel {
        match sentinel_setup().await {
            Ok((primary, rest)) => {
                config.mode = resilient_redis_config::Mode::Sentinel;
                config.sentinels = rest[1..].iter().map(|s| RedisUrl::new(s.url())).collect();
                config.master_name = Some("mymaster".into());
                // Not used in sentinel mode but for its scheme, credentials and database.
                config.url = RedisUrl::new("redis://127.0.0.1:1/0");
                println!(
                    "sentinel mode: primary 127.0.0.1:{}, replica 127.0.0.1:{}, sentinels on {}",
                    primary.port(),
                    rest[0].port(),
                    rest[1..]
                        .iter()
                        .map(|s| s.port().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                server = Some(primary);
                others = rest;
            }
            Err(e) => {
                eprintln!("cannot start the sentinel setup: {e}");
                return false;
            }
        }
    } else if args.spawn_server {
        match RedisServer::builder().durable().try_start() {
            Ok(s) => {
                config.url = RedisUrl::new(s.url());
                server = Some(s);
            }
            Err(e) => {
                eprintln!("cannot start redis-server: {e}");
                return false;
            }
        }
    } else if args.no_redis {
        // A port nobody listens on: every call is served from memory.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        config.url = RedisUrl::new(format!("redis://127.0.0.1:{port}"));
        println!(
            "No Redis: this run serves everything from the in-memory fallback and journals every write."
        );
    }
    let config = demo_config(config);
    let chaos = (server.is_some() || cluster.is_some()) && args.chaos;
    println!(
        "demo: {} workers for {} against {}{}",
        args.workers,
        resilient_redis_config::units::format_duration(args.duration),
        match config.mode {
            resilient_redis_config::Mode::Sentinel =>
                "the primary the sentinels name `mymaster`".to_owned(),
            resilient_redis_config::Mode::Cluster => "the cluster".to_owned(),
            _ => config.url.to_string(),
        },
        match (chaos, args.sentinel || args.cluster) {
            (true, true) => ", killing a primary at 30 % and restarting it at 55 %",
            (true, false) => ", killing Redis at 30 % and restarting it at 55 %",
            _ => "",
        }
    );

    let exporter = match PrometheusExporter::new() {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("metrics exporter: {e}");
            return false;
        }
    };
    // As an application would: its meter provider installed globally before the manager is
    // built, so the manager's own collector (with the server's attributes) exports through it.
    opentelemetry::global::set_meter_provider(exporter.provider());
    let manager = match RedisManager::builder(config.clone()).build().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    if let Some(addr) = &args.metrics_addr {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                println!(
                    "serving http://{addr}/metrics, http://{addr}/live and http://{addr}/ready"
                );
                tokio::spawn(crate::http::serve(
                    listener,
                    Arc::clone(&exporter),
                    manager.clone(),
                ));
            }
            Err(e) => eprintln!("cannot listen on {addr}: {e}"),
        }
    }

    // Keys carry this run's id, so a Redis of your own is not confused by earlier runs.
    let run = format!("{:08x}", fastrand::u32(..));
    let ledger = Arc::new(Ledger {
        run: run.clone(),
        ..Ledger::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..args.workers)
        .map(|w| {
            tokio::spawn(worker(
                w,
                manager.clone(),
                Arc::clone(&ledger),
                Arc::clone(&stop),
            ))
        })
        .collect();

    let started = Instant::now();
    let (kill_at, restart_at) = (args.duration.mul_f64(0.30), args.duration.mul_f64(0.55));
    let (mut killed, mut restarted) = (false, false);
    let mut victim = None;
    let (mut last_ops, mut last_second_ops, mut last_errors) = (0, 0, 0);
    let mut timeline = crate::plot::Timeline::default();
    let mut last_sample = Instant::now();
    // Four samples a second for the picture; a status line a second.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.tick().await;
    let mut ticks = 0u64;
    while started.elapsed() < args.duration {
        tick.tick().await;
        ticks += 1;
        let t = started.elapsed();
        if let Some(c) = cluster.as_mut().filter(|_| chaos) {
            let counter = format!("demo:{run}:counter");
            if !killed && t >= kill_at {
                let slot = resilient_redis_pool::key_slot(counter.as_bytes());
                victim = tokio::task::block_in_place(|| c.primary_of_slot(slot));
                if let Some(port) = victim {
                    c.kill(port);
                    println!(
                        "\n*** chaos: redis-server killed (SIGKILL) at {:.0} s: the primary on port \
                         {port}, serving the counter's slot {slot}",
                        t.as_secs_f64()
                    );
                }
                killed = true;
                timeline.kill = Some(t.as_secs_f64());
            } else if killed && !restarted && t >= restart_at {
                timeline.restart = Some(t.as_secs_f64());
                if let Some(port) = victim {
                    match c.restart(port) {
                        Ok(()) => println!(
                            "\n*** chaos: redis-server on port {port} restarted at {:.0} s (a \
                             replica now, if its replica took over meanwhile)",
                            t.as_secs_f64()
                        ),
                        Err(e) => println!("\n*** chaos: restart failed: {e}"),
                    }
                }
                restarted = true;
            }
        }
        if let Some(s) = server.as_mut().filter(|_| chaos) {
            if !killed && t >= kill_at {
                s.kill();
                killed = true;
                timeline.kill = Some(t.as_secs_f64());
                println!(
                    "\n*** chaos: redis-server killed (SIGKILL) at {:.0} s",
                    t.as_secs_f64()
                );
            } else if killed && !restarted && t >= restart_at {
                timeline.restart = Some(t.as_secs_f64());
                match s.try_restart() {
                    Ok(()) => println!(
                        "\n*** chaos: redis-server restarted at {:.0} s",
                        t.as_secs_f64()
                    ),
                    Err(e) => println!("\n*** chaos: restart failed: {e}"),
                }
                restarted = true;
            }
        }
        let ops = ledger.ops.load(Ordering::Relaxed);
        let errors = ledger.errors.load(Ordering::Relaxed);
        let secs = last_sample.elapsed().as_secs_f64().max(1e-3);
        last_sample = Instant::now();
        timeline.samples.push(sample(
            t,
            (ops - last_ops) as f64 / secs,
            (errors - last_errors) as f64 / secs,
            &manager,
            &ledger,
        ));
        (last_ops, last_errors) = (ops, errors);
        if ticks.is_multiple_of(4) {
            status_line(t, ops - last_second_ops, &manager, &ledger);
            last_second_ops = ops;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    println!();

    let reachable = !args.no_redis;
    if reachable {
        print!("waiting for recovery (journal replay) ... ");
        let _ = std::io::stdout().flush();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (!manager.is_settled()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "{}",
            if manager.journal().pending_writes() == 0 {
                "done"
            } else {
                "NOT drained"
            }
        );
    }

    if let Some(path) = &args.plot {
        match crate::plot::draw(&timeline, path) {
            Ok(()) => println!("picture of the run: {}", path.display()),
            Err(e) => eprintln!("{e}"),
        }
    }
    let report = manager.metrics().report();
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("\n{report}");
    }
    let ok = ledger_check(&manager, &config, &ledger, reachable).await;
    if let Err(e) = manager.close(Duration::from_secs(2)).await
        && reachable
    {
        eprintln!("close: {e}");
    }
    drop(server);
    drop(others);
    drop(cluster);
    ok
}

async fn worker(w: usize, m: RedisManager, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let roll = fastrand::u8(..10);
        let began = Instant::now();
        let ok = if roll < 3 {
            let key = format!("demo:{}:{w}:{}", ledger.run, i % 500);
            let value = format!("w{w}-{i}");
            match m
                .set(
                    key.as_bytes(),
                    value.as_bytes(),
                    Some(Duration::from_secs(3_600)),
                )
                .await
            {
                Ok(()) => {
                    if let Ok(mut writes) = ledger.writes.lock() {
                        writes.insert(key, value);
                    }
                    true
                }
                Err(_) => false,
            }
        } else if roll < 8 {
            let key = format!("demo:{}:{w}:{}", ledger.run, fastrand::u64(..500));
            match m.get_with_source(key.as_bytes()).await {
                Ok(served) => {
                    if served.by == ServedBy::MemoryUnknownKey {
                        ledger.unknown.fetch_add(1, Ordering::Relaxed);
                    }
                    true
                }
                Err(_) => false,
            }
        } else {
            // A counter during an outage: journaled as a delta whatever memory knows of it.
            match m
                .incr_by_with_source(format!("demo:{}:counter", ledger.run).as_bytes(), 1)
                .await
            {
                Ok(served) => {
                    if served.by == ServedBy::MemoryUnknownKey {
                        ledger.unknown.fetch_add(1, Ordering::Relaxed);
                    }
                    ledger.increments.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(Error::Ambiguous { .. }) => {
                    ledger.ambiguous.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Err(_) => false,
            }
        };
        if let Ok(mut l) = ledger.latencies.lock() {
            l.push(u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX));
        }
        ledger.ops.fetch_add(1, Ordering::Relaxed);
        if !ok {
            ledger.errors.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One point of the picture: the interval's rates and p99, and the state of things now.
fn sample(
    t: Duration,
    ops: f64,
    errors: f64,
    m: &RedisManager,
    ledger: &Ledger,
) -> crate::plot::Sample {
    let mut latencies = ledger
        .latencies
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    latencies.sort_unstable();
    let p99_ms = latencies
        .get(((latencies.len() as f64 - 1.0) * 0.99).round().max(0.0) as usize)
        .map_or(0.0, |us| f64::from(*us) / 1000.0);
    crate::plot::Sample {
        t: t.as_secs_f64(),
        ops,
        errors,
        p99_ms,
        breaker: match m.breaker().state().as_str() {
            "open" | "forced_open" => 2,
            "half_open" => 1,
            _ => 0,
        },
        fallback: m.is_fallback_mode(),
        pending: m.journal().pending_writes(),
    }
}

fn status_line(t: Duration, ops: u64, m: &RedisManager, ledger: &Ledger) {
    let snap = m.metrics().snapshot();
    let health = m.health_status();
    println!(
        "{:>4.0}s  {:>6} ops/s  p99 {:>6.2} ms  errors {:>4}  breaker {:<9}  fallback {:<3}  pending {:>5}  health {}",
        t.as_secs_f64(),
        ops,
        snap.p99_response_time.as_secs_f64() * 1000.0,
        ledger.errors.load(Ordering::Relaxed),
        m.breaker().state().as_str(),
        if m.is_fallback_mode() { "on" } else { "off" },
        m.journal().pending_writes(),
        if health.healthy {
            "healthy"
        } else {
            "UNHEALTHY"
        },
    );
}

async fn ledger_check(
    m: &RedisManager,
    config: &RedisConfig,
    ledger: &Ledger,
    reachable: bool,
) -> bool {
    let writes = ledger.writes.lock().map(|w| w.clone()).unwrap_or_default();
    let acked = ledger.increments.load(Ordering::Relaxed);
    let ambiguous = ledger.ambiguous.load(Ordering::Relaxed);
    if !reachable {
        println!(
            "ledger: {} writes acknowledged, all held in the fallback journal ({} pending; no Redis to check against)",
            writes.len(),
            m.journal().pending_writes()
        );
        return true;
    }
    let mut conn = match checker(config).await {
        Ok(c) => c,
        Err(e) => {
            println!("ledger: cannot reach Redis to check: {e}");
            return false;
        }
    };
    let mut found = 0;
    let mut missing = Vec::new();
    for (key, value) in &writes {
        match conn.get::<_, Option<String>>(key).await {
            Ok(Some(v)) if &v == value => found += 1,
            other => missing.push((key.clone(), format!("{other:?}"))),
        }
    }
    let counter: i64 = conn
        .get::<_, Option<i64>>(format!("demo:{}:counter", ledger.run))
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let counter_ok = (acked as i64..=(acked + ambiguous) as i64).contains(&counter);
    println!(
        "ledger: {} writes acknowledged, {found} found in Redis with the right values; counter {counter} \
         (acknowledged {acked}, ambiguous {ambiguous}: {})",
        writes.len(),
        if counter_ok {
            "consistent"
        } else {
            "INCONSISTENT"
        }
    );
    println!(
        "        {} answers came from memory about keys it knew nothing of (flagged MemoryUnknownKey, never passed off as Redis's)",
        ledger.unknown.load(Ordering::Relaxed)
    );
    for (key, got) in missing.iter().take(5) {
        println!("  missing or wrong: {key} -> {got}");
    }
    missing.is_empty() && counter_ok
}

/// A plain redis-rs connection to what `config` names now (the primary the sentinels name, or
/// the cluster), for the ledger's check.
async fn checker(config: &RedisConfig) -> Result<SharedConnection, String> {
    if config.mode == resilient_redis_config::Mode::Cluster {
        let client = resilient_redis_pool::cluster_client(config).map_err(|e| e.to_string())?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        return Ok(SharedConnection::from_connection(conn));
    }
    let client = resilient_redis_pool::primary_client(config)
        .await
        .map_err(|e| e.to_string())?;
    let conn = client
        .get_multiplexed_async_connection_with_config(&resilient_redis_pool::connection_config(
            config,
        ))
        .await
        .map_err(|e| e.to_string())?;
    Ok(SharedConnection::from_connection(conn))
}

/// A primary (durable), its replica, and three sentinels that agree on both: returns the
/// primary, then the replica and the sentinels.
async fn sentinel_setup() -> Result<(RedisServer, Vec<RedisServer>), String> {
    let primary = RedisServer::builder()
        .durable()
        .config("repl-diskless-sync-delay", "0")
        .try_start()?;
    let replica = RedisServer::builder()
        .durable()
        .args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
        .try_start()?;
    let mut rest = vec![replica];
    for _ in 0..3 {
        rest.push(
            RedisServer::builder()
                .sentinel("mymaster", primary.port(), 2)
                .try_start()?,
        );
    }
    // Until the replica has synced and every sentinel knows the other two and the replica.
    let conn = |port: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let synced = conn(rest[0].port()).is_some_and(|mut c| {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut c)
                .is_ok_and(|info| info.contains("master_link_status:up"))
        });
        let agreed = rest[1..].iter().all(|s| {
            conn(s.port()).is_some_and(|mut c| {
                let count = |c: &mut redis::Connection, what: &str| {
                    redis::cmd("SENTINEL")
                        .arg(what)
                        .arg("mymaster")
                        .query::<Vec<redis::Value>>(c)
                        .map_or(0, |v| v.len())
                };
                count(&mut c, "SENTINELS") == 2 && count(&mut c, "REPLICAS") == 1
            })
        });
        if synced && agreed {
            return Ok((primary, rest));
        }
        if Instant::now() > deadline {
            return Err("the replica and the sentinels did not come together within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
