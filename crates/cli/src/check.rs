//! `resilient-redis check`: connect through the configured stack and say what was found, in
//! words or (`--json`) as one JSON object, with an exit code per kind of failure.

use std::time::{Duration, Instant};

use resilient_redis_config::ErrorKind;
use resilient_redis_pool::{ClusterPool, ConnectionPool, PoolError, RedisPool, SharedConnection};
use serde::Serialize;

/// Exit codes, one per kind of failure (documented in `--help` and docs/operations.md).
pub(crate) mod exit {
    /// Everything the library needs works.
    pub(crate) const OK: u8 = 0;
    /// Something else failed (the runtime, say).
    pub(crate) const OTHER: u8 = 1;
    /// The configuration is invalid.
    pub(crate) const CONFIG: u8 = 2;
    /// Redis could not be reached (refused, reset, timed out).
    pub(crate) const UNREACHABLE: u8 = 3;
    /// The server refused the credentials.
    pub(crate) const AUTH: u8 = 4;
    /// TLS negotiation failed.
    pub(crate) const TLS: u8 = 5;
    /// A command the library needs is not allowed to this user (ACL).
    pub(crate) const PERMISSION: u8 = 6;
}

/// What `check` found.
#[derive(Debug, Default, Serialize)]
struct Findings {
    /// Whether everything the library needs works.
    ok: bool,
    /// The exit code, and what it means: `config`, `unreachable`, `auth`, `tls`, `permission`.
    exit_code: u8,
    failure: Option<&'static str>,
    error: Option<String>,
    /// The server, without its password.
    server: String,
    tls: bool,
    /// Whether credentials were sent (a password in the configuration or the URL).
    credentials_sent: bool,
    /// PINGs on one open connection, after the one that opened it.
    latency_ms: Option<Latency>,
    version: Option<String>,
    /// `standalone`, `cluster` or `sentinel` (`redis_mode` of `INFO server`).
    mode: Option<String>,
    /// `master`, `slave` or `sentinel` (`ROLE`).
    role: Option<String>,
    /// In cluster mode: the cluster's state, primaries and slots served.
    cluster: Option<String>,
    #[serde(skip)]
    cluster_configured: bool,
    used_memory: Option<String>,
    maxmemory: Option<String>,
    maxmemory_policy: Option<String>,
    /// The commands the library needs, and whether this user may run them.
    permissions: Vec<Permission>,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Latency {
    samples: usize,
    min: f64,
    median: f64,
    max: f64,
}

#[derive(Debug, Serialize)]
struct Permission {
    command: &'static str,
    /// What the library uses it for.
    used_for: &'static str,
    allowed: bool,
    error: Option<String>,
}

impl Findings {
    fn fail(&mut self, code: u8, failure: &'static str, error: String) {
        self.ok = false;
        self.exit_code = code;
        self.failure = Some(failure);
        self.error = Some(error);
    }
}

/// The primary the sentinels named, as the report shows it.
fn sentinel_primary(
    client: &redis::Client,
    config: &resilient_redis_config::RedisConfig,
) -> String {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(h, p)
        | redis::ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => format!(
            "{h}:{p} (the primary {} sentinels name `{}`)",
            config.sentinels.len(),
            config.master_name.as_deref().unwrap_or("")
        ),
        other => other.to_string(),
    }
}

/// The problem with `master_name` when no sentinel monitors `wanted`: the names they do monitor.
fn unmonitored(names: &[String], wanted: &str) -> Option<String> {
    if names.iter().any(|n| n == wanted) {
        return None;
    }
    let monitored = if names.is_empty() {
        "none".to_owned()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "master_name: no sentinel monitors a primary named `{wanted}`; they monitor {monitored}"
    ))
}

/// The exit code and name of a connection failure.
fn classify(e: &PoolError) -> (u8, &'static str) {
    match e.kind() {
        ErrorKind::Auth => (exit::AUTH, "auth"),
        ErrorKind::Tls => (exit::TLS, "tls"),
        ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::PoolExhausted => {
            (exit::UNREACHABLE, "unreachable")
        }
        _ if is_noperm(e) => (exit::PERMISSION, "permission"),
        _ => (exit::OTHER, "other"),
    }
}

fn is_noperm(e: &PoolError) -> bool {
    matches!(e, PoolError::Command { source, .. } if source.code() == Some("NOPERM"))
}

/// Runs the check; prints the findings; returns the exit code.
pub(crate) async fn run(url: Option<String>, json: bool) -> u8 {
    let findings = check(url).await;
    if json {
        match serde_json::to_string_pretty(&findings) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cannot print the findings: {e}"),
        }
    } else {
        print_words(&findings);
    }
    findings.exit_code
}

