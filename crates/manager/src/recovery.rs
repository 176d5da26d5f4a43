//! The recovery loop: follows the breaker and the health monitor, replays the journal.

use std::sync::{Arc, PoisonError};

use resilient_redis_breaker::{BreakerState, CircuitBreaker};
use resilient_redis_health::HealthMonitor;
use resilient_redis_metrics::{BreakerGauge, HealthGauge, MetricsCollector};

use crate::manager::Inner;

/// The recovery loop: follows the breaker and the health monitor, enters fallback mode when
/// either says Redis is down, and when Redis answers again moves the breaker to half-open,
/// replays the journal and leaves fallback mode once it is drained.
///
/// The receivers are taken before the loop is spawned, and the health monitor's current status
/// is handled as a change: a verdict given before the loop first runs is not missed.
pub(crate) async fn supervise(
    inner: std::sync::Weak<Inner>,
    mut breaker_rx: tokio::sync::watch::Receiver<BreakerState>,
    mut health_rx: tokio::sync::watch::Receiver<resilient_redis_health::HealthStatus>,
) {
    let Some(first) = inner.upgrade() else { return };
    let sync_every = first.config.fallback.sync_interval;
    let gauges_every = first.config.metrics.collection_interval;
    let activated = Arc::clone(&first.activated);
    drop(first);
    let mut was_healthy = true;
    // Whether the last unhealthy verdict was an outage of all of Redis (not of some primaries).
    let mut was_total = false;
    health_rx.mark_changed();
    let mut sync = tokio::time::interval(sync_every);
    let mut gauges = tokio::time::interval(gauges_every);
    loop {
        tokio::select! {
            changed = breaker_rx.changed() => {
                if changed.is_err() { return; }
                let state = *breaker_rx.borrow_and_update();
                let Some(m) = inner.upgrade() else { return };
                let snap = m.breaker.snapshot();
                m.metrics.record_breaker_state(BreakerGauge::new(state.as_str(), state.as_u8(), snap.trips));
                crate::audit::breaker(state.as_str(), snap.trips);
                if state == BreakerState::Open && m.fallback_enabled {
                    m.activate("breaker_open");
                    m.metrics.record_fallback(m.fallback_gauge());
                }
            }
            changed = health_rx.changed() => {
                if changed.is_err() { return; }
                let status = health_rx.borrow_and_update().clone();
                let Some(m) = inner.upgrade() else { return };
                m.metrics.record_health(HealthGauge::new(status.healthy, status.response_time.unwrap_or_default()));
                let turned_unhealthy = was_healthy && !status.healthy;
                if was_healthy != status.healthy {
                    crate::audit::health(status.healthy, status.error.as_deref());
                }
                was_healthy = status.healthy;
                if !status.healthy {
                    // In a cluster where some primaries still answer, only the slots of those
                    // that do not go to memory; the rest is served by Redis.
                    let partial = m.fallback_enabled
                        && status.error.is_some()
                        && m.activate_failing_primaries();
                    // The breaker hears of an outage even when no call reaches Redis (fallback
                    // mode answers them all): the outage of all of Redis (of every primary)
                    // opens it once, so its state and trips count outages, whatever the
                    // traffic.
                    // A good probe short of the success threshold (no error) says nothing new:
                    // it neither widens an outage nor trips the breaker.
                    let total = !partial && (status.error.is_some() || m.slots.is_none());
                    if total
                        && (turned_unhealthy || !was_total)
                        && matches!(m.breaker.state(), BreakerState::Closed | BreakerState::HalfOpen)
                    {
                        let _ = m.breaker.transition_to(BreakerState::Open);
                    }
                    if status.error.is_some() || m.slots.is_none() {
                        was_total = total;
                    }
                    // A good probe short of the success threshold (no error) is no reason to go
                    // back to memory right after a recovery. (In a cluster, a partial outage
                    // that became total widens fallback mode to every key.)
                    if total
                        && m.fallback_enabled
                        && status.error.is_some()
                        && (m.slots.is_some() || !m.is_fallback_mode())
                    {
                        m.activate("unhealthy");
                    }
                } else if status.healthy && status.error.is_none() {
                    was_total = false;
                    recover(&m).await;
                }
            }
            () = activated.notified() => {
                let Some(m) = inner.upgrade() else { return };
                let probe = m.health.check_now().await;
                if probe.error.is_none() {
                    recover(&m).await;
                }
            }
            _ = sync.tick() => {
                let Some(m) = inner.upgrade() else { return };
                if m.is_fallback_mode() || m.journal.pending_writes() > 0 {
                    let probe = m.health.check_now().await;
                    if probe.error.is_none() {
                        recover(&m).await;
                    }
                }
            }
            _ = gauges.tick() => {
                let Some(m) = inner.upgrade() else { return };
                m.metrics.record_pool(m.pool.status(), None);
                m.metrics.record_fallback(m.fallback_gauge());
            }
        }
    }
}

