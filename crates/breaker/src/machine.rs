//! [`Breaker`]: the circuit breaker state machine.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use resilient_redis_config::{CircuitBreakerConfig, SlidingWindowType};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::window::{CountWindow, Counts, TimeWindow, TrialWindow};
use crate::{
    BreakerError, BreakerSnapshot, BreakerState, CallNotPermitted, CircuitBreaker, Permit,
};

/// The circuit breaker: Resilience4j's state machine (CLOSED, OPEN, HALF_OPEN, DISABLED,
/// FORCED_OPEN, METRICS_ONLY) with a lock-free path for permitted calls.
///
/// It opens on `failure_threshold` consecutive failures, or when the failure rate or the
/// slow-call rate over its sliding window reaches its threshold (≥, once `minimum_calls` are
/// measured). It stays open for `reset_timeout` (growing by `reset_timeout_multiplier` on each
/// failed trial, up to `max_reset_timeout`, with optional jitter), then lets
/// `half_open_permitted_calls` trial calls through, and closes or opens again by the same rates.
///
/// Cheap to clone (an `Arc` inside). Time is read from `tokio::time::Instant`, so tests can use
/// paused time. Timers (`automatic_transition`, `max_wait_in_half_open`) need a Tokio runtime;
/// without one the same transitions happen lazily on the next call.
///
/// ```
/// use resilient_redis_breaker::{Breaker, BreakerState, CircuitBreaker};
/// use std::time::Duration;
///
/// let breaker = Breaker::builder().failure_threshold(2).build()?;
/// for _ in 0..2 {
///     let permit = breaker.try_acquire()?;
///     breaker.on_error(permit, Duration::from_millis(3));
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(breaker.try_acquire().is_err());
/// # Ok::<(), resilient_redis_breaker::BreakerError>(())
/// ```
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

struct Settings {
    failure_threshold: u32,
    failure_rate: f64,
    slow_rate: f64,
    slow_call: Duration,
    minimum_calls: u32,
    reset_timeout: Duration,
    multiplier: f64,
    max_reset_timeout: Duration,
    jitter: f64,
    trial_calls: u32,
    automatic: bool,
    max_wait_half_open: Duration,
}

struct Inner {
    settings: Settings,
    /// `epoch << 8 | state`: every transition increments the epoch, so a permit knows whether
    /// the state it was issued in is still the current one.
    word: AtomicU64,
    consecutive_failures: AtomicU32,
    window: Window,
    trials: TrialWindow,
    trial_permits: AtomicU32,
    /// Nanoseconds since `base` at which OPEN lets trial calls through.
    open_until: AtomicU64,
    /// A timer will move OPEN on at `open_until`, so a rejection need not read the clock.
    timer_armed: AtomicBool,
    /// Nanoseconds since `base` at which HALF_OPEN gives up waiting; 0 = never.
    half_open_until: AtomicU64,
    /// Trips since the breaker last closed, for the growing open time.
    trips_in_a_row: AtomicU32,
    trips: AtomicU64,
    not_permitted: AtomicU64,
    base: Instant,
    states: watch::Sender<BreakerState>,
    /// Serialises transitions (never taken by a permitted call) and holds the pending timer.
    transition: Mutex<Option<AbortHandle>>,
    me: Weak<Inner>,
}

/// With an automatic timer armed, one rejection in this many still reads the clock.
const CLOCK_CHECK_EVERY: u64 = 256;

fn pack(epoch: u64, state: BreakerState) -> u64 {
    (epoch << 8) | u64::from(state.as_u8())
}

