//! The audit trail: every change of state as one structured `tracing` event on the target
//! [`TARGET`], with a stable `event` name and stable fields, so that a log pipeline can alert
//! on them and reconstruct an outage. Never a key, a value or a password.
//!
//! | `event` | level | fields |
//! |---|---|---|
//! | `breaker_state` | `warn` when it opens, `info` otherwise | `state`, `trips` |
//! | `health` | `warn` unhealthy, `info` healthy | `healthy`, `error` |
//! | `fallback_on` | `warn` | `reason` (`call_failed`, `breaker_open`, `unhealthy`, `journal_restored`), `pending` |
//! | `fallback_off` | `info` | `pending` |
//! | `replay_end` | `info` | `applied`, `batches`, `rejected`, `pending`, `on_close` |
//! | `replay_failed` | `warn` | `error`, `pending`, `on_close` |
//! | `dead_letters` | `error` | `count`, `total` |
//! | `closed` | `info`, `warn` with writes left | `pending` |

/// The `tracing` target of every audit event.
pub const TARGET: &str = "resilient_redis::audit";

pub(crate) fn breaker(state: &'static str, trips: u64) {
    if state == "open" || state == "forced_open" {
        tracing::warn!(target: TARGET, event = "breaker_state", state, trips, "circuit breaker {state}");
    } else {
        tracing::info!(target: TARGET, event = "breaker_state", state, trips, "circuit breaker {state}");
    }
}

pub(crate) fn health(healthy: bool, error: Option<&str>) {
    let error = error.unwrap_or("");
    if healthy {
        tracing::info!(target: TARGET, event = "health", healthy, error, "Redis healthy");
    } else {
        tracing::warn!(target: TARGET, event = "health", healthy, error, "Redis unhealthy");
    }
}

pub(crate) fn fallback_on(reason: &'static str, pending: u64) {
    tracing::warn!(
        target: TARGET,
        event = "fallback_on",
        reason,
        pending,
        "fallback mode on: serving from memory, journaling writes"
    );
}

pub(crate) fn fallback_off(pending: u64) {
    tracing::info!(target: TARGET, event = "fallback_off", pending, "fallback mode off");
}

pub(crate) fn replay_end(
    report: &resilient_redis_fallback::ReplayReport,
    pending: u64,
    on_close: bool,
) {
    tracing::info!(
        target: TARGET,
        event = "replay_end",
        applied = report.entries_applied,
        batches = report.batches_applied,
        rejected = report.rejected,
        pending,
        on_close,
        "replayed journaled writes"
    );
}

pub(crate) fn replay_failed(error: &dyn std::fmt::Display, pending: u64, on_close: bool) {
    tracing::warn!(
        target: TARGET,
        event = "replay_failed",
        error = %error,
        pending,
        on_close,
        "cannot replay journaled writes"
    );
}

pub(crate) fn dead_letters(count: u64, total: u64) {
    tracing::error!(
        target: TARGET,
        event = "dead_letters",
        count,
        total,
        "Redis refused replayed writes; they are kept as dead letters in the journal"
    );
}

pub(crate) fn closed(pending: u64) {
    if pending == 0 {
        tracing::info!(target: TARGET, event = "closed", pending, "manager closed");
    } else {
        tracing::warn!(
            target: TARGET,
            event = "closed",
            pending,
            "manager closed with journaled writes left for the next process"
        );
    }
}
