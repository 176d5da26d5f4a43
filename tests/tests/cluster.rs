//! Redis Cluster against real servers: 3 primaries with a replica each, made by
//! `redis-cli --cluster create`. Reads and writes across slots go through the manager; the
//! journal's replay is cut by slot and applied at most once per part; a primary killed under
//! load is bridged by the fallback and every acknowledged write is in the cluster afterwards.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use resilient_redis_config::{Mode, RedisConfig, RedisUrl};
use resilient_redis_fallback::{Batch, BatchId, BatchOutcome, Entry, Op, SyncTarget};
use resilient_redis_manager::replay::{RedisSyncTarget, slot_marker_key};
use resilient_redis_manager::{CallOptions, ErrorKind, RedisManager, ServedBy};
use resilient_redis_pool::{CLUSTER_SLOTS, ClusterPool, key_slot};
use resilient_redis_tests::RedisCluster;

fn cluster_config(cluster: &RedisCluster) -> RedisConfig {
    let mut config = common::outage_config("redis://127.0.0.1:1");
    config.mode = Mode::Cluster;
    config.nodes = cluster.urls().into_iter().map(RedisUrl::new).collect();
    // The probe asks every primary within this (the slot map within half of it): on a loaded
    // machine 100 ms can be short enough for every primary to look down at once, which opens the
    // breaker as an outage of the whole cluster would.
    config.health.check_interval = Duration::from_millis(300);
    config.health.timeout = Duration::from_millis(300);
    config
}

