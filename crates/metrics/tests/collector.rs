//! Percentiles, the retention window, the report's advice, and the OpenTelemetry instruments.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use resilient_redis_config::{ErrorKind, MetricsConfig};
use resilient_redis_metrics::{
    BreakerGauge, Collector, Event, FallbackGauge, HealthGauge, MetricsCollector, NoopMetrics,
    Outcome, PoolStatus, PrometheusExporter, Server, names, thresholds,
};

/// Pool figures: `in_use` exclusive connections checked out beside the shared ones.
fn pool(
    max_size: u32,
    open: u32,
    idle: u32,
    in_use: u32,
    waiters: u32,
    timeouts: u64,
) -> PoolStatus {
    let mut s = PoolStatus::default();
    s.max_size = max_size;
    s.open = open;
    s.idle = idle;
    s.in_use = in_use;
    s.waiters = waiters;
    s.timeouts = timeouts;
    s
}

fn manual() -> (Collector, Arc<AtomicU64>) {
    let now = Arc::new(AtomicU64::new(0));
    let clock = Arc::clone(&now);
    let mut config = MetricsConfig::default();
    config.retention_period = Duration::from_secs(60);
    config.reporting_threshold = Duration::from_millis(100);
    (
        Collector::with_clock(&config, Arc::new(move || clock.load(Ordering::SeqCst))),
        now,
    )
}

fn exact(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn percentiles_are_within_one_percent_of_exact_on_known_distributions() {
    let uniform: Vec<u64> = (1..=100_000).map(|i| i * 10_000).collect(); // 10 µs .. 1 s
    let mut skewed: Vec<u64> = (0..50_000u64)
        .map(|i| 150_000 + (i * i) % 9_000_000)
        .collect();
    let bimodal: Vec<u64> = (0..20_000u64)
        .map(|i| {
            if i % 10 == 0 {
                40_000_000 + i
            } else {
                200_000 + i
            }
        })
        .collect();
    skewed.sort_unstable();
    for (name, mut samples) in [
        ("uniform", uniform),
        ("skewed", skewed),
        ("bimodal", bimodal),
    ] {
        let (c, _) = manual();
        for s in &samples {
            c.record_operation("get", Duration::from_nanos(*s), Outcome::Success);
        }
        samples.sort_unstable();
        let snap = c.snapshot();
        for (q, got) in [
            (0.50, snap.p50_response_time),
            (0.95, snap.p95_response_time),
            (0.99, snap.p99_response_time),
        ] {
            let want = exact(&samples, q) as f64;
            let err = (got.as_nanos() as f64 - want).abs() / want;
            assert!(
                err <= 0.01,
                "{name} p{}: {got:?} vs {want} ns ({:.3} %)",
                q * 100.0,
                err * 100.0
            );
        }
        assert_eq!(snap.min_response_time, Duration::from_nanos(samples[0]));
        assert_eq!(
            snap.max_response_time,
            Duration::from_nanos(*samples.last().unwrap())
        );
    }
}

#[test]
fn the_window_forgets_samples_older_than_the_retention_period() {
    let (c, now) = manual();
    c.record_operation(
        "get",
        Duration::from_millis(500),
        Outcome::Error(ErrorKind::Timeout),
    );
    now.store(30_000_000_000, Ordering::SeqCst); // 30 s later
    c.record_operation("get", Duration::from_millis(1), Outcome::Success);
    let snap = c.snapshot();
    assert_eq!((snap.total_operations, snap.failed_operations), (2, 1));
    now.store(61_000_000_000, Ordering::SeqCst); // the first sample is now older than 60 s
    let snap = c.snapshot();
    assert_eq!((snap.total_operations, snap.failed_operations), (1, 0));
    assert_eq!(snap.max_response_time, Duration::from_millis(1));
    now.store(200_000_000_000, Ordering::SeqCst);
    assert_eq!(c.snapshot().total_operations, 0);
}

/// The manager passes the instant it read when a call ended, so the collector files the
/// operation by that instant and need not read the clock again: an instant far past the
/// collector's own now is not in the current window.
#[test]
fn an_operation_is_filed_by_the_instant_it_ended() {
    let config = MetricsConfig::default();
    let c = Collector::new(&config);
    let now = std::time::Instant::now();
    c.record_operation_at("get", Duration::from_millis(1), Outcome::Success, now);
    let later = now + config.retention_period * 2 + config.retention_period / 2;
    c.record_operation_at("get", Duration::from_millis(1), Outcome::Success, later);
    assert_eq!(c.snapshot().total_operations, 1);
    // Without an instant, the collector reads its clock: the operation is in the window.
    c.record_operation("get", Duration::from_millis(1), Outcome::Success);
    assert_eq!(c.snapshot().total_operations, 2);
}

/// A test that pauses Tokio's clock and moves it on an hour: the manager's instants come
/// from that clock, and the collector files and reads by the same one.
#[tokio::test(start_paused = true)]
async fn operations_are_filed_by_tokio_s_clock_when_a_test_pauses_it() {
    let c = Collector::new(&MetricsConfig::default());
    tokio::time::advance(Duration::from_secs(3600)).await;
    let ended = tokio::time::Instant::now().into_std();
    c.record_operation_at("get", Duration::from_millis(1), Outcome::Success, ended);
    c.record_operation("get", Duration::from_millis(1), Outcome::Success);
    assert_eq!(c.snapshot().total_operations, 2);
}

#[test]
fn errors_are_counted_by_kind_and_rates_follow() {
    let (c, _) = manual();
    for _ in 0..90 {
        c.record_operation("get", Duration::from_millis(1), Outcome::Success);
    }
    for _ in 0..6 {
        c.record_operation(
            "get",
            Duration::from_millis(1),
            Outcome::Error(ErrorKind::Timeout),
        );
    }
    for _ in 0..4 {
        c.record_operation("set", Duration::from_millis(1), Outcome::Fallback);
    }
    let s = c.snapshot();
    assert_eq!(s.errors_by_kind.get("timeout_error"), Some(&6));
    assert_eq!((s.error_rate, s.timeout_rate), (0.06, 0.06));
    assert_eq!(s.fallback_operations, 4);
}

fn codes(c: &Collector) -> BTreeSet<&'static str> {
    c.report().recommendations.iter().map(|r| r.code).collect()
}

