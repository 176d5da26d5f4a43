//! What production setups need, against real servers: ACL users (a command or key the user may
//! not touch is a `no_permission_error` of its own, never an outage), TLS with a private CA and
//! client certificates (a wrong CA or a missing client certificate is a `tls_error` at once).
//! The audit trail has a test binary of its own (`audit_trail.rs`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use resilient_redis_breaker::BreakerState;
use resilient_redis_config::{ErrorKind, Secret};
use resilient_redis_manager::RedisManager;
use resilient_redis_metrics::{Collector, MetricsCollector};
use resilient_redis_tests::RedisServer;

#[tokio::test]
async fn a_command_or_key_the_user_may_not_touch_is_no_permission_not_an_outage() {
    // `app` may run everything but FLUSHDB, on keys under `app:` only.
    let server = RedisServer::builder()
        .args([
            "--user",
            "app",
            "on",
            ">app-secret",
            "~app:*",
            "&*",
            "+@all",
            "-flushdb",
        ])
        .start();
    let mut config = common::outage_config(&format!("redis://127.0.0.1:{}", server.port()));
    config.username = Some("app".into());
    config.password = Some(Secret::new("app-secret"));
    config.circuit_breaker.failure_threshold = 2;
    config.circuit_breaker.minimum_calls = 2;
    // No outage here: one PING slower than the outage config's 100 ms on a loaded machine must
    // not count as one (the test asserts the breaker never tripped).
    config.health.timeout = Duration::from_millis(500);
    config.health.check_interval = Duration::from_millis(500);
    let metrics = Arc::new(Collector::builder(&config.metrics).no_export().build());
    let m = RedisManager::builder(config)
        .metrics(Arc::clone(&metrics) as Arc<dyn MetricsCollector>)
        .build()
        .await
        .unwrap();

    m.set(b"app:k", b"v", None).await.unwrap();
    assert_eq!(m.get(b"app:k").await.unwrap(), Some(b"v".to_vec()));
    for _ in 0..5 {
        // A command the user may not run.
        let err = m.execute(&redis::cmd("FLUSHDB")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoPermission, "{err}");
        // A key outside the user's patterns: a read the fallback could serve is still refused
        // (memory must not answer for a key Redis would not show this user).
        let err = m.get(b"other:k").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoPermission, "{err}");
        let err = m.set(b"other:k", b"v", None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoPermission, "{err}");
    }
    // Through the redis-rs path the error keeps Redis's own code.
    let mut con = m.redis_connection();
    let err = redis::cmd("FLUSHDB")
        .query_async::<()>(&mut con)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(m.breaker().state(), BreakerState::Closed);
    assert_eq!(m.breaker().snapshot().trips, 0);
    assert!(!m.is_fallback_mode());
    assert_eq!(m.journal().pending_writes(), 0, "nothing was journaled");
    let snap = metrics.snapshot();
    assert_eq!(
        snap.errors_by_kind.get("no_permission_error"),
        Some(&16),
        "{:?}",
        snap.errors_by_kind
    );
    assert_eq!(snap.fallback_operations, 0);
    m.close(Duration::from_secs(1)).await.unwrap();
}

/// A manager configuration for a TLS server, trusting `ca`.
fn tls_config(server: &RedisServer, ca: &std::path::Path) -> resilient_redis_config::RedisConfig {
    let mut config = common::config(&server.url());
    config.tls.ca_file = Some(ca.to_owned());
    config
}

/// The first call's error, bounded (a TLS failure must never hang).
async fn first_error(
    config: resilient_redis_config::RedisConfig,
) -> resilient_redis_manager::Error {
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let m = RedisManager::builder(config).build().await?;
        m.with_options(resilient_redis_manager::CallOptions::new().no_fallback())
            .get(b"k")
            .await
    })
    .await
    .expect("a TLS failure is reported, not waited on");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    outcome.expect_err("the call must fail")
}

#[tokio::test]
async fn a_private_ca_is_trusted_and_a_wrong_one_is_a_tls_error_at_once() {
    let server = RedisServer::builder().tls().start();
    let m = RedisManager::builder(tls_config(&server, &server.tls_file("ca.crt")))
        .build()
        .await
        .unwrap();
    m.set(b"k", b"over tls", None).await.unwrap();
    assert_eq!(m.get(b"k").await.unwrap(), Some(b"over tls".to_vec()));
    m.close(Duration::from_secs(1)).await.unwrap();

    // Another server's CA: the certificate is not trusted.
    let other = RedisServer::builder().tls().start();
    let err = first_error(tls_config(&server, &other.tls_file("ca.crt"))).await;
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");

    // A file that is no certificate at all: refused when the manager is built, naming it.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.crt");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = first_error(tls_config(&server, &junk)).await;
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().contains("tls.ca_file"), "{err}");
}

#[tokio::test]
async fn a_server_name_override_is_the_name_checked_while_the_url_s_host_is_dialled() {
    let server = RedisServer::builder().tls().start();
    let mut config = tls_config(&server, &server.tls_file("ca.crt"));
    // The certificate also carries this name, which no DNS resolves: the URL's host is dialled.
    config.tls.server_name = Some("resilient-redis.test".into());
    let m = RedisManager::builder(config.clone()).build().await.unwrap();
    m.set(b"k", b"by name", None).await.unwrap();
    assert_eq!(m.get(b"k").await.unwrap(), Some(b"by name".to_vec()));
    m.close(Duration::from_secs(1)).await.unwrap();

    // A name the certificate does not carry: a tls_error at once.
    config.tls.server_name = Some("other.test".into());
    let err = first_error(config).await;
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
}

#[tokio::test]
async fn an_expired_server_certificate_is_a_tls_error_at_once() {
    let server = RedisServer::builder().tls_expired().start();
    let err = first_error(tls_config(&server, &server.tls_file("ca.crt"))).await;
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");
    assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let server = RedisServer::builder().tls_client_auth().start();
    // Trusting the server is not enough: the server wants our certificate.
    let err = first_error(tls_config(&server, &server.tls_file("ca.crt"))).await;
    assert_eq!(err.kind(), ErrorKind::Tls, "{err}");

    let mut config = tls_config(&server, &server.tls_file("ca.crt"));
    config.tls.cert_file = Some(server.tls_file("client.crt"));
    config.tls.key_file = Some(server.tls_file("client.key"));
    let m = RedisManager::builder(config).build().await.unwrap();
    m.set(b"k", b"mutual", None).await.unwrap();
    assert_eq!(m.get(b"k").await.unwrap(), Some(b"mutual".to_vec()));
    m.close(Duration::from_secs(1)).await.unwrap();
}
