//! Many threads at once: permits are never over-issued and counts never drift.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use resilient_redis_breaker::{Breaker, BreakerState, CircuitBreaker, CircuitBreakerControl};

const FAST: Duration = Duration::from_millis(1);

#[test]
fn half_open_never_issues_more_than_its_permits_to_racing_threads() {
    let b = Breaker::builder()
        .half_open_permitted_calls(7)
        .build()
        .unwrap();
    b.transition_to(BreakerState::Open).unwrap();
    b.transition_to(BreakerState::HalfOpen).unwrap();
    for round in 0..3 {
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..1_000)
                            .filter_map(|_| b.try_acquire().ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(
            got.len(),
            7,
            "round {round}: exactly the permitted trial calls"
        );
        // Hand them all back at once; the next round gets exactly 7 again.
        std::thread::scope(|s| {
            for p in got {
                s.spawn(|| b.release_permission(p));
            }
        });
    }
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[test]
fn concurrent_records_add_up_exactly() {
    let b = Breaker::builder().count_window(100_000).build().unwrap();
    b.metrics_only(); // measure, never trip
    std::thread::scope(|s| {
        for t in 0..8 {
            let b = &b;
            s.spawn(move || {
                for i in 0..2_000 {
                    let p = b.try_acquire().unwrap();
                    if (i + t) % 4 == 0 {
                        b.on_error(p, FAST);
                    } else if i % 10 == 0 {
                        b.on_success(p, Duration::from_secs(5));
                    } else {
                        b.on_success(p, FAST);
                    }
                }
            });
        }
    });
    let s = b.snapshot();
    assert_eq!(s.buffered_calls, 16_000);
    let expected_failed: u32 = (0..8)
        .map(|t| (0..2_000).filter(|i| (i + t) % 4 == 0).count() as u32)
        .sum();
    assert_eq!(s.failed_calls, expected_failed);
    let expected_slow: u32 = (0..8)
        .map(|t| {
            (0..2_000)
                .filter(|i| (i + t) % 4 != 0 && i % 10 == 0)
                .count() as u32
        })
        .sum();
    assert_eq!(s.slow_calls, expected_slow);
}

#[test]
fn a_full_window_holds_exactly_the_last_outcomes_after_contention() {
    let b = Breaker::builder().count_window(64).build().unwrap();
    b.metrics_only();
    let hammer = |fail: bool| {
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..5_000 {
                        let p = b.try_acquire().unwrap();
                        if fail {
                            b.on_error(p, FAST)
                        } else {
                            b.on_success(p, FAST)
                        }
                    }
                });
            }
        });
    };
    hammer(true);
    assert_eq!(
        (b.snapshot().buffered_calls, b.snapshot().failed_calls),
        (64, 64)
    );
    hammer(false);
    assert_eq!(
        (b.snapshot().buffered_calls, b.snapshot().failed_calls),
        (64, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_trip_and_recover_the_breaker() {
    let b = Breaker::builder()
        .failure_threshold(5)
        .reset_timeout(Duration::from_millis(20))
        .half_open_permitted_calls(3)
        .build()
        .unwrap();
    let mut states = b.subscribe();
    let failing = Arc::new(AtomicBool::new(true));
    let rejected = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (b, failing, rejected) = (b.clone(), Arc::clone(&failing), Arc::clone(&rejected));
            tokio::spawn(async move {
                for _ in 0..400 {
                    match b.try_acquire() {
                        Ok(p) if failing.load(Ordering::Relaxed) => b.on_error(p, FAST),
                        Ok(p) => b.on_success(p, FAST),
                        Err(_) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            })
        })
        .collect();

    // The backend fails: the breaker must open.
    tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|s| *s == BreakerState::Open),
    )
    .await
    .expect("opens in time")
    .unwrap();
    // The backend recovers: trial calls succeed and it closes again.
    failing.store(false, Ordering::Relaxed);
    tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|s| *s == BreakerState::Closed),
    )
    .await
    .expect("closes in time")
    .unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let s = b.snapshot();
    assert!(s.trips >= 1);
    assert!(
        rejected.load(Ordering::Relaxed) > 0,
        "calls were rejected while open"
    );
    assert_eq!(
        s.not_permitted_calls as usize,
        rejected.load(Ordering::Relaxed)
    );
    assert!(s.failed_calls <= s.buffered_calls && s.buffered_calls <= 100);
}
