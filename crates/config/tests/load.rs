//! Loading from defaults, a TOML file and the environment, and the errors that names.
#![allow(
    clippy::result_large_err,
    reason = "figment::Jail closures return figment::Error, which is large"
)]

use std::time::Duration;

use figment::Jail;
use resilient_redis_config::{ConfigError, ConfigLoader, Origin, RedisConfig};

fn load_env(vars: &[(&str, &str)]) -> Result<RedisConfig, ConfigError> {
    ConfigLoader::default()
        .with_env(vars.iter().copied())
        .load()
}

fn problem_summary(err: &ConfigError) -> Vec<(String, String)> {
    err.problems()
        .iter()
        .map(|p| (p.field.clone(), p.origin.to_string()))
        .collect()
}

#[test]
fn process_env_problems_are_listed_together_with_their_variables() {
    Jail::expect_with(|jail| {
        jail.set_env("REDIS_URL", "http://x");
        jail.set_env("REDIS_POOL_MIN_SIZE", "10");
        jail.set_env("REDIS_POOL_MAX_SIZE", "5");
        jail.set_env("REDIS_CONNECT_TIMEOUT", "5");
        let err = RedisConfig::load().expect_err("three problems");
        assert!(matches!(err, ConfigError::Invalid(_)));
        assert_eq!(
            problem_summary(&err),
            [
                ("url".to_owned(), "env REDIS_URL".to_owned()),
                (
                    "connect_timeout".to_owned(),
                    "env REDIS_CONNECT_TIMEOUT".to_owned()
                ),
                (
                    "pool.min_size".to_owned(),
                    "env REDIS_POOL_MIN_SIZE".to_owned()
                ),
            ]
        );
        let text = err.to_string();
        assert!(text.starts_with("3 configuration problems"), "{text}");
        assert!(
            text.contains("url (env REDIS_URL): `http://x` has scheme `http`"),
            "{text}"
        );
        assert!(text.contains("`5` is out of range"), "{text}");
        assert!(text.contains("must not exceed pool.max_size (5)"), "{text}");
        Ok(())
    });
}

#[test]
fn a_password_in_the_url_never_shows() {
    Jail::expect_with(|jail| {
        jail.set_env("REDIS_URL", "redis://u:hunter2@h:6379");
        let config = RedisConfig::load().expect("valid");
        assert_eq!(config.url.expose(), "redis://u:hunter2@h:6379");
        for shown in [
            format!("{config:?}"),
            config.to_string(),
            format!("{:?}", config.url),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("u:***@h"), "{shown}");
        }

        // ...nor in an error about the URL or any other field.
        jail.set_env("REDIS_URL", "http://u:hunter2@h:6379");
        jail.set_env("REDIS_POOL_MAX_SIZE", "ten");
        let err = RedisConfig::load().expect_err("invalid");
        for shown in [format!("{err:?}"), err.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert_eq!(err.problems().len(), 2, "{err}");
        Ok(())
    });
}

#[test]
fn a_value_that_does_not_parse_names_its_variable_and_value() {
    let err = load_env(&[("REDIS_POOL_MAX_SIZE", "ten")]).unwrap_err();
    let [problem] = err.problems() else {
        panic!("one problem: {err}")
    };
    assert_eq!(problem.field, "pool.max_size");
    assert_eq!(
        problem.origin,
        Origin::Env {
            var: "REDIS_POOL_MAX_SIZE".into()
        }
    );
    assert_eq!(problem.value.as_deref(), Some("ten"));
    assert!(problem.message.contains("wrong type"), "{problem}");
}

#[test]
fn parse_and_rule_problems_are_reported_together() {
    let err = load_env(&[
        ("REDIS_POOL_MAX_SIZE", "ten"),
        ("REDIS_SOCKET_TIMEOUT", "soon"),
        ("REDIS_CONNECT_TIMEOUT", "500"),
    ])
    .unwrap_err();
    let mut fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["connect_timeout", "pool.max_size", "socket_timeout"],
        "{err}"
    );
}

