//! Hung servers, exhaustion, a wrong password and a full server: every call returns in bounded
//! time with an error that names its kind.

mod common;

use std::time::Duration;

use resilient_redis_config::ErrorKind;
use resilient_redis_pool::{ConnectionPool, PoolError, RedisPool};
use resilient_redis_tests::{Fault, FaultProxy, RedisServer};
use tokio::time::timeout;

/// Generous outer bound: a call that is still running after this has hung.
const HANG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_blackholed_server_makes_calls_time_out_and_stuck_connections_are_discarded() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let pool = RedisPool::new(&common::config(&proxy.url())).await.unwrap();
    let mut before = pool.shared().unwrap();
    assert_eq!(
        before.query::<String>(&redis::cmd("PING")).await.unwrap(),
        "PONG"
    );

    proxy.set(Fault::Blackhole);
    let err = timeout(HANG, before.query::<String>(&redis::cmd("PING")))
        .await
        .expect("bounded")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        err.outcome_unknown(),
        "a timed-out command may have been applied"
    );

    // The stuck shared connection is out of service: nobody gets it again.
    match pool.shared() {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(_) => panic!("the broken shared connection was handed out again"),
    }
    // Exclusive checkouts do not hang either: the idle connection is handed out and its
    // command times out (and it is closed); a new one cannot connect through the blackhole.
    for _ in 0..2 {
        match timeout(HANG, pool.get()).await.expect("bounded") {
            Ok(mut conn) => {
                let err = timeout(HANG, conn.query::<String>(&redis::cmd("PING")))
                    .await
                    .expect("bounded")
                    .unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
                assert!(conn.is_broken());
            }
            Err(err) => assert!(matches!(err.kind(), ErrorKind::Timeout), "{err}"),
        }
    }
    assert_eq!(pool.status().in_use, 0);

    proxy.set(Fault::Pass);
    for _ in 0..30 {
        if let Ok(mut c) = pool.shared()
            && c.query::<String>(&redis::cmd("PING")).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "not served again after the blackhole lifted: {}",
        pool.status()
    );
}

