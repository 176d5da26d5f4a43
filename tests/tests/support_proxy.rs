//! The fault proxy against a real server: pass, blackhole, latency, refuse, reset.

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