/// Replays run back to back, at most, when writes keep arriving during them.
const CATCH_UP_ROUNDS: usize = 8;

/// Redis answers: half-open the breaker, replay the journal, leave fallback mode when drained.
pub(crate) async fn recover(inner: &Inner) {
    if !inner.is_fallback_mode() && inner.journal.pending_writes() == 0 {
        return;
    }
    if matches!(inner.breaker.state(), BreakerState::Open) {
        let _ = inner.breaker.transition_to(BreakerState::HalfOpen);
    }
    // Writes answered from memory while a replay ran are replayed at once, a few rounds at
    // most: under steady writes each round is shorter, and fallback mode ends when one leaves
    // nothing behind (rather than chasing the writes once per sync interval).
    for _ in 0..=CATCH_UP_ROUNDS {
        match inner.journal.replay(Arc::clone(&inner.target)).await {
            Ok(report) => {
                if report.entries_applied > 0 || report.rejected > 0 {
                    crate::audit::replay_end(&report, inner.journal.pending_writes(), false);
                }
                inner
                    .replayed
                    .fetch_add(report.entries_applied, std::sync::atomic::Ordering::Relaxed);
                inner.count_dead_letters(&report);
                {
                    // No append is in flight while the write guard is held, so "drained" holds.
                    let _gate = inner.gate.write().unwrap_or_else(PoisonError::into_inner);
                    if inner.journal.pending_writes() == 0 && inner.is_fallback_mode() {
                        inner.deactivate();
                    }
                }
                inner.metrics.record_fallback(inner.fallback_gauge());
                if report.entries_applied == 0 || inner.journal.pending_writes() == 0 {
                    return;
                }
            }
            // Redis answered a probe but the pool is still reconnecting: the next probe retries.
            Err(e) if e.kind().is_transient() => {
                tracing::debug!(error = %e, "replay not possible yet");
                return;
            }
            Err(e) => {
                crate::audit::replay_failed(&e, inner.journal.pending_writes(), false);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use resilient_redis_breaker::NoopBreaker;
    use resilient_redis_config::RedisConfig;
    use resilient_redis_fallback::{FallbackStoreExt, Journal, MemoryStore, ModelTarget};
    use resilient_redis_metrics::NoopMetrics;

    use super::*;
    use crate::RedisManager;

    /// Fails without the mode gate: recovery found the journal drained and ended fallback mode
    /// while a request was between "fallback mode?" and its journal append; that write was
    /// acknowledged, the caller's next write went straight to Redis and was later overwritten
    /// by the replay of the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(
        clippy::await_holding_lock,
        reason = "the guard stands for a request paused inside its append; the other worker runs recovery"
    )]
    async fn fallback_mode_does_not_end_while_an_append_is_in_flight() {
        let config = RedisConfig::default();
        let store = Arc::new(MemoryStore::new(&config.fallback).unwrap());
        let mut health = resilient_redis_health::MockHealthMonitor::new();
        health.expect_stop().return_const(());
        let m = RedisManager::builder(config)
            .pool(Arc::new(resilient_redis_pool::MockConnectionPool::new()))
            .health(Arc::new(health))
            .breaker(Arc::new(NoopBreaker::new()))
            .fallback(Arc::clone(&store))
            .metrics(Arc::new(NoopMetrics))
            .sync_target(Arc::new(ModelTarget::new()))
            .background_tasks(false)
            .build()
            .await
            .unwrap();
        m.inner.activate("call_failed");
        // A request answered from memory: it has checked the mode and is about to append.
        let in_flight = m.inner.gate.read().unwrap();
        let recovery = tokio::spawn({
            let m = m.clone();
            async move { recover(&m.inner).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            m.is_fallback_mode(),
            "recovery waits for the append in flight"
        );
        store.set(b"k", b"v", None).unwrap();
        drop(in_flight);
        recovery.await.unwrap();
        assert!(m.is_fallback_mode(), "a write is pending: still on");
        assert_eq!(store.pending_writes(), 1);
        recover(&m.inner).await;
        assert!(!m.is_fallback_mode(), "drained: off");
    }
}
