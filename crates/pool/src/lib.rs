#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod cluster;
mod conn;
mod error;
mod fence;
mod manager;
mod pool;
mod session;
mod watch;

use std::sync::Arc;
use std::time::Duration;

pub use cluster::{CLUSTER_SLOTS, ClusterPool, PrimaryStatus, cluster_client, key_slot, slot_tag};
pub use conn::{PooledConnection, SharedConnection};
pub use error::{PoolError, classify, not_ready};
pub use pool::{RedisPool, connection_config, primary_client, redis_client, sentinel_names};
pub use resilient_redis_config::PoolStatus;
pub use session::{Word as CommandName, block_time, shared_refusal};

impl From<resilient_redis_config::ConfigError> for PoolError {
    fn from(e: resilient_redis_config::ConfigError) -> Self {
        PoolError::Connect {
            kind: resilient_redis_config::ErrorKind::Validation,
            url: String::new(),
            message: e.to_string(),
        }
    }
}

/// Connections to one Redis server.
///
/// Object-safe, so the manager can hold an `Arc<dyn ConnectionPool>`; implemented for `Arc<T>`
/// and `Box<T>`. With the `mock` feature, `MockConnectionPool` (mockall) implements it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait ConnectionPool: Send + Sync {
    /// A shared multiplexed connection for ordinary commands. Takes no lock and does no I/O;
    /// fails at once, with the reason, when no shared connection is up.
    ///
    /// # Errors
    /// [`PoolError::Connect`] (kind `Connection`, `Timeout`, `Auth`, ...) or
    /// [`PoolError::Closed`].
    fn shared(&self) -> Result<SharedConnection, PoolError>;

    /// An exclusive connection, for what cannot share one (blocking commands, WATCH/MULTI).
    /// Waits first come, first served, up to `pool.acquire_timeout`. Dropping the handle gives
    /// the connection back.
    ///
    /// # Errors
    /// [`PoolError::Timeout`] when none came free in time, [`PoolError::Connect`] when a new one
    /// could not be opened, [`PoolError::Closed`].
    async fn get(&self) -> Result<PooledConnection, PoolError>;

    /// Current figures.
    fn status(&self) -> PoolStatus;

    /// Stops handing out connections, waits up to `deadline` for checked-out ones to come back,
    /// and closes the rest.
    async fn close(&self, deadline: Duration);

    /// A shared connection whose client never sends a request twice by itself, for writes that
    /// must not apply twice. The default is [`ConnectionPool::shared`]: a connection that never
    /// resends (as this crate's `RedisPool` hands out). [`ClusterPool`] overrides it (redis-rs's
    /// cluster client otherwise resends a request whose connection broke).
    ///
    /// # Errors
    /// As [`ConnectionPool::shared`].
    fn shared_at_most_once(&self) -> Result<SharedConnection, PoolError> {
        self.shared()
    }

    /// For a Redis Cluster: the primaries and their slots as last seen (no I/O), so that a
    /// failed primary's slots can go to the fallback at once. `None` (the default): not a
    /// cluster, or not known.
    fn cluster_primaries(&self) -> Option<Arc<Vec<PrimaryStatus>>> {
        None
    }
}

macro_rules! forward {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl<T: ConnectionPool + ?Sized> ConnectionPool for $ty {
            fn shared(&self) -> Result<SharedConnection, PoolError> {
                (**self).shared()
            }
            async fn get(&self) -> Result<PooledConnection, PoolError> {
                (**self).get().await
            }
            fn status(&self) -> PoolStatus {
                (**self).status()
            }
            async fn close(&self, deadline: Duration) {
                (**self).close(deadline).await;
            }
            fn shared_at_most_once(&self) -> Result<SharedConnection, PoolError> {
                (**self).shared_at_most_once()
            }
            fn cluster_primaries(&self) -> Option<Arc<Vec<PrimaryStatus>>> {
                (**self).cluster_primaries()
            }
        }
    };
}

forward!(Arc<T>);
forward!(Box<T>);

const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn ConnectionPool>();
};

#[cfg(feature = "mock")]
impl MockConnectionPool {
    /// A mock pool that behaves as a Redis refusing every connection: `shared()`,
    /// `shared_at_most_once()` and `get()` fail with a `connection_error`, `cluster_primaries()`
    /// is `None`, `status()` is empty, `close()` returns at once. For
    /// tests of parts written outside these crates (a breaker, a health monitor, a store)
    /// driven through the manager during an outage.
    #[must_use]
    pub fn refusing() -> Self {
        let refused = || PoolError::Connect {
            kind: resilient_redis_config::ErrorKind::Connection,
            url: "redis://127.0.0.1:1".into(),
            message: "connection refused".into(),
        };
        let mut pool = Self::new();
        pool.expect_shared().returning(move || Err(refused()));
        pool.expect_get().returning(move || Err(refused()));
        pool.expect_shared_at_most_once()
            .returning(move || Err(refused()));
        pool.expect_cluster_primaries().returning(|| None);
        pool.expect_status().returning(PoolStatus::default);
        pool.expect_close().return_const(());
        pool
    }
}
