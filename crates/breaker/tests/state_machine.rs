//! The state machine, behaviour by behaviour (after Resilience4j's
//! `CircuitBreakerStateMachineTest`), under paused Tokio time.

use std::time::Duration;

use resilient_redis_breaker::{
    Breaker, BreakerBuilder, BreakerError, BreakerState, CircuitBreaker, CircuitBreakerControl,
};
use tokio::time::advance;

const FAST: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_secs(5);

/// Rates only: the consecutive-failure rule is pushed out of reach. OPEN moves on lazily, on
/// the first call after the reset timeout, so tests can watch each step.
fn rate_breaker() -> BreakerBuilder {
    Breaker::builder()
        .automatic_transition(false)
        .failure_threshold(1_000)
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .reset_timeout(Duration::from_secs(10))
        .half_open_permitted_calls(3)
}

fn succeed(b: &Breaker, n: usize) {
    for _ in 0..n {
        let p = b.try_acquire().expect("permitted");
        b.on_success(p, FAST);
    }
}

fn fail(b: &Breaker, n: usize) {
    for _ in 0..n {
        let p = b.try_acquire().expect("permitted");
        b.on_error(p, FAST);
    }
}

/// Trips a rate breaker and waits out its open time, leaving it HALF_OPEN.
async fn half_open(b: &Breaker) {
    fail(b, 4);
    assert_eq!(b.state(), BreakerState::Open);
    advance(Duration::from_secs(10)).await;
    // The first call after the open time moves it to HALF_OPEN (lazily).
    let p = b.try_acquire().expect("a trial permit");
    assert_eq!(b.state(), BreakerState::HalfOpen);
    b.release_permission(p);
}

#[tokio::test(start_paused = true)]
async fn opens_when_the_failure_rate_reaches_the_threshold_not_only_above_it() {
    let b = rate_breaker().build().unwrap();
    fail(&b, 2);
    succeed(&b, 1);
    assert_eq!(b.state(), BreakerState::Closed, "3 calls < minimum_calls 4");
    succeed(&b, 1);
    // 2 of 4 = 50 % = the threshold: open.
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.snapshot().trips, 1);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_failure_rate() {
    let b = rate_breaker()
        .count_window(5)
        .minimum_calls(5)
        .build()
        .unwrap();
    fail(&b, 2);
    succeed(&b, 3);
    // 40 % < 50 %.
    assert_eq!(b.state(), BreakerState::Closed);
    let s = b.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (5, 2));
    assert_eq!(s.failure_rate, Some(40.0));
}

