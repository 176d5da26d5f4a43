//! The alert rules and the Grafana dashboard in `docs/` parse, and every metric and label they
//! name is one the collector emits (as Prometheus renders it).

use std::collections::BTreeSet;
use std::time::Duration;

use resilient_redis_config::{ErrorKind, MetricsConfig};
use resilient_redis_metrics::{
    BreakerGauge, Collector, Event, FallbackGauge, HealthGauge, MetricsCollector, Outcome,
    PoolStatus, PrometheusExporter, Server,
};

/// Every instrument recorded at least once, rendered as Prometheus text.
fn rendered() -> String {
    let prometheus = PrometheusExporter::new().unwrap();
    let c = Collector::builder(&MetricsConfig::default())
        .meter(prometheus.meter())
        .server(Server::new("127.0.0.1", 6379))
        .build();
    c.record_operation("get", Duration::from_millis(2), Outcome::Success);
    c.record_operation("get", Duration::from_millis(2), Outcome::Fallback);
    c.record_operation(
        "set",
        Duration::from_millis(2),
        Outcome::Error(ErrorKind::Timeout),
    );
    c.record_operation("set", Duration::from_millis(2), Outcome::ServerError("OOM"));
    c.record_event(Event::Retried {
        operation: "get",
        retries: 1,
    });
    c.record_event(Event::Ambiguous {
        operation: "incrby",
    });
    let mut pool = PoolStatus::default();
    pool.max_size = 4;
    pool.timeouts = 1;
    c.record_pool(PoolStatus::default(), None);
    c.record_pool(pool, Some(Duration::from_millis(1)));
    c.record_breaker_state(BreakerGauge::new("closed", 0, 0));
    c.record_breaker_state(BreakerGauge::new("open", 1, 1));
    c.record_fallback(
        FallbackGauge::new(true, 3)
            .with_dead_letters(1)
            .with_replayed(2)
            .with_memory(10, 100),
    );
    c.record_health(HealthGauge::new(true, Duration::from_millis(1)));
    prometheus.render()
}

/// Sample names and label names in Prometheus text.
fn emitted(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap();
        metrics.insert(line[..name_end].to_owned());
        if let Some(open) = line.find('{') {
            let close = line.rfind('}').unwrap();
            for pair in line[open + 1..close].split("\",") {
                labels.insert(pair.split('=').next().unwrap().to_owned());
            }
        }
    }
    (metrics, labels)
}

/// Identifiers in a PromQL expression: metric names (ours start with `db_client_`, `redis_`)
/// and the label names matched in selectors or grouped by.
fn referenced(expr: &str) -> (Vec<String>, Vec<String>) {
    let (mut metrics, mut labels) = (Vec::new(), Vec::new());
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut depth_braces = 0;
    let mut in_by = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' {
            // Skip string literals (label values).
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let rest = expr[i..].trim_start();
            if depth_braces > 0 || in_by {
                labels.push(word.to_owned());
            } else if word == "by" || word == "without" {
                in_by = rest.starts_with('(');
            } else if word.starts_with("db_client_") || word.starts_with("redis_") {
                metrics.push(word.to_owned());
            }
            continue;
        }
        match c {
            '{' => depth_braces += 1,
            '}' => depth_braces -= 1,
            ')' if in_by => in_by = false,
            _ => {}
        }
        i += 1;
    }
    (metrics, labels)
}

fn docs(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn check(what: &str, expr: &str, metrics: &BTreeSet<String>, labels: &BTreeSet<String>) {
    let (m, l) = referenced(expr);
    assert!(!m.is_empty(), "{what}: `{expr}` names none of our metrics");
    for name in m {
        assert!(
            metrics.contains(&name),
            "{what}: `{name}` is not emitted; emitted: {metrics:?}"
        );
    }
    for name in l {
        assert!(
            labels.contains(&name) || name == "le",
            "{what}: label `{name}` is not emitted; emitted: {labels:?}"
        );
    }
}

#[test]
fn the_alert_rules_parse_and_name_only_emitted_metrics() {
    let (metrics, labels) = emitted(&rendered());
    let yaml = &yaml_rust2::YamlLoader::load_from_str(&docs("alerts/resilient-redis.rules.yml"))
        .expect("the rule file is YAML")[0];
    let mut alerts = 0;
    for group in yaml["groups"].as_vec().expect("groups") {
        assert!(group["name"].as_str().is_some(), "a group has a name");
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name");
            let expr = rule["expr"].as_str().expect("an expr");
            assert!(
                matches!(rule["labels"]["severity"].as_str(), Some("page" | "ticket")),
                "{name}: severity is page or ticket"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{name}: a summary"
            );
            if let Some(d) = rule["for"].as_str() {
                assert!(
                    d.ends_with('m') || d.ends_with('s') || d.ends_with('h'),
                    "{name}: for {d}"
                );
            }
            check(name, expr, &metrics, &labels);
            alerts += 1;
        }
    }
    assert!(alerts >= 8, "only {alerts} alerts");
}

#[test]
fn the_grafana_dashboard_parses_and_names_only_emitted_metrics() {
    let (metrics, labels) = emitted(&rendered());
    let dashboard: serde_json::Value =
        serde_json::from_str(&docs("grafana/resilient-redis.json")).expect("the dashboard is JSON");
    assert!(dashboard["title"].as_str().is_some());
    let mut targets = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a panel title");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("an expr");
            check(title, expr, &metrics, &labels);
            targets += 1;
        }
    }
    assert!(targets >= 8, "only {targets} queries");
}

#[test]
fn the_checker_catches_a_name_that_is_not_emitted() {
    let (metrics, labels) = emitted(&rendered());
    let (m, l) =
        referenced(r#"sum by (db_operation_name) (rate(redis_nope_total{state="open"}[5m]))"#);
    assert_eq!(m, ["redis_nope_total"]);
    assert_eq!(l, ["db_operation_name", "state"]);
    assert!(!metrics.contains("redis_nope_total"));
    assert!(labels.contains("state") && labels.contains("db_operation_name"));
    let caught = std::panic::catch_unwind(|| check("x", "redis_nope_total", &metrics, &labels));
    assert!(caught.is_err());
}
