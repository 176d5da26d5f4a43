//! Running an operation under a breaker.

use std::fmt;
use std::future::Future;

use tokio::time::Instant;

use crate::{CallNotPermitted, CircuitBreaker, Permit};

/// How the breaker records a finished call (what happened to the call itself, as the metrics
/// see it, is another matter: a call answered from memory is recorded by neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Record {
    /// It worked (a slow success still counts towards the slow-call rate).
    Success,
    /// It failed in a way that says the backend is unwell.
    Failure,
    /// It says nothing about the backend (a caller error, say): not counted.
    Ignored,
}

/// The error of [`CircuitBreakerExt::call`]: rejected, or the operation's own error.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The breaker did not permit the call; the operation did not run.
    NotPermitted(CallNotPermitted),
    /// The operation ran and failed.
    Inner(E),
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotPermitted(e) => e.fmt(f),
            CallError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::NotPermitted(e) => Some(e),
            CallError::Inner(e) => Some(e),
        }
    }
}

/// Generic helpers over any [`CircuitBreaker`], kept out of the trait so it stays object-safe.
pub trait CircuitBreakerExt: CircuitBreaker {
    /// Asks for a permit, runs `op`, times it, classifies its result with `classify` and records
    /// the outcome. If the returned future is dropped before `op` finishes, the permit is
    /// released, not counted.
    ///
    /// ```
    /// use resilient_redis_breaker::{Breaker, CircuitBreakerExt, Record};
    ///
    /// # tokio_test_block_on(async {
    /// let breaker = Breaker::builder().build().unwrap();
    /// let answer = breaker
    ///     .call(async { Ok::<_, std::io::Error>(42) }, |r| match r {
    ///         Ok(_) => Record::Success,
    ///         Err(_) => Record::Failure,
    ///     })
    ///     .await;
    /// assert_eq!(answer.unwrap(), 42);
    /// # });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    /// # }
    /// ```
    fn call<T, E, Fut, C>(
        &self,
        op: Fut,
        classify: C,
    ) -> impl Future<Output = Result<T, CallError<E>>>
    where
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&Result<T, E>) -> Record,
    {
        async move {
            let permit = self.try_acquire().map_err(CallError::NotPermitted)?;
            let guard = PermitGuard::new(self, permit);
            let started = Instant::now();
            let result = op.await;
            let elapsed = started.elapsed();
            match classify(&result) {
                Record::Success => guard.success(elapsed),
                Record::Failure => guard.error(elapsed),
                Record::Ignored => guard.release(),
            }
            result.map_err(CallError::Inner)
        }
    }
}

impl<B: CircuitBreaker + ?Sized> CircuitBreakerExt for B {}

/// A permit held across awaits: recorded with [`PermitGuard::success`] or
/// [`PermitGuard::error`], or handed back with [`PermitGuard::release`]; if the caller's future
/// is dropped first (a timeout around the call, a cancelled task), dropping the guard releases
/// the permit, so an abandoned trial call never wedges a HALF_OPEN breaker.
#[must_use = "dropping the guard releases the permit without recording the call"]
pub struct PermitGuard<'a, B: CircuitBreaker + ?Sized> {
    breaker: &'a B,
    permit: Option<Permit>,
}

impl<'a, B: CircuitBreaker + ?Sized> PermitGuard<'a, B> {
    /// Guards `permit`, issued by `breaker`.
    pub fn new(breaker: &'a B, permit: Permit) -> Self {
        Self {
            breaker,
            permit: Some(permit),
        }
    }

    /// Records a success after `elapsed`.
    pub fn success(mut self, elapsed: std::time::Duration) {
        if let Some(p) = self.permit.take() {
            self.breaker.on_success(p, elapsed);
        }
    }

    /// Records a failure after `elapsed`.
    pub fn error(mut self, elapsed: std::time::Duration) {
        if let Some(p) = self.permit.take() {
            self.breaker.on_error(p, elapsed);
        }
    }

    /// Hands the permit back without recording the call.
    pub fn release(mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.release_permission(p);
        }
    }
}

impl<B: CircuitBreaker + ?Sized> Drop for PermitGuard<'_, B> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release_permission(permit);
        }
    }
}

impl<B: CircuitBreaker + ?Sized> std::fmt::Debug for PermitGuard<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermitGuard")
            .field("permit", &self.permit)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BreakerState, MockCircuitBreaker};

    fn classify(r: &Result<u32, &'static str>) -> Record {
        match r {
            Ok(_) => Record::Success,
            Err("ignored") => Record::Ignored,
            Err(_) => Record::Failure,
        }
    }

    #[tokio::test]
    async fn a_rejected_call_never_runs_the_operation() {
        let mut mock = MockCircuitBreaker::new();
        mock.expect_try_acquire().times(1).returning(|| {
            Err(CallNotPermitted {
                state: BreakerState::Open,
            })
        });
        let ran = std::cell::Cell::new(false);
        let result = mock
            .call(
                async {
                    ran.set(true);
                    Ok(1)
                },
                classify,
            )
            .await;
        assert_eq!(
            result,
            Err(CallError::NotPermitted(CallNotPermitted {
                state: BreakerState::Open
            }))
        );
        assert!(!ran.get());
    }

    #[tokio::test]
    async fn each_outcome_is_recorded_once_with_its_permit() {
        let mut mock = MockCircuitBreaker::new();
        let mut tags = 0..;
        mock.expect_try_acquire()
            .times(3)
            .returning(move || Ok(Permit::new(tags.next().unwrap_or(0))));
        mock.expect_on_success()
            .withf(|p, _| p.tag() == 0)
            .times(1)
            .return_const(());
        mock.expect_on_error()
            .withf(|p, _| p.tag() == 1)
            .times(1)
            .return_const(());
        mock.expect_release_permission()
            .withf(|p| p.tag() == 2)
            .times(1)
            .return_const(());

        assert_eq!(mock.call(async { Ok(7) }, classify).await, Ok(7));
        assert_eq!(
            mock.call(async { Err("down") }, classify).await,
            Err(CallError::Inner("down"))
        );
        assert_eq!(
            mock.call(async { Err("ignored") }, classify).await,
            Err(CallError::Inner("ignored"))
        );
    }

    #[tokio::test]
    async fn a_cancelled_call_releases_its_permit() {
        let mut mock = MockCircuitBreaker::new();
        mock.expect_try_acquire()
            .times(1)
            .returning(|| Ok(Permit::new(9)));
        mock.expect_release_permission()
            .withf(|p| p.tag() == 9)
            .times(1)
            .return_const(());
        mock.expect_on_success().never();
        mock.expect_on_error().never();
        let never = std::future::pending::<Result<u32, &'static str>>();
        let timed_out = tokio::time::timeout(
            std::time::Duration::from_millis(5),
            mock.call(never, classify),
        )
        .await;
        assert!(timed_out.is_err());
    }

    #[tokio::test]
    async fn a_real_breaker_measures_the_call_duration() {
        let breaker = crate::Breaker::builder()
            .slow_call_duration(std::time::Duration::from_millis(50))
            .build()
            .unwrap();
        tokio::time::pause();
        let slow = async {
            tokio::time::sleep(std::time::Duration::from_millis(60)).await;
            Ok::<_, &'static str>(1)
        };
        breaker.call(slow, classify).await.unwrap();
        let snapshot = breaker.snapshot();
        assert_eq!((snapshot.buffered_calls, snapshot.slow_calls), (1, 1));
    }
}
