//! The demo from outside: its HTTP endpoint over real HTTP (`/metrics` from the global meter
//! provider the demo installs, as an application would; `/live` and `/ready` from the
//! manager's health routes), and a run through a Redis Sentinel failover.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `GET path` over a fresh connection: (status code, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[test]
fn metrics_live_and_ready_over_http_while_the_demo_runs_without_redis() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let mut demo = Command::new(env!("CARGO_BIN_EXE_resilient-redis"))
        .args(["demo", "--no-redis", "--duration", "4s", "--workers", "2"])
        .args(["--metrics-addr", &addr])
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CONFIG_FILE")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the demo serves and the fallback has answered something.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some((200, body)) = get(&addr, "/metrics")
            && body.contains("resilient_redis_served_by=\"memory\"")
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no /metrics with memory-served operations"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (live, _) = get(&addr, "/live").unwrap();
    let (ready, report) = get(&addr, "/ready").unwrap();
    let _ = demo.kill();
    let _ = demo.wait();

    for name in [
        "db_client_operation_duration_seconds_bucket",
        "redis_fallback_active",
        "redis_fallback_journal_pending",
        "redis_circuit_breaker_state",
        "redis_fallback_memory_limit_bytes",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }
    // The manager's own collector names its server and pool.
    assert!(
        metrics.contains("server_address=\"127.0.0.1\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("db_client_connection_pool_name=\"127.0.0.1:"),
        "{metrics}"
    );
    assert_eq!(live, 200);
    // No Redis, the fallback on: degraded, still serving, so ready.
    assert_eq!(ready, 200, "{report}");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["verdict"], "degraded", "{report}");
    assert_eq!(report["fallback_mode"], true, "{report}");
}

/// Runs `demo --<setup> --duration 8s --workers 4` (its own servers, a primary killed partway)
/// and checks its ledger: every acknowledged write found, the counter consistent (the demo
/// exits non-zero otherwise). Returns the demo's output.
fn demo_through_a_failover(setup: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_resilient-redis"))
        .args(["demo", setup, "--duration", "8s", "--workers", "4"])
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CONFIG_FILE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("redis-server killed"), "{text}");
    let ledger = text
        .lines()
        .find(|l| l.starts_with("ledger:"))
        .unwrap_or_else(|| panic!("no ledger line in {text}"));
    // "ledger: N writes acknowledged, N found in Redis with the right values; ..."
    let words: Vec<&str> = ledger.split_whitespace().collect();
    assert_eq!(words[1], words[4], "{ledger}");
    assert!(words[1].parse::<u64>().unwrap() > 0, "{ledger}");
    assert!(ledger.contains("consistent"), "{ledger}");
    assert!(!ledger.contains("INCONSISTENT"), "{ledger}");
    text
}

/// `demo --sentinel`: a primary, a replica and three sentinels of its own; the primary killed
/// partway, the replica promoted, the manager following it, and the ledger finding every
/// acknowledged write on the new primary.
#[test]
fn the_demo_runs_through_a_sentinel_failover_and_loses_nothing() {
    let text = demo_through_a_failover("--sentinel");
    assert!(text.contains("sentinel mode: primary"), "{text}");
}

/// `demo --cluster`: a 3-primary cluster with a replica each; the primary of the demo's counter
/// killed partway and its replica taking over its slots; the ledger finding every acknowledged
/// write and the counter in the cluster.
#[test]
fn the_demo_runs_through_a_cluster_failover_and_loses_nothing() {
    let text = demo_through_a_failover("--cluster");
    assert!(text.contains("cluster mode: 3 primaries"), "{text}");
}
