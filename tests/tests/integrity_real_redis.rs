//! The promise across process lifetimes and odd inputs, against a real redis-server: several
//! processes in turn on one journal file, and a poison write during an outage.

mod common;

use std::process::Stdio;
use std::time::Duration;

use redis::AsyncCommands;
use resilient_redis_config::RedisConfig;
use resilient_redis_manager::{Error, ErrorKind, RedisManager};
use resilient_redis_tests::{Fault, FaultProxy, RedisServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Set in a re-executed copy of this test binary: `url|journal|prefix`.
const CHILD: &str = "RESILIENT_REDIS_INTEGRITY_CHILD";

fn config(url: &str, journal: &str) -> RedisConfig {
    let mut c = common::outage_config(url);
    c.fallback.journal_path = Some(journal.into());
    c
}

/// Waits until the journal is replayed and fallback mode is over.
async fn drained(m: &RedisManager) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !m.is_settled() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the journal drains once Redis answers");
}

/// One application process: through an outage (the parent's proxy refuses connections) it
/// writes 20 keys and one increment, all journaled; when told, it waits for the replay and
/// closes. Does nothing unless started by the test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let (url, journal, prefix) = (parts[0], parts[1], parts[2]);
    let m = RedisManager::builder(config(url, journal))
        .build()
        .await
        .unwrap();
    for i in 0..20 {
        m.set(format!("{prefix}:k{i}").as_bytes(), b"v", None)
            .await
            .unwrap();
    }
    // Memory does not know the counter: the increment is journaled as a delta, labelled.
    m.incr_by_with_source(b"counter", 1).await.unwrap();
    assert_eq!(m.journal().pending_writes(), 21, "all journaled");
    println!("WROTE");
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await
        .unwrap();
    drained(&m).await;
    m.close(Duration::from_secs(2)).await.unwrap();
    println!("DONE");
}

/// Fails on the first version: the second process's 20 acknowledged writes and its increment
/// never reached Redis (its batch ids repeated the first process's, whose markers said
/// "already applied").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_in_turn_on_one_journal_file_lose_nothing() {
    let server = RedisServer::builder().durable().start();
    let proxy = FaultProxy::start(server.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("app.journal");
    for process in 0..3 {
        proxy.set(Fault::Refuse);
        proxy.reset_all();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD,
                format!("{}|{}|p{process}", proxy.url(), journal.display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = out.next_line().await.unwrap() {
                if line.ends_with("WROTE") {
                    return;
                }
            }
            panic!("process {process} ended before writing");
        })
        .await
        .expect("the child writes through the outage");
        proxy.set(Fault::Pass);
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        drop(stdin);
        let status = tokio::time::timeout(Duration::from_secs(30), async {
            while out.next_line().await.unwrap().is_some() {}
            child.wait().await.unwrap()
        })
        .await
        .expect("the child finishes");
        assert!(status.success(), "process {process}: {status}");
    }
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for process in 0..3 {
        for i in 0..20 {
            let v: Option<String> = conn.get(format!("p{process}:k{i}")).await.unwrap();
            assert_eq!(v.as_deref(), Some("v"), "process {process}, key {i}");
        }
    }
    let counter: i64 = conn.get("counter").await.unwrap();
    assert_eq!(counter, 3, "one increment per process, each exactly once");
}

/// Fails on the first version: `set(k, v, Some(Duration::MAX))` was acknowledged, its replay
/// failed after the batch's first writes, the increment before it was applied again every sync
/// interval (the counter reached 267), the write after it never arrived, and fallback mode never
/// ended. Now the poison write is refused at the call; a write Redis refuses at replay (an
/// INCRBY of a key Redis holds as a hash) becomes a dead letter; hash writes of 5000 fields
/// replay whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_write_in_an_outage_is_refused_and_the_rest_replays_once() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut direct = client.get_multiplexed_async_connection().await.unwrap();
    let () = direct.hset("h", "f", "v").await.unwrap();
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.set(Fault::Refuse);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("app.journal");
    let m = RedisManager::builder(config(&proxy.url(), &journal.display().to_string()))
        .build()
        .await
        .unwrap();
    assert_eq!(m.incr_by_with_source(b"c", 1).await.unwrap().value, 1);
    let poison = m.set(b"k", b"v", Some(Duration::MAX)).await;
    assert!(
        matches!(&poison, Err(e @ Error::Validation(_)) if e.kind() == ErrorKind::Validation),
        "{poison:?}"
    );
    assert_eq!(
        m.incr_by_with_source(b"h", 1).await.unwrap().by,
        resilient_redis_manager::ServedBy::MemoryUnknownKey,
        "memory never saw h"
    );
    let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..5000)
        .map(|i| (format!("f{i}").into_bytes(), b"x".to_vec()))
        .collect();
    assert_eq!(m.hset(b"big", &fields).await.unwrap(), 5000);
    m.set(b"after", b"y", None).await.unwrap();
    assert_eq!(m.journal().pending_writes(), 4);
    proxy.set(Fault::Pass);
    drained(&m).await;
    let c: i64 = direct.get("c").await.unwrap();
    assert_eq!(c, 1, "one acknowledged increment, applied once");
    let after: String = direct.get("after").await.unwrap();
    assert_eq!(after, "y");
    let big: i64 = direct.hlen("big").await.unwrap();
    assert_eq!(big, 5000);
    let k: Option<String> = direct.get("k").await.unwrap();
    assert_eq!(k, None, "the refused write was never acknowledged");
    assert_eq!(m.health_check().await.dead_letters, 1, "counted");
    assert_eq!(m.metrics().snapshot().fallback.dead_letters, 1);
    assert!(
        m.metrics()
            .report()
            .recommendations
            .iter()
            .any(|r| r.code == "dead_letters"),
        "and reported"
    );
    m.close(Duration::from_secs(2)).await.unwrap();
    let report = resilient_redis_fallback::inspect_journal(&journal).unwrap();
    assert_eq!(report.dead_letters.len(), 1, "{report:?}");
    assert!(report.dead_letters[0].reason.starts_with("WRONGTYPE"));
    assert!(report.pending.is_empty());
}