#[test]
fn recommendations_fire_when_figures_cross_their_thresholds_and_stay_silent_otherwise() {
    let (quiet, _) = manual();
    for _ in 0..1_000 {
        quiet.record_operation("get", Duration::from_millis(1), Outcome::Success);
    }
    quiet.record_pool(pool(16, 4, 2, 2, 0, 0), None);
    quiet.record_breaker_state(BreakerGauge::new("closed", 0, 0));
    assert!(codes(&quiet).is_empty(), "{}", quiet.report());

    let (busy, _) = manual();
    for i in 0..1_000 {
        let outcome = match i % 10 {
            0 => Outcome::Error(ErrorKind::Timeout),
            1 => Outcome::Fallback,
            _ => Outcome::Success,
        };
        let d = if i % 50 == 0 {
            Duration::from_millis(300)
        } else {
            Duration::from_millis(1)
        };
        busy.record_operation("get", d, outcome);
    }
    busy.record_pool(pool(16, 16, 0, 15, 3, 2), Some(Duration::from_millis(40)));
    busy.record_breaker_state(BreakerGauge::new("closed", 0, 0));
    busy.record_breaker_state(BreakerGauge::new("open", 1, 3));
    let report = busy.report();
    let fired: BTreeSet<&str> = report.recommendations.iter().map(|r| r.code).collect();
    assert_eq!(
        fired,
        [
            "breaker_trips",
            "error_rate",
            "fallback_share",
            "pool_saturated",
            "slow_operations",
            "timeouts"
        ]
        .into()
    );
    let pool = report
        .recommendations
        .iter()
        .find(|r| r.code == "pool_saturated")
        .unwrap();
    assert_eq!(pool.threshold, thresholds::POOL_UTILISATION);
    assert!(
        pool.message.contains("raise pool.max_size"),
        "{}",
        pool.message
    );
    let trips = report
        .recommendations
        .iter()
        .find(|r| r.code == "breaker_trips")
        .unwrap();
    assert!(trips.message.contains("3 times"), "{}", trips.message);
    // Printable and serialisable.
    assert!(report.to_string().contains("recommendations:"));
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["metrics"]["total_operations"], 1_000);
}

