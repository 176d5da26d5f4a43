//! A fallback store written outside its crate and injected into the manager: a read-only cache
//! that answers `GET`, `EXISTS` and `MGET` from what Redis said before an outage and refuses
//! every write while Redis is down (it journals nothing, so it pairs with `NoJournal`). The
//! store trait is five methods.
//!
//! Run it with `cargo run -p resilient-redis-fallback --example read_only_cache`; stop Redis at
//! `REDIS_URL` (default `redis://127.0.0.1:6379`) while it runs to see reads served from the
//! cache and writes refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resilient_redis_fallback::{
    Answer, FallbackError, FallbackStore, NoJournal, ReadCmd, WriteCmd,
};
use resilient_redis_manager::{RedisConfig, RedisManager};

/// Remembers what Redis answered; serves `GET`, `EXISTS` and `MGET` from it while Redis is down.
#[derive(Default)]
pub(crate) struct ReadOnlyCache {
    seen: Mutex<HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl FallbackStore for ReadOnlyCache {
    fn read(&self, cmd: &ReadCmd<'_>) -> Result<Answer, FallbackError> {
        let seen = self.seen.lock().unwrap();
        let value = |k: &[u8]| seen.get(k).cloned().flatten();
        match *cmd {
            ReadCmd::Get(k) => Ok(Answer::Value(value(k))),
            ReadCmd::Exists(k) => Ok(Answer::Bool(value(k).is_some())),
            ReadCmd::MGet(ks) => Ok(Answer::Values(ks.iter().map(|k| value(k)).collect())),
            _ => Err(FallbackError::Unsupported {
                operation: cmd.name(),
            }),
        }
    }
    fn write(&self, cmd: &WriteCmd<'_>) -> Result<Answer, FallbackError> {
        Err(FallbackError::Unsupported {
            operation: cmd.name(),
        })
    }
    fn knows(&self, key: &[u8]) -> bool {
        self.seen.lock().unwrap().contains_key(key)
    }
    fn observe(&self, key: &[u8], value: Option<Vec<u8>>, _ttl: Option<Duration>) {
        self.seen.lock().unwrap().insert(key.to_vec(), value);
    }
    fn settle(&self) {}
}

#[tokio::main(flavor = "current_thread")]
#[allow(
    dead_code,
    reason = "the tests include this file for its store, not its main"
)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = RedisConfig::load()?; // defaults, then REDIS_* environment variables
    config.fallback.shadow = true; // Redis's answers reach `observe`
    config.socket_timeout = Duration::from_millis(200);
    let manager = RedisManager::builder(config)
        .fallback_parts(Arc::new(ReadOnlyCache::default()), Arc::new(NoJournal))
        .build()
        .await?;
    for i in 0..10 {
        let read = manager.get(b"greeting").await;
        let write = manager.set(b"greeting", b"hello", None).await;
        println!(
            "{i}: get {read:?}, set {write:?}, from memory: {}",
            manager.is_fallback_mode()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    manager.close(Duration::from_secs(1)).await?;
    Ok(())
}
