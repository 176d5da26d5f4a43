//! The `redis-server` harness: start, kill by pid, restart on the same port, extra arguments.

use redis::AsyncCommands;
use resilient_redis_tests::RedisServer;

async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

#[tokio::test]
async fn server_answers_on_its_own_port_and_is_gone_after_kill() {
    let mut server = RedisServer::start();
    let pid = server.pid().expect("running");
    let mut conn = connect(&server.url()).await.expect("connect");
    let () = conn.set("k", "v").await.unwrap();
    assert_eq!(conn.get::<_, String>("k").await.unwrap(), "v");

    server.kill();
    assert!(!server.is_running());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still alive"
    );
    assert!(
        connect(&server.url()).await.is_err(),
        "nothing listens after SIGKILL"
    );
}

#[tokio::test]
async fn restart_reuses_the_port_and_durable_data_survives_sigkill() {
    let mut server = RedisServer::builder().durable().start();
    let port = server.port();
    let mut conn = connect(&server.url()).await.unwrap();
    let () = conn.set("kept", "yes").await.unwrap();

    server.kill();
    server.restart();
    assert_eq!(server.port(), port);
    let mut conn = connect(&server.url()).await.unwrap();
    assert_eq!(
        conn.get::<_, Option<String>>("kept")
            .await
            .unwrap()
            .as_deref(),
        Some("yes")
    );
}

#[tokio::test]
async fn extra_arguments_reach_the_server() {
    let server = RedisServer::builder()
        .password("s3cret")
        .config("maxclients", "7")
        .start();
    let mut conn = connect(&server.url())
        .await
        .expect("the URL carries the password");
    let maxclients: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxclients")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(maxclients, ["maxclients", "7"]);

    let anonymous = format!("redis://127.0.0.1:{}", server.port());
    let mut conn = connect(&anonymous).await.expect("connects before AUTH");
    let err = redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NOAUTH"), "{err}");
}

#[test]
fn two_servers_never_share_a_port() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port(), b.port());
}

#[test]
fn a_missing_binary_fails_with_an_install_hint() {
    // Run the check in a child process so this test's environment change stays its own.
    let exe = std::env::current_exe().unwrap();
    if std::env::var_os("RESILIENT_REDIS_MISSING_BINARY_CHILD").is_some() {
        let _ = RedisServer::start();
        return;
    }
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "a_missing_binary_fails_with_an_install_hint",
            "--nocapture",
        ])
        .env("RESILIENT_REDIS_MISSING_BINARY_CHILD", "1")
        .env("REDIS_SERVER_BIN", "/nonexistent/redis-server")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child should have panicked");
    assert!(
        stderr.contains("apt-get install -y redis-server"),
        "{stderr}"
    );
}
