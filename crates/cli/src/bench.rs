//! `resilient-redis bench`: GET and SET through the manager against raw redis-rs on your own
//! Redis, same run, same keys, so the ratio says what the resilience costs on your network.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use resilient_redis_manager::RedisManager;

/// Arguments of `bench`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Redis URL; defaults to the configuration's (REDIS_URL).
    url: Option<String>,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    tasks: usize,
    /// How long each of the four runs lasts (GET and SET, through each client).
    #[arg(long, default_value = "5s", value_parser = resilient_redis_config::units::parse_duration)]
    duration: Duration,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys the callers cycle through.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) ops_per_sec: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) errors: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Set,
}

/// A client under test: one call of `op` on key `i`.
#[derive(Clone)]
enum Client {
    Raw(redis::aio::MultiplexedConnection),
    Managed(RedisManager),
}

impl Client {
    async fn call(&mut self, op: Op, key: &[u8], value: &[u8]) -> bool {
        match (self, op) {
            (Client::Raw(c), Op::Get) => redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(c)
                .await
                .is_ok(),
            (Client::Raw(c), Op::Set) => redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query_async::<()>(c)
                .await
                .is_ok(),
            (Client::Managed(m), Op::Get) => m.get(key).await.is_ok(),
            (Client::Managed(m), Op::Set) => m.set(key, value, None).await.is_ok(),
        }
    }
}

pub(crate) async fn run(args: Args) -> bool {
    let mut config = match crate::load_config(args.url.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    if args.tasks == 0 || args.keys == 0 {
        eprintln!("--tasks and --keys must be at least 1");
        return false;
    }
    // The manager as a service would run it, except that nothing may be answered from memory:
    // a run that silently served from the fallback would measure the wrong thing.
    config.fallback.enabled = false;
    let manager = match RedisManager::builder(config.clone()).build().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    let raw = match raw_connection(&config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {}: {e}", config.url);
            return false;
        }
    };
    let prefix = format!("resilient-redis-bench:{:08x}:", fastrand::u32(..));
    let keys: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..args.keys)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .collect(),
    );
    let value: Arc<Vec<u8>> = Arc::new(vec![b'x'; args.value_size]);
    println!(
        "bench: {} tasks, {} per run, {}-byte values, {} keys, against {}",
        args.tasks,
        resilient_redis_config::units::format_duration(args.duration),
        args.value_size,
        args.keys,
        config.url
    );
    let mut rows = Vec::new();
    // SET first, so that GET reads values that exist.
    for (op, name) in [(Op::Set, "SET"), (Op::Get, "GET")] {
        let raw_figures = measure(
            Client::Raw(raw.clone()),
            op,
            &format!("{name} raw redis-rs"),
            &args,
            &keys,
            &value,
        )
        .await;
        let managed = measure(
            Client::Managed(manager.clone()),
            op,
            &format!("{name} resilient-redis"),
            &args,
            &keys,
            &value,
        )
        .await;
        rows.push((name, raw_figures, managed));
    }
    println!();
    println!(
        "{:<4} {:<16} {:>12} {:>10} {:>10} {:>7} {:>8}",
        "op", "client", "ops/s", "p50", "p99", "errors", "ratio"
    );
    for (name, raw_f, managed_f) in &rows {
        for (client, f, ratio) in [
            ("raw redis-rs", raw_f, None),
            (
                "resilient-redis",
                managed_f,
                Some(managed_f.ops_per_sec / raw_f.ops_per_sec.max(f64::MIN_POSITIVE)),
            ),
        ] {
            println!(
                "{name:<4} {client:<16} {:>12.0} {:>10} {:>10} {:>7} {:>8}",
                f.ops_per_sec,
                micros(f.p50),
                micros(f.p99),
                f.errors,
                ratio.map_or_else(String::new, |r| format!("{r:.2}×")),
            );
        }
    }
    println!("\n(ratio: resilient-redis ops/s over raw redis-rs ops/s in the same run)");
    // Leave nothing behind on the user's Redis.
    let mut cleanup = raw;
    for chunk in keys.chunks(500) {
        let _ = redis::cmd("DEL")
            .arg(chunk)
            .query_async::<u64>(&mut cleanup)
            .await;
    }
    let _ = manager.close(Duration::from_secs(2)).await;
    rows.iter().all(|(_, r, m)| r.errors == 0 && m.errors == 0)
}

fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

/// A plain multiplexed connection with the same credentials, certificates and timeouts.
async fn raw_connection(
    config: &resilient_redis_config::RedisConfig,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = resilient_redis_pool::primary_client(config)
        .await
        .map_err(|e| e.to_string())?;
    client
        .get_multiplexed_async_connection_with_config(&resilient_redis_pool::connection_config(
            config,
        ))
        .await
        .map_err(|e| e.to_string())
}

/// Runs `op` from `args.tasks` callers for `args.duration`, with a progress line on stderr.
async fn measure(
    client: Client,
    op: Op,
    label: &str,
    args: &Args,
    keys: &Arc<Vec<Vec<u8>>>,
    value: &Arc<Vec<u8>>,
) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.tasks)
        .map(|t| {
            let (mut client, stop, done, errors) = (
                client.clone(),
                Arc::clone(&stop),
                Arc::clone(&done),
                Arc::clone(&errors),
            );
            let (keys, value) = (Arc::clone(keys), Arc::clone(value));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(16 * 1024);
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[i % keys.len()];
                    let began = Instant::now();
                    if !client.call(op, key, &value).await {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    latencies.push(u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX));
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 7;
                }
                latencies
            })
        })
        .collect();
    let mut stderr = std::io::stderr();
    while started.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250).min(args.duration)).await;
        let secs = started.elapsed().as_secs_f64();
        let _ = write!(
            stderr,
            "\r{label:<28} {:>5.1}s  {:>10.0} ops/s  errors {}   ",
            secs,
            done.load(Ordering::Relaxed) as f64 / secs,
            errors.load(Ordering::Relaxed)
        );
        let _ = stderr.flush();
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = writeln!(stderr);
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q).round() as usize)
            .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(*us)))
    };
    Figures {
        ops_per_sec: all.len() as f64 / elapsed,
        p50: at(0.50),
        p99: at(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}
