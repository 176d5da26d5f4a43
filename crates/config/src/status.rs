//! Point-in-time figures of a connection pool: what the pool reports and the metrics record
//! (one type for both).

use std::fmt;

/// What a pool holds and has done. Counters (`created`, `closed`, `timeouts`,
/// `validation_failures`) only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Most connections open at once (`pool.max_size`).
    pub max_size: u32,
    /// Connections open now (shared and exclusive).
    pub open: u32,
    /// Exclusive connections open and waiting in the pool.
    pub idle: u32,
    /// Exclusive connections checked out now.
    pub in_use: u32,
    /// Shared (multiplexed) connections up and serving.
    pub shared_up: u32,
    /// Shared connections configured.
    pub shared_total: u32,
    /// Callers waiting for an exclusive connection.
    pub waiters: u32,
    /// Connections opened since start.
    pub created: u64,
    /// Connections closed since start (broken, idle, expired, or at shutdown).
    pub closed: u64,
    /// Checkouts that gave up after `acquire_timeout`.
    pub timeouts: u64,
    /// Failed validations (a PING that failed or timed out).
    pub validation_failures: u64,
}

impl PoolStatus {
    /// Share of `max_size` in use (shared connections count as used), 0..=1.
    #[must_use]
    pub fn utilisation(&self) -> f64 {
        if self.max_size == 0 {
            return 0.0;
        }
        f64::from(self.in_use + self.shared_up) / f64::from(self.max_size)
    }
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} open of {} max: {} in use, {} idle, {}/{} shared up, {} waiting",
            self.open,
            self.max_size,
            self.in_use,
            self.idle,
            self.shared_up,
            self.shared_total,
            self.waiters
        )
    }
}
