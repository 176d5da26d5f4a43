//! [`RedisManager`]: the request path and the recovery loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use redis::{Cmd, Value};
use resilient_redis_breaker::{Breaker, BreakerState, CircuitBreaker, NoopBreaker, PermitGuard};
use resilient_redis_config::{ErrorKind, RedisConfig};
use resilient_redis_fallback::{FallbackError, FallbackStore, MemoryStore, SyncTarget};
use resilient_redis_health::{HealthMonitor, HealthStatus, Monitor};
use resilient_redis_metrics::{
    BreakerGauge, Collector, FallbackGauge, HealthGauge, MetricsCollector, NoopMetrics, Outcome,
    PoolGauges,
};
use resilient_redis_pool::{ConnectionPool, PoolError, PooledConnection, RedisPool};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::Error;
use crate::adapters::{PoolProbe, RedisSyncTarget};
use crate::report::{HealthReport, Verdict};

/// What one call sends: a command, or the part of a pipeline redis-rs asks for.
#[derive(Clone, Copy)]
pub(crate) enum Request<'r> {
    /// One command.
    Cmd(&'r Cmd),
    /// `(pipeline, offset, count)` as in `ConnectionLike::req_packed_commands`; the reply is a
    /// `Value::Array` of the `count` replies.
    Pipeline(&'r redis::Pipeline, usize, usize),
}

impl Request<'_> {
    async fn send(
        self,
        conn: &mut resilient_redis_pool::SharedConnection,
    ) -> Result<Value, PoolError> {
        use redis::aio::ConnectionLike;
        match self {
            Request::Cmd(cmd) => conn.query::<Value>(cmd).await,
            Request::Pipeline(p, offset, count) => conn
                .req_packed_commands(p, offset, count)
                .await
                .map(Value::Array)
                .map_err(|e| PoolError::Command {
                    kind: resilient_redis_pool::classify(&e),
                    source: e,
                }),
        }
    }
}

/// How the fallback store answers an operation.
pub(crate) type Serve<'a, T> = dyn Fn(&dyn FallbackStore) -> Result<T, FallbackError> + Sync + 'a;

/// How a failed command may be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads: retried; served from the fallback when Redis cannot answer.
    Read,
    /// Writes whose replay is safe (SET with its value, DEL, EXPIRE, HSET of given fields):
    /// retried, and journaled even when their outcome is unknown.
    IdempotentWrite,
    /// Writes that must not apply twice (INCRBY): retried and journaled only when they
    /// certainly never reached Redis; otherwise [`Error::Ambiguous`].
    NonIdempotentWrite,
    /// Anything else (`execute`, `pipeline`): not retried, no fallback.
    Opaque,
}

pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    pub(crate) pool: Arc<dyn ConnectionPool>,
    pub(crate) health: Arc<dyn HealthMonitor>,
    pub(crate) breaker: Arc<dyn CircuitBreaker>,
    pub(crate) store: Arc<dyn FallbackStore>,
    pub(crate) metrics: Arc<dyn MetricsCollector>,
    pub(crate) target: Arc<dyn SyncTarget>,
    fallback_enabled: bool,
    shadow: bool,
    closed: AtomicBool,
    /// Orders fallback-mode changes against journal appends: every answer from the fallback
    /// store (and so every journal append) happens under a read guard, after checking the mode
    /// and `closed`; leaving fallback mode and closing take the write guard. So fallback mode
    /// never ends while an append is in flight, and nothing is journaled after close.
    gate: RwLock<()>,
    /// Woken when a call turns fallback mode on: the recovery loop probes at once.
    activated: Arc<tokio::sync::Notify>,
    /// Writes Redis refused at replay since the start (kept as dead letters by the store).
    dead_letters: std::sync::atomic::AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    fn fallback_gauge(&self) -> FallbackGauge {
        FallbackGauge::new(self.store.is_fallback_mode(), self.store.pending_writes())
            .with_dead_letters(self.dead_letters.load(Ordering::Relaxed))
    }

    fn count_dead_letters(&self, report: &resilient_redis_fallback::ReplayReport) {
        if report.rejected > 0 {
            self.dead_letters
                .fetch_add(report.rejected, Ordering::Relaxed);
            tracing::error!(
                dead_letters = report.rejected,
                "Redis refused replayed writes; they are kept as dead letters in the journal"
            );
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
    options: CallOptions,
}

impl std::fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisManager")
            .field("url", &self.inner.config.url)
            .field("breaker", &self.inner.breaker.state())
            .field("fallback_mode", &self.inner.store.is_fallback_mode())
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisManager`]: each part defaults to the real implementation built from the
/// configuration; inject your own (or a mock) with the setters.
#[must_use]
pub struct RedisManagerBuilder {
    config: RedisConfig,
    pool: Option<Arc<dyn ConnectionPool>>,
    health: Option<Arc<dyn HealthMonitor>>,
    breaker: Option<Arc<dyn CircuitBreaker>>,
    store: Option<Arc<dyn FallbackStore>>,
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
    /// Uses this fallback store.
    pub fn fallback(mut self, store: Arc<dyn FallbackStore>) -> Self {
        self.store = Some(store);
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
    /// [`Error::Build`] for an invalid configuration or a part that cannot be built (an
    /// unreadable journal file, say).
    pub async fn build(self) -> Result<RedisManager, Error> {
        let config = self.config;
        config.validate().map_err(Error::Config)?;
        let pool: Arc<dyn ConnectionPool> = match self.pool {
            Some(p) => p,
            None => Arc::new(
                RedisPool::new(&config)
                    .await
                    .map_err(|e| Error::Build(e.to_string()))?,
            ),
        };
        let health: Arc<dyn HealthMonitor> = match self.health {
            Some(h) => h,
            None => Arc::new(
                Monitor::new(Arc::new(PoolProbe::new(Arc::clone(&pool))), &config.health)
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
        let store: Arc<dyn FallbackStore> = match self.store {
            Some(s) => s,
            None => Arc::new(
                MemoryStore::builder(&config.fallback)
                    .server(crate::adapters::server_identity(config.url.expose()))
                    .build()?,
            ),
        };
        let metrics: Arc<dyn MetricsCollector> = match self.metrics {
            Some(m) => m,
            None if config.metrics.enabled => Arc::new(Collector::new(&config.metrics)),
            None => Arc::new(NoopMetrics),
        };
        let target: Arc<dyn SyncTarget> = self
            .target
            .unwrap_or_else(|| Arc::new(RedisSyncTarget::new(Arc::clone(&pool))));
        let inner = Arc::new(Inner {
            fallback_enabled: config.fallback.enabled,
            shadow: config.fallback.enabled && config.fallback.shadow,
            config,
            pool,
            health,
            breaker,
            store,
            metrics,
            target,
            closed: AtomicBool::new(false),
            gate: RwLock::new(()),
            activated: Arc::new(tokio::sync::Notify::new()),
            dead_letters: std::sync::atomic::AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        if inner.store.pending_writes() > 0 {
            // A journal restored from an earlier process: serve from it until it is replayed
            // (with the fallback off, refuse what could overtake it until then).
            tracing::warn!(
                pending = inner.store.pending_writes(),
                "restored journaled writes; replaying when Redis answers"
            );
            inner.store.activate();
        }
        if self.start_tasks {
            inner
                .health
                .start()
                .map_err(|e| Error::Build(e.to_string()))?;
            let supervisor = tokio::spawn(supervise(Arc::downgrade(&inner)));
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
        self.inner.metrics.record_pool(
            pool_gauges(self.inner.pool.as_ref()),
            Some(started.elapsed()),
        );
        conn
    }

    /// One report across every part, for a readiness probe.
    pub async fn health_check(&self) -> HealthReport {
        let inner = &*self.inner;
        let probe = inner.health.check_now().await;
        let breaker = inner.breaker.state();
        let snapshot = inner.metrics.snapshot();
        let fallback_mode = inner.store.is_fallback_mode();
        let reachable = probe.error.is_none();
        let serving_from_memory = inner.fallback_enabled && fallback_mode;
        let verdict = if !(reachable || serving_from_memory) {
            Verdict::Unhealthy
        } else if !reachable
            || fallback_mode
            || breaker != BreakerState::Closed
            || snapshot.error_rate >= 0.05
        {
            Verdict::Degraded
        } else {
            Verdict::Healthy
        };
        HealthReport {
            verdict,
            redis_reachable: reachable,
            latency: probe.response_time,
            error: probe.error,
            breaker: breaker.as_str(),
            pool: inner.pool.status().to_string(),
            fallback_mode,
            pending_writes: inner.store.pending_writes(),
            dead_letters: inner.dead_letters.load(Ordering::Relaxed),
            error_rate: snapshot.error_rate,
        }
    }

    /// Stops health checks and the recovery loop, replays pending writes if Redis answers (or
    /// persists them to the journal file), and closes the pool. Waits up to `deadline` for
    /// checked-out connections.
    ///
    /// # Errors
    /// [`Error::Fallback`] when writes are still pending and cannot be persisted: they are lost
    /// only if the process then exits, and the error says how many.
    pub async fn close(&self, deadline: Duration) -> Result<(), Error> {
        let inner = &*self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
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
        if inner.store.pending_writes() > 0 {
            match tokio::time::timeout(deadline, inner.store.replay(Arc::clone(&inner.target)))
                .await
            {
                Ok(Ok(report)) => {
                    inner.count_dead_letters(&report);
                    inner.metrics.record_fallback(inner.fallback_gauge());
                    tracing::info!(
                        applied = report.entries_applied,
                        "replayed pending writes on close"
                    );
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot replay pending writes on close"),
                Err(_) => tracing::warn!("replay on close timed out"),
            }
        }
        let persisted = inner.store.close();
        inner.pool.close(deadline).await;
        persisted.map_err(Error::from)
    }

    /// Runs one operation through the whole request path; records its metrics once.
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        kind: Kind,
        cmd: Request<'_>,
        decode: impl FnOnce(Value) -> Result<T, Error>,
        fallback: Option<&Serve<'_, T>>,
        observe: impl FnOnce(&dyn FallbackStore, &T),
    ) -> Result<T, Error> {
        let span = resilient_redis_metrics::operation_span(op);
        let started = Instant::now();
        let (result, outcome) = self
            .attempt(kind, cmd, decode, fallback, observe, started)
            .instrument(span.clone())
            .await;
        self.inner
            .metrics
            .record_operation(op, started.elapsed(), outcome);
        if let Err(e) = &result {
            span.record("error.type", e.kind().as_str());
        }
        result.map_err(|e| match e {
            Error::Ambiguous {
                kind,
                message,
                source,
                ..
            } => Error::Ambiguous {
                operation: op,
                kind,
                message,
                source,
            },
            other => other,
        })
    }

    /// The request path proper: the answer and the outcome to record.
    async fn attempt<T>(
        &self,
        kind: Kind,
        cmd: Request<'_>,
        decode: impl FnOnce(Value) -> Result<T, Error>,
        fallback: Option<&Serve<'_, T>>,
        observe: impl FnOnce(&dyn FallbackStore, &T),
        started: Instant,
    ) -> (Result<T, Error>, Outcome) {
        let inner = &*self.inner;
        let opts = self.options;
        let failed = |e: Error| {
            let k = e.kind();
            (Err(e), Outcome::Error(k))
        };
        if inner.closed.load(Ordering::Relaxed) {
            return failed(Error::Closed);
        }
        let fallback = fallback.filter(|_| inner.fallback_enabled && opts.fallback);
        if let Some(serve) = fallback
            && inner.store.is_fallback_mode()
            && let Some(answer) = self.serve(serve, false)
        {
            return answer;
        }
        if fallback.is_none() && self.journal_pending() {
            return failed(overtake_error());
        }
        let permit = match inner.breaker.try_acquire() {
            // Released if this future is dropped at any await below.
            Ok(p) => PermitGuard::new(inner.breaker.as_ref(), p),
            Err(rejected) => {
                if let Some(serve) = fallback {
                    return self.serve_activating(serve);
                }
                return failed(Error::Unavailable {
                    kind: ErrorKind::CircuitBreaker,
                    message: rejected.to_string(),
                    source: Some(Box::new(rejected)),
                });
            }
        };
        let cfg = &inner.config;
        let budget = cfg
            .socket_timeout
            .saturating_mul(cfg.max_retries.saturating_add(1));
        let deadline = started.checked_add(budget);
        // What memory can answer is answered after one failed attempt: during an outage no
        // call waits longer than one socket timeout.
        let may_retry = opts.retry && fallback.is_none() && kind != Kind::Opaque;
        let attempts = async {
            let mut delay = cfg.retry_delay;
            let mut attempts = 0;
            loop {
                let (err, sent) = match inner.pool.shared() {
                    Err(e) => (e, false),
                    Ok(mut conn) => match cmd.send(&mut conn).await {
                        Ok(value) => return Ok(value),
                        Err(e) => {
                            let sent = e.outcome_unknown();
                            (e, sent)
                        }
                    },
                };
                let err_kind = effective_kind(&err);
                attempts += 1;
                let retry = may_retry
                    && err_kind != ErrorKind::Server
                    && err_kind.is_transient()
                    && !(kind == Kind::NonIdempotentWrite && sent)
                    && attempts <= cfg.max_retries
                    && deadline
                        .is_none_or(|d| Instant::now().checked_add(delay).is_some_and(|t| t < d));
                if !retry {
                    return Err((err, sent));
                }
                let jitter = delay.mul_f64(fastrand::f64() * 0.5);
                tokio::time::sleep(delay.saturating_add(jitter)).await;
                delay = delay.saturating_mul(2);
            }
        };
        let attempted = match opts.timeout {
            // The caller's own bound: past it the outcome is unknown.
            Some(t) => match started.checked_add(t) {
                Some(until) => tokio::time::timeout_at(until, attempts)
                    .await
                    .unwrap_or(Err((PoolError::CommandTimeout(t), true))),
                None => attempts.await,
            },
            None => attempts.await,
        };
        let (failure, sent) = match attempted {
            Ok(value) => {
                permit.success(started.elapsed());
                let decoded = decode(value);
                if let (Ok(v), true) = (&decoded, inner.shadow) {
                    observe(inner.store.as_ref(), v);
                }
                let outcome = match &decoded {
                    Ok(_) => Outcome::Success,
                    Err(e) => Outcome::Error(e.kind()),
                };
                return (decoded, outcome);
            }
            Err(failure) => failure,
        };
        let err_kind = effective_kind(&failure);
        if err_kind == ErrorKind::Server {
            // The server answered: it is healthy; the error is the caller's.
            permit.success(started.elapsed());
            return failed(server_error(failure));
        }
        if err_kind.is_transient() {
            permit.error(started.elapsed());
        } else {
            permit.release();
        }
        if kind == Kind::NonIdempotentWrite && sent {
            return failed(Error::Ambiguous {
                operation: "",
                kind: err_kind,
                message: failure.to_string(),
                source: Some(Box::new(failure)),
            });
        }
        if let Some(serve) = fallback
            && err_kind.is_transient()
        {
            return self.serve_activating(serve);
        }
        failed(Error::Unavailable {
            kind: err_kind,
            message: failure.to_string(),
            source: Some(Box::new(failure)),
        })
    }

    /// Whether journaled writes wait for their replay (only ever in fallback mode).
    pub(crate) fn journal_pending(&self) -> bool {
        self.inner.store.is_fallback_mode() && self.inner.store.pending_writes() > 0
    }

    /// Enters fallback mode and answers from the fallback store.
    fn serve_activating<T>(&self, serve: &Serve<'_, T>) -> (Result<T, Error>, Outcome) {
        if !self.inner.store.is_fallback_mode() {
            // Ask the recovery loop for a probe now: one failed call must not keep every
            // caller on memory for longer than it takes to see Redis answer again.
            self.inner.activated.notify_one();
        }
        self.serve(serve, true)
            .unwrap_or((Err(Error::Closed), Outcome::Error(ErrorKind::Closed)))
    }

    /// Answers from the fallback store under the mode gate: `None` when fallback mode ended
    /// meanwhile (the caller goes to Redis), unless `activate` turns it on.
    fn serve<T>(
        &self,
        serve: &Serve<'_, T>,
        activate: bool,
    ) -> Option<(Result<T, Error>, Outcome)> {
        let inner = &*self.inner;
        let _gate = inner.gate.read().unwrap_or_else(PoisonError::into_inner);
        if inner.closed.load(Ordering::Acquire) {
            return Some((Err(Error::Closed), Outcome::Error(ErrorKind::Closed)));
        }
        if activate {
            inner.store.activate();
        } else if !inner.store.is_fallback_mode() {
            return None;
        }
        let result = serve(inner.store.as_ref()).map_err(Error::from);
        let outcome = match &result {
            Ok(_) => Outcome::Fallback,
            Err(e) => Outcome::Error(e.kind()),
        };
        Some((result, outcome))
    }
}

/// Options for the calls made through one handle: see [`RedisManager::with_options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Bound on the whole call (all attempts): past it the call fails with `timeout_error`
    /// (an increment with [`Error::Ambiguous`]). `None`: the configured deadlines.
    pub timeout: Option<Duration>,
    /// Whether failed attempts may be retried (when retrying is safe).
    pub retry: bool,
    /// Whether the fallback store may answer while Redis is unreachable.
    pub fallback: bool,
}

