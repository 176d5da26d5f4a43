//! [`RedisManagerBuilder`]: the parts, real or injected, and the background tasks.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use resilient_redis_breaker::{Breaker, CircuitBreaker, NoopBreaker};
use resilient_redis_config::{ErrorKind, RedisConfig};
use resilient_redis_fallback::{FallbackStore, Journal, MemoryStore, SyncTarget};
use resilient_redis_health::{HealthMonitor, Monitor};
use resilient_redis_metrics::{Collector, MetricsCollector, NoopMetrics};
use resilient_redis_pool::{ClusterPool, ConnectionPool, RedisPool};

use crate::Error;
use crate::adapters::{ClusterProbe, PoolProbe};
use crate::manager::{Inner, RedisManager};
use crate::recovery::supervise;
use crate::replay::RedisSyncTarget;
use crate::request::CallOptions;

/// Builds a [`RedisManager`]: each part defaults to the real implementation built from the
/// configuration; inject your own (or a mock) with the setters.
#[must_use]
pub struct RedisManagerBuilder {
    config: RedisConfig,
    pool: Option<Arc<dyn ConnectionPool>>,
    health: Option<Arc<dyn HealthMonitor>>,
    breaker: Option<Arc<dyn CircuitBreaker>>,
    store: Option<(Arc<dyn FallbackStore>, Arc<dyn Journal>)>,
    metrics: Option<Arc<dyn MetricsCollector>>,
    target: Option<Arc<dyn SyncTarget>>,
    start_tasks: bool,
}

