//! `resilient-redis config`: the effective configuration and each value's origin.

use std::time::Duration;

use resilient_redis_config::{ConfigLoader, Origin, REDACTED, RedisConfig, units};

pub(crate) fn run(toml: bool) -> bool {
    let loaded = match ConfigLoader::from_process_env().load_with_origins() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return false;
        }
    };
    if toml {
        return match starter_toml(&loaded.config) {
            Ok(text) => {
                print!("{text}");
                true
            }
            Err(e) => {
                eprintln!("cannot write the configuration: {e}");
                false
            }
        };
    }
    // Serialize redacts secrets; flatten to dotted paths.
    let value = match serde_json::to_value(&loaded.config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cannot show the configuration: {e}");
            return false;
        }
    };
    let mut rows = Vec::new();
    flatten(&value, "", &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, shown) in rows {
        let origin = match loaded.origin(&key) {
            Origin::Default => "default".to_owned(),
            other => other.to_string(),
        };
        println!("{key:<width$}  {shown:<28}  {origin}");
    }
    println!("\n(durations in milliseconds; secrets shown as ***)");
    true
}

fn flatten(value: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, &path, out);
            }
        }
        serde_json::Value::Null => out.push((prefix.to_owned(), "(none)".to_owned())),
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

/// `resilient-redis config --toml`: the configuration as a commented TOML file to start from.
///
/// Every field appears with its rule and its environment variables; fields that are not set
/// (a password, a journal path) appear commented out. A password is never written: set it with
/// `REDIS_PASSWORD` or `password_file`.
pub(crate) fn starter_toml(config: &RedisConfig) -> Result<String, String> {
    let value = serde_json::to_value(config).map_err(|e| e.to_string())?;
    let mut out = String::from(
        "# resilient-redis configuration. Load it with REDIS_CONFIG_FILE=<this file>; REDIS_*\n\
         # environment variables override it. Durations: milliseconds or \"250ms\", \"5s\", \"1m 30s\".\n\
         # Sizes: bytes or \"64MiB\". Every field is optional: a missing one keeps its default.\n",
    );
    let mut section = "";
    for field in FIELDS {
        let (sec, name) = field.path.split_once('.').unwrap_or(("", field.path));
        if sec != section {
            section = sec;
            out.push_str(&format!("\n[{sec}]\n"));
        }
        let shown = match sec {
            "" => &value[name],
            s => &value[s][name],
        };
        out.push('\n');
        for line in wrap(
            &format!("{} (env {})", field.help, field.env.join(", ")),
            96,
        ) {
            out.push_str(&format!("# {line}\n"));
        }
        let text = match (field.kind, shown) {
            (_, serde_json::Value::Null) => {
                out.push_str(&format!("# {name} = {}\n", example(field.path)));
                continue;
            }
            _ if field.path == "password" => {
                out.push_str(&format!(
                    "# {name} = \"...\"  (better: REDIS_PASSWORD or password_file)\n"
                ));
                continue;
            }
            (Kind::Duration, serde_json::Value::Number(ms)) => format!(
                "\"{}\"",
                units::format_duration(Duration::from_millis(ms.as_u64().unwrap_or(0)))
            ),
            (Kind::Bytes, serde_json::Value::Number(n)) => {
                format!("\"{}\"", bytes(n.as_u64().unwrap_or(0)))
            }
            _ if field.path == "url" && config.url.redacted().contains(REDACTED) => {
                out.push_str(
                    "# The URL's password is not written: set REDIS_PASSWORD or password_file.\n",
                );
                serde_json::Value::String(
                    config.url.redacted().replace(&format!(":{REDACTED}@"), "@"),
                )
                .to_string()
            }
            (_, other) => other.to_string(),
        };
        out.push_str(&format!("{name} = {text}\n"));
    }
    Ok(out)
}

/// What a field that is not set could hold.
fn example(path: &str) -> &'static str {
    match path {
        "username" => "\"app\"",
        "master_name" => "\"mymaster\"",
        "password_file" => "\"/run/secrets/redis\"",
        "fallback.journal_path" => "\"/var/lib/app/redis.journal\"",
        "fallback.journal_key_file" => "\"/run/secrets/redis-journal.key\"",
        "tls.ca_file" => "\"/etc/ssl/redis/ca.crt\"",
        "tls.cert_file" => "\"/etc/ssl/redis/client.crt\"",
        "tls.key_file" => "\"/etc/ssl/redis/client.key\"",
        "tls.server_name" => "\"redis.internal\"",
        _ => "\"...\"",
    }
}

