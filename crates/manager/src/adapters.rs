//! Where the parts meet Redis: the health probe and the replay target over the pool.

use std::sync::Arc;

use resilient_redis_fallback::{
    Batch, BatchOutcome, REPLAY_SCRIPT, SyncError, SyncTarget, script_args,
};
use resilient_redis_health::{Probe, ProbeError};
use resilient_redis_pool::ConnectionPool;

/// A PING through the pool's shared connection.
pub struct PoolProbe {
    pool: Arc<dyn ConnectionPool>,
}

impl PoolProbe {
    /// A probe over `pool`.
    #[must_use]
    pub fn new(pool: Arc<dyn ConnectionPool>) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl Probe for PoolProbe {
    async fn probe(&self) -> Result<(), ProbeError> {
        let mut conn = self.pool.shared().map_err(|e| ProbeError(e.to_string()))?;
        conn.query::<String>(&redis::cmd("PING"))
            .await
            .map(drop)
            .map_err(|e| ProbeError(e.to_string()))
    }
}

/// Replays fallback batches into Redis with the fallback crate's script, over the pool.
pub struct RedisSyncTarget {
    pool: Arc<dyn ConnectionPool>,
    script: redis::Script,
}

impl RedisSyncTarget {
    /// A target over `pool`.
    #[must_use]
    pub fn new(pool: Arc<dyn ConnectionPool>) -> Self {
        Self {
            pool,
            script: redis::Script::new(REPLAY_SCRIPT),
        }
    }
}

#[async_trait::async_trait]
impl SyncTarget for RedisSyncTarget {
    async fn apply(&self, batch: &Batch<'_>) -> Result<BatchOutcome, SyncError> {
        let mut conn = self.pool.shared().map_err(|e| SyncError {
            kind: e.kind(),
            message: e.to_string(),
        })?;
        let mut invocation = self.script.prepare_invoke();
        for arg in script_args(batch) {
            invocation.arg(arg);
        }
        let (applied, rejected): (i64, i64) =
            invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| SyncError {
                    kind: resilient_redis_pool::classify(&e),
                    message: e.to_string(),
                })?;
        Ok(BatchOutcome::from_script_reply(applied, rejected))
    }
}
