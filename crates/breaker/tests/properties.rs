//! Property: whatever the interleaving of calls from many callers, HALF_OPEN never admits more
//! trial calls than its permits, and the window's counts are exactly the outcomes recorded.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use resilient_redis_breaker::{Breaker, BreakerState, CircuitBreaker, Permit};

const WINDOW: usize = 6;
const TRIALS: u32 = 3;
const CALLERS: usize = 5;

#[derive(Clone, Debug)]
enum Step {
    Acquire(usize),
    Succeed(usize, bool),
    Fail(usize, bool),
    Release(usize),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..CALLERS).prop_map(Step::Acquire),
        3 => (0..CALLERS, any::<bool>()).prop_map(|(c, slow)| Step::Succeed(c, slow)),
        3 => (0..CALLERS, any::<bool>()).prop_map(|(c, slow)| Step::Fail(c, slow)),
        1 => (0..CALLERS).prop_map(Step::Release),
        1 => (0u64..1_500).prop_map(Step::Wait),
    ]
}

struct Held {
    permit: Permit,
    /// The state it was issued in.
    state: BreakerState,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn permits_and_counts_hold_under_any_interleaving(steps in prop::collection::vec(step(), 1..200)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let b = Breaker::builder()
                .failure_threshold(3)
                .count_window(WINDOW as u32)
                .minimum_calls(4)
                .failure_rate_threshold(50.0)
                .slow_call_rate_threshold(75.0)
                .slow_call_duration(Duration::from_secs(1))
                .reset_timeout(Duration::from_secs(1))
                .half_open_permitted_calls(TRIALS)
                .build()
                .unwrap();
            let mut held: Vec<Option<Held>> = (0..CALLERS).map(|_| None).collect();
            // Trial permits out per HALF_OPEN period (by permit tag).
            let mut trials_out: HashMap<u64, u32> = HashMap::new();
            // The model of the CLOSED window: outcomes recorded in the current CLOSED period.
            let mut closed_tag: Option<u64> = None;
            let mut model: VecDeque<(bool, bool)> = VecDeque::new();
            let mut last_state = b.state();

            for s in steps {
                match s {
                    Step::Acquire(c) if held[c].is_none() => {
                        if let Ok(permit) = b.try_acquire() {
                            let state = b.state();
                            if state == BreakerState::HalfOpen {
                                *trials_out.entry(permit.tag()).or_default() += 1;
                                prop_assert!(trials_out[&permit.tag()] <= TRIALS, "HALF_OPEN over-issued");
                            }
                            if state == BreakerState::Closed {
                                // Every permit of one CLOSED period carries that period's tag.
                                prop_assert_eq!(permit.tag(), *closed_tag.get_or_insert(permit.tag()));
                            }
                            held[c] = Some(Held { permit, state });
                        }
                    }
                    Step::Succeed(c, slow) | Step::Fail(c, slow) => {
                        let failed = matches!(s, Step::Fail(..));
                        if let Some(h) = held[c].take() {
                            let counts_in_closed = b.state() == BreakerState::Closed
                                && Some(h.permit.tag()) == closed_tag;
                            if counts_in_closed {
                                model.push_back((failed, slow));
                                if model.len() > WINDOW { model.pop_front(); }
                            }
                            let elapsed = if slow { Duration::from_secs(2) } else { Duration::from_millis(1) };
                            if failed { b.on_error(h.permit, elapsed) } else { b.on_success(h.permit, elapsed) }
                        }
                    }
                    Step::Release(c) => {
                        if let Some(h) = held[c].take() {
                            if h.state == BreakerState::HalfOpen
                                && b.state() == BreakerState::HalfOpen
                                && let Some(n) = trials_out.get_mut(&h.permit.tag())
                            {
                                *n = n.saturating_sub(1);
                            }
                            b.release_permission(h.permit);
                        }
                    }
                    Step::Wait(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                    Step::Acquire(_) => {}
                }

                let state = b.state();
                if state != last_state {
                    if state == BreakerState::Closed {
                        closed_tag = None;
                        model.clear();
                    }
                    last_state = state;
                }
                let snap = b.snapshot();
                prop_assert!(snap.failed_calls <= snap.buffered_calls);
                prop_assert!(snap.slow_calls <= snap.buffered_calls);
                if state == BreakerState::Closed {
                    prop_assert!(snap.buffered_calls as usize <= WINDOW);
                    let failed = model.iter().filter(|(f, _)| *f).count() as u32;
                    let slow = model.iter().filter(|(_, s)| *s).count() as u32;
                    prop_assert_eq!(
                        (snap.buffered_calls, snap.failed_calls, snap.slow_calls),
                        (model.len() as u32, failed, slow),
                        "the CLOSED window drifted from the outcomes recorded"
                    );
                }
                if state == BreakerState::HalfOpen {
                    prop_assert!(snap.buffered_calls <= TRIALS);
                }
            }
            Ok(())
        })?;
    }
}

/// Cases per property: the default, or `PROPTEST_CASES` for a longer search.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
