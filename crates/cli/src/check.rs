//! `resilient-redis check`: connect through the configured stack and say what was found.

use std::time::{Duration, Instant};

use resilient_redis_config::{ConfigLoader, RedisUrl};
use resilient_redis_pool::{ConnectionPool, RedisPool};

pub(crate) async fn run(url: Option<String>) -> bool {
    let mut config = match ConfigLoader::from_process_env().load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration: {e}");
            return false;
        }
    };
    if let Some(u) = url {
        config.url = RedisUrl::new(u);
        if let Err(e) = config.validate() {
            eprintln!("configuration: {e}");
            return false;
        }
    }
    println!("configuration  valid");
    println!("server         {}", config.url);
    println!(
        "tls            {}",
        if config.url.is_tls() {
            "yes (rediss://)"
        } else {
            "no"
        }
    );
    let pool = match RedisPool::new(&config).await {
        Ok(p) => p,
        Err(e) => {
            println!("connection     FAILED: {e}");
            return false;
        }
    };
    let started = Instant::now();
    let mut conn = match pool.shared() {
        Ok(c) => c,
        Err(e) => {
            println!("connection     FAILED ({}): {e}", e.kind());
            return false;
        }
    };
    match conn.query::<String>(&redis::cmd("PING")).await {
        Ok(_) => println!(
            "ping           {:.2} ms",
            started.elapsed().as_secs_f64() * 1000.0
        ),
        Err(e) => {
            println!("ping           FAILED ({}): {e}", e.kind());
            return false;
        }
    }
    let auth = if config.password.is_some() || config.url.expose().contains('@') {
        "accepted"
    } else {
        "none required"
    };
    println!("auth           {auth}");
    if let Ok(info) = conn.query::<String>(redis::cmd("INFO").arg("server")).await {
        println!(
            "version        {}",
            field(&info, "redis_version").unwrap_or("unknown")
        );
    }
    if let Ok(redis::Value::Array(role)) = conn.query::<redis::Value>(&redis::cmd("ROLE")).await
        && let Some(Ok(name)) = role
            .first()
            .map(|v| redis::from_redis_value::<String>(v.clone()))
    {
        println!("role           {name}");
    }
    if let Ok(info) = conn.query::<String>(redis::cmd("INFO").arg("memory")).await {
        println!(
            "memory         {} used, maxmemory {} ({})",
            field(&info, "used_memory_human").unwrap_or("?"),
            field(&info, "maxmemory_human").unwrap_or("?"),
            field(&info, "maxmemory_policy").unwrap_or("?")
        );
    }
    pool.close(Duration::from_secs(1)).await;
    true
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}
