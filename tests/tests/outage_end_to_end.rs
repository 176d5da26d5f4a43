//! The product's promise, end to end: concurrent reads, writes and increments through a SIGKILL
//! of a durable Redis. Reads and idempotent writes never fail; after the restart every
//! acknowledged write is in Redis with its value and TTL, and the counter lies between the
//! acknowledged increments and that plus the ambiguous ones.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use resilient_redis_config::RedisConfig;
use resilient_redis_manager::{Error, RedisManager};
use resilient_redis_tests::RedisServer;

fn config(url: &str) -> RedisConfig {
    let mut c = common::outage_config(url);
    c.pool.acquire_timeout = Duration::from_millis(500);
    c.health.failure_threshold = 2;
    c.health.success_threshold = 2;
    c.circuit_breaker.failure_threshold = 3;
    c.circuit_breaker.reset_timeout = Duration::from_millis(500);
    c.circuit_breaker.max_reset_timeout = Duration::from_secs(2);
    c.fallback.sync_interval = Duration::from_millis(200);
    c
}

#[derive(Default)]
struct Ledger {
    writes: std::sync::Mutex<BTreeMap<String, String>>,
    increments: AtomicU64,
    ambiguous: AtomicU64,
    read_errors: AtomicU64,
    write_errors: std::sync::Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_through_a_sigkill() {
    let mut server = RedisServer::builder().durable().start();
    let manager = RedisManager::builder(config(&server.url()))
        .build()
        .await
        .unwrap();
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (m, ledger, stop) = (manager.clone(), Arc::clone(&ledger), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("ledger:{w}:{i}");
                    let value = format!("v{w}-{i}");
                    match m
                        .set(
                            key.as_bytes(),
                            value.as_bytes(),
                            Some(Duration::from_secs(600)),
                        )
                        .await
                    {
                        Ok(()) => {
                            ledger.writes.lock().unwrap().insert(key.clone(), value);
                        }
                        Err(e) => ledger.write_errors.lock().unwrap().push(e.to_string()),
                    }
                    // Always answered; a key written to Redis just before it died is one memory
                    // does not know (labelled MemoryUnknownKey rather than failed).
                    if m.get_with_source(key.as_bytes()).await.is_err() {
                        ledger.read_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // During the outage memory does not know the counter: the increment is
                    // journaled as a delta and flagged as counted from 0.
                    match m.incr_by_with_source(b"ledger:counter", 1).await {
                        Ok(_) => ledger.increments.fetch_add(1, Ordering::Relaxed),
                        Err(Error::Ambiguous { .. }) => {
                            ledger.ambiguous.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            panic!("an increment failed with neither success nor ambiguity: {e}")
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(800)).await;
    server.kill();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !manager.is_fallback_mode() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("fallback mode within 5 s of the kill");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let pending_during_outage = manager.journal().pending_writes();
    server.restart();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // Recovery: the journal drains and fallback mode ends.
    tokio::time::timeout(Duration::from_secs(15), async {
        while !manager.is_settled() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("recovered within 15 s of the restart");

    assert!(
        pending_during_outage > 0,
        "writes were journaled during the outage"
    );
    assert_eq!(
        ledger.read_errors.load(Ordering::Relaxed),
        0,
        "reads never failed"
    );
    assert!(
        ledger.write_errors.lock().unwrap().is_empty(),
        "{:?}",
        ledger.write_errors.lock().unwrap()
    );

    let mut conn = redis::Client::open(server.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let writes = ledger.writes.lock().unwrap().clone();
    assert!(
        writes.len() > 50,
        "the workload ran: {} writes",
        writes.len()
    );
    for (key, value) in &writes {
        let got: Option<String> = conn.get(key).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(value.as_str()),
            "acknowledged write {key} lost"
        );
        let ttl: i64 = conn.pttl(key).await.unwrap();
        assert!(ttl > 0 && ttl <= 600_000, "{key} kept its TTL: {ttl}");
    }
    let counter: i64 = conn.get("ledger:counter").await.unwrap();
    let acked = ledger.increments.load(Ordering::Relaxed) as i64;
    let ambiguous = ledger.ambiguous.load(Ordering::Relaxed) as i64;
    assert!(
        (acked..=acked + ambiguous).contains(&counter),
        "counter {counter}, acknowledged {acked}, ambiguous {ambiguous}"
    );
    manager.close(Duration::from_secs(2)).await.unwrap();
}