impl Default for CallOptions {
    fn default() -> Self {
        Self {
            timeout: None,
            retry: true,
            fallback: true,
        }
    }
}

impl CallOptions {
    /// The defaults: configured deadlines, retries when safe, the fallback.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Bounds every call by `timeout` (shorter than the configured deadlines, typically).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No retries: one attempt.
    #[must_use]
    pub fn no_retry(mut self) -> Self {
        self.retry = false;
        self
    }

    /// No answers from memory: while Redis is unreachable calls fail fast.
    #[must_use]
    pub fn no_fallback(mut self) -> Self {
        self.fallback = false;
        self
    }
}

/// LOADING (a restarting server reading its data), MASTERDOWN and READONLY (a failover in
/// progress) and TRYAGAIN say the server is not ready: they are handled like a lost connection
/// (retried when safe, counted against the breaker, served from the fallback). Other error
/// replies (WRONGTYPE, NOSCRIPT, OOM, ...) are the caller's to handle.
fn effective_kind(err: &PoolError) -> ErrorKind {
    if let PoolError::Command { source, .. } = err
        && matches!(
            source.code(),
            Some("LOADING" | "MASTERDOWN" | "READONLY" | "TRYAGAIN")
        )
    {
        return ErrorKind::Connection;
    }
    err.kind()
}

