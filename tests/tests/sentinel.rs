//! Redis Sentinel against real servers: a primary, a replica and three sentinels. The primary
//! is killed under load; the sentinels promote the replica; the manager follows it, and every
//! write it acknowledged (before, during and after the failover) is on the new primary.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use resilient_redis_config::{Mode, RedisUrl};
use resilient_redis_manager::RedisManager;
use resilient_redis_tests::RedisServer;

/// A synchronous connection to a local port.
fn conn(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap()
}

/// Waits until every sentinel knows the other two and the replica.
fn wait_until_sentinels_agree(sentinels: &[RedisServer]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = sentinels.iter().all(|s| {
            let mut c = conn(s.port());
            let peers: Vec<BTreeMap<String, String>> = redis::cmd("SENTINEL")
                .arg("SENTINELS")
                .arg("mymaster")
                .query(&mut c)
                .unwrap_or_default();
            let replicas: Vec<BTreeMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg("mymaster")
                .query(&mut c)
                .unwrap_or_default();
            peers.len() == 2
                && replicas
                    .iter()
                    .any(|r| r.get("flags").is_some_and(|f| f == "slave"))
        });
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "the sentinels never agreed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The port of the primary the sentinels name now.
fn named_primary(sentinel: &RedisServer) -> Option<u16> {
    let addr: Vec<String> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg("mymaster")
        .query(&mut conn(sentinel.port()))
        .ok()?;
    addr.get(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_is_followed_and_no_acknowledged_write_is_lost() {
    // A replica syncs at once (Redis 7 waits 5 s by default before a diskless sync).
    let mut primary = RedisServer::builder()
        .config("repl-diskless-sync-delay", "0")
        .start();
    let replica = RedisServer::builder()
        .args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
        .start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis::cmd("INFO")
        .arg("replication")
        .query::<String>(&mut conn(replica.port()))
        .unwrap()
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::builder()
                .sentinel("mymaster", primary.port(), 2)
                .start()
        })
        .collect();
    tokio::task::block_in_place(|| wait_until_sentinels_agree(&sentinels));

    // The URL's host and port are not used in sentinel mode.
    let mut config = common::outage_config("redis://127.0.0.1:1/0");
    config.mode = Mode::Sentinel;
    config.sentinels = sentinels
        .iter()
        .map(|s| RedisUrl::new(format!("redis://127.0.0.1:{}", s.port())))
        .collect();
    config.master_name = Some("mymaster".into());
    let m = RedisManager::builder(config).build().await.unwrap();

    let mut acked = BTreeMap::new();
    for i in 0..50 {
        let (k, v) = (format!("s:{i}"), format!("before-{i}"));
        m.set(k.as_bytes(), v.as_bytes(), None).await.unwrap();
        acked.insert(k, v);
    }
    // Replicated before the kill (Redis's own replication is asynchronous: a write it
    // acknowledged and never copied is Redis's loss, not this library's).
    let copies: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut conn(primary.port()))
        .unwrap();
    assert_eq!(copies, 1);

    primary.kill();
    let killed = Instant::now();
    // Writes through the failover: answered by Redis or journaled, each acknowledged one kept.
    let mut i = 0;
    let mut journaled = 0;
    let followed = loop {
        i += 1;
        journaled = journaled.max(m.journal().pending_writes());
        let (k, v) = (format!("s:{}", i % 80), format!("during-{i}"));
        if m.set(k.as_bytes(), v.as_bytes(), None).await.is_ok() {
            acked.insert(k, v);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let promoted = named_primary(&sentinels[0]) == Some(replica.port());
        if promoted && !m.is_fallback_mode() && m.journal().pending_writes() == 0 && i > 50 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no failover followed"
        );
    };
    // The outage was seen and bridged: writes were journaled, then replayed to the new primary.
    assert!(journaled > 0, "no write was journaled during the failover");
    // After it: straight to the new primary.
    m.set(b"s:after", b"after", None).await.unwrap();
    acked.insert("s:after".into(), "after".into());
    // (Journaled if the pool was still settling: then replayed before the check.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.is_fallback_mode() || m.journal().pending_writes() > 0 {
        assert!(
            Instant::now() < deadline,
            "the last write was never replayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut new_primary = conn(replica.port());
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut new_primary).unwrap();
    assert_eq!(role[0], redis::Value::BulkString(b"master".to_vec()));
    for (k, v) in &acked {
        let got: Option<String> = redis::cmd("GET").arg(k).query(&mut new_primary).unwrap();
        assert_eq!(
            got.as_deref(),
            Some(v.as_str()),
            "{k} after a failover of {followed:?}"
        );
    }
    // The health report names the deployment, not an address a failover moves.
    let server = m.health_report().server;
    assert!(
        server.starts_with("sentinel:mymaster@127.0.0.1:"),
        "{server}"
    );
    m.close(Duration::from_secs(2)).await.unwrap();
}