async fn check(url: Option<String>) -> Findings {
    let mut f = Findings {
        ok: true,
        ..Findings::default()
    };
    let config = match crate::load_config(url) {
        Ok(c) => c,
        Err(e) => {
            f.fail(exit::CONFIG, "config", e);
            return f;
        }
    };
    f.server = config.url.to_string();
    if config.mode == resilient_redis_config::Mode::Sentinel {
        // The URL names no server in sentinel mode: say which primary the sentinels name. The
        // names they monitor are asked at the same time (with the sentinels down, the check
        // waits one connect timeout, not two).
        let (primary, names) = tokio::join!(
            resilient_redis_pool::primary_client(&config),
            resilient_redis_pool::sentinel_names(&config)
        );
        match primary {
            Ok(client) => f.server = sentinel_primary(&client, &config),
            Err(e) => {
                // A name no sentinel monitors is the configuration's mistake: say which names
                // they do monitor.
                let wanted = config.master_name.as_deref().unwrap_or("");
                if let Some(problem) = names.ok().and_then(|n| unmonitored(&n, wanted)) {
                    f.fail(exit::CONFIG, "config", problem);
                } else {
                    let (code, name) = classify(&e);
                    f.fail(code, name, e.to_string());
                }
                return f;
            }
        }
    }
    let cluster = config.mode == resilient_redis_config::Mode::Cluster;
    f.cluster_configured = cluster;
    if cluster {
        let nodes: Vec<String> = config.nodes.iter().map(|n| n.redacted()).collect();
        f.server = format!("cluster {}", nodes.join(","));
    }
    f.tls = config.url.is_tls();
    f.credentials_sent = config.password.is_some() || config.url.has_credentials();
    let pool: Result<Box<dyn ConnectionPool>, PoolError> = if cluster {
        ClusterPool::new(&config)
            .await
            .map(|p| Box::new(p) as Box<dyn ConnectionPool>)
    } else {
        RedisPool::new(&config)
            .await
            .map(|p| Box::new(p) as Box<dyn ConnectionPool>)
    };
    let pool = match pool {
        Ok(p) => p,
        Err(e) => {
            let (code, name) = classify(&e);
            f.fail(code, name, e.to_string());
            return f;
        }
    };
    let mut conn = match pool.shared() {
        Ok(c) => c,
        Err(e) => {
            let (code, name) = classify(&e);
            f.fail(code, name, e.to_string());
            pool.close(Duration::from_secs(1)).await;
            return f;
        }
    };
    // The first PING may include opening the connection: measured apart from the rest.
    if let Err(e) = conn.query::<String>(&redis::cmd("PING")).await {
        let (code, name) = classify(&e);
        f.fail(code, name, e.to_string());
        pool.close(Duration::from_secs(1)).await;
        return f;
    }
    let mut samples = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        if conn.query::<String>(&redis::cmd("PING")).await.is_ok() {
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    if let (Some(min), Some(max)) = (samples.first(), samples.last()) {
        f.latency_ms = Some(Latency {
            samples: samples.len(),
            min: *min,
            median: samples[samples.len() / 2],
            max: *max,
        });
    }
    server_facts(&mut conn, &mut f).await;
    if cluster {
        cluster_facts(&mut conn, &mut f).await;
    }
    permissions(&mut conn, &mut f).await;
    if f.ok && f.permissions.iter().any(|p| !p.allowed) {
        let denied: Vec<&str> = f
            .permissions
            .iter()
            .filter(|p| !p.allowed)
            .map(|p| p.command)
            .collect();
        f.fail(
            exit::PERMISSION,
            "permission",
            format!("this user may not run {}", denied.join(", ")),
        );
    }
    pool.close(Duration::from_secs(1)).await;
    f
}

/// `INFO <section>` as text: one server's, or in a cluster the first primary's of the map of
/// every primary's answers.
async fn info(conn: &mut SharedConnection, section: &str) -> Option<String> {
    match conn
        .query::<redis::Value>(redis::cmd("INFO").arg(section))
        .await
        .ok()?
    {
        redis::Value::Map(answers) => answers
            .into_iter()
            .find_map(|(_, v)| redis::from_redis_value::<String>(v).ok()),
        other => redis::from_redis_value::<String>(other).ok(),
    }
}

/// The cluster's state as one node sees it: ok or not, slots served, primaries.
async fn cluster_facts(conn: &mut SharedConnection, f: &mut Findings) {
    let Ok(info) = conn
        .query::<String>(redis::cmd("CLUSTER").arg("INFO"))
        .await
    else {
        return;
    };
    let state = field(&info, "cluster_state").unwrap_or("unknown");
    f.cluster = Some(format!(
        "{state}, {} primaries, {} of 16384 slots served",
        field(&info, "cluster_size").unwrap_or("?"),
        field(&info, "cluster_slots_ok").unwrap_or("?")
    ));
    if state != "ok" {
        f.warnings.push(format!(
            "the cluster's state is {state}: commands for some or all slots are refused"
        ));
    }
}

async fn server_facts(conn: &mut SharedConnection, f: &mut Findings) {
    if let Some(info) = info(conn, "server").await {
        f.version = field(&info, "redis_version").map(str::to_owned);
        f.mode = field(&info, "redis_mode").map(str::to_owned);
    }
    if let Ok(redis::Value::Array(role)) = conn.query::<redis::Value>(&redis::cmd("ROLE")).await {
        f.role = role
            .first()
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
    }
    if let Some(info) = info(conn, "memory").await {
        f.used_memory = field(&info, "used_memory_human").map(str::to_owned);
        f.maxmemory = field(&info, "maxmemory_human").map(str::to_owned);
        f.maxmemory_policy = field(&info, "maxmemory_policy").map(str::to_owned);
    }
    if let Some(policy) = f.maxmemory_policy.as_deref()
        && policy.starts_with("allkeys-")
    {
        f.warnings.push(format!(
            "maxmemory-policy {policy} may evict the replay markers that keep a journal's \
             batches from applying twice: prefer noeviction or a volatile-* policy"
        ));
    }
    let expected = if f.cluster_configured {
        "cluster"
    } else {
        "standalone"
    };
    if let Some(mode) = f.mode.as_deref()
        && mode != expected
    {
        f.warnings.push(format!(
            "the server runs in {mode} mode but the configuration expects {expected}: set \
             mode = \"{}\" (REDIS_MODE) and list the nodes",
            if mode == "cluster" {
                "cluster"
            } else {
                "standalone"
            }
        ));
    }
    if f.role.as_deref() == Some("slave") {
        f.warnings
            .push("the server is a replica: writes will fail with READONLY".to_owned());
    }
}

/// Tries each command the library needs in a way that changes nothing: a refusal is `NOPERM`,
/// anything else (a result, or an error about the arguments) means it is allowed.
async fn permissions(conn: &mut SharedConnection, f: &mut Findings) {
    let key = "resilient-redis:check:absent";
    let checks: [(&'static str, &'static str, redis::Cmd); 5] = [
        ("GET", "reads", {
            let mut c = redis::cmd("GET");
            c.arg(key);
            c
        }),
        (
            "EVAL",
            "loading the replay script (the first replay of a connection)",
            {
                let mut c = redis::cmd("EVAL");
                c.arg("return 1").arg(0);
                c
            },
        ),
        (
            "EVALSHA",
            "replaying journaled writes (the replay script by its hash)",
            {
                // A hash no script has: NOSCRIPT when allowed, NOPERM when not.
                let mut c = redis::cmd("EVALSHA");
                c.arg("0".repeat(40)).arg(0);
                c
            },
        ),
        (
            "CLIENT INFO",
            "identifying a connection so that it can be fenced",
            {
                let mut c = redis::cmd("CLIENT");
                c.arg("INFO");
                c
            },
        ),
        (
            "CLIENT KILL",
            "fencing a connection whose request timed out (a late write cannot land)",
            {
                let mut c = redis::cmd("CLIENT");
                c.arg("KILL").arg("ID").arg(u64::MAX);
                c
            },
        ),
    ];
    for (command, used_for, cmd) in checks {
        let result = conn.query::<redis::Value>(&cmd).await;
        let (allowed, error) = match result {
            Ok(_) => (true, None),
            Err(e) if is_noperm(&e) => (false, Some(e.to_string())),
            // "No such client", say: the command ran.
            Err(PoolError::Command { .. }) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        };
        f.permissions.push(Permission {
            command,
            used_for,
            allowed,
            error,
        });
    }
}

fn print_words(f: &Findings) {
    if f.failure == Some("config") {
        println!(
            "configuration  INVALID: {}",
            f.error.as_deref().unwrap_or("")
        );
        return;
    }
    println!("configuration  valid");
    println!("server         {}", f.server);
    println!(
        "tls            {}",
        if f.tls { "yes (rediss://)" } else { "no" }
    );
    println!(
        "credentials    {}",
        if f.credentials_sent { "sent" } else { "none" }
    );
    if let (Some(name), None) = (f.failure, &f.latency_ms) {
        println!(
            "connection     FAILED ({name}): {}",
            f.error.as_deref().unwrap_or("")
        );
        return;
    }
    if let Some(l) = &f.latency_ms {
        println!(
            "ping           {:.2} ms median, {:.2}-{:.2} ms over {} PINGs on one connection",
            l.median, l.min, l.max, l.samples
        );
    }
    let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".to_owned());
    println!("version        {}", or_unknown(&f.version));
    println!("mode           {}", or_unknown(&f.mode));
    println!("role           {}", or_unknown(&f.role));
    if let Some(cluster) = &f.cluster {
        println!("cluster        {cluster}");
    }
    println!(
        "memory         {} used, maxmemory {} ({})",
        or_unknown(&f.used_memory),
        or_unknown(&f.maxmemory),
        or_unknown(&f.maxmemory_policy)
    );
    for p in &f.permissions {
        println!(
            "permission     {:<12} {}  ({})",
            p.command,
            if p.allowed { "allowed" } else { "DENIED" },
            p.used_for
        );
    }
    for w in &f.warnings {
        println!("warning        {w}");
    }
    if let Some(name) = f.failure {
        println!(
            "result         FAILED ({name}): {}",
            f.error.as_deref().unwrap_or("")
        );
    }
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}