/// A shared connection has no timer per request: its watchdog fails every waiting request once
/// one has waited `socket_timeout`. Callers that give up meanwhile (here four callers that each
/// give up after 1 ms, again and again) must not hide the patient ones from it.
#[tokio::test]
async fn a_hung_shared_connection_fails_every_waiting_request_while_other_callers_give_up() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let pool = RedisPool::new(&common::config(&proxy.url())).await.unwrap();
    assert_eq!(common::ping(&pool).await.unwrap(), "PONG");
    let patient: Vec<_> = (0..8).map(|_| pool.shared().unwrap()).collect();

    proxy.set(Fault::Blackhole);
    // They hold their handles, so they go on using the connection after the keeper's own
    // probe has taken it out of service.
    let mut quitters = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut c = pool.shared().unwrap();
        quitters.spawn(async move {
            loop {
                let ping = redis::cmd("PING");
                let _ = timeout(Duration::from_millis(1), c.query::<String>(&ping)).await;
                // Once the connection is stopped a request fails at once: let others run.
                tokio::task::yield_now().await;
            }
        });
    }
    let mut waiting = tokio::task::JoinSet::new();
    for mut c in patient {
        waiting.spawn(async move { c.query::<String>(&redis::cmd("PING")).await });
    }
    let results = timeout(HANG, waiting.join_all())
        .await
        .expect("every waiting request is answered while other callers give up");
    quitters.abort_all();
    for r in results {
        let err = r.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.outcome_unknown(), "{err}");
    }
    assert!(
        pool.shared().is_err(),
        "the hung connection is out of service"
    );

    proxy.set(Fault::Pass);
    timeout(HANG, async {
        while common::ping(&pool).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a new shared connection serves once the blackhole lifts");
}

/// Replies that keep coming, each within the socket timeout of the one before, do not excuse a
/// request queued behind them: it fails once it has itself waited the socket timeout, as it
/// would with a timer of its own.
#[tokio::test]
async fn a_request_queued_behind_slow_replies_times_out_at_the_socket_timeout() {
    // `hz 100`: Redis notices a blocked command's timeout within 10 ms, not 100.
    let server = RedisServer::builder().config("hz", "100").start();
    let mut config = common::config(&server.url());
    config.socket_timeout = Duration::from_millis(600);
    let pool = RedisPool::new(&config).await.unwrap();
    assert_eq!(common::ping(&pool).await.unwrap(), "PONG");
    // `WAIT 1 400` with no replica blocks this connection for 400 ms, then answers; Redis
    // takes the connection's next command only then. So the replies come about one every
    // 400 ms (under the 600 ms socket timeout) and the PING's after 1.6 s. (The manager refuses
    // WAIT on a shared connection; the pool's handle sends what it is given.) `join!` sends
    // them in this order.
    let wait = || {
        let mut c = pool.shared().unwrap();
        async move {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(1).arg(400);
            c.query::<i64>(&cmd).await
        }
    };
    let mut ping = pool.shared().unwrap();
    let ping_cmd = redis::cmd("PING");
    let (first, second, third, fourth, ping) = timeout(HANG, async {
        tokio::join!(
            wait(),
            wait(),
            wait(),
            wait(),
            ping.query::<String>(&ping_cmd)
        )
    })
    .await
    .expect("bounded");
    assert_eq!(first.unwrap(), 0, "answered within the socket timeout");
    for late in [second, third, fourth] {
        let err = late.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    }
    let err = ping.expect_err("the PING would have waited 1.6 s for its reply");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
}

#[tokio::test]
async fn a_timed_out_exclusive_connection_is_closed_not_returned() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let pool = RedisPool::new(&common::config(&proxy.url())).await.unwrap();
    let mut conn = pool.get().await.unwrap();
    proxy.set(Fault::Latency(Duration::from_millis(400)));
    let err = conn.query::<String>(&redis::cmd("PING")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(conn.is_broken());
    let closed_before = pool.status().closed;
    drop(conn);
    assert_eq!(pool.status().closed, closed_before + 1, "closed on return");
    proxy.set(Fault::Pass);
    let mut next = pool.get().await.unwrap();
    assert_eq!(
        next.query::<String>(&redis::cmd("PING")).await.unwrap(),
        "PONG",
        "a fresh one"
    );
}

#[tokio::test]
async fn an_exhausted_pool_times_out_with_its_status() {
    let server = RedisServer::start();
    let pool = RedisPool::new(&common::config(&server.url()))
        .await
        .unwrap();
    // max_size 4 with 1 shared: 3 exclusive connections.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.get().await.unwrap());
    }
    let err = timeout(HANG, pool.get())
        .await
        .expect("bounded")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PoolExhausted, "{err}");
    let PoolError::Timeout { status, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(status.in_use, 3);
    assert!(err.to_string().contains("3 in use"), "{err}");
    assert_eq!(pool.status().timeouts, 1);
    drop(held.pop());
    assert!(
        pool.get().await.is_ok(),
        "a returned connection serves the next caller"
    );
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_on_the_first_call() {
    let server = RedisServer::builder().password("right").start();
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let pool = timeout(HANG, RedisPool::new(&common::config(&url)))
        .await
        .expect("bounded")
        .unwrap();
    let err = pool.shared().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(!err.is_transient());
    assert!(
        !err.to_string().contains("wrong"),
        "the password never shows: {err}"
    );
    let err = timeout(HANG, pool.get())
        .await
        .expect("bounded")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
}

#[tokio::test]
async fn a_password_from_the_config_overrides_the_url() {
    let server = RedisServer::builder().password("right").start();
    let mut config = common::config(&format!("redis://127.0.0.1:{}", server.port()));
    config.password = Some(resilient_redis_config::Secret::new("right"));
    let pool = RedisPool::new(&config).await.unwrap();
    assert_eq!(common::ping(&pool).await.unwrap(), "PONG");
}

#[tokio::test]
async fn a_server_at_maxclients_gives_a_clear_error_not_a_hang() {
    let server = RedisServer::builder().config("maxclients", "1").start();
    let mut config = common::config(&server.url());
    config.pool.min_size = 1;
    let pool = RedisPool::new(&config).await.unwrap();
    // The one shared connection took the only slot; an exclusive connection is refused.
    let err = timeout(HANG, pool.get())
        .await
        .expect("bounded")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("max number of clients"), "{err}");
}

