//! `resilient-redis check` against real servers: each kind of failure has its exit code, and
//! `--json` says what was found.

use std::process::Command;

use resilient_redis_tests::RedisServer;

/// Runs `resilient-redis check --json <url>` with no `REDIS_*` settings from the environment.
fn check(url: &str) -> (Option<i32>, serde_json::Value) {
    check_with(&[url], &[])
}

/// Runs `resilient-redis check --json` with `args` and these `REDIS_*` variables only.
fn check_with(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_resilient-redis"));
    cmd.args(["check", "--json"])
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CONFIG_FILE")
        .env_remove("REDIS_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the CLI");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (out.status.code(), json)
}

#[test]
fn a_healthy_server_passes_with_latency_from_several_pings_and_every_permission() {
    let server = RedisServer::start();
    let (code, f) = check(&server.url());
    assert_eq!(code, Some(0), "{f:#}");
    assert_eq!(f["ok"], true);
    assert_eq!(f["mode"], "standalone");
    assert_eq!(f["role"], "master");
    assert_eq!(f["latency_ms"]["samples"], 10, "{f:#}");
    let permissions = f["permissions"].as_array().unwrap();
    assert_eq!(permissions.len(), 5);
    assert!(permissions.iter().all(|p| p["allowed"] == true), "{f:#}");
    assert_eq!(f["credentials_sent"], false);
}

#[test]
fn each_failure_has_its_exit_code() {
    // Invalid configuration.
    let (code, f) = check("http://not-redis");
    assert_eq!(
        (code, f["failure"].as_str()),
        (Some(2), Some("config")),
        "{f:#}"
    );

    // Nothing listens there.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let (code, f) = check(&format!("redis://127.0.0.1:{port}"));
    assert_eq!(
        (code, f["failure"].as_str()),
        (Some(3), Some("unreachable")),
        "{f:#}"
    );

    // A wrong password, never printed.
    let server = RedisServer::builder().password("right-one").start();
    let url = format!("redis://:wrong-one@127.0.0.1:{}", server.port());
    let (code, f) = check(&url);
    assert_eq!(
        (code, f["failure"].as_str()),
        (Some(4), Some("auth")),
        "{f:#}"
    );
    assert_eq!(f["credentials_sent"], true);
    assert!(!f.to_string().contains("wrong-one"), "{f:#}");
}

#[test]
fn a_user_without_eval_is_told_which_command_it_lacks() {
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_connection().unwrap();
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("limited")
        .arg("on")
        .arg(">limited-pw")
        .arg("~*")
        .arg("+@all")
        .arg("-eval")
        .arg("-evalsha")
        .query(&mut admin)
        .unwrap();
    let url = format!("redis://limited:limited-pw@127.0.0.1:{}", server.port());
    let (code, f) = check(&url);
    assert_eq!(
        (code, f["failure"].as_str()),
        (Some(6), Some("permission")),
        "{f:#}"
    );
    let denied: Vec<&str> = f["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["allowed"] == false)
        .filter_map(|p| p["command"].as_str())
        .collect();
    assert_eq!(denied, ["EVAL", "EVALSHA"], "{f:#}");
}

/// `bench` measures both clients on a real server, prints a row for each with the ratio, and
/// leaves none of its keys behind.
#[test]
fn bench_compares_both_clients_and_cleans_up() {
    let server = RedisServer::start();
    let out = Command::new(env!("CARGO_BIN_EXE_resilient-redis"))
        .args([
            "bench",
            &server.url(),
            "--tasks",
            "4",
            "--duration",
            "300ms",
        ])
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CONFIG_FILE")
        .output()
        .expect("run the CLI");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for op in ["GET", "SET"] {
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(op)).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(rows[0].contains("raw redis-rs") && rows[1].contains("resilient-redis"));
        let ops: f64 = rows[1].split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(ops > 0.0, "{text}");
        assert!(rows[1].trim_end().ends_with('×'), "{text}");
    }
    // The progress line went to stderr.
    assert!(String::from_utf8_lossy(&out.stderr).contains("ops/s"));
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let left: u64 = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(left, 0, "bench keys left behind");
}

/// In sentinel mode `check` goes to the primary the sentinels name, and says which it is.
#[test]
fn check_in_sentinel_mode_reports_the_primary_the_sentinels_name() {
    let primary = RedisServer::start();
    let sentinel = RedisServer::builder()
        .sentinel("mymaster", primary.port(), 1)
        .start();
    let sentinels = sentinel.url();
    let in_sentinel_mode = |name| {
        check_with(
            &[],
            &[
                ("REDIS_MODE", "sentinel"),
                ("REDIS_SENTINELS", &sentinels),
                ("REDIS_MASTER_NAME", name),
            ],
        )
    };
    let (code, f) = in_sentinel_mode("mymaster");
    assert_eq!(code, Some(0), "{f:#}");
    let server = f["server"].as_str().unwrap();
    assert!(
        server.starts_with(&format!("127.0.0.1:{} (the primary", primary.port())),
        "{server}"
    );
    assert_eq!(f["role"], "master", "{f:#}");

    // A name the sentinels do not monitor: the configuration's mistake, said as such.
    let (code, f) = in_sentinel_mode("mymastr");
    assert_eq!(code, Some(2), "{f:#}");
    let error = f["error"].as_str().unwrap();
    assert!(
        error.contains("master_name") && error.contains("`mymaster`"),
        "{error}"
    );
}

/// In cluster mode `check` reports the cluster's state and the permissions, with no warning
/// about the server's mode; a standalone configuration pointed at a cluster node is warned.
#[test]
fn check_in_cluster_mode_reports_the_cluster() {
    let cluster = resilient_redis_tests::RedisCluster::start(3, 0);
    let nodes = cluster.urls().join(",");
    let (code, f) = check_with(&[], &[("REDIS_MODE", "cluster"), ("REDIS_NODES", &nodes)]);
    assert_eq!(code, Some(0), "{f:#}");
    assert_eq!(f["mode"], "cluster", "{f:#}");
    assert_eq!(
        f["cluster"], "ok, 3 primaries, 16384 of 16384 slots served",
        "{f:#}"
    );
    assert!(
        f["server"]
            .as_str()
            .unwrap()
            .starts_with("cluster redis://")
    );
    assert!(f["warnings"].as_array().unwrap().is_empty(), "{f:#}");
    let permissions = f["permissions"].as_array().unwrap();
    assert!(permissions.iter().all(|p| p["allowed"] == true), "{f:#}");

    let (code, f) = check(&cluster.urls()[0]);
    assert_eq!(code, Some(0), "{f:#}");
    let warnings = f["warnings"].to_string();
    assert!(warnings.contains("runs in cluster mode"), "{f:#}");
}