/// The refusal of a command that could overtake journaled writes.
pub(crate) fn overtake_error() -> Error {
    Error::unavailable(
        ErrorKind::Fallback,
        "journaled writes are waiting for their replay: commands the fallback cannot serve are \
         refused until it is done, so that they cannot overtake them",
    )
}

fn server_error(err: PoolError) -> Error {
    match err {
        PoolError::Command { source, .. } => Error::Server {
            code: source.code().map(str::to_owned),
            message: source.to_string(),
            source: Some(source),
        },
        other => Error::Server {
            code: None,
            message: other.to_string(),
            source: None,
        },
    }
}

fn unavailable(err: PoolError) -> Error {
    Error::Unavailable {
        kind: err.kind(),
        message: err.to_string(),
        source: Some(Box::new(err)),
    }
}

pub(crate) fn pool_gauges(pool: &dyn ConnectionPool) -> PoolGauges {
    let s = pool.status();
    PoolGauges::new(
        s.max_size,
        s.open,
        s.idle,
        s.in_use + s.shared_up,
        s.waiters,
        s.timeouts,
    )
}

/// The recovery loop: follows the breaker and the health monitor, enters fallback mode when
/// either says Redis is down, and when Redis answers again moves the breaker to half-open,
/// replays the journal and leaves fallback mode once it is drained.
async fn supervise(inner: std::sync::Weak<Inner>) {
    let Some(first) = inner.upgrade() else { return };
    let mut breaker_rx = first.breaker.subscribe();
    let mut health_rx = first.health.subscribe();
    let sync_every = first.config.fallback.sync_interval;
    let gauges_every = first.config.metrics.collection_interval;
    let activated = Arc::clone(&first.activated);
    let mut was_healthy = first.health.status().healthy;
    drop(first);
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
                tracing::warn!(state = %state, "circuit breaker changed state");
                if state == BreakerState::Open && m.fallback_enabled {
                    m.store.activate();
                    m.metrics.record_fallback(m.fallback_gauge());
                }
            }
            changed = health_rx.changed() => {
                if changed.is_err() { return; }
                let status = health_rx.borrow_and_update().clone();
                let Some(m) = inner.upgrade() else { return };
                m.metrics.record_health(HealthGauge::new(status.healthy, status.response_time.unwrap_or_default()));
                let turned_unhealthy = was_healthy && !status.healthy;
                was_healthy = status.healthy;
                if !status.healthy {
                    // The breaker hears of an outage even when no call reaches Redis (fallback
                    // mode answers them all): the verdict turning unhealthy opens it once, so
                    // its state and trips count outages, whatever the traffic.
                    if turned_unhealthy
                        && matches!(m.breaker.state(), BreakerState::Closed | BreakerState::HalfOpen)
                    {
                        let _ = m.breaker.transition_to(BreakerState::Open);
                    }
                    if m.fallback_enabled && !m.store.is_fallback_mode() {
                        tracing::warn!(error = ?status.error, "health: Redis unhealthy; fallback mode on");
                        m.store.activate();
                    }
                } else if status.healthy && status.error.is_none() {
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
                if m.store.is_fallback_mode() || m.store.pending_writes() > 0 {
                    let probe = m.health.check_now().await;
                    if probe.error.is_none() {
                        recover(&m).await;
                    }
                }
            }
            _ = gauges.tick() => {
                let Some(m) = inner.upgrade() else { return };
                m.metrics.record_pool(pool_gauges(m.pool.as_ref()), None);
                m.metrics.record_fallback(m.fallback_gauge());
            }
        }
    }
}