#[test]
fn seed_variables_set_their_fields() {
    let config = load_env(&[
        ("REDIS_URL", "rediss://cache:6380/1"),
        ("REDIS_CONNECT_TIMEOUT", "2000"),
        ("REDIS_SOCKET_TIMEOUT", "250ms"),
        ("REDIS_MAX_RETRIES", "7"),
        ("REDIS_POOL_MIN_SIZE", "3"),
        ("REDIS_POOL_MAX_SIZE", "9"),
        ("REDIS_HEALTH_CHECK_INTERVAL", "10s"),
        ("REDIS_CIRCUIT_BREAKER_THRESHOLD", "11"),
        ("REDIS_FALLBACK_ENABLED", "false"),
        ("REDIS_METRICS_ENABLED", "false"),
    ])
    .unwrap();
    assert_eq!(config.url.expose(), "rediss://cache:6380/1");
    assert_eq!(config.connect_timeout, Duration::from_secs(2));
    assert_eq!(config.socket_timeout, Duration::from_millis(250));
    assert_eq!(config.max_retries, 7);
    assert_eq!((config.pool.min_size, config.pool.max_size), (3, 9));
    assert_eq!(config.health.check_interval, Duration::from_secs(10));
    assert_eq!(config.circuit_breaker.failure_threshold, 11);
    assert!(!config.fallback.enabled);
    assert!(!config.metrics.enabled);
}

#[test]
fn every_nested_field_is_reachable_by_section_and_field() {
    let config = load_env(&[
        ("REDIS_POOL__ACQUIRE_TIMEOUT", "750"),
        ("REDIS_POOL__IDLE_TIMEOUT", "1m"),
        ("REDIS_HEALTH__SUCCESS_THRESHOLD", "4"),
        ("REDIS_CIRCUIT_BREAKER__RESET_TIMEOUT", "3s"),
        ("REDIS_FALLBACK__MAX_MEMORY_SIZE", "1MiB"),
        ("REDIS_FALLBACK__PERSIST_ON_SHUTDOWN", "true"),
        ("REDIS_FALLBACK__JOURNAL_PATH", "/var/lib/app/redis.journal"),
        ("REDIS_METRICS__RETENTION_PERIOD", "120000"),
        ("REDIS_RETRY_DELAY", "50ms"),
    ])
    .unwrap();
    assert_eq!(config.pool.acquire_timeout, Duration::from_millis(750));
    assert_eq!(config.pool.idle_timeout, Duration::from_secs(60));
    assert_eq!(config.health.success_threshold, 4);
    assert_eq!(config.circuit_breaker.reset_timeout, Duration::from_secs(3));
    assert_eq!(config.fallback.max_memory_size, 1024 * 1024);
    assert!(config.fallback.persist_on_shutdown);
    assert_eq!(
        config.fallback.journal_path.as_deref(),
        Some(std::path::Path::new("/var/lib/app/redis.journal"))
    );
    assert_eq!(config.metrics.retention_period, Duration::from_secs(120));
    assert_eq!(config.retry_delay, Duration::from_millis(50));
}

#[test]
fn section_form_wins_over_the_seed_alias() {
    let config = load_env(&[("REDIS_POOL_MAX_SIZE", "5"), ("REDIS_POOL__MAX_SIZE", "6")]).unwrap();
    assert_eq!(config.pool.max_size, 6);
}

#[test]
fn unknown_section_fields_are_errors_but_foreign_variables_are_ignored() {
    let err = load_env(&[("REDIS_POOL__MAX_SIZ", "5"), ("REDIS_VERSION", "7.2")]).unwrap_err();
    let [problem] = err.problems() else {
        panic!("one problem: {err}")
    };
    assert_eq!(
        problem.origin,
        Origin::Env {
            var: "REDIS_POOL__MAX_SIZ".into()
        }
    );
    assert!(problem.message.contains("not a known setting"), "{problem}");

    assert!(load_env(&[("REDIS_VERSION", "7.2"), ("REDIS_DOWNLOAD_URL", "x")]).is_ok());
}

#[test]
fn file_is_read_and_environment_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis.toml");
    std::fs::write(
        &path,
        "url = \"redis://file-host:6379\"\nmax_retries = 1\n\n[pool]\nmax_size = 8\nmin_size = 1\n\n\
         [health]\ncheck_interval = \"250ms\"\ntimeout = 100\n",
    )
    .unwrap();
    let loaded = ConfigLoader::default()
        .with_env([("REDIS_POOL_MAX_SIZE", "12")])
        .file(&path)
        .load_with_origins()
        .unwrap();
    let config = &loaded.config;
    assert_eq!(config.url.expose(), "redis://file-host:6379");
    assert_eq!(config.max_retries, 1);
    assert_eq!(config.pool.max_size, 12);
    assert_eq!(config.pool.min_size, 1);
    assert_eq!(config.health.check_interval, Duration::from_millis(250));
    assert_eq!(config.health.timeout, Duration::from_millis(100));
    assert_eq!(
        loaded.origin("pool.max_size"),
        Origin::Env {
            var: "REDIS_POOL_MAX_SIZE".into()
        }
    );
    assert_eq!(
        loaded.origin("pool.min_size"),
        Origin::File {
            path,
            key: "pool.min_size".into()
        }
    );
    assert_eq!(loaded.origin("socket_timeout"), Origin::Default);
}