impl RedisManagerBuilder {
    /// Uses this pool.
    pub fn pool(mut self, pool: Arc<dyn ConnectionPool>) -> Self {
        self.pool = Some(pool);
        self
    }
    /// Uses this health monitor.
    pub fn health(mut self, health: Arc<dyn HealthMonitor>) -> Self {
        self.health = Some(health);
        self
    }
    /// Uses this circuit breaker.
    pub fn breaker(mut self, breaker: Arc<dyn CircuitBreaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }
    /// Uses this fallback store, which is also its own journal (as [`MemoryStore`] is).
    pub fn fallback<S: FallbackStore + Journal + 'static>(self, store: Arc<S>) -> Self {
        let journal: Arc<dyn Journal> = Arc::clone(&store) as Arc<dyn Journal>;
        self.fallback_parts(store, journal)
    }

    /// Uses this fallback store and this journal: the journal must hold the writes the store
    /// takes (a store that journals nothing refuses writes, and pairs with
    /// [`resilient_redis_fallback::NoJournal`]).
    pub fn fallback_parts(
        mut self,
        store: Arc<dyn FallbackStore>,
        journal: Arc<dyn Journal>,
    ) -> Self {
        self.store = Some((store, journal));
        self
    }
    /// Uses this metrics collector.
    pub fn metrics(mut self, metrics: Arc<dyn MetricsCollector>) -> Self {
        self.metrics = Some(metrics);
        self
    }
    /// Replays the fallback journal into this target instead of the pool's Redis.
    pub fn sync_target(mut self, target: Arc<dyn SyncTarget>) -> Self {
        self.target = Some(target);
        self
    }
    /// Whether to start the health monitor and the recovery loop (default `true`; unit tests
    /// turn it off to drive every step themselves).
    pub fn background_tasks(mut self, on: bool) -> Self {
        self.start_tasks = on;
        self
    }

    /// Builds the parts not injected, starts health checks and the recovery loop. Redis need not
    /// be up: until it is, the fallback serves.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid configuration, [`Error::Unavailable`] of kind
    /// `tls_error` for TLS certificates that cannot be used, [`Error::Build`] for another part
    /// that cannot be built (an unreadable journal file, say).
    pub async fn build(self) -> Result<RedisManager, Error> {
        let config = self.config;
        config.validate().map_err(Error::Config)?;
        let mut cluster_pool = None;
        let pool: Arc<dyn ConnectionPool> = match self.pool {
            Some(p) => p,
            None => {
                let failed = |e: resilient_redis_pool::PoolError| {
                    if e.kind() == ErrorKind::Tls {
                        Error::Unavailable {
                            kind: ErrorKind::Tls,
                            message: e.to_string(),
                            source: Some(Box::new(e)),
                        }
                    } else {
                        Error::Build(e.to_string())
                    }
                };
                if config.mode == resilient_redis_config::Mode::Cluster {
                    let pool = Arc::new(ClusterPool::new(&config).await.map_err(failed)?);
                    cluster_pool = Some(Arc::clone(&pool));
                    pool
                } else {
                    Arc::new(RedisPool::new(&config).await.map_err(failed)?)
                }
            }
        };
        let health: Arc<dyn HealthMonitor> = match self.health {
            Some(h) => h,
            None => Arc::new(
                match &cluster_pool {
                    // Three quarters of the probe's timeout: a hung primary is named.
                    Some(cluster) => Monitor::new(
                        Arc::new(ClusterProbe::new(
                            Arc::clone(cluster),
                            config.health.timeout.mul_f64(0.75),
                        )),
                        &config.health,
                    ),
                    None => {
                        Monitor::new(Arc::new(PoolProbe::new(Arc::clone(&pool))), &config.health)
                    }
                }
                .map_err(|e| Error::Build(e.to_string()))?,
            ),
        };
        let breaker: Arc<dyn CircuitBreaker> = match self.breaker {
            Some(b) => b,
            None => Arc::new(
                Breaker::from_config(&config.circuit_breaker)
                    .map_err(|e| Error::Build(e.to_string()))?,
            ),
        };
        let mut memory = None;
        let (store, journal): (Arc<dyn FallbackStore>, Arc<dyn Journal>) = match self.store {
            Some(parts) => parts,
            None => {
                let store = Arc::new(
                    MemoryStore::builder(&config.fallback)
                        .server(crate::adapters::config_identity(&config))
                        .build()?,
                );
                memory = Some(Arc::clone(&store));
                (Arc::clone(&store) as Arc<dyn FallbackStore>, store)
            }
        };
        let metrics: Arc<dyn MetricsCollector> = match self.metrics {
            Some(m) => m,
            None if config.metrics.enabled => {
                let mut collector = Collector::builder(&config.metrics);
                if let Some(server) = crate::adapters::config_server(&config) {
                    collector = collector.server(server);
                }
                Arc::new(collector.build())
            }
            None => Arc::new(NoopMetrics),
        };
        let target: Arc<dyn SyncTarget> = self.target.unwrap_or_else(|| {
            let target = RedisSyncTarget::new(Arc::clone(&pool));
            Arc::new(if config.mode == resilient_redis_config::Mode::Cluster {
                target.per_slot()
            } else {
                target
            })
        });
        let by_slot = config.mode == resilient_redis_config::Mode::Cluster;
        let inner = Arc::new(Inner {
            fallback_enabled: config.fallback.enabled,
            shadow: config.fallback.enabled && config.fallback.shadow,
            config,
            pool,
            health,
            breaker,
            store,
            journal,
            metrics,
            target,
            closed: AtomicBool::new(false),
            fallback_mode: AtomicBool::new(false),
            slots: by_slot.then(crate::slots::SlotSet::new),
            gate: RwLock::new(()),
            activated: Arc::new(tokio::sync::Notify::new()),
            dead_letters: std::sync::atomic::AtomicU64::new(0),
            replayed: std::sync::atomic::AtomicU64::new(0),
            memory,
            tasks: Mutex::new(Vec::new()),
        });
        if inner.journal.pending_writes() > 0 {
            // A journal restored from an earlier process: serve from it until it is replayed
            // (with the fallback off, refuse what could overtake it until then).
            inner.activate("journal_restored");
        }
        if self.start_tasks {
            inner
                .health
                .start()
                .map_err(|e| Error::Build(e.to_string()))?;
            let supervisor = tokio::spawn(supervise(
                Arc::downgrade(&inner),
                inner.breaker.subscribe(),
                inner.health.subscribe(),
            ));
            inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(supervisor);
        }
        Ok(RedisManager {
            inner,
            options: CallOptions::default(),
        })
    }
}

impl RedisManager {
    /// A builder for `config`.
    pub fn builder(config: RedisConfig) -> RedisManagerBuilder {
        RedisManagerBuilder {
            config,
            pool: None,
            health: None,
            breaker: None,
            store: None,
            metrics: None,
            target: None,
            start_tasks: true,
        }
    }

    /// `RedisConfig::load()` and every default part.
    ///
    /// # Errors
    /// As [`RedisManagerBuilder::build`], and configuration errors.
    pub async fn from_env() -> Result<Self, Error> {
        Self::builder(RedisConfig::load()?).build().await
    }

    /// A manager without a circuit breaker or metrics, for tests and tools.
    ///
    /// # Errors
    /// As [`RedisManagerBuilder::build`].
    pub async fn plain(config: RedisConfig) -> Result<Self, Error> {
        Self::builder(config)
            .breaker(Arc::new(NoopBreaker::new()))
            .metrics(Arc::new(NoopMetrics))
            .build()
            .await
    }
}
