#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod monitor;
mod status;

use std::sync::Arc;

use tokio::sync::watch;

pub use monitor::Monitor;
pub use status::HealthStatus;

/// Why a probe failed, in words (never a secret: probes redact what they report).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProbeError(pub String);

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The configuration breaks a rule.
    #[error("invalid health configuration: {0}")]
    Config(#[from] resilient_redis_config::ConfigError),
    /// The monitor is already running.
    #[error("the health monitor is already running")]
    AlreadyRunning,
    /// There is no Tokio runtime to run the monitor on.
    #[error("the health monitor needs a Tokio runtime")]
    NoRuntime,
}

/// One health check of something: the manager implements it as a PING through the pool, so the
/// monitor knows nothing of Redis or pools and can watch anything.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    /// Checks once. The monitor bounds it with its own timeout.
    ///
    /// # Errors
    /// [`ProbeError`] saying what failed.
    async fn probe(&self) -> Result<(), ProbeError>;
}

#[async_trait::async_trait]
impl<T: Probe + ?Sized> Probe for Arc<T> {
    async fn probe(&self) -> Result<(), ProbeError> {
        (**self).probe().await
    }
}

/// Watches health on a schedule and tells subscribers.
///
/// Object-safe, so the manager can hold an `Arc<dyn HealthMonitor>`. With the `mock` feature,
/// `MockHealthMonitor` (mockall) implements it.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait HealthMonitor: Send + Sync {
    /// Starts probing every `check_interval` (the first probe at once).
    ///
    /// # Errors
    /// [`HealthError::AlreadyRunning`], [`HealthError::NoRuntime`].
    fn start(&self) -> Result<(), HealthError>;

    /// Stops probing and waits for the probing task to end. Idempotent.
    async fn stop(&self);

    /// The latest status.
    fn status(&self) -> HealthStatus;

    /// A receiver that sees the status after every probe.
    fn subscribe(&self) -> watch::Receiver<HealthStatus>;

    /// Probes now, outside the schedule, and returns the resulting status.
    async fn check_now(&self) -> HealthStatus;
}

#[async_trait::async_trait]
impl<T: HealthMonitor + ?Sized> HealthMonitor for Arc<T> {
    fn start(&self) -> Result<(), HealthError> {
        (**self).start()
    }
    async fn stop(&self) {
        (**self).stop().await;
    }
    fn status(&self) -> HealthStatus {
        (**self).status()
    }
    fn subscribe(&self) -> watch::Receiver<HealthStatus> {
        (**self).subscribe()
    }
    async fn check_now(&self) -> HealthStatus {
        (**self).check_now().await
    }
}

const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn HealthMonitor>();
    assert_send_sync::<dyn Probe>();
};
