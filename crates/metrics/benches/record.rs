//! `record_operation` cost, one thread and two threads contending. `cargo bench -p resilient-redis-metrics`.
#![allow(
    missing_docs,
    reason = "criterion_group! generates undocumented functions"
)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use resilient_redis_config::{ErrorKind, MetricsConfig};
use resilient_redis_metrics::{Collector, MetricsCollector, Outcome, PrometheusExporter};

fn outcome(i: u64) -> Outcome {
    if i.is_multiple_of(50) {
        Outcome::Error(ErrorKind::Timeout)
    } else {
        Outcome::Success
    }
}

fn single(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_operation");
    let collector = Collector::new(&MetricsConfig::default());
    let mut i = 0u64;
    group.bench_function("resilient_redis", |b| {
        b.iter(|| {
            i += 1;
            collector.record_operation(
                "get",
                Duration::from_nanos(150_000 + (i % 1_000) * 97),
                black_box(outcome(i)),
            );
        });
    });
    let prometheus = PrometheusExporter::new().expect("exporter");
    let with_otel = Collector::with_meter(&MetricsConfig::default(), &prometheus.meter());
    group.bench_function("resilient_redis_with_otel", |b| {
        b.iter(|| {
            i += 1;
            with_otel.record_operation(
                "get",
                Duration::from_nanos(150_000 + (i % 1_000) * 97),
                black_box(outcome(i)),
            );
        });
    });
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("record_operation_two_threads");
    let collector = Arc::new(Collector::new(&MetricsConfig::default()));
    group.bench_function("resilient_redis", |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(3));
            let workers: Vec<_> = (0..2)
                .map(|t| {
                    let (c, barrier) = (Arc::clone(&collector), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        for i in 0..iters {
                            c.record_operation(
                                "get",
                                Duration::from_nanos(150_000 + ((i + t) % 1_000) * 97),
                                outcome(i),
                            );
                        }
                        start.elapsed()
                    })
                })
                .collect();
            barrier.wait();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .sum::<Duration>()
                / 2
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = single, two_threads
}
criterion_main!(benches);