#[tokio::test(start_paused = true)]
async fn never_opens_on_rates_below_minimum_calls() {
    let b = rate_breaker()
        .count_window(100)
        .minimum_calls(10)
        .build()
        .unwrap();
    fail(&b, 9);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        b.snapshot().failure_rate,
        None,
        "no rate before minimum_calls"
    );
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_on_consecutive_failures_whatever_the_rate() {
    let b = Breaker::builder()
        .failure_threshold(3)
        .minimum_calls(1_000)
        .build()
        .unwrap();
    assert_eq!(b.snapshot().trips, 0);
    fail(&b, 2);
    succeed(&b, 1);
    fail(&b, 2);
    assert_eq!(b.state(), BreakerState::Closed, "a success broke the run");
    assert_eq!(b.snapshot().consecutive_failures, 2);
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it_while_failures_are_below_threshold() {
    let b = rate_breaker()
        .slow_call_duration(Duration::from_secs(1))
        .slow_call_rate_threshold(50.0)
        .build()
        .unwrap();
    for _ in 0..2 {
        let p = b.try_acquire().unwrap();
        b.on_success(p, SLOW);
    }
    succeed(&b, 1);
    assert_eq!(b.state(), BreakerState::Closed);
    succeed(&b, 1);
    assert_eq!(b.state(), BreakerState::Open, "2 slow of 4 = 50 %");
    assert_eq!(b.snapshot().failed_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_until_the_reset_timeout_then_half_opens_lazily() {
    let b = rate_breaker().build().unwrap();
    fail(&b, 4);
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.state, BreakerState::Open);
    advance(Duration::from_millis(9_999)).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "nothing moves it without a call or a timer"
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "lazy: still open until someone asks"
    );
    let p = b.try_acquire().expect("trial permit");
    assert_eq!(b.state(), BreakerState::HalfOpen);
    b.release_permission(p);
    assert_eq!(b.snapshot().not_permitted_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn half_open_permits_exactly_its_trial_calls_and_release_returns_one() {
    let b = rate_breaker().build().unwrap();
    half_open(&b).await;
    let permits: Vec<_> = (0..3).map(|_| b.try_acquire().expect("trial")).collect();
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.state, BreakerState::HalfOpen);

    let mut permits = permits.into_iter();
    b.release_permission(permits.next().unwrap());
    let again = b
        .try_acquire()
        .expect("the released permit is available again");
    assert!(b.try_acquire().is_err());
    for p in permits.chain([again]) {
        b.on_success(p, FAST);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_when_trials_stay_below_the_rate() {
    let b = rate_breaker().build().unwrap();
    half_open(&b).await;
    // 1 failure of 3 trials = 33 % < 50 %.
    let ps: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    let mut ps = ps.into_iter();
    b.on_error(ps.next().unwrap(), FAST);
    b.on_success(ps.next().unwrap(), FAST);
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen,
        "decides only after every trial"
    );
    b.on_success(ps.next().unwrap(), FAST);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        b.snapshot().buffered_calls,
        0,
        "CLOSED starts with an empty window"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_when_trials_reach_the_rate() {
    let b = rate_breaker().build().unwrap();
    half_open(&b).await;
    let ps: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    let mut ps = ps.into_iter();
    b.on_error(ps.next().unwrap(), FAST);
    b.on_error(ps.next().unwrap(), FAST);
    b.on_success(ps.next().unwrap(), FAST);
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.snapshot().trips, 2);
}

#[tokio::test(start_paused = true)]
async fn outcomes_of_calls_from_an_earlier_state_do_not_count() {
    let b = rate_breaker().build().unwrap();
    let early = b.try_acquire().unwrap(); // issued while CLOSED
    half_open(&b).await;
    b.on_error(early, SLOW);
    assert_eq!(b.snapshot().buffered_calls, 0, "not a trial call");
    // Nor can a stale permit hand HALF_OPEN an extra trial.
    let stale = {
        let c = rate_breaker().build().unwrap();
        c.try_acquire().unwrap()
    };
    b.release_permission(stale);
    let trials: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    assert!(b.try_acquire().is_err());
    for p in trials {
        b.release_permission(p);
    }
}

#[tokio::test(start_paused = true)]
async fn ignored_calls_are_not_counted() {
    let b = rate_breaker().build().unwrap();
    for _ in 0..10 {
        let p = b.try_acquire().unwrap();
        b.release_permission(p);
    }
    let s = b.snapshot();
    assert_eq!(
        (s.buffered_calls, s.failed_calls, s.state),
        (0, 0, BreakerState::Closed)
    );
}

#[tokio::test(start_paused = true)]
async fn disabled_permits_everything_and_measures_nothing() {
    let b = rate_breaker().build().unwrap();
    b.disable();
    assert_eq!(b.state(), BreakerState::Disabled);
    fail(&b, 50);
    assert_eq!(b.state(), BreakerState::Disabled);
    assert_eq!(b.snapshot().buffered_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything_and_never_half_opens() {
    let b = rate_breaker().build().unwrap();
    b.force_open();
    assert_eq!(b.try_acquire().unwrap_err().state, BreakerState::ForcedOpen);
    advance(Duration::from_secs(3_600)).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), BreakerState::ForcedOpen);
    assert_eq!(b.snapshot().not_permitted_calls, 2);
    assert_eq!(b.snapshot().trips, 0, "forcing is not a trip");
}

#[tokio::test(start_paused = true)]
async fn metrics_only_measures_but_never_opens() {
    let b = rate_breaker().failure_threshold(2).build().unwrap();
    b.metrics_only();
    fail(&b, 20);
    assert_eq!(b.state(), BreakerState::MetricsOnly);
    let s = b.snapshot();
    assert_eq!((s.buffered_calls, s.failed_calls), (4, 4));
    assert_eq!(s.failure_rate, Some(100.0));
}

#[tokio::test(start_paused = true)]
async fn illegal_transitions_are_refused() {
    let b = rate_breaker().build().unwrap();
    let err = b.transition_to(BreakerState::HalfOpen).unwrap_err();
    assert!(matches!(
        err,
        BreakerError::IllegalTransition {
            from: BreakerState::Closed,
            to: BreakerState::HalfOpen
        }
    ));
    b.metrics_only();
    assert!(b.transition_to(BreakerState::Open).is_err());
    assert!(b.transition_to(BreakerState::HalfOpen).is_err());
    assert_eq!(b.state(), BreakerState::MetricsOnly);
    // Everything else is allowed.
    b.transition_to(BreakerState::Closed).unwrap();
    b.transition_to(BreakerState::Open).unwrap();
    b.transition_to(BreakerState::HalfOpen).unwrap();
    b.transition_to(BreakerState::ForcedOpen).unwrap();
    b.transition_to(BreakerState::Disabled).unwrap();
    b.transition_to(BreakerState::HalfOpen).unwrap();
}

#[tokio::test(start_paused = true)]
async fn reset_closes_and_forgets() {
    let b = rate_breaker().build().unwrap();
    fail(&b, 4);
    assert_eq!(b.state(), BreakerState::Open);
    b.reset();
    assert_eq!(b.state(), BreakerState::Closed);
    let s = b.snapshot();
    assert_eq!((s.buffered_calls, s.consecutive_failures), (0, 0));
    succeed(&b, 1);
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_change_and_no_same_state_event() {
    let b = rate_breaker().build().unwrap();
    let mut rx = b.subscribe();
    b.transition_to(BreakerState::Closed).unwrap();
    b.reset();
    assert!(!rx.has_changed().unwrap(), "CLOSED -> CLOSED is no event");
    fail(&b, 4);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), BreakerState::Open);
    b.transition_to(BreakerState::Open).unwrap();
    assert!(!rx.has_changed().unwrap(), "OPEN -> OPEN is no event");
    advance(Duration::from_secs(10)).await;
    let p = b.try_acquire().unwrap();
    assert_eq!(*rx.borrow_and_update(), BreakerState::HalfOpen);
    b.release_permission(p);
}

#[tokio::test(start_paused = true)]
async fn automatic_transition_half_opens_without_a_call() {
    let b = rate_breaker().automatic_transition(true).build().unwrap();
    let mut rx = b.subscribe();
    fail(&b, 4);
    assert_eq!(*rx.borrow_and_update(), BreakerState::Open);
    for _ in 0..1_000 {
        assert!(b.try_acquire().is_err(), "open until the timer fires");
    }
    // The timer fires at the reset timeout; nobody calls.
    tokio::time::timeout(Duration::from_secs(11), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*rx.borrow(), BreakerState::HalfOpen);
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_transition_cancels_the_automatic_timer() {
    let b = rate_breaker().automatic_transition(true).build().unwrap();
    fail(&b, 4);
    b.force_open();
    advance(Duration::from_secs(30)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        b.state(),
        BreakerState::ForcedOpen,
        "the cancelled timer did not fire"
    );

    // Reset while OPEN: the old timer must not half-open the new CLOSED state either.
    b.reset();
    fail(&b, 4);
    b.reset();
    advance(Duration::from_secs(30)).await;
    tokio::task::yield_now().await;
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn open_time_grows_exponentially_up_to_its_cap() {
    let b = rate_breaker()
        .reset_timeout_backoff(2.0, Duration::from_secs(25), 0.0)
        .half_open_permitted_calls(1)
        .build()
        .unwrap();
    fail(&b, 4);
    // Trips in a row: open 10 s, then 20 s, then capped at 25 s.
    for wait in [10, 20, 25, 25] {
        advance(Duration::from_secs(wait) - Duration::from_millis(1)).await;
        assert!(b.try_acquire().is_err(), "still open just before {wait} s");
        advance(Duration::from_millis(1)).await;
        let trial = b.try_acquire().expect("half-open after {wait} s");
        b.on_error(trial, FAST); // the trial fails: open again, longer
        assert_eq!(b.state(), BreakerState::Open);
    }
    // A successful trial closes it and the next trip starts again from 10 s.
    advance(Duration::from_secs(25)).await;
    let trial = b.try_acquire().unwrap();
    b.on_success(trial, FAST);
    assert_eq!(b.state(), BreakerState::Closed);
    fail(&b, 4);
    advance(Duration::from_secs(10)).await;
    assert!(b.try_acquire().is_ok(), "back to the base open time");
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_the_open_time_within_its_spread() {
    let b = rate_breaker()
        .reset_timeout_backoff(1.0, Duration::from_secs(10), 0.5)
        .build()
        .unwrap();
    fail(&b, 4);
    advance(Duration::from_millis(4_999)).await;
    assert!(b.try_acquire().is_err(), "never sooner than 10 s - 50 %");
    advance(Duration::from_millis(10_001)).await;
    assert!(b.try_acquire().is_ok(), "never later than 10 s + 50 %");
}

#[tokio::test(start_paused = true)]
async fn max_wait_in_half_open_reopens_when_trials_do_not_finish() {
    let b = rate_breaker()
        .max_wait_in_half_open(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut rx = b.subscribe();
    half_open(&b).await;
    let stuck: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    rx.borrow_and_update();
    tokio::time::timeout(Duration::from_secs(3), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.state(), BreakerState::Open);
    // The trials finish late: their outcomes belong to a past state.
    for p in stuck {
        b.on_success(p, FAST);
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_failures_older_than_the_monitoring_period() {
    let b = Breaker::builder()
        .failure_threshold(1_000)
        .time_window(Duration::from_secs(10))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    fail(&b, 3);
    advance(Duration::from_secs(11)).await;
    // The three failures have left the window: one more is 1 call, below minimum_calls.
    fail(&b, 1);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().buffered_calls, 1);
    fail(&b, 3);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_config_that_breaks_rules_is_refused_with_every_problem() {
    let err = Breaker::builder()
        .failure_rate_threshold(0.0)
        .half_open_permitted_calls(0)
        .build()
        .unwrap_err();
    let BreakerError::Config(config) = err else {
        panic!("config error expected")
    };
    let fields: Vec<&str> = config.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "circuit_breaker.failure_rate_threshold",
            "circuit_breaker.half_open_permitted_calls"
        ]
    );
}

#[test]
fn it_works_without_a_runtime() {
    // No timers without a runtime: the lazy path still moves OPEN -> HALF_OPEN.
    let b = rate_breaker()
        .automatic_transition(true)
        .reset_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    fail(&b, 4);
    assert_eq!(b.state(), BreakerState::Open);
    std::thread::sleep(Duration::from_millis(30));
    let p = b.try_acquire().expect("half-open after the reset timeout");
    b.on_success(p, FAST);
}
