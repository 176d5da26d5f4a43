//! Breaker overhead, ours against `failsafe` in the same run.
//!
//! `cargo bench -p resilient-redis-breaker` (or `cargo xtask bench`). The closed path is
//! `try_acquire` + `on_success`; the rejection path is `try_acquire` on an open breaker.

#![allow(
    missing_docs,
    reason = "criterion_group! generates undocumented functions"
)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use resilient_redis_breaker::{
    Breaker, BreakerState, CircuitBreaker, CircuitBreakerControl, PermitGuard,
};

const ELAPSED: Duration = Duration::from_micros(150);

fn ours() -> Breaker {
    Breaker::builder().build().expect("default breaker")
}

/// failsafe's default breaker (consecutive failures or success rate over a time window).
fn failsafe_breaker()
-> failsafe::StateMachine<impl failsafe::failure_policy::FailurePolicy + Send + 'static, ()> {
    failsafe::Config::new().build()
}

fn closed_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed_path");
    let breaker = ours();
    group.bench_function("resilient_redis", |b| {
        b.iter(|| {
            let permit = breaker.try_acquire().expect("closed");
            breaker.on_success(black_box(permit), ELAPSED);
        });
    });
    // The same through the guard the request path holds across its awaits (a call dropped
    // mid-way hands its permit back): what cancel safety costs a call that completes.
    group.bench_function("resilient_redis_guarded", |b| {
        b.iter(|| {
            let permit = breaker.try_acquire().expect("closed");
            PermitGuard::new(&breaker, black_box(permit)).success(ELAPSED);
        });
    });
    let dyn_breaker: Arc<dyn CircuitBreaker> = Arc::new(ours());
    group.bench_function("resilient_redis_dyn", |b| {
        b.iter(|| {
            let permit = dyn_breaker.try_acquire().expect("closed");
            dyn_breaker.on_success(black_box(permit), ELAPSED);
        });
    });
    // Every outcome recorded into the window: calls slower than slow_call_duration (a healthy
    // window of fast successes skips the write, which the runs above measure).
    let recording = Breaker::builder()
        .slow_call_duration(Duration::from_micros(100))
        .build()
        .expect("breaker");
    recording.metrics_only(); // measures and records every call, never opens
    group.bench_function("resilient_redis_recording", |b| {
        b.iter(|| {
            let permit = recording.try_acquire().expect("closed");
            recording.on_success(black_box(permit), ELAPSED);
        });
    });
    let fs = failsafe_breaker();
    group.bench_function("failsafe", |b| {
        b.iter(|| {
            assert!(failsafe::CircuitBreaker::is_call_permitted(&fs));
            fs.on_success();
        });
    });
    group.finish();
}

fn rejection(c: &mut Criterion) {
    let mut group = c.benchmark_group("rejection");
    // OPEN with its timer armed (the default, inside a runtime): no clock read per rejection.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let open = {
        let _inside = runtime.enter();
        let b = Breaker::builder()
            .reset_timeout(Duration::from_secs(3600))
            .build()
            .expect("breaker");
        b.transition_to(BreakerState::Open).expect("closed -> open");
        b
    };
    group.bench_function("resilient_redis_open", |b| {
        b.iter(|| black_box(open.try_acquire()).expect_err("open"));
    });
    // OPEN moving on lazily (automatic_transition = false): one clock read per rejection.
    let lazy = Breaker::builder()
        .automatic_transition(false)
        .reset_timeout(Duration::from_secs(3600))
        .build()
        .expect("breaker");
    lazy.transition_to(BreakerState::Open)
        .expect("closed -> open");
    group.bench_function("resilient_redis_open_lazy", |b| {
        b.iter(|| black_box(lazy.try_acquire()).expect_err("open"));
    });
    let forced = ours();
    forced.force_open();
    group.bench_function("resilient_redis_forced_open", |b| {
        b.iter(|| black_box(forced.try_acquire()).expect_err("forced open"));
    });
    let fs = failsafe_breaker();
    for _ in 0..100 {
        fs.on_error();
    }
    assert!(
        !failsafe::CircuitBreaker::is_call_permitted(&fs),
        "failsafe should be open"
    );
    group.bench_function("failsafe_open", |b| {
        b.iter(|| assert!(!black_box(failsafe::CircuitBreaker::is_call_permitted(&fs))));
    });
    group.finish();
}

/// Two threads each doing `iters` acquire + record pairs at once; reports time per pair.
fn contended<F>(iters: u64, make: impl Fn() -> F) -> Duration
where
    F: FnMut() + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut op = make();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    op();
                }
                start.elapsed()
            })
        })
        .collect();
    barrier.wait();
    let total: Duration = workers.into_iter().map(|w| w.join().expect("worker")).sum();
    total / 2
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed_path_two_threads");
    group.bench_function("resilient_redis", |b| {
        let breaker = ours();
        b.iter_custom(|iters| {
            contended(iters, || {
                let breaker = breaker.clone();
                move || {
                    let permit = breaker.try_acquire().expect("closed");
                    breaker.on_success(black_box(permit), ELAPSED);
                }
            })
        });
    });
    group.bench_function("failsafe", |b| {
        let fs = failsafe_breaker();
        b.iter_custom(|iters| {
            contended(iters, || {
                let fs = fs.clone();
                move || {
                    assert!(failsafe::CircuitBreaker::is_call_permitted(&fs));
                    fs.on_success();
                }
            })
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = closed_path, rejection, two_threads
}
criterion_main!(benches);