#[test]
fn noop_metrics_record_nothing() {
    let m = NoopMetrics;
    m.record_operation("get", Duration::from_millis(1), Outcome::Success);
    assert_eq!(m.snapshot().total_operations, 0);
    assert!(m.report().recommendations.is_empty());
}

#[test]
fn opentelemetry_instruments_follow_the_database_client_conventions() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let c = Collector::builder(&MetricsConfig::default())
        .meter(provider.meter("test"))
        .server(Server::new("cache.internal", 6380).namespace(2))
        .build();
    c.record_operation("get", Duration::from_millis(2), Outcome::Success);
    c.record_operation("get", Duration::from_millis(1), Outcome::Fallback);
    c.record_operation(
        "set",
        Duration::from_millis(3),
        Outcome::Error(ErrorKind::Timeout),
    );
    c.record_operation(
        "hset",
        Duration::from_millis(1),
        Outcome::ServerError("WRONGTYPE"),
    );
    c.record_event(Event::Retried {
        operation: "get",
        retries: 2,
    });
    c.record_event(Event::Ambiguous {
        operation: "incrby",
    });
    c.record_pool(pool(8, 3, 1, 2, 1, 1), Some(Duration::from_millis(5)));
    c.record_breaker_state(BreakerGauge::new("closed", 0, 0));
    c.record_breaker_state(BreakerGauge::new("open", 1, 1));
    c.record_fallback(
        FallbackGauge::new(true, 7)
            .with_replayed(3)
            .with_memory(512, 1024),
    );
    c.record_health(HealthGauge::new(false, Duration::from_millis(9)));
    provider.force_flush().unwrap();

    let mut seen = BTreeSet::new();
    for rm in exporter.get_finished_metrics().unwrap() {
        for sm in rm.scope_metrics() {
            for metric in sm.metrics() {
                seen.insert((metric.name().to_owned(), metric.unit().to_owned()));
                let attributes: Vec<(String, String)> = match metric.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => h
                        .data_points()
                        .flat_map(|p| pairs(p.attributes()))
                        .collect(),
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => g
                        .data_points()
                        .flat_map(|p| pairs(p.attributes()))
                        .collect(),
                    AggregatedMetrics::U64(MetricData::Sum(s)) => s
                        .data_points()
                        .flat_map(|p| pairs(p.attributes()))
                        .collect(),
                    other => panic!("unexpected data for {}: {other:?}", metric.name()),
                };
                let allowed = [
                    names::SYSTEM,
                    names::OPERATION,
                    names::ERROR_TYPE,
                    names::CONNECTION_STATE,
                    names::SERVED_BY,
                    names::STATUS_CODE,
                    names::STATE,
                    names::SERVER_ADDRESS,
                    names::SERVER_PORT,
                    names::NAMESPACE,
                    names::POOL_NAME,
                ];
                for (k, v) in &attributes {
                    assert!(
                        allowed.contains(&k.as_str()),
                        "{}: attribute {k} is not one of ours",
                        metric.name()
                    );
                    assert!(
                        !v.contains("user:") && !v.contains("session"),
                        "no key or value in attributes"
                    );
                }
                for must in [
                    (names::SYSTEM, "redis"),
                    (names::SERVER_ADDRESS, "cache.internal"),
                    (names::SERVER_PORT, "6380"),
                    (names::NAMESPACE, "2"),
                    (names::POOL_NAME, "cache.internal:6380/2"),
                ] {
                    assert!(
                        attributes.contains(&(must.0.into(), must.1.into())),
                        "{}: no {must:?} in {attributes:?}",
                        metric.name()
                    );
                }
                let has = |k: &str, v: &str| attributes.contains(&(k.into(), v.into()));
                if metric.name() == names::OPERATION_DURATION {
                    assert!(has(names::OPERATION, "get"));
                    assert!(has(names::ERROR_TYPE, "timeout_error"));
                    assert!(has(names::SERVED_BY, "redis") && has(names::SERVED_BY, "memory"));
                    assert!(
                        has(names::STATUS_CODE, "WRONGTYPE")
                            && has(names::ERROR_TYPE, "server_error")
                    );
                }
                if metric.name() == names::BREAKER_STATE {
                    // One series per state, 1 only for the current one.
                    let AggregatedMetrics::U64(MetricData::Gauge(g)) = metric.data() else {
                        unreachable!()
                    };
                    let on: Vec<Vec<(String, String)>> = g
                        .data_points()
                        .filter(|p| p.value() == 1)
                        .map(|p| pairs(p.attributes()))
                        .collect();
                    assert_eq!(g.data_points().count(), 6);
                    assert_eq!(on.len(), 1);
                    assert!(on[0].contains(&(names::STATE.into(), "open".into())));
                }
                if metric.name() == names::BREAKER_TRANSITIONS {
                    assert!(has(names::STATE, "open"));
                }
                if metric.name() == names::RETRIES || metric.name() == names::AMBIGUOUS {
                    assert!(has(names::OPERATION, "get") || has(names::OPERATION, "incrby"));
                }
                if metric.name() == names::CONNECTION_COUNT {
                    assert!(attributes.contains(&(names::CONNECTION_STATE.into(), "idle".into())));
                    assert!(attributes.contains(&(names::CONNECTION_STATE.into(), "used".into())));
                }
            }
        }
    }
    let expected: BTreeSet<(String, String)> = [
        (names::OPERATION_DURATION, "s"),
        (names::CONNECTION_COUNT, "{connection}"),
        (names::PENDING_REQUESTS, "{request}"),
        (names::WAIT_TIME, "s"),
        (names::TIMEOUTS, "{timeout}"),
        (names::BREAKER_STATE, ""),
        (names::FALLBACK_ACTIVE, ""),
        (names::FALLBACK_PENDING, "{write}"),
        (names::FALLBACK_DEAD_LETTERS, "{write}"),
        (names::HEALTH_CHECK_DURATION, "s"),
        (names::HEALTHY, ""),
        (names::BREAKER_TRANSITIONS, "{transition}"),
        (names::FALLBACK_REPLAYED, "{write}"),
        (names::FALLBACK_MEMORY_USAGE, "By"),
        (names::FALLBACK_MEMORY_LIMIT, "By"),
        (names::RETRIES, "{retry}"),
        (names::AMBIGUOUS, "{operation}"),
    ]
    .into_iter()
    .map(|(n, u)| (n.to_owned(), u.to_owned()))
    .collect();
    assert_eq!(seen, expected);
}

#[test]
fn prometheus_renders_every_instrument() {
    let prometheus = PrometheusExporter::new().unwrap();
    let c = Collector::with_meter(&MetricsConfig::default(), &prometheus.meter());
    c.record_operation("get", Duration::from_millis(2), Outcome::Success);
    c.record_fallback(FallbackGauge::new(true, 3));
    let text = prometheus.render();
    assert!(
        text.contains("db_client_operation_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("redis_fallback_journal_pending"), "{text}");
    assert!(text.contains(r#"db_operation_name="get""#), "{text}");
}

/// Attribute keys and values as text.
fn pairs<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Vec<(String, String)> {
    kvs.map(|kv| (kv.key.to_string(), kv.value.to_string()))
        .collect()
}