/// Bytes as the largest binary unit that divides them (`64MiB`), else plain.
fn bytes(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

/// Words of `text` in lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[derive(Clone, Copy)]
enum Kind {
    Duration,
    Bytes,
    Plain,
}

/// One field of the configuration: its path, kind, variables and rule (as
/// docs/configuration.md states them; a test keeps the two the same).
struct Field {
    path: &'static str,
    kind: Kind,
    env: &'static [&'static str],
    help: &'static str,
}

const FIELDS: &[Field] = &[
    Field {
        path: "url",
        kind: Kind::Plain,
        env: &["REDIS_URL"],
        help: "scheme `redis`, `rediss` (TLS), `unix` or `redis+unix`; a host for TCP, a socket path for Unix; a numeric database",
    },
    Field {
        path: "mode",
        kind: Kind::Plain,
        env: &["REDIS_MODE"],
        help: "`\"standalone\"` (one Redis at `url`), `\"sentinel\"` (the primary Redis Sentinel names, asked at every new connection, so a failover is followed) or `\"cluster\"` (a Redis Cluster found from `nodes`)",
    },
    Field {
        path: "sentinels",
        kind: Kind::Plain,
        env: &["REDIS_SENTINELS"],
        help: "with `mode = \"sentinel\"`: the sentinels' URLs (a list in TOML, comma-separated in the variable); required then, refused otherwise",
    },
    Field {
        path: "master_name",
        kind: Kind::Plain,
        env: &["REDIS_MASTER_NAME"],
        help: "with `mode = \"sentinel\"`: the name the sentinels monitor the primary by; required then, refused otherwise",
    },
    Field {
        path: "nodes",
        kind: Kind::Plain,
        env: &["REDIS_NODES"],
        help: "with `mode = \"cluster\"`: some of the cluster's nodes (a list in TOML, comma-separated in the variable), database 0, the same scheme as `url`; required then, refused otherwise",
    },
    Field {
        path: "read_from_replicas",
        kind: Kind::Plain,
        env: &["REDIS_READ_FROM_REPLICAS"],
        help: "with `mode = \"cluster\"`: read-only commands may go to replicas (a read may lag a write); refused in other modes",
    },
    Field {
        path: "username",
        kind: Kind::Plain,
        env: &["REDIS_USERNAME"],
        help: "ACL user; overrides the URL's",
    },
    Field {
        path: "password",
        kind: Kind::Plain,
        env: &["REDIS_PASSWORD"],
        help: "overrides the URL's; not together with `password_file`",
    },
    Field {
        path: "password_file",
        kind: Kind::Plain,
        env: &["REDIS_PASSWORD_FILE"],
        help: "a readable, non-empty file (a mounted secret); one trailing newline is trimmed",
    },
    Field {
        path: "connect_timeout",
        kind: Kind::Duration,
        env: &["REDIS_CONNECT_TIMEOUT"],
        help: "1 s ..= 60 s",
    },
    Field {
        path: "socket_timeout",
        kind: Kind::Duration,
        env: &["REDIS_SOCKET_TIMEOUT"],
        help: "> 0; the per-command reply deadline",
    },
    Field {
        path: "retry_delay",
        kind: Kind::Duration,
        env: &["REDIS_RETRY_DELAY"],
        help: "> 0; first backoff, grows exponentially with jitter",
    },
    Field {
        path: "max_retries",
        kind: Kind::Plain,
        env: &["REDIS_MAX_RETRIES"],
        help: "0 ..= 100; retries of idempotent commands",
    },
    Field {
        path: "pool.min_size",
        kind: Kind::Plain,
        env: &["REDIS_POOL_MIN_SIZE", "REDIS_POOL__MIN_SIZE"],
        help: "≤ `max_size`",
    },
    Field {
        path: "pool.max_size",
        kind: Kind::Plain,
        env: &["REDIS_POOL_MAX_SIZE", "REDIS_POOL__MAX_SIZE"],
        help: "≥ 1",
    },
    Field {
        path: "pool.acquire_timeout",
        kind: Kind::Duration,
        env: &["REDIS_POOL__ACQUIRE_TIMEOUT"],
        help: "> 0",
    },
    Field {
        path: "pool.create_retry_interval",
        kind: Kind::Duration,
        env: &["REDIS_POOL__CREATE_RETRY_INTERVAL"],
        help: "> 0",
    },
    Field {
        path: "pool.create_retry_count",
        kind: Kind::Plain,
        env: &["REDIS_POOL__CREATE_RETRY_COUNT"],
        help: "≥ 1",
    },
    Field {
        path: "pool.idle_timeout",
        kind: Kind::Duration,
        env: &["REDIS_POOL__IDLE_TIMEOUT"],
        help: "> 0",
    },
    Field {
        path: "pool.reap_interval",
        kind: Kind::Duration,
        env: &["REDIS_POOL__REAP_INTERVAL"],
        help: "> 0",
    },
    Field {
        path: "pool.max_lifetime",
        kind: Kind::Duration,
        env: &["REDIS_POOL__MAX_LIFETIME"],
        help: "> 0; older shared connections are replaced, older exclusive ones closed on return",
    },
    Field {
        path: "pool.shared_connections",
        kind: Kind::Plain,
        env: &["REDIS_POOL__SHARED_CONNECTIONS"],
        help: "1 ..= `max_size`; multiplexed connections shared by all callers (count towards `max_size`)",
    },
    Field {
        path: "pool.validation_interval",
        kind: Kind::Duration,
        env: &["REDIS_POOL__VALIDATION_INTERVAL"],
        help: "> 0; how often the shared connections are PINGed and a broken one replaced",
    },
    Field {
        path: "pool.validate_after_idle",
        kind: Kind::Duration,
        env: &["REDIS_POOL__VALIDATE_AFTER_IDLE"],
        help: "> 0; an exclusive connection idle longer is PINGed on checkout",
    },
    Field {
        path: "health.check_interval",
        kind: Kind::Duration,
        env: &[
            "REDIS_HEALTH_CHECK_INTERVAL",
            "REDIS_HEALTH__CHECK_INTERVAL",
        ],
        help: "> 0",
    },
    Field {
        path: "health.timeout",
        kind: Kind::Duration,
        env: &["REDIS_HEALTH__TIMEOUT"],
        help: "> 0 and ≤ `check_interval`",
    },
    Field {
        path: "health.failure_threshold",
        kind: Kind::Plain,
        env: &["REDIS_HEALTH__FAILURE_THRESHOLD"],
        help: "≥ 1 consecutive failed probes → unhealthy",
    },
    Field {
        path: "health.success_threshold",
        kind: Kind::Plain,
        env: &["REDIS_HEALTH__SUCCESS_THRESHOLD"],
        help: "≥ 1 consecutive good probes → healthy",
    },
    Field {
        path: "health.window",
        kind: Kind::Plain,
        env: &["REDIS_HEALTH__WINDOW"],
        help: "≥ 1 probes the rolling success and failure rates cover",
    },
    Field {
        path: "circuit_breaker.failure_threshold",
        kind: Kind::Plain,
        env: &[
            "REDIS_CIRCUIT_BREAKER_THRESHOLD",
            "REDIS_CIRCUIT_BREAKER__FAILURE_THRESHOLD",
        ],
        help: "≥ 1 consecutive failures → open",
    },
    Field {
        path: "circuit_breaker.failure_rate_threshold",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__FAILURE_RATE_THRESHOLD"],
        help: "percent, (0, 100]",
    },
    Field {
        path: "circuit_breaker.slow_call_rate_threshold",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__SLOW_CALL_RATE_THRESHOLD"],
        help: "percent, (0, 100]",
    },
    Field {
        path: "circuit_breaker.slow_call_duration",
        kind: Kind::Duration,
        env: &["REDIS_CIRCUIT_BREAKER__SLOW_CALL_DURATION"],
        help: "> 0; calls at least this long are slow",
    },
    Field {
        path: "circuit_breaker.sliding_window_type",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__SLIDING_WINDOW_TYPE"],
        help: "`count` or `time`",
    },
    Field {
        path: "circuit_breaker.sliding_window_size",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__SLIDING_WINDOW_SIZE"],
        help: "1 ..= 1 000 000 calls (count window)",
    },
    Field {
        path: "circuit_breaker.monitoring_period",
        kind: Kind::Duration,
        env: &["REDIS_CIRCUIT_BREAKER__MONITORING_PERIOD"],
        help: "> 0; the time window's length (it advances in tenths)",
    },
    Field {
        path: "circuit_breaker.minimum_calls",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__MINIMUM_CALLS"],
        help: "≥ 1",
    },
    Field {
        path: "circuit_breaker.reset_timeout",
        kind: Kind::Duration,
        env: &["REDIS_CIRCUIT_BREAKER__RESET_TIMEOUT"],
        help: "> 0; time open before trial calls",
    },
    Field {
        path: "circuit_breaker.reset_timeout_multiplier",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__RESET_TIMEOUT_MULTIPLIER"],
        help: "≥ 1; growth per trip in a row (1 = constant)",
    },
    Field {
        path: "circuit_breaker.max_reset_timeout",
        kind: Kind::Duration,
        env: &["REDIS_CIRCUIT_BREAKER__MAX_RESET_TIMEOUT"],
        help: "≥ `reset_timeout`; cap on the grown open time",
    },
    Field {
        path: "circuit_breaker.reset_timeout_jitter",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__RESET_TIMEOUT_JITTER"],
        help: "[0, 1); 0.2 spreads the open time by ±20 %",
    },
    Field {
        path: "circuit_breaker.half_open_permitted_calls",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__HALF_OPEN_PERMITTED_CALLS"],
        help: "1 ..= 65 535 trial calls",
    },
    Field {
        path: "circuit_breaker.automatic_transition",
        kind: Kind::Plain,
        env: &["REDIS_CIRCUIT_BREAKER__AUTOMATIC_TRANSITION"],
        help: "a timer half-opens at `reset_timeout` (needs a Tokio runtime; without one, the next call does)",
    },
    Field {
        path: "circuit_breaker.max_wait_in_half_open",
        kind: Kind::Duration,
        env: &["REDIS_CIRCUIT_BREAKER__MAX_WAIT_IN_HALF_OPEN"],
        help: "0 = wait for the trial calls; otherwise open again after this long in half-open",
    },
    Field {
        path: "fallback.enabled",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK_ENABLED", "REDIS_FALLBACK__ENABLED"],
        help: "",
    },
    Field {
        path: "fallback.max_memory_size",
        kind: Kind::Bytes,
        env: &["REDIS_FALLBACK__MAX_MEMORY_SIZE"],
        help: "> 0 when `enabled`",
    },
    Field {
        path: "fallback.sync_interval",
        kind: Kind::Duration,
        env: &["REDIS_FALLBACK__SYNC_INTERVAL"],
        help: "> 0",
    },
    Field {
        path: "fallback.persist_on_shutdown",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK__PERSIST_ON_SHUTDOWN"],
        help: "needs `journal_path`; on close the journal file is compacted to the pending writes and fsynced",
    },
    Field {
        path: "fallback.shadow",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK__SHADOW"],
        help: "keep evictable copies of values seen in normal operation (at most half of `max_memory_size`, and none are kept while pending writes, dead letters and replayed values hold more than half) so an outage can answer reads of them; costs throughput (docs/performance.md)",
    },
    Field {
        path: "fallback.journal_path",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK__JOURNAL_PATH"],
        help: "a file every journaled write is appended to before it is acknowledged; restored on start. One process per file: the store locks `<journal_path>.lock` and a second one fails to start with `JournalInUse`. Files are created `0600`; the journal is replaced atomically through `<journal_path>.rewrite`",
    },
    Field {
        path: "fallback.journal_key_file",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK__JOURNAL_KEY_FILE"],
        help: "needs `journal_path`; a readable file holding a 256-bit key (64 hexadecimal digits: `openssl rand -hex 32`, or 32 raw bytes); every journal record is sealed with it (ChaCha20-Poly1305), and a journal written with another key, or sealed when no key is set, is refused at start, unread and unchanged. A plain journal is sealed when a store opens it with a key",
    },
    Field {
        path: "fallback.journal_fsync",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK__JOURNAL_FSYNC"],
        help: "fsync each append (survives power loss, not only a process crash)",
    },
    Field {
        path: "fallback.replay_batch_size",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK__REPLAY_BATCH_SIZE"],
        help: "1 ..= 10 000 journal entries per atomic replay batch (a batch also stays under 16 MiB of arguments)",
    },
    Field {
        path: "fallback.unknown_keys",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK__UNKNOWN_KEYS"],
        help: "`\"error\"` or `\"miss\"`: what a read (or an increment) of a key memory knows nothing about answers while Redis is unreachable. `\"error\"` fails it with `FallbackError::Unknown` (`fallback_error`), so a session never looks logged out and an ID generator never restarts from 0; `\"miss\"` answers as a cache (missing; a counter counts from 0, its delta still replayed exactly). `get_with_source` / `incr_by_with_source` always answer and say who did",
    },
    Field {
        path: "fallback.replay_to_other_server",
        kind: Kind::Plain,
        env: &["REDIS_FALLBACK__REPLAY_TO_OTHER_SERVER"],
        help: "the journal file records the server it was written for (`host:port/db`, never a password); with pending writes for another server than `url` names, the store refuses to start unless this is `true`",
    },
    Field {
        path: "metrics.enabled",
        kind: Kind::Plain,
        env: &["REDIS_METRICS_ENABLED", "REDIS_METRICS__ENABLED"],
        help: "",
    },
    Field {
        path: "metrics.collection_interval",
        kind: Kind::Duration,
        env: &["REDIS_METRICS__COLLECTION_INTERVAL"],
        help: "> 0",
    },
    Field {
        path: "metrics.retention_period",
        kind: Kind::Duration,
        env: &["REDIS_METRICS__RETENTION_PERIOD"],
        help: "≥ `collection_interval`",
    },
    Field {
        path: "metrics.reporting_threshold",
        kind: Kind::Duration,
        env: &["REDIS_METRICS__REPORTING_THRESHOLD"],
        help: "> 0; slower operations count as slow",
    },
    Field {
        path: "tls.ca_file",
        kind: Kind::Plain,
        env: &["REDIS_TLS__CA_FILE"],
        help: "a readable PEM file of CA certificates, trusted instead of the system's roots; only with a `rediss://` URL",
    },
    Field {
        path: "tls.cert_file",
        kind: Kind::Plain,
        env: &["REDIS_TLS__CERT_FILE"],
        help: "a readable PEM client certificate (chain) for mutual TLS; needs `key_file`; only with a `rediss://` URL",
    },
    Field {
        path: "tls.key_file",
        kind: Kind::Plain,
        env: &["REDIS_TLS__KEY_FILE"],
        help: "the readable PEM private key of `cert_file`",
    },
    Field {
        path: "tls.server_name",
        kind: Kind::Plain,
        env: &["REDIS_TLS__SERVER_NAME"],
        help: "the name the server's certificate must carry (and SNI) when it is not the URL's host, which is still the address dialled; a DNS name; only with a `rediss://` URL in standalone mode",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The starter file loads back to the configuration it was written from, names every
    /// field the configuration has, and agrees with docs/configuration.md on each field's
    /// variables.
    #[test]
    fn the_starter_file_loads_back_and_names_every_field() {
        let mut config = RedisConfig::default();
        config.pool.max_size = 40;
        config.fallback.max_memory_size = 3 << 20;
        config.circuit_breaker.reset_timeout = Duration::from_millis(1500);
        let text = starter_toml(&config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis.toml");
        std::fs::write(&path, &text).unwrap();
        let loaded = resilient_redis_config::ConfigLoader::default()
            .file(&path)
            .load()
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(loaded, config, "{text}");
        assert!(text.contains("max_memory_size = \"3MiB\""), "{text}");
        assert!(text.contains("reset_timeout = \"1s 500ms\""), "{text}");

        let json = serde_json::to_value(RedisConfig::default()).unwrap();
        let mut paths = Vec::new();
        for (k, v) in json.as_object().unwrap() {
            match v.as_object() {
                Some(section) => paths.extend(section.keys().map(|f| format!("{k}.{f}"))),
                None => paths.push(k.clone()),
            }
        }
        let documented: Vec<&str> = FIELDS.iter().map(|f| f.path).collect();
        for p in &paths {
            assert!(documented.contains(&p.as_str()), "{p} has no entry");
        }
        assert_eq!(paths.len(), FIELDS.len());

        let docs = include_str!("../../../docs/configuration.md");
        for f in FIELDS {
            let name = f.path.rsplit('.').next().unwrap();
            let row = docs
                .lines()
                .find(|l| {
                    l.starts_with(&format!("| `{name}` |")) && f.env.iter().all(|e| l.contains(e))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "docs/configuration.md has no row for {} with {:?}",
                        f.path, f.env
                    )
                });
            assert!(row.contains(f.help), "{}: docs say `{row}`", f.path);
        }
    }

    #[test]
    fn a_password_is_never_written() {
        let mut config = RedisConfig::default();
        config.password = Some(resilient_redis_config::Secret::new("hunter2"));
        config.url = resilient_redis_config::RedisUrl::new("redis://app:hunter2@cache:6380/1");
        let text = starter_toml(&config).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains(REDACTED),
            "{text}"
        );
        assert!(text.contains("# password = "));
        assert!(
            text.contains("url = \"redis://app@cache:6380/1\""),
            "{text}"
        );
    }
}