/// A `rediss://` URL for a plain server: the handshake would hang (the server waits for a
/// command line); the pool finds out why at once and says so as a TLS error, not a timeout.
#[tokio::test]
async fn tls_against_a_plain_server_is_a_tls_error_at_once() {
    let server = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let mut config = common::config(&url);
    config.connect_timeout = Duration::from_secs(30);
    config.pool.acquire_timeout = Duration::from_secs(30);
    // Far below the 30 s timeouts: the mismatch is found, not waited out.
    let pool = timeout(Duration::from_secs(3), RedisPool::new(&config))
        .await
        .expect("at once")
        .unwrap();
    let err = pool.shared().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("plain RESP, not TLS"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_tls_server_is_reached_over_rediss_and_an_untrusted_certificate_is_a_tls_error_at_once() {
    let server = RedisServer::builder().tls().start();
    // Certificate checks on: our test CA is not trusted, which rustls reports at once.
    let pool = timeout(HANG, RedisPool::new(&common::config(&server.url())))
        .await
        .expect("bounded")
        .unwrap();
    let err = pool.shared().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    // Checks off (`#insecure`): the same server answers over TLS.
    let pool = RedisPool::new(&common::config(&format!("{}/#insecure", server.url())))
        .await
        .unwrap();
    assert_eq!(common::ping(&pool).await.unwrap(), "PONG");
}

#[tokio::test]
async fn an_acl_user_from_the_config_is_used_and_a_wrong_one_refused() {
    let server = RedisServer::builder()
        .args(["--user", "app", "on", ">app-secret", "~*", "&*", "+@all"])
        .args(["--user", "default", "off"])
        .start();
    let url = format!("redis://127.0.0.1:{}", server.port());
    let mut config = common::config(&url);
    config.username = Some("app".into());
    config.password = Some(resilient_redis_config::Secret::new("app-secret"));
    let pool = RedisPool::new(&config).await.unwrap();
    let whoami: String = pool
        .shared()
        .unwrap()
        .query(redis::cmd("ACL").arg("WHOAMI"))
        .await
        .unwrap();
    assert_eq!(whoami, "app");
    config.username = Some("nobody".into());
    let pool = RedisPool::new(&config).await.unwrap();
    assert_eq!(pool.shared().unwrap_err().kind(), ErrorKind::Auth);
}

/// Found by review of the chaos campaign: a SET that timed out was still in flight (late in a
/// slow network); the caller moved on, wrote a newer value on a fresh connection, and the late
/// SET then landed over it. The pool now kills a timed-out connection server-side before its
/// replacement serves, so the late bytes find no one to run them.
#[tokio::test]
async fn a_write_that_timed_out_cannot_land_after_a_newer_one() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let pool = RedisPool::new(&common::config(&proxy.url())).await.unwrap();
    let set = |v: &str| {
        let mut c = redis::cmd("SET");
        c.arg("k").arg(v);
        c
    };
    // Every chunk waits 1.2 s in the proxy: the old SET outlives its 300 ms socket timeout.
    proxy.set(Fault::Latency(Duration::from_millis(1200)));
    let mut conn = pool.shared().unwrap();
    let late = conn.query::<()>(&set("old")).await.unwrap_err();
    assert_eq!(late.kind(), ErrorKind::Timeout, "{late}");
    proxy.set(Fault::Pass);
    // A fresh shared connection, and a newer write on it.
    let newer = timeout(HANG, async {
        loop {
            if let Ok(mut c) = pool.shared()
                && c.query::<()>(&set("new")).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        newer.is_ok(),
        "a new connection serves once the latency is gone"
    );
    // Past the moment the old SET's bytes leave the proxy.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let direct = redis::Client::open(server.url()).unwrap();
    let mut direct = direct.get_multiplexed_async_connection().await.unwrap();
    let value: String = redis::cmd("GET")
        .arg("k")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(value, "new", "the timed-out SET landed after the newer one");
}
