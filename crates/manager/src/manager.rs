//! [`RedisManager`]: the parts it holds, their accessors, the health report and close. The
//! request path is in `request.rs`, the recovery loop in `recovery.rs`, building in
//! `builder.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use resilient_redis_breaker::{BreakerState, CircuitBreaker};
use resilient_redis_config::RedisConfig;
use resilient_redis_fallback::{FallbackStore, Journal, SyncTarget};
use resilient_redis_health::{HealthMonitor, HealthStatus};
use resilient_redis_metrics::{FallbackGauge, MetricsCollector};
use resilient_redis_pool::{ConnectionPool, PooledConnection};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Error;
use crate::report::{HealthReport, Verdict};
use crate::request::{CallOptions, Scope, overtake_error, unavailable};

/// How long `close` waits between replay attempts while Redis is unreachable.
const CLOSE_RETRY: Duration = Duration::from_millis(50);

pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    pub(crate) pool: Arc<dyn ConnectionPool>,
    pub(crate) health: Arc<dyn HealthMonitor>,
    pub(crate) breaker: Arc<dyn CircuitBreaker>,
    pub(crate) store: Arc<dyn FallbackStore>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) metrics: Arc<dyn MetricsCollector>,
    pub(crate) target: Arc<dyn SyncTarget>,
    pub(crate) fallback_enabled: bool,
    pub(crate) shadow: bool,
    pub(crate) closed: AtomicBool,
    /// Fallback mode: calls are answered from memory (and writes journaled) instead of going
    /// to Redis. Turned on by a call that finds Redis unreachable, a health verdict or a
    /// restored journal; off once Redis answers and the journal has drained.
    pub(crate) fallback_mode: AtomicBool,
    /// In cluster mode, the slots whose keys fallback mode covers: a key is answered from
    /// memory only when fallback mode is on and its slot is in the set. Every slot with a
    /// journaled write stays in it until fallback mode ends (the journal drained). `None`
    /// outside cluster mode: fallback mode covers every key.
    pub(crate) slots: Option<crate::slots::SlotSet>,
    /// Orders fallback-mode changes against journal appends: every answer from the fallback
    /// store (and so every journal append) happens under a read guard, after checking the mode
    /// and `closed`; leaving fallback mode and closing take the write guard. So fallback mode
    /// never ends while an append is in flight, and nothing is journaled after close.
    pub(crate) gate: RwLock<()>,
    /// Woken when a call turns fallback mode on: the recovery loop probes at once.
    pub(crate) activated: Arc<tokio::sync::Notify>,
    /// Writes Redis refused at replay since the start (kept as dead letters by the store).
    pub(crate) dead_letters: std::sync::atomic::AtomicU64,
    /// Journaled writes replayed into Redis since the start.
    pub(crate) replayed: std::sync::atomic::AtomicU64,
    /// The built-in store's memory use, for the gauges (a store of the application's own
    /// reports none).
    pub(crate) memory: Option<Arc<resilient_redis_fallback::MemoryStore>>,
    pub(crate) tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn is_fallback_mode(&self) -> bool {
        self.fallback_mode.load(Ordering::Acquire)
    }

    /// Whether a call touching `scope` is answered from memory: fallback mode is on and, in
    /// cluster mode, one of its keys' slots is covered.
    pub(crate) fn in_fallback(&self, scope: Scope<'_>) -> bool {
        if !self.is_fallback_mode() {
            return false;
        }
        match &self.slots {
            None => true,
            Some(set) => {
                let mut any = false;
                scope.each_slot(|slot| any |= slot.is_none_or(|s| set.contains(s)));
                any
            }
        }
    }

    /// Covers `scope`'s slots (cluster mode): a call answered from memory puts every slot it
    /// touches in fallback mode, so that no key with a journaled write is sent to Redis before
    /// its replay.
    pub(crate) fn cover(&self, scope: Scope<'_>) {
        if let Some(set) = &self.slots {
            scope.each_slot(|slot| match slot {
                Some(s) => set.insert(s),
                None => set.insert_all(),
            });
        }
    }

    /// Turns fallback mode on for every key (for `reason`, an audit field); whether it was off.
    pub(crate) fn activate(&self, reason: &'static str) -> bool {
        self.activate_for(reason, Scope::All, false)
    }

    /// Turns fallback mode on for `scope` (for `reason`, an audit field); whether it was off.
    /// In cluster mode, with `widen`, a failed key's whole primary is covered, as the last slot
    /// map shows it: its other keys then go to memory without each waiting for a timeout.
    pub(crate) fn activate_for(&self, reason: &'static str, scope: Scope<'_>, widen: bool) -> bool {
        self.cover(scope);
        if widen
            && let Some(set) = &self.slots
            && let Some(primaries) = self.pool.cluster_primaries()
        {
            let mut widened: Vec<usize> = Vec::new();
            scope.each_slot(|slot| {
                let Some(slot) = slot else { return };
                if let Some(at) = primaries
                    .iter()
                    .position(|p| p.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
                    && !widened.contains(&at)
                {
                    widened.push(at);
                    for (a, b) in &primaries[at].slots {
                        set.insert_range(*a, *b);
                    }
                }
            });
        }
        let turned = !self.fallback_mode.swap(true, Ordering::AcqRel);
        if turned {
            crate::audit::fallback_on(reason, self.journal.pending_writes());
        }
        turned
    }

    /// After an unhealthy probe in cluster mode: covers the slots of the primaries that did not
    /// answer, and says whether that was all (`false`: the whole cluster is down, or nothing is
    /// known of it, and fallback mode must cover every key).
    pub(crate) fn activate_failing_primaries(&self) -> bool {
        let Some(set) = &self.slots else {
            return false;
        };
        let Some(primaries) = self.pool.cluster_primaries() else {
            return false;
        };
        let failing: Vec<_> = primaries.iter().filter(|p| p.error.is_some()).collect();
        if failing.is_empty() || failing.len() == primaries.len() {
            return false;
        }
        for p in failing {
            for (a, b) in &p.slots {
                set.insert_range(*a, *b);
            }
        }
        if !self.fallback_mode.swap(true, Ordering::AcqRel) {
            crate::audit::fallback_on("primary_unreachable", self.journal.pending_writes());
        }
        true
    }

    /// Slots in fallback mode (cluster mode): `None` outside cluster mode.
    pub(crate) fn fallback_slots(&self) -> Option<u32> {
        let set = self.slots.as_ref()?;
        Some(if self.is_fallback_mode() {
            set.len()
        } else {
            0
        })
    }

    /// Turns fallback mode off and lets the store drop what it kept only to answer.
    pub(crate) fn deactivate(&self) {
        if self.fallback_mode.swap(false, Ordering::AcqRel) {
            crate::audit::fallback_off(self.journal.pending_writes());
        }
        if let Some(set) = &self.slots {
            set.clear();
        }
        self.store.settle();
    }

    pub(crate) fn fallback_gauge(&self) -> FallbackGauge {
        let gauge = FallbackGauge::new(self.is_fallback_mode(), self.journal.pending_writes())
            .with_dead_letters(self.dead_letters.load(Ordering::Relaxed))
            .with_replayed(self.replayed.load(Ordering::Relaxed));
        match &self.memory {
            Some(store) => {
                let m = store.memory();
                gauge.with_memory(m.pinned.saturating_add(m.shadow), m.limit)
            }
            None => gauge,
        }
    }

    pub(crate) fn count_dead_letters(&self, report: &resilient_redis_fallback::ReplayReport) {
        if report.rejected > 0 {
            let total = self
                .dead_letters
                .fetch_add(report.rejected, Ordering::Relaxed)
                + report.rejected;
            crate::audit::dead_letters(report.rejected, total);
        }
    }
}