/// A plain redis-rs cluster connection, to check what the cluster holds.
fn raw(cluster: &RedisCluster) -> redis::cluster::ClusterConnection {
    let urls: Vec<String> = cluster
        .running_ports()
        .into_iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    redis::cluster::ClusterClient::new(urls)
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Waits (up to 20 s) until fallback mode has ended and the journal is replayed, then checks
/// that the cluster holds every acknowledged write.
async fn replayed_and_all_in_the_cluster(
    m: &RedisManager,
    cluster: &RedisCluster,
    acked: &BTreeMap<String, String>,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.is_fallback_mode() || m.journal().pending_writes() > 0 {
        assert!(
            Instant::now() < deadline,
            "never recovered: {:?}",
            m.health_report()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| {
        cluster.wait_until_ok();
        let mut check = raw(cluster);
        for (k, v) in acked {
            let got: Option<String> = redis::cmd("GET").arg(k).query(&mut check).unwrap();
            assert_eq!(got.as_deref(), Some(v.as_str()), "{k}");
        }
    });
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Keys in `n` different slots.
fn keys_in_distinct_slots(prefix: &str, n: usize) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut i = 0;
    while keys.len() < n {
        let k = format!("{prefix}{i}");
        if keys
            .iter()
            .all(|o| key_slot(o.as_bytes()) != key_slot(k.as_bytes()))
        {
            keys.push(k);
        }
        i += 1;
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_is_cut_by_slot_and_each_part_applies_at_most_once() {
    let cluster = tokio::task::block_in_place(|| RedisCluster::start(3, 1));
    let mut config = cluster_config(&cluster);
    // Reads may go to replicas: the replay's own records must still be read on primaries (a
    // replica a moment behind would hide the slots to settle).
    config.read_from_replicas = true;
    let pool = Arc::new(ClusterPool::new(&config).await.unwrap());
    let target = RedisSyncTarget::new(pool).per_slot();
    let mut check = tokio::task::block_in_place(|| raw(&cluster));

    let k = keys_in_distinct_slots("r:", 8);
    let (a, b, c, d1, d2, h, text, late) = (&k[0], &k[1], &k[2], &k[3], &k[4], &k[5], &k[6], &k[7]);
    for (key, value) in [(d1, "x"), (d2, "y"), (text, "not a number")] {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut check)
            .unwrap();
    }
    let now = now_ms();
    let e = |seq: u64, at: u64, op: Op| Entry::new(seq, at, op);
    let incr = |key: &str| Op::IncrBy {
        key: key.into(),
        delta: 1,
    };
    let batch0 = vec![
        e(1, now - 9000, incr(a)),
        e(2, now - 9000, incr(b)),
        e(3, now - 9000, incr(c)),
        // One DEL of keys in two slots: cut into one DEL per slot.
        e(
            4,
            now - 9000,
            Op::Del {
                keys: vec![d1.as_bytes().to_vec(), d2.as_bytes().to_vec()],
            },
        ),
        e(
            5,
            now - 9000,
            Op::HSet {
                key: h.as_bytes().to_vec(),
                fields: vec![(b"f".to_vec(), b"v".to_vec())],
            },
        ),
        // Refused by Redis: a dead letter, reported at its index in the whole batch.
        e(6, now - 9000, incr(text)),
        // Its deadline passed during the outage, after an increment it must still see.
        e(
            7,
            now - 5000,
            Op::Set {
                key: late.as_bytes().to_vec(),
                value: b"5".to_vec(),
                expire_at: Some(now - 1000),
            },
        ),
        e(8, now - 3000, incr(late)),
    ];
    let instance = 0xC1u128;
    let id0 = BatchId::new(instance, 8, 0);

    // An earlier attempt applied `a`'s slot and then the process died: that part is skipped.
    let only_a = [batch0[0].clone()];
    let first = target
        .apply(&Batch::new(id0, now, false, &only_a))
        .await
        .unwrap();
    assert!(matches!(first, BatchOutcome::Applied { .. }), "{first:?}");

    let outcome = target
        .apply(&Batch::new(id0, now, false, &batch0))
        .await
        .unwrap();
    let BatchOutcome::Applied { rejected } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].index, 5);
    assert!(
        rejected[0].reason.contains("not an integer"),
        "{rejected:?}"
    );
    // The whole batch again (its acknowledgement was lost): nothing applies twice.
    let again = target
        .apply(&Batch::new(id0, now, false, &batch0))
        .await
        .unwrap();
    assert!(
        matches!(again, BatchOutcome::AlreadyApplied { .. }),
        "{again:?}"
    );
    for key in [a, b, c] {
        let v: i64 = redis::cmd("GET").arg(key).query(&mut check).unwrap();
        assert_eq!(v, 1, "{key}");
    }
    let gone: i64 = redis::cmd("EXISTS")
        .arg(d1)
        .arg(d2)
        .query(&mut check)
        .unwrap();
    assert_eq!(gone, 0);
    let f: String = redis::cmd("HGET")
        .arg(h)
        .arg("f")
        .query(&mut check)
        .unwrap();
    assert_eq!(f, "v");
    // Until the replay ends, the expired key is kept for the writes after it.
    let v: i64 = redis::cmd("GET").arg(late).query(&mut check).unwrap();
    assert_eq!(v, 6);

    // The last batch touches another slot only; the expired key's slot is settled anyway.
    let batch1 = vec![e(9, now - 1000, incr(a))];
    let last = target
        .apply(&Batch::new(
            BatchId::new(instance, 8, 1),
            now,
            true,
            &batch1,
        ))
        .await
        .unwrap();
    assert!(matches!(last, BatchOutcome::Applied { .. }), "{last:?}");
    let exists: i64 = redis::cmd("EXISTS").arg(late).query(&mut check).unwrap();
    assert_eq!(exists, 0, "a key whose deadline passed outlived the replay");
    let v: i64 = redis::cmd("GET").arg(a).query(&mut check).unwrap();
    assert_eq!(v, 2);

    // The next journal instance retires this one's markers (they expire after a day).
    let marker = slot_marker_key(instance, key_slot(a.as_bytes()));
    let ttl: i64 = redis::cmd("PTTL").arg(&marker).query(&mut check).unwrap();
    assert_eq!(ttl, -1, "a marker expires while its journal may need it");
    let next = [e(1, now, incr(b))];
    let mut batch = Batch::new(BatchId::new(0xC2, 1, 0), now, true, &next);
    batch.retire = Some(instance);
    target.apply(&batch).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(&marker).query(&mut check).unwrap();
    assert!(ttl > 0, "the retired marker has no expiry ({ttl})");
}

/// Polls `f` at most `polls` times, giving its I/O a moment between polls, then drops it
/// (a caller that gives up after that many steps). `Some` when it finished first.
async fn dropped_after<F: Future>(f: F, polls: usize) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    for _ in 0..polls {
        let step = std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(out) = step {
            return Some(out);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// A replay abandoned by its caller at every step of a batch cut into many runs, each attempt
/// starting the batch over: every run applies once, none twice, whatever step the drop lands
/// on (a run whose script was sent before the drop still runs, and its marker tells the next
/// attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replay_dropped_at_every_step_applies_each_write_once() {
    let cluster = tokio::task::block_in_place(|| RedisCluster::start(3, 0));
    let pool = Arc::new(ClusterPool::new(&cluster_config(&cluster)).await.unwrap());
    let target = RedisSyncTarget::new(pool).per_slot();
    let keys = keys_in_distinct_slots("cut:", 4);
    let now = now_ms();
    // Twelve increments whose slot changes at every entry: twelve runs.
    let entries: Vec<Entry> = (0..12u64)
        .map(|i| {
            let key = &keys[usize::try_from(i).unwrap() % keys.len()];
            Entry::new(
                i + 1,
                now - 1000,
                Op::IncrBy {
                    key: key.as_bytes().to_vec(),
                    delta: 1,
                },
            )
        })
        .collect();
    let id = BatchId::new(0xD1, 12, 0);
    let mut check = tokio::task::block_in_place(|| raw(&cluster));
    let applied = |check: &mut redis::cluster::ClusterConnection| -> i64 {
        keys.iter()
            .map(|k| {
                redis::cmd("GET")
                    .arg(k)
                    .query::<Option<i64>>(check)
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum()
    };
    let mut partial = 0;
    let mut polls = 1;
    let outcome = loop {
        match dropped_after(target.apply(&Batch::new(id, now, false, &entries)), polls).await {
            Some(outcome) => break outcome.unwrap(),
            None => {
                // Whatever the drop interrupted has landed or never will.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let n = tokio::task::block_in_place(|| applied(&mut check));
                assert!(n <= 12, "a run applied twice: {n} increments of 12");
                if n > 0 && n < 12 {
                    partial += 1;
                }
            }
        }
        polls += 1;
        assert!(polls < 500, "the replay never finished");
    };
    assert!(
        matches!(
            outcome,
            BatchOutcome::Applied { .. } | BatchOutcome::AlreadyApplied { .. }
        ),
        "{outcome:?}"
    );
    assert!(
        partial > 0,
        "no drop landed between two runs ({polls} attempts)"
    );
    tokio::task::block_in_place(|| {
        for k in &keys {
            let v: i64 = redis::cmd("GET").arg(k).query(&mut check).unwrap();
            assert_eq!(v, 3, "{k}: each of its three increments once");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_loses_no_acknowledged_write() {
    let mut cluster = tokio::task::block_in_place(|| RedisCluster::start(3, 1));
    let mut config = cluster_config(&cluster);
    // Two good probes to be healthy again: the one in between (unhealthy, no error) must not
    // trip the breaker or widen fallback mode.
    config.health.success_threshold = 2;
    let m = RedisManager::builder(config).build().await.unwrap();

    // Reads and writes across slots, through the typed API and as a redis-rs connection.
    let mut acked = BTreeMap::new();
    for i in 0..100 {
        let (k, v) = (format!("c:{i}"), format!("before-{i}"));
        m.set(k.as_bytes(), v.as_bytes(), None).await.unwrap();
        acked.insert(k, v);
    }
    let mut conn = m.clone();
    let got: Vec<Option<String>> = AsyncCommands::mget(&mut conn, &["c:1", "c:2", "c:3"])
        .await
        .unwrap();
    assert_eq!(
        got,
        [
            Some("before-1".to_owned()),
            Some("before-2".to_owned()),
            Some("before-3".to_owned())
        ]
    );
    assert_eq!(
        m.get(b"c:42").await.unwrap().as_deref(),
        Some(&b"before-42"[..])
    );
    // Replicated before the kill (Redis's replication is asynchronous: a write it
    // acknowledged and never copied is Redis's loss, not this library's).
    tokio::task::block_in_place(|| {
        let copies: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(2000)
            .query(&mut raw(&cluster))
            .unwrap();
        assert_eq!(copies, 1);
    });

    let victim = cluster.primary_of_slot(key_slot(b"c:0")).unwrap();
    // A key another primary serves.
    let other = (0..)
        .map(|i| format!("c:{i}"))
        .find(|k| cluster.primary_of_slot(key_slot(k.as_bytes())) != Some(victim))
        .unwrap();
    cluster.kill(victim);
    let killed = Instant::now();
    let mut i = 0;
    let mut journaled = 0;
    let mut recovered = false;
    let mut named = false;
    let mut partial = false;
    while !recovered || i < 100 {
        i += 1;
        journaled = journaled.max(m.journal().pending_writes());
        // Only the failed primary's keys go to memory: the others are Redis's to answer.
        let report = m.health_report();
        if report
            .fallback_slots
            .is_some_and(|n| n > 0 && n < CLUSTER_SLOTS.into())
            && m.fallback_covers(b"c:0")
            && !m.fallback_covers(other.as_bytes())
        {
            let mine = m.get_with_source(b"c:0").await.unwrap();
            let theirs = m.get_with_source(other.as_bytes()).await.unwrap();
            partial |= mine.by != ServedBy::Redis && theirs.by == ServedBy::Redis;
        }
        // The health report names the primary that is down, and its slots.
        named |= m
            .health_report()
            .error
            .is_some_and(|e| e.contains(&format!("primary 127.0.0.1:{victim} (slots ")));
        let (k, v) = (format!("c:{}", i % 150), format!("during-{i}"));
        if m.set(k.as_bytes(), v.as_bytes(), None).await.is_ok() {
            acked.insert(k, v);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let promoted = cluster
            .primary_of_slot(key_slot(b"c:0"))
            .is_some_and(|p| p != victim);
        recovered = promoted && !m.is_fallback_mode() && m.journal().pending_writes() == 0;
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "the manager never came back from the failover: promoted {promoted}, fallback {}, \
             {} writes pending, {:?}",
            m.is_fallback_mode(),
            m.journal().pending_writes(),
            m.health_report()
        );
    }
    assert!(journaled > 0, "no write was journaled during the failover");
    assert!(
        named,
        "the health report never named the primary that was down"
    );
    assert!(
        partial,
        "the other primaries' keys were never served by Redis while one primary was down"
    );
    // One primary's failure is not the cluster's: the breaker never opened.
    assert_eq!(m.breaker().snapshot().trips, 0, "the breaker tripped");
    m.set(b"c:after", b"after", None).await.unwrap();
    acked.insert("c:after".into(), "after".into());
    replayed_and_all_in_the_cluster(&m, &cluster, &acked).await;
    assert!(m.health_report().server.starts_with("cluster:127.0.0.1:"));
    // A transaction cannot span a cluster connection's nodes: refused, never half-run.
    let mut conn = m.connection().await.unwrap();
    let err = redis::cmd("MULTI")
        .query_async::<()>(&mut conn)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("transactions are not supported"),
        "{err}"
    );
    drop(conn);
    m.close(Duration::from_secs(2)).await.unwrap();
}

/// A primary that hangs (SIGSTOP: connections accepted, nothing answered) is found by the
/// probe within its timeout and named; only its keys go to memory, a call that must not use
/// memory is refused only for them, the breaker stays closed; once it answers again the journal
/// is replayed and every acknowledged write is in the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_is_named_and_only_its_keys_go_to_memory() {
    let cluster = tokio::task::block_in_place(|| RedisCluster::start(3, 0));
    let config = cluster_config(&cluster);
    let m = RedisManager::builder(config).build().await.unwrap();
    let victim = cluster.primary_of_slot(key_slot(b"h:0")).unwrap();
    let other = (0..)
        .map(|i| format!("h:{i}"))
        .find(|k| cluster.primary_of_slot(key_slot(k.as_bytes())) != Some(victim))
        .unwrap();
    m.set(b"h:0", b"before", None).await.unwrap();
    // The probe has read the slot map once.
    tokio::time::sleep(Duration::from_millis(300)).await;

    cluster.pause(victim);
    let paused = Instant::now();
    let mut acked = BTreeMap::new();
    let mut i = 0;
    let (mut named, mut refused_victim, mut served_other) = (false, false, false);
    while !(named && refused_victim && served_other) {
        i += 1;
        let (k, v) = (format!("h:{}", i % 60), format!("during-{i}"));
        if m.set(k.as_bytes(), v.as_bytes(), None).await.is_ok() {
            acked.insert(k, v);
        }
        let report = m.health_report();
        named |= report.error.as_deref().is_some_and(|e| {
            e.contains(&format!("primary 127.0.0.1:{victim} (slots ")) && e.contains("no answer")
        });
        if m.journal().pending_writes() > 0
            && m.fallback_covers(b"h:0")
            && !m.fallback_covers(other.as_bytes())
        {
            // Without memory: refused for the hung primary's key (a journaled write could be
            // overtaken), served by Redis for the other.
            let strict = m.with_options(CallOptions::new().no_fallback());
            refused_victim |= strict
                .get(b"h:0")
                .await
                .is_err_and(|e| e.kind() == ErrorKind::Fallback);
            served_other |= strict.get(other.as_bytes()).await.is_ok();
        }
        assert!(
            paused.elapsed() < Duration::from_secs(20),
            "named {named}, refused {refused_victim}, served {served_other}: {:?}",
            m.health_report()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(m.health_report().fallback_slots.is_some_and(|n| n < 16384));
    assert_eq!(m.breaker().snapshot().trips, 0, "the breaker tripped");

    cluster.resume(victim);
    replayed_and_all_in_the_cluster(&m, &cluster, &acked).await;
    m.close(Duration::from_secs(2)).await.unwrap();
}