fn unpack(word: u64) -> (u64, BreakerState) {
    (word >> 8, BreakerState::from_u8((word & 0xFF) as u8))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Breaker {
    /// A builder starting from the defaults of [`CircuitBreakerConfig`].
    pub fn builder() -> BreakerBuilder {
        BreakerBuilder {
            config: CircuitBreakerConfig::default(),
        }
    }

    /// A breaker built from the configuration section.
    ///
    /// # Errors
    /// [`BreakerError::Config`] when the section breaks a rule.
    pub fn from_config(config: &CircuitBreakerConfig) -> Result<Self, BreakerError> {
        BreakerBuilder {
            config: config.clone(),
        }
        .build()
    }

    fn new(config: &CircuitBreakerConfig) -> Self {
        let settings = Settings {
            failure_threshold: config.failure_threshold,
            failure_rate: config.failure_rate_threshold,
            slow_rate: config.slow_call_rate_threshold,
            slow_call: config.slow_call_duration,
            minimum_calls: match config.sliding_window_type {
                SlidingWindowType::Count => config.minimum_calls.min(config.sliding_window_size),
                _ => config.minimum_calls,
            },
            reset_timeout: config.reset_timeout,
            multiplier: config.reset_timeout_multiplier,
            max_reset_timeout: config.max_reset_timeout,
            jitter: config.reset_timeout_jitter,
            trial_calls: config.half_open_permitted_calls,
            automatic: config.automatic_transition,
            max_wait_half_open: config.max_wait_in_half_open,
        };
        let window = match config.sliding_window_type {
            SlidingWindowType::Time => {
                Window::Time(TimeWindow::new(nanos(config.monitoring_period)))
            }
            _ => Window::Count(CountWindow::new(config.sliding_window_size)),
        };
        let inner = Arc::new_cyclic(|me| Inner {
            settings,
            word: AtomicU64::new(pack(0, BreakerState::Closed)),
            consecutive_failures: AtomicU32::new(0),
            window,
            trials: TrialWindow::new(),
            trial_permits: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            timer_armed: AtomicBool::new(false),
            half_open_until: AtomicU64::new(0),
            trips_in_a_row: AtomicU32::new(0),
            trips: AtomicU64::new(0),
            not_permitted: AtomicU64::new(0),
            base: Instant::now(),
            states: watch::Sender::new(BreakerState::Closed),
            transition: Mutex::new(None),
            me: me.clone(),
        });
        Self { inner }
    }
}

/// Builds a [`Breaker`]; every setting defaults as in [`CircuitBreakerConfig`].
#[derive(Clone, Debug)]
#[must_use]
pub struct BreakerBuilder {
    config: CircuitBreakerConfig,
}

impl BreakerBuilder {
    /// Consecutive failures that open the breaker.
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.config.failure_threshold = n;
        self
    }
    /// Failure rate in percent, (0, 100], that opens the breaker.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }
    /// Slow-call rate in percent, (0, 100], that opens the breaker.
    pub fn slow_call_rate_threshold(mut self, percent: f64) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }
    /// Calls at least this long are slow.
    pub fn slow_call_duration(mut self, d: Duration) -> Self {
        self.config.slow_call_duration = d;
        self
    }
    /// Measure over the last `calls` calls.
    pub fn count_window(mut self, calls: u32) -> Self {
        self.config.sliding_window_type = SlidingWindowType::Count;
        self.config.sliding_window_size = calls;
        self
    }
    /// Measure over the calls of the last `length`.
    pub fn time_window(mut self, length: Duration) -> Self {
        self.config.sliding_window_type = SlidingWindowType::Time;
        self.config.monitoring_period = length;
        self
    }
    /// Calls needed in the window before rates count.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.config.minimum_calls = n;
        self
    }
    /// Time spent open before trial calls (raises the backoff cap to it if that is lower).
    pub fn reset_timeout(mut self, d: Duration) -> Self {
        self.config.reset_timeout = d;
        self.config.max_reset_timeout = self.config.max_reset_timeout.max(d);
        self
    }
    /// Open time grows by `multiplier` per failed trial, up to `max`, spread by ±`jitter`.
    pub fn reset_timeout_backoff(mut self, multiplier: f64, max: Duration, jitter: f64) -> Self {
        self.config.reset_timeout_multiplier = multiplier;
        self.config.max_reset_timeout = max;
        self.config.reset_timeout_jitter = jitter;
        self
    }
    /// Trial calls permitted in HALF_OPEN.
    pub fn half_open_permitted_calls(mut self, n: u32) -> Self {
        self.config.half_open_permitted_calls = n;
        self
    }
    /// Move OPEN → HALF_OPEN by a timer rather than on the next call.
    pub fn automatic_transition(mut self, on: bool) -> Self {
        self.config.automatic_transition = on;
        self
    }
    /// Longest wait in HALF_OPEN for the trial calls; zero waits for them.
    pub fn max_wait_in_half_open(mut self, d: Duration) -> Self {
        self.config.max_wait_in_half_open = d;
        self
    }

    /// Builds the breaker.
    ///
    /// # Errors
    /// [`BreakerError::Config`] listing every setting that breaks a rule.
    pub fn build(self) -> Result<Breaker, BreakerError> {
        self.config.validate()?;
        Ok(Breaker::new(&self.config))
    }
}

