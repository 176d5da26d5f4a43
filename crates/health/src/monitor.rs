//! [`Monitor`]: the probing task and its hysteresis.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use resilient_redis_config::HealthConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{HealthError, HealthMonitor, HealthStatus, Probe};

/// A health monitor: probes every `check_interval`, each probe bounded by `timeout`; keeps
/// rolling success and failure rates over the last `window` probes; turns unhealthy after
/// `failure_threshold` consecutive failures and healthy again after `success_threshold`
/// consecutive successes. Every probe's result is published on a `watch` channel.
///
/// The probing task ends on [`HealthMonitor::stop`] or when the monitor is dropped.
pub struct Monitor {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    probe: Arc<dyn Probe>,
    config: HealthConfig,
    state: Mutex<Tally>,
    status: watch::Sender<HealthStatus>,
}

struct Tally {
    window: VecDeque<bool>,
    status: HealthStatus,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("status", &*self.inner.status.borrow())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor for `probe` on the `[health]` settings. Call [`HealthMonitor::start`] to begin.
    ///
    /// # Errors
    /// [`HealthError::Config`] when a threshold, the window or an interval breaks a rule.
    pub fn new(probe: Arc<dyn Probe>, config: &HealthConfig) -> Result<Self, HealthError> {
        let mut whole = resilient_redis_config::RedisConfig::default();
        whole.health = config.clone();
        whole.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                probe,
                config: config.clone(),
                state: Mutex::new(Tally {
                    window: VecDeque::with_capacity(config.window as usize),
                    status: HealthStatus::initial(),
                }),
                status: watch::Sender::new(HealthStatus::initial()),
            }),
            task: Mutex::new(None),
        })
    }
}

impl Inner {
    async fn check(&self) -> HealthStatus {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.config.timeout, self.probe.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.0),
            Err(_) => Err(format!(
                "no answer within the probe timeout ({:?})",
                self.config.timeout
            )),
        };
        let elapsed = started.elapsed();
        let status = {
            let mut tally = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            tally.record(&self.config, outcome, elapsed)
        };
        if status.healthy != self.status.borrow().healthy {
            if status.healthy {
                tracing::info!(checks = status.checks, "health: healthy again");
            } else {
                tracing::warn!(error = ?status.error, "health: unhealthy");
            }
        }
        self.status.send_replace(status.clone());
        status
    }
}

impl Tally {
    fn record(
        &mut self,
        config: &HealthConfig,
        outcome: Result<(), String>,
        elapsed: Duration,
    ) -> HealthStatus {
        let ok = outcome.is_ok();
        if self.window.len() >= config.window as usize {
            self.window.pop_front();
        }
        self.window.push_back(ok);
        let s = &mut self.status;
        s.checks += 1;
        s.response_time = Some(elapsed);
        s.timestamp = SystemTime::now();
        s.error = outcome.err();
        if ok {
            s.consecutive_successes = s.consecutive_successes.saturating_add(1);
            s.consecutive_failures = 0;
            if !s.healthy && s.consecutive_successes >= config.success_threshold {
                s.healthy = true;
            }
        } else {
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.consecutive_successes = 0;
            if s.healthy && s.consecutive_failures >= config.failure_threshold {
                s.healthy = false;
            }
        }
        let good = self.window.iter().filter(|ok| **ok).count();
        let total = self.window.len().max(1);
        s.success_rate = good as f64 / total as f64;
        s.failure_rate = (total - good) as f64 / total as f64;
        s.clone()
    }
}

#[async_trait::async_trait]
impl HealthMonitor for Monitor {
    fn start(&self) -> Result<(), HealthError> {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Err(HealthError::AlreadyRunning);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HealthError::NoRuntime)?;
        let inner = Arc::clone(&self.inner);
        *task = Some(runtime.spawn(async move {
            let mut ticks = tokio::time::interval(inner.config.check_interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                inner.check().await;
            }
        }));
        Ok(())
    }

    async fn stop(&self) {
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    fn status(&self) -> HealthStatus {
        self.inner.status.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<HealthStatus> {
        self.inner.status.subscribe()
    }

    async fn check_now(&self) -> HealthStatus {
        self.inner.check().await
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}