/// Redis answers: half-open the breaker, replay the journal, leave fallback mode when drained.
async fn recover(inner: &Inner) {
    if !inner.store.is_fallback_mode() && inner.store.pending_writes() == 0 {
        return;
    }
    if matches!(inner.breaker.state(), BreakerState::Open) {
        let _ = inner.breaker.transition_to(BreakerState::HalfOpen);
    }
    match inner.store.replay(Arc::clone(&inner.target)).await {
        Ok(report) => {
            if report.entries_applied > 0 {
                tracing::info!(
                    applied = report.entries_applied,
                    batches = report.batches_applied,
                    "replayed journaled writes"
                );
            }
            inner.count_dead_letters(&report);
            {
                // No append is in flight while the write guard is held, so "drained" holds.
                let _gate = inner.gate.write().unwrap_or_else(PoisonError::into_inner);
                if inner.store.pending_writes() == 0 && inner.store.is_fallback_mode() {
                    inner.store.deactivate();
                    tracing::info!("Redis is back and the journal is drained: fallback mode off");
                }
            }
            inner.metrics.record_fallback(inner.fallback_gauge());
        }
        Err(e) => tracing::debug!(error = %e, "replay not possible yet"),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use resilient_redis_fallback::{FallbackStore, MemoryStore, ModelTarget};

    use super::*;

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
            .fallback(Arc::clone(&store) as Arc<dyn FallbackStore>)
            .metrics(Arc::new(NoopMetrics))
            .sync_target(Arc::new(ModelTarget::new()))
            .background_tasks(false)
            .build()
            .await
            .unwrap();
        store.activate();
        // A request answered from memory: it has checked the mode and is about to append.
        let in_flight = m.inner.gate.read().unwrap();
        let recovery = tokio::spawn({
            let m = m.clone();
            async move { recover(&m.inner).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            store.is_fallback_mode(),
            "recovery waits for the append in flight"
        );
        store.set(b"k", b"v", None).unwrap();
        drop(in_flight);
        recovery.await.unwrap();
        assert!(store.is_fallback_mode(), "a write is pending: still on");
        assert_eq!(store.pending_writes(), 1);
        recover(&m.inner).await;
        assert!(!store.is_fallback_mode(), "drained: off");
    }
}