impl Inner {
    #[inline]
    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.base))
    }

    #[inline]
    fn reject(&self, state: BreakerState) -> CallNotPermitted {
        self.not_permitted.fetch_add(1, Ordering::Relaxed);
        CallNotPermitted { state }
    }

    fn try_acquire(&self) -> Result<Permit, CallNotPermitted> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            let (epoch, state) = unpack(word);
            match state {
                BreakerState::Closed | BreakerState::Disabled | BreakerState::MetricsOnly => {
                    return Ok(Permit::new(epoch));
                }
                BreakerState::ForcedOpen => return Err(self.reject(state)),
                BreakerState::Open => {
                    // With a timer armed the clock (≈ 23 ns) is read only on every 256th
                    // rejection, as a safety net should the timer's runtime be gone.
                    if self.timer_armed.load(Ordering::Relaxed)
                        && !self
                            .not_permitted
                            .load(Ordering::Relaxed)
                            .is_multiple_of(CLOCK_CHECK_EVERY)
                    {
                        return Err(self.reject(state));
                    }
                    if self.now() < self.open_until.load(Ordering::Acquire) {
                        return Err(self.reject(state));
                    }
                    self.transition_from(word, BreakerState::HalfOpen);
                }
                BreakerState::HalfOpen => {
                    let took = self
                        .trial_permits
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                        .is_ok();
                    if took {
                        return Ok(Permit::new(epoch));
                    }
                    let until = self.half_open_until.load(Ordering::Acquire);
                    if until != 0 && self.now() >= until {
                        self.transition_from(word, BreakerState::Open);
                        continue;
                    }
                    return Err(self.reject(state));
                }
            }
        }
    }

    fn record(&self, permit: Permit, failed: bool, elapsed: Duration) {
        let word = self.word.load(Ordering::Acquire);
        let (epoch, state) = unpack(word);
        if permit.tag() != epoch {
            // Issued in an earlier state: its outcome says nothing about this one.
            return;
        }
        let slow = elapsed >= self.settings.slow_call;
        match state {
            BreakerState::Closed | BreakerState::MetricsOnly => {
                if !failed
                    && !slow
                    && matches!(&self.window, Window::Count(w) if w.all_fast_successes())
                    && self.consecutive_failures.load(Ordering::Relaxed) == 0
                {
                    // Nothing would change: see `CountWindow::all_fast_successes`.
                    return;
                }
                let counts = match &self.window {
                    Window::Count(w) => w.record(failed, slow),
                    Window::Time(w) => w.record(self.now(), failed, slow),
                };
                let consecutive = if failed {
                    self.consecutive_failures
                        .fetch_add(1, Ordering::AcqRel)
                        .saturating_add(1)
                } else {
                    if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                        self.consecutive_failures.store(0, Ordering::Release);
                    }
                    0
                };
                if state == BreakerState::Closed
                    && (consecutive >= self.settings.failure_threshold || self.exceeded(counts))
                {
                    self.transition_from(word, BreakerState::Open);
                }
            }
            BreakerState::HalfOpen => {
                let Some(counts) = self.trials.record(epoch, failed, slow) else {
                    return;
                };
                if counts.total >= self.settings.trial_calls {
                    let next = if self.rates_reached(counts) {
                        BreakerState::Open
                    } else {
                        BreakerState::Closed
                    };
                    self.transition_from(word, next);
                }
            }
            BreakerState::Open | BreakerState::ForcedOpen | BreakerState::Disabled => {}
        }
    }

    fn release(&self, permit: Permit) {
        let word = self.word.load(Ordering::Acquire);
        let (epoch, state) = unpack(word);
        if state == BreakerState::HalfOpen && permit.tag() == epoch {
            self.trial_permits.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn exceeded(&self, counts: Counts) -> bool {
        counts.total >= self.settings.minimum_calls && self.rates_reached(counts)
    }

    fn rates_reached(&self, counts: Counts) -> bool {
        let (failure, slow) = counts.rates();
        failure >= self.settings.failure_rate || slow >= self.settings.slow_rate
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<AbortHandle>> {
        self.transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves from the state `word` to `to`, unless another transition got there first.
    fn transition_from(&self, word: u64, to: BreakerState) {
        let mut timer = self.lock();
        if self.word.load(Ordering::Acquire) == word {
            self.enter(&mut timer, word, to);
        }
    }

    /// An explicit transition, checked against the allowed ones.
    fn transition_to(&self, to: BreakerState) -> Result<(), BreakerError> {
        let mut timer = self.lock();
        let word = self.word.load(Ordering::Acquire);
        let (_, from) = unpack(word);
        if !from.can_transition_to(to) {
            return Err(BreakerError::IllegalTransition { from, to });
        }
        if from != to {
            self.enter(&mut timer, word, to);
        }
        Ok(())
    }

    fn reset(&self) {
        let mut timer = self.lock();
        let word = self.word.load(Ordering::Acquire);
        self.enter(&mut timer, word, BreakerState::Closed);
    }

    /// Prepares `to`, then publishes it. Runs under the transition lock; permitted calls never
    /// wait for it, and nothing records into the target state's window before it is published.
    fn enter(&self, timer: &mut Option<AbortHandle>, word: u64, to: BreakerState) {
        let (epoch, from) = unpack(word);
        let next_epoch = epoch.wrapping_add(1) & (u64::MAX >> 8);
        if let Some(pending) = timer.take() {
            pending.abort();
        }
        self.timer_armed.store(false, Ordering::Relaxed);
        let now = self.now();
        match to {
            BreakerState::Closed | BreakerState::MetricsOnly => {
                if to == BreakerState::Closed {
                    self.trips_in_a_row.store(0, Ordering::Release);
                }
                match &self.window {
                    Window::Count(w) => w.reset(),
                    Window::Time(w) => w.reset(),
                }
                self.consecutive_failures.store(0, Ordering::Release);
            }
            BreakerState::Open => {
                let trips = self
                    .trips_in_a_row
                    .fetch_add(1, Ordering::AcqRel)
                    .saturating_add(1);
                self.trips.fetch_add(1, Ordering::Relaxed);
                let until = now.saturating_add(nanos(self.open_time(trips)));
                self.open_until.store(until, Ordering::Release);
                if self.settings.automatic {
                    *timer = self.schedule(until, pack(next_epoch, to), BreakerState::HalfOpen);
                    self.timer_armed.store(timer.is_some(), Ordering::Relaxed);
                }
            }
            BreakerState::HalfOpen => {
                self.trials.reset(next_epoch);
                self.trial_permits
                    .store(self.settings.trial_calls, Ordering::Release);
                let wait = self.settings.max_wait_half_open;
                if wait.is_zero() {
                    self.half_open_until.store(0, Ordering::Release);
                } else {
                    let until = now.saturating_add(nanos(wait)).max(1);
                    self.half_open_until.store(until, Ordering::Release);
                    *timer = self.schedule(until, pack(next_epoch, to), BreakerState::Open);
                }
            }
            BreakerState::Disabled | BreakerState::ForcedOpen => {}
        }
        self.word.store(pack(next_epoch, to), Ordering::Release);
        if from != to {
            self.states.send_replace(to);
        }
    }

    /// How long to stay open on the `trips`-th trip in a row.
    fn open_time(&self, trips: u32) -> Duration {
        let s = &self.settings;
        let grown = s.reset_timeout.as_secs_f64()
            * s.multiplier
                .powi(i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX));
        let capped = grown.min(s.max_reset_timeout.as_secs_f64());
        let spread = if s.jitter > 0.0 {
            1.0 + s.jitter * (fastrand::f64() * 2.0 - 1.0)
        } else {
            1.0
        };
        Duration::try_from_secs_f64(capped * spread).unwrap_or(s.max_reset_timeout)
    }

    /// Runs `transition_from(expected, to)` at `at` (nanoseconds since `base`), if a runtime
    /// is there to run timers. A later transition aborts it.
    fn schedule(&self, at: u64, expected: u64, to: BreakerState) -> Option<AbortHandle> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let me = self.me.clone();
        let deadline = self.base + Duration::from_nanos(at);
        let task = runtime.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(inner) = me.upgrade() {
                inner.transition_from(expected, to);
            }
        });
        Some(task.abort_handle())
    }

    fn snapshot(&self) -> BreakerSnapshot {
        let (_, state) = unpack(self.word.load(Ordering::Acquire));
        let (counts, enough) = match state {
            BreakerState::HalfOpen => {
                let c = self.trials.counts();
                (c, c.total >= self.settings.trial_calls)
            }
            _ => {
                let c = match &self.window {
                    Window::Count(w) => w.counts(),
                    Window::Time(w) => w.counts_at(self.now()),
                };
                (c, c.total >= self.settings.minimum_calls)
            }
        };
        let (failure, slow) = counts.rates();
        BreakerSnapshot {
            state,
            failure_rate: enough.then_some(failure),
            slow_call_rate: enough.then_some(slow),
            buffered_calls: counts.total,
            failed_calls: counts.failed,
            slow_calls: counts.slow,
            consecutive_failures: self.consecutive_failures.load(Ordering::Acquire),
            not_permitted_calls: self.not_permitted.load(Ordering::Relaxed),
            trips: self.trips.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(timer) = self
            .transition
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            timer.abort();
        }
    }
}

impl CircuitBreaker for Breaker {
    #[inline]
    fn try_acquire(&self) -> Result<Permit, CallNotPermitted> {
        self.inner.try_acquire()
    }

    #[inline]
    fn on_success(&self, permit: Permit, elapsed: Duration) {
        self.inner.record(permit, false, elapsed);
    }

    #[inline]
    fn on_error(&self, permit: Permit, elapsed: Duration) {
        self.inner.record(permit, true, elapsed);
    }

    fn release_permission(&self, permit: Permit) {
        self.inner.release(permit);
    }

    #[inline]
    fn state(&self) -> BreakerState {
        unpack(self.inner.word.load(Ordering::Acquire)).1
    }

    fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.inner.states.subscribe()
    }

    fn snapshot(&self) -> BreakerSnapshot {
        self.inner.snapshot()
    }

    fn transition_to(&self, state: BreakerState) -> Result<(), BreakerError> {
        self.inner.transition_to(state)
    }

    fn reset(&self) {
        self.inner.reset();
    }
}