/// The resilient Redis client applications call: every operation passes the circuit breaker,
/// runs on a shared pooled connection under the socket timeout, is retried with exponential
/// backoff and jitter when that is safe, is classified and recorded; when Redis is down the
/// fallback store answers what it can and journals writes, which are replayed on recovery.
///
/// Cheap to clone (an `Arc` inside). Build it with [`RedisManager::builder`] or
/// [`RedisManager::from_env`]; call [`RedisManager::close`] on shutdown so nothing acknowledged
/// is lost.
#[derive(Clone)]
pub struct RedisManager {
    pub(crate) inner: Arc<Inner>,
    pub(crate) options: CallOptions,
}

impl std::fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisManager")
            .field("url", &self.inner.config.url)
            .field("breaker", &self.inner.breaker.state())
            .field("fallback_mode", &self.inner.is_fallback_mode())
            .finish_non_exhaustive()
    }
}

impl RedisManager {
    /// A handle on the same manager whose calls use `options` (a timeout of their own, no
    /// retry, no fallback); cheap (a clone). Works for the typed API and for
    /// [`RedisManager::redis_connection`] alike.
    ///
    /// ```no_run
    /// # async fn f(m: resilient_redis_manager::RedisManager) -> Result<(), resilient_redis_manager::Error> {
    /// use std::time::Duration;
    /// use resilient_redis_manager::CallOptions;
    /// let fast = m.with_options(CallOptions::new().timeout(Duration::from_millis(20)).no_fallback());
    /// let flag = fast.get(b"feature:beta").await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_options(&self, options: CallOptions) -> RedisManager {
        RedisManager {
            inner: Arc::clone(&self.inner),
            options,
        }
    }

    /// The configuration it runs on.
    #[must_use]
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The circuit breaker (its state, its figures, manual control).
    #[must_use]
    pub fn breaker(&self) -> &Arc<dyn CircuitBreaker> {
        &self.inner.breaker
    }

    /// The fallback store.
    #[must_use]
    pub fn fallback(&self) -> &Arc<dyn FallbackStore> {
        &self.inner.store
    }

    /// The fallback journal: writes taken while Redis was down, until they are replayed.
    #[must_use]
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// Whether calls are being answered from memory (Redis unreachable, or journaled writes
    /// still to replay). In cluster mode: for some keys at least (see
    /// [`RedisManager::fallback_covers`]).
    #[must_use]
    pub fn is_fallback_mode(&self) -> bool {
        self.inner.is_fallback_mode()
    }

    /// Whether a call on `key` would be answered from memory now: fallback mode is on and, in
    /// cluster mode, covers the key's slot (its primary failed, or it has journaled writes).
    #[must_use]
    pub fn fallback_covers(&self, key: &[u8]) -> bool {
        self.inner.in_fallback(crate::request::Scope::Key(key))
    }

    /// Whether fallback mode is off and nothing journaled waits: Redis answers every call.
    #[must_use]
    pub fn is_settled(&self) -> bool {
        !self.inner.is_fallback_mode() && self.inner.journal.pending_writes() == 0
    }

    /// The metrics collector (snapshot, report).
    #[must_use]
    pub fn metrics(&self) -> &Arc<dyn MetricsCollector> {
        &self.inner.metrics
    }

    /// The connection pool.
    #[must_use]
    pub fn pool(&self) -> &Arc<dyn ConnectionPool> {
        &self.inner.pool
    }

    /// The health monitor's latest status.
    #[must_use]
    pub fn health_status(&self) -> HealthStatus {
        self.inner.health.status()
    }

    /// A dedicated connection from the pool (blocking commands, WATCH/MULTI). The breaker and
    /// the fallback do not apply to what runs on it; the socket timeout does.
    ///
    /// # Errors
    /// [`Error::Unavailable`] with the pool's reason, or of kind `fallback_error` while
    /// journaled writes wait for their replay (commands on it could overtake them).
    pub async fn connection(&self) -> Result<PooledConnection, Error> {
        if self.journal_pending() {
            return Err(overtake_error());
        }
        let started = Instant::now();
        let conn = self.inner.pool.get().await.map_err(unavailable);
        self.inner
            .metrics
            .record_pool(self.inner.pool.status(), Some(started.elapsed()));
        conn
    }

    /// One report across every part, with a PING made now through the health monitor. For a
    /// probe called often, [`RedisManager::health_report`] answers from the last PING instead.
    pub async fn health_check(&self) -> HealthReport {
        let probe = self.inner.health.check_now().await;
        self.report(probe)
    }

    /// The same report from what the health monitor last saw: no PING, no I/O, so a readiness
    /// probe can call it as often as it likes (the `axum` feature's `/ready` does). Fresh within
    /// one `health.check_interval`.
    #[must_use]
    pub fn health_report(&self) -> HealthReport {
        self.report(self.inner.health.status())
    }

    fn report(&self, probe: resilient_redis_health::HealthStatus) -> HealthReport {
        let inner = &*self.inner;
        let breaker = inner.breaker.state();
        let snapshot = inner.metrics.snapshot();
        let fallback_mode = inner.is_fallback_mode();
        let reachable = probe.error.is_none();
        // Unhealthy means requests fail: Redis unreachable and no fallback configured. With
        // the fallback on, memory answers from the first failed call, whether or not fallback
        // mode has begun yet.
        let verdict = if !(reachable || inner.fallback_enabled) {
            Verdict::Unhealthy
        } else if !reachable
            || fallback_mode
            || breaker != BreakerState::Closed
            || snapshot.error_rate >= resilient_redis_metrics::thresholds::ERROR_RATE
        {
            Verdict::Degraded
        } else {
            Verdict::Healthy
        };
        HealthReport {
            verdict,
            server: crate::adapters::config_identity(&inner.config),
            redis_reachable: reachable,
            latency: probe.response_time,
            error: probe.error,
            breaker: breaker.as_str(),
            pool: inner.pool.status(),
            fallback_mode,
            fallback_slots: inner.fallback_slots(),
            pending_writes: inner.journal.pending_writes(),
            dead_letters: inner.dead_letters.load(Ordering::Relaxed),
            error_rate: snapshot.error_rate,
        }
    }

    /// Stops health checks and the recovery loop, replays pending writes (retrying while Redis
    /// or the pool's connections come back, for up to `deadline`; what is left is persisted to
    /// the journal file for the next process), and closes the pool, waiting up to `deadline`
    /// again for checked-out connections.
    ///
    /// # Errors
    /// [`Error::Fallback`] when writes are still pending and cannot be persisted: they are lost
    /// only if the process then exits, and the error says how many.
    pub async fn close(&self, deadline: Duration) -> Result<(), Error> {
        let inner = &*self.inner;
        // Every call runs every step (each is idempotent): a close whose future was dropped
        // half-way must not let the next one answer `Ok` with writes still pending.
        inner.closed.store(true, Ordering::Release);
        let tasks: Vec<_> = inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        // Stop the recovery loop and wait until it is gone, so a replay it was running has
        // released the journal before close replays.
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        inner.health.stop().await;
        // Wait for answers from memory in flight; later ones see `closed` and refuse.
        drop(inner.gate.write().unwrap_or_else(PoisonError::into_inner));
        // Replay until the journal is drained or the deadline passes: Redis may be back while
        // the pool is still reconnecting (found by the chaos campaign: a close right after an
        // outage gave up at once and left every journaled write for a next process).
        let started = Instant::now();
        let left = || deadline.saturating_sub(started.elapsed());
        while inner.journal.pending_writes() > 0 {
            let wait =
                match tokio::time::timeout(left(), inner.journal.replay(Arc::clone(&inner.target)))
                    .await
                {
                    Ok(Ok(report)) => {
                        inner.count_dead_letters(&report);
                        inner.metrics.record_fallback(inner.fallback_gauge());
                        if report.entries_applied > 0 || report.rejected > 0 {
                            crate::audit::replay_end(&report, inner.journal.pending_writes(), true);
                        }
                        // Nothing moved: another replay holds the journal (a second close, the
                        // recovery loop being stopped). Wait for it rather than spin.
                        report.batches_applied == 0 && report.batches_skipped == 0
                    }
                    Ok(Err(e)) if e.kind().is_transient() => {
                        tracing::debug!(error = %e, "cannot replay on close yet; retrying");
                        true
                    }
                    Ok(Err(e)) => {
                        crate::audit::replay_failed(&e, inner.journal.pending_writes(), true);
                        break;
                    }
                    Err(_) => {
                        crate::audit::replay_failed(
                            &"the close deadline passed during the replay",
                            inner.journal.pending_writes(),
                            true,
                        );
                        break;
                    }
                };
            if wait {
                if left() <= CLOSE_RETRY {
                    tracing::warn!("writes still pending when the close deadline passed");
                    break;
                }
                tokio::time::sleep(CLOSE_RETRY).await;
            }
        }
        let persisted = inner.journal.close();
        inner.pool.close(deadline).await;
        crate::audit::closed(inner.journal.pending_writes());
        persisted.map_err(Error::from)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}