#[test]
fn config_file_variable_names_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file("app.toml", "[pool]\nmax_size = 0\nmin_size = 0\n")?;
        jail.set_env("REDIS_CONFIG_FILE", "app.toml");
        let err = RedisConfig::load().expect_err("max_size 0");
        let [problem] = err.problems() else {
            panic!("one problem: {err}")
        };
        assert_eq!(problem.field, "pool.max_size");
        assert_eq!(
            problem.to_string(),
            "pool.max_size (key `pool.max_size` in app.toml): `0` must be at least 1"
        );
        Ok(())
    });
}

#[test]
fn unknown_file_keys_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis.toml");
    std::fs::write(&path, "[pool]\nmax_sise = 8\n").unwrap();
    let err = ConfigLoader::default().file(&path).load().unwrap_err();
    let [problem] = err.problems() else {
        panic!("one problem: {err}")
    };
    assert_eq!(problem.field, "pool.max_sise");
    assert!(matches!(&problem.origin, Origin::File { key, .. } if key == "pool.max_sise"));
}

#[test]
fn a_missing_or_malformed_file_is_an_error_that_keeps_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let err = ConfigLoader::default().file(&missing).load().unwrap_err();
    assert!(matches!(err, ConfigError::ReadFile { .. }), "{err}");
    assert!(err.to_string().contains("absent.toml"), "{err}");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "password = \"hunter2\" oops\n").unwrap();
    let err = ConfigLoader::default().file(&broken).load().unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn password_file_is_read_and_its_trailing_newline_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("redis-password");
    std::fs::write(&secret, "hunter2\n").unwrap();
    let config = load_env(&[
        ("REDIS_PASSWORD_FILE", secret.to_str().unwrap()),
        ("REDIS_USERNAME", "app"),
    ])
    .unwrap();
    assert_eq!(
        config.password.as_ref().map(|p| p.expose()),
        Some("hunter2")
    );
    assert_eq!(config.username.as_deref(), Some("app"));
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[test]
fn an_unreadable_password_file_names_its_variable() {
    let err = load_env(&[("REDIS_PASSWORD_FILE", "/nonexistent/redis-password")]).unwrap_err();
    let [problem] = err.problems() else {
        panic!("one problem: {err}")
    };
    assert_eq!(problem.field, "password_file");
    assert_eq!(
        problem.origin,
        Origin::Env {
            var: "REDIS_PASSWORD_FILE".into()
        }
    );
    assert!(problem.message.contains("cannot be read"), "{problem}");
}

#[test]
fn password_and_password_file_together_are_refused_without_showing_the_password() {
    let err =
        load_env(&[("REDIS_PASSWORD", "hunter2"), ("REDIS_PASSWORD_FILE", "/x")]).unwrap_err();
    let [problem] = err.problems() else {
        panic!("one problem: {err}")
    };
    assert_eq!(problem.field, "password");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_numeric_password_stays_text() {
    let config = load_env(&[("REDIS_PASSWORD", "00123"), ("REDIS_USERNAME", "42")]).unwrap();
    assert_eq!(config.password.as_ref().map(|p| p.expose()), Some("00123"));
    assert_eq!(config.username.as_deref(), Some("42"));
}

#[test]
fn sentinel_mode_from_the_environment_with_a_comma_separated_list() {
    let c = load_env(&[
        ("REDIS_MODE", "sentinel"),
        (
            "REDIS_SENTINELS",
            "redis://127.0.0.1:26379, redis://:s3cret@127.0.0.1:26380",
        ),
        ("REDIS_MASTER_NAME", "mymaster"),
    ])
    .unwrap();
    assert_eq!(c.mode, resilient_redis_config::Mode::Sentinel);
    assert_eq!(c.sentinels.len(), 2);
    assert_eq!(c.sentinels[1].expose(), "redis://:s3cret@127.0.0.1:26380");
    assert_eq!(c.master_name.as_deref(), Some("mymaster"));
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug redacts a sentinel's password"
    );
    // Missing its primary's name: the problem names the field.
    let err = load_env(&[
        ("REDIS_MODE", "sentinel"),
        ("REDIS_SENTINELS", "redis://127.0.0.1:26379"),
    ])
    .unwrap_err();
    assert_eq!(
        problem_summary(&err),
        [("master_name".to_owned(), "default".to_owned())]
    );
}
