//! The fault proxy against a real server: pass, blackhole, latency, refuse, reset, one-way
//! holds, cut and sliced replies, bandwidth.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use resilient_redis_tests::{Fault, FaultProxy, RedisServer};
use tokio::time::timeout;

async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn ping(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn pass_forwards_commands_and_replies() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    let () = conn.set("k", "through the proxy").await.unwrap();
    assert_eq!(
        conn.get::<_, String>("k").await.unwrap(),
        "through the proxy"
    );
    assert_eq!(proxy.accepted_connections(), 1);
}

#[tokio::test]
async fn blackhole_never_answers_and_pass_restores_new_connections() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");

    proxy.set(Fault::Blackhole);
    let stuck = timeout(Duration::from_millis(300), ping(&mut conn)).await;
    assert!(
        stuck.is_err(),
        "a blackholed command must not complete: {stuck:?}"
    );
    // A new connection is accepted but its handshake never completes.
    let handshake = timeout(Duration::from_millis(300), connect(&proxy.url())).await;
    assert!(
        handshake.is_err(),
        "a blackholed handshake must hang: {}",
        handshake.is_ok()
    );

    proxy.set(Fault::Pass);
    let mut fresh = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
}

#[tokio::test]
async fn latency_delays_every_reply() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    proxy.set(Fault::Latency(Duration::from_millis(150)));
    // The request and the reply each wait the delay: a lower bound, not a speed assertion.
    let started = std::time::Instant::now();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // And a tight deadline fails while the latency is in force.
    assert!(
        timeout(Duration::from_millis(100), ping(&mut conn))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn reset_all_breaks_open_connections_but_not_new_ones() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut conn = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
    assert_eq!(proxy.active_connections(), 1);

    proxy.reset_all();
    let err = timeout(Duration::from_secs(2), ping(&mut conn))
        .await
        .expect("fails fast");
    let err = err.expect_err("the connection was reset");
    assert!(
        err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error(),
        "{err}"
    );

    let mut fresh = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut fresh).await.unwrap(), "PONG");
}

#[tokio::test]
async fn refuse_resets_new_connections_only() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut open = connect(&proxy.url()).await.unwrap();
    proxy.set(Fault::Refuse);
    assert!(
        connect(&proxy.url()).await.is_err(),
        "new connections are refused"
    );
    assert_eq!(
        ping(&mut open).await.unwrap(),
        "PONG",
        "existing ones still work"
    );
}

#[tokio::test]
async fn a_dead_server_behind_the_proxy_resets_the_client() {
    let mut server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    server.kill();
    assert!(connect(&proxy.url()).await.is_err());
    server.restart();
    let mut conn = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut conn).await.unwrap(), "PONG");
}

/// A one-way partition: the write runs on the server while its caller sees nothing; the held
/// reply arrives, in order, once the partition heals.
#[tokio::test]
async fn hold_replies_lets_requests_run_and_holds_their_replies() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut through = connect(&proxy.url()).await.unwrap();
    let mut direct = connect(&server.url()).await.unwrap();
    assert_eq!(ping(&mut through).await.unwrap(), "PONG");

    proxy.set(Fault::HoldReplies);
    let mut pending = through.clone();
    let write = tokio::spawn(async move {
        pending
            .set::<_, _, ()>("one-way", "applied")
            .await
            .map_err(|e| e.to_string())
    });
    // The server has it, though no reply came back.
    let mut seen = None;
    for _ in 0..100 {
        seen = direct.get::<_, Option<String>>("one-way").await.unwrap();
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.as_deref(), Some("applied"));
    assert!(!write.is_finished(), "the reply must be held");

    proxy.set(Fault::Pass);
    assert_eq!(write.await.unwrap(), Ok(()));
    assert_eq!(ping(&mut through).await.unwrap(), "PONG");
}

/// The other way: the request waits in the proxy and never reaches the server until the fault
/// ends.
#[tokio::test]
async fn hold_requests_keeps_requests_from_the_server_until_it_ends() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut through = connect(&proxy.url()).await.unwrap();
    let mut direct = connect(&server.url()).await.unwrap();
    assert_eq!(ping(&mut through).await.unwrap(), "PONG");

    proxy.set(Fault::HoldRequests);
    let mut pending = through.clone();
    let write = tokio::spawn(async move {
        pending
            .set::<_, _, ()>("held", "late")
            .await
            .map_err(|e| e.to_string())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        direct.get::<_, Option<String>>("held").await.unwrap(),
        None,
        "a held request must not reach the server"
    );
    proxy.set(Fault::Pass);
    assert_eq!(write.await.unwrap(), Ok(()));
    assert_eq!(
        direct.get::<_, Option<String>>("held").await.unwrap(),
        Some("late".to_owned())
    );
}

/// A reply cut mid-way is never taken for a whole one: the client sees its connection fail.
#[tokio::test]
async fn cut_replies_deliver_half_a_reply_then_reset() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut direct = connect(&server.url()).await.unwrap();
    let () = direct.set("big", "x".repeat(4096)).await.unwrap();
    let mut through = connect(&proxy.url()).await.unwrap();
    assert_eq!(ping(&mut through).await.unwrap(), "PONG");

    proxy.set(Fault::CutReplies);
    let cut = timeout(
        Duration::from_secs(2),
        through.get::<_, Option<String>>("big"),
    )
    .await
    .expect("a cut reply fails fast");
    assert!(cut.is_err(), "half a reply must not parse: {cut:?}");

    proxy.set(Fault::Pass);
    let mut fresh = connect(&proxy.url()).await.unwrap();
    assert_eq!(
        fresh
            .get::<_, Option<String>>("big")
            .await
            .unwrap()
            .map(|v| v.len()),
        Some(4096)
    );
}

/// Replies split into 3-byte pieces are reassembled intact.
#[tokio::test]
async fn sliced_replies_arrive_intact() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut through = connect(&proxy.url()).await.unwrap();
    let value: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let () = through.set("sliced", &value).await.unwrap();
    proxy.set(Fault::Slice {
        bytes: 3,
        delay: Duration::from_micros(100),
    });
    let before = proxy.reply_writes();
    assert_eq!(
        through.get::<_, String>("sliced").await.unwrap(),
        value,
        "a reply reassembled from pieces"
    );
    // `$1000\r\n` + 1000 bytes + `\r\n`, three bytes a piece.
    assert!(proxy.reply_writes() - before >= 335, "the reply was sliced");
    assert_eq!(ping(&mut through).await.unwrap(), "PONG");
}

/// A bandwidth limit slows a large reply to its rate: 64 KiB at 256 KiB/s takes at least
/// 200 ms (a lower bound: the fault is in force, not a speed assertion), and arrives intact.
#[tokio::test]
async fn bandwidth_slows_replies_to_its_rate() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let mut through = connect(&proxy.url()).await.unwrap();
    let value = "b".repeat(64 * 1024);
    let () = through.set("wide", &value).await.unwrap();
    proxy.set(Fault::Bandwidth(256 * 1024));
    let started = std::time::Instant::now();
    assert_eq!(through.get::<_, String>("wide").await.unwrap(), value);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}
