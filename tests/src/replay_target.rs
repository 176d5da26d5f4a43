//! A small `SyncTarget` over redis-rs, running the fallback crate's replay script: what the
//! manager does, for the fallback's real-server tests and benchmark.

use redis::aio::MultiplexedConnection;
use resilient_redis_config::ErrorKind;
use resilient_redis_fallback::{
    Batch, BatchOutcome, REPLAY_SCRIPT, SyncError, SyncTarget, script_args,
};

/// Replays batches into a real Redis with `EVALSHA` of [`REPLAY_SCRIPT`].
pub struct RedisReplayTarget {
    conn: MultiplexedConnection,
    script: redis::Script,
}

impl RedisReplayTarget {
    /// A target on `conn`.
    #[must_use]
    pub fn new(conn: MultiplexedConnection) -> Self {
        Self {
            conn,
            script: redis::Script::new(REPLAY_SCRIPT),
        }
    }
}

#[async_trait::async_trait]
impl SyncTarget for RedisReplayTarget {
    async fn apply(&self, batch: &Batch<'_>) -> Result<BatchOutcome, SyncError> {
        let mut invocation = self.script.prepare_invoke();
        for arg in script_args(batch) {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| SyncError::new(ErrorKind::Connection, e.to_string()))?;
        BatchOutcome::from_script_reply(&reply)
    }
}
