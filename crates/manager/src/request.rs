//! The request path: breaker, pool, deadline, retries by class, the fallback, metrics once.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::{Cmd, Value};
use resilient_redis_breaker::{CircuitBreaker, PermitGuard};
use resilient_redis_config::ErrorKind;
use resilient_redis_fallback::FallbackStore;
use resilient_redis_metrics::{Event, MetricsCollector, Outcome};
use resilient_redis_pool::{ConnectionPool, PoolError};
use tokio::time::Instant;

use crate::Error;
use crate::manager::RedisManager;

/// What one call sends: a command, or the part of a pipeline redis-rs asks for.
#[derive(Clone, Copy)]
pub(crate) enum Request<'r> {
    /// One command.
    Cmd(&'r Cmd),
    /// `(pipeline, offset, count)` as in `ConnectionLike::req_packed_commands`; the reply is a
    /// `Value::Array` of the `count` replies.
    Pipeline(&'r redis::Pipeline, usize, usize),
}

/// Which keys a call touches, for fallback mode by slot in a Redis Cluster.
#[derive(Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// Unknown keys (a command the fallback cannot answer, a pipeline): every slot.
    All,
    /// One key.
    Key(&'a [u8]),
    /// The keys of a command the fallback can answer.
    Plan(&'a crate::compat::Memory<'a>),
}

impl Scope<'_> {
    /// Calls `f` with each key's slot (`None`: every slot).
    pub(crate) fn each_slot(self, mut f: impl FnMut(Option<u16>)) {
        match self {
            Scope::All => f(None),
            Scope::Key(k) => f(Some(resilient_redis_pool::key_slot(k))),
            Scope::Plan(m) => m.each_key(|k| f(Some(resilient_redis_pool::key_slot(k)))),
        }
    }
}

/// How the fallback store answers an operation (decoded as Redis's answer would be).
pub(crate) type Serve<'a, T> = dyn Fn(&dyn FallbackStore) -> Result<T, Error> + Sync + 'a;

/// How a failed command may be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Reads: retried; served from the fallback when Redis cannot answer.
    Read,
    /// Writes whose replay is safe (SET with its value, DEL, EXPIRE, HSET of given fields):
    /// retried, and journaled even when their outcome is unknown.
    IdempotentWrite,
    /// Writes whose replay is safe but whose reply is a count that a repetition changes (DEL,
    /// HSET, HDEL): journaled even when their outcome is unknown (the count then is memory's),
    /// but never retried once they may have been sent ([`Error::Ambiguous`] without the
    /// fallback).
    CountingWrite,
    /// Writes that must not apply twice (INCRBY): retried and journaled only when they
    /// certainly never reached Redis; otherwise [`Error::Ambiguous`].
    NonIdempotentWrite,
    /// Anything else (`execute`, `pipeline`): not retried, no fallback.
    Opaque,
}

/// When a call started and, once it succeeded, when it ended (the breaker and the metrics
/// share that one clock read).
pub(crate) struct Timing {
    started: Instant,
    ended: Option<Instant>,
    /// Attempts repeated after a failure.
    retries: u32,
}

impl RedisManager {
    /// Runs one operation through the whole request path; records its metrics once.
    #[allow(
        clippy::too_many_arguments,
        reason = "each operation declares its parts in one place, at its call site"
    )]
    pub(crate) async fn call<T>(
        &self,
        op: &'static str,
        kind: Kind,
        scope: Scope<'_>,
        cmd: Request<'_>,
        decode: impl FnOnce(Value) -> Result<T, Error>,
        fallback: Option<&Serve<'_, T>>,
        observe: impl FnOnce(&dyn FallbackStore, &Value),
    ) -> Result<T, Error> {
        let span = resilient_redis_metrics::operation_span(op);
        let mut timing = Timing {
            started: Instant::now(),
            ended: None,
            retries: 0,
        };
        // Polled in place inside the span (as `Instrument` does, without moving the request's
        // state, a few KB, into a wrapper and again into this future on every call).
        let (result, outcome) = {
            let mut attempt = std::pin::pin!(self.attempt(
                kind,
                scope,
                cmd,
                decode,
                fallback,
                observe,
                &mut timing
            ));
            std::future::poll_fn(|cx| {
                let _entered = span.enter();
                attempt.as_mut().poll(cx)
            })
            .await
        };
        let ended = timing.ended.unwrap_or_else(Instant::now);
        self.inner.metrics.record_operation_at(
            op,
            ended.saturating_duration_since(timing.started),
            outcome,
            ended.into_std(),
        );
        if timing.retries > 0 {
            self.inner.metrics.record_event(Event::Retried {
                operation: op,
                retries: timing.retries,
            });
        }
        if let Err(e) = &result {
            resilient_redis_metrics::record_error(&span, e.kind().as_str());
            if matches!(e, Error::Ambiguous { .. }) {
                self.inner
                    .metrics
                    .record_event(Event::Ambiguous { operation: op });
            }
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
    #[allow(
        clippy::too_many_arguments,
        reason = "one call's parts, passed through from `call` without a struct to build"
    )]
    async fn attempt<T>(
        &self,
        kind: Kind,
        scope: Scope<'_>,
        cmd: Request<'_>,
        decode: impl FnOnce(Value) -> Result<T, Error>,
        fallback: Option<&Serve<'_, T>>,
        observe: impl FnOnce(&dyn FallbackStore, &Value),
        timing: &mut Timing,
    ) -> (Result<T, Error>, Outcome) {
        let started = timing.started;
        let inner = &*self.inner;
        let opts = self.options;
        let failed = |e: Error| {
            let outcome = match &e {
                Error::Server { code, .. } if code.as_deref() != Some("NOPERM") => {
                    Outcome::ServerError(status_code(code.as_deref()))
                }
                other => Outcome::Error(other.kind()),
            };
            (Err(e), outcome)
        };
        if inner.closed.load(Ordering::Relaxed) {
            return failed(Error::Closed);
        }
        let fallback = fallback.filter(|_| inner.fallback_enabled && opts.fallback);
        if let Some(serve) = fallback
            && inner.in_fallback(scope)
            && let Some(answer) = self.serve(serve, scope, None)
        {
            return answer;
        }
        // (In a cluster, only a call touching a slot with journaled writes could overtake them.)
        if fallback.is_none() && inner.in_fallback(scope) && inner.journal.pending_writes() > 0 {
            return failed(overtake_error());
        }
        let permit = match inner.breaker.try_acquire() {
            // Released if this future is dropped at any await below.
            Ok(p) => PermitGuard::new(inner.breaker.as_ref(), p),
            Err(rejected) => {
                if let Some(serve) = fallback {
                    // An open breaker stands for the whole of Redis (the whole cluster).
                    return self.serve_activating(serve, Scope::All, false);
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
        // Counted inside the attempts and read after them (an atomic only to share it: the
        // attempts stay pinned in place until this function returns).
        let retries = std::sync::atomic::AtomicU32::new(0);
        let mut attempts = std::pin::pin!(async {
            let mut delay = cfg.retry_delay;
            let mut attempts = 0;
            loop {
                let (err, sent) = 'attempt: {
                    // In a cluster, only reads go through the client that resends by itself.
                    // (The pool's answer is a temporary of this statement only: it takes no room
                    // in the request's state beside the connection.)
                    let mut conn = match if inner.slots.is_some() && kind != Kind::Read {
                        inner.pool.shared_at_most_once()
                    } else {
                        inner.pool.shared()
                    } {
                        Ok(conn) => conn,
                        Err(e) => break 'attempt (e, false),
                    };
                    // Awaited here, not through a helper `async fn`: each async layer is one
                    // more copy of the request's state on every call.
                    match match cmd {
                        Request::Cmd(cmd) => conn.query::<Value>(cmd).await,
                        Request::Pipeline(p, offset, count) => {
                            use redis::aio::ConnectionLike;
                            conn.req_packed_commands(p, offset, count)
                                .await
                                .map(Value::Array)
                                .map_err(|e| PoolError::Command {
                                    kind: resilient_redis_pool::classify(&e),
                                    source: e,
                                })
                        }
                    } {
                        Ok(value) => return Ok(value),
                        Err(e) => {
                            let sent = e.outcome_unknown();
                            (e, sent)
                        }
                    }
                };
                let err_kind = effective_kind(&err);
                attempts += 1;
                // A redirect (a slot that moved) is no outage and proves the command did not
                // run: it is sent again once, even when memory could answer.
                let redirected = attempts == 1 && opts.retry && is_redirect(&err);
                let retry = (may_retry || redirected)
                    && err_kind != ErrorKind::Server
                    && err_kind.is_transient()
                    && !(matches!(kind, Kind::NonIdempotentWrite | Kind::CountingWrite) && sent)
                    && attempts <= cfg.max_retries
                    && deadline
                        .is_none_or(|d| Instant::now().checked_add(delay).is_some_and(|t| t < d));
                if !retry {
                    return Err((err, sent));
                }
                retries.fetch_add(1, Ordering::Relaxed);
                let jitter = delay.mul_f64(fastrand::f64() * 0.5);
                tokio::time::sleep(delay.saturating_add(jitter)).await;
                delay = delay.saturating_mul(2);
            }
        });
        let attempted = match opts
            .timeout
            .and_then(|t| started.checked_add(t).map(|u| (t, u)))
        {
            // The timer is boxed: only calls with a deadline of their own pay for its room.
            Some((t, until)) => match Box::pin(tokio::time::timeout_at(until, attempts)).await {
                Ok(attempted) => attempted,
                Err(_) => {
                    timing.retries = retries.load(Ordering::Relaxed);
                    // The caller's own deadline says nothing about Redis: the permit goes back
                    // uncounted, and neither memory nor fallback mode is involved. The command
                    // may still run: a write that must not repeat is ambiguous.
                    permit.release();
                    let e = PoolError::CommandTimeout(t);
                    return failed(if kind == Kind::Read {
                        Error::Unavailable {
                            kind: ErrorKind::Timeout,
                            message: e.to_string(),
                            source: Some(Box::new(e)),
                        }
                    } else {
                        Error::Ambiguous {
                            operation: "",
                            kind: ErrorKind::Timeout,
                            message: e.to_string(),
                            source: Some(Box::new(e)),
                        }
                    });
                }
            },
            None => attempts.as_mut().await,
        };
        timing.retries = retries.load(Ordering::Relaxed);
        let (failure, sent) = match attempted {
            Ok(value) => {
                let ended = Instant::now();
                timing.ended = Some(ended);
                permit.success(ended.saturating_duration_since(started));
                if inner.shadow {
                    observe(inner.store.as_ref(), &value);
                }
                let decoded = decode(value);
                let outcome = match &decoded {
                    Ok(_) => Outcome::Success,
                    Err(e) => Outcome::Error(e.kind()),
                };
                return (decoded, outcome);
            }
            Err(failure) => failure,
        };
        let err_kind = effective_kind(&failure);
        if matches!(err_kind, ErrorKind::Server | ErrorKind::NoPermission) {
            // The server answered: it is healthy; the error is the caller's (an ACL refusal
            // is the configuration's: retrying or opening the breaker would not help).
            permit.success(started.elapsed());
            return failed(server_error(failure));
        }
        // In a cluster the breaker stands for the whole cluster: it is not told of one node's
        // failure (the health probe opens it when every primary fails), and a key's failure
        // puts its primary's slots in fallback mode instead (a redirect only the key's slot).
        let cluster = inner.slots.is_some();
        let widen = !is_redirect(&failure);
        if err_kind.is_transient() && !cluster {
            permit.error(started.elapsed());
        } else {
            permit.release();
        }
        if sent
            && (kind == Kind::NonIdempotentWrite
                || (kind == Kind::CountingWrite && fallback.is_none()))
        {
            if cluster && fallback.is_some() && err_kind.is_transient() {
                // Not journaled (its outcome is unknown), but the primary's other keys go to
                // memory from now on rather than each waiting for a timeout.
                self.cover_failed(scope, widen);
            }
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
            return self.serve_activating(serve, scope, widen);
        }
        failed(Error::Unavailable {
            kind: err_kind,
            message: failure.to_string(),
            source: Some(Box::new(failure)),
        })
    }

    /// Whether journaled writes wait for their replay (only ever in fallback mode).
    pub(crate) fn journal_pending(&self) -> bool {
        self.inner.is_fallback_mode() && self.inner.journal.pending_writes() > 0
    }

    /// Enters fallback mode (for `scope`, widened to its primaries with `widen`) and answers
    /// from the fallback store.
    fn serve_activating<T>(
        &self,
        serve: &Serve<'_, T>,
        scope: Scope<'_>,
        widen: bool,
    ) -> (Result<T, Error>, Outcome) {
        self.serve(serve, scope, Some(widen))
            .unwrap_or((Err(Error::Closed), Outcome::Error(ErrorKind::Closed)))
    }

    /// Puts `scope` (and with `widen` its primaries) in fallback mode without answering from
    /// memory, under the mode gate, and asks the recovery loop for a probe.
    fn cover_failed(&self, scope: Scope<'_>, widen: bool) {
        let inner = &*self.inner;
        let _gate = inner.gate.read().unwrap_or_else(PoisonError::into_inner);
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if !inner.is_fallback_mode() {
            inner.activated.notify_one();
        }
        inner.activate_for("call_failed", scope, widen);
    }

    /// Answers from the fallback store under the mode gate: `None` when fallback mode ended
    /// meanwhile or does not cover `scope` (the caller goes to Redis), unless `activate` turns
    /// it on (`Some(widen)`: see [`crate::manager::Inner::activate_for`]).
    fn serve<T>(
        &self,
        serve: &Serve<'_, T>,
        scope: Scope<'_>,
        activate: Option<bool>,
    ) -> Option<(Result<T, Error>, Outcome)> {
        let inner = &*self.inner;
        let _gate = inner.gate.read().unwrap_or_else(PoisonError::into_inner);
        if inner.closed.load(Ordering::Acquire) {
            return Some((Err(Error::Closed), Outcome::Error(ErrorKind::Closed)));
        }
        if let Some(widen) = activate {
            if !inner.is_fallback_mode() {
                // Ask the recovery loop for a probe now (decided under the gate, so a recovery
                // that just ended the mode cannot swallow the request): one failed call must
                // not keep every caller on memory for longer than it takes to see Redis again.
                inner.activated.notify_one();
            }
            inner.activate_for("call_failed", scope, widen);
        } else if !inner.in_fallback(scope) {
            return None;
        } else {
            // Every slot the call touches stays in fallback mode until the journal drains.
            inner.cover(scope);
        }
        let result = serve(inner.store.as_ref());
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

/// A reply that says the server is not ready ([`resilient_redis_pool::not_ready`]: LOADING,
/// a failover, a cluster refusing commands, a slot that moved) is handled like a lost
/// connection: retried when safe, counted against the breaker, served from the fallback. Other
/// error replies (WRONGTYPE, NOSCRIPT, OOM, ...) are the caller's to handle.
pub(crate) fn effective_kind(err: &PoolError) -> ErrorKind {
    if let PoolError::Command { source, .. } = err
        && resilient_redis_pool::not_ready(source)
    {
        return ErrorKind::Connection;
    }
    err.kind()
}

/// Whether a cluster redirected the command (`MOVED`, `ASK`): it did not run there.
fn is_redirect(err: &PoolError) -> bool {
    matches!(err, PoolError::Command { source, .. } if matches!(source.code(), Some("MOVED" | "ASK")))
}

/// An error reply's code as a static string for the metrics' `db.response.status_code`: the
/// codes Redis uses, `ERR` for a reply without one, `OTHER` for one not in the list (the set of
/// series stays bounded whatever a module or proxy answers).
pub(crate) fn status_code(code: Option<&str>) -> &'static str {
    const CODES: [&str; 24] = [
        "ERR",
        "WRONGTYPE",
        "NOSCRIPT",
        "NOPERM",
        "NOAUTH",
        "WRONGPASS",
        "OOM",
        "BUSY",
        "BUSYKEY",
        "EXECABORT",
        "READONLY",
        "LOADING",
        "MASTERDOWN",
        "TRYAGAIN",
        "MOVED",
        "ASK",
        "CLUSTERDOWN",
        "CROSSSLOT",
        "NOREPLICAS",
        "MISCONF",
        "NOGROUP",
        "UNBLOCKED",
        "NOTBUSY",
        "NOPROTO",
    ];
    match code {
        None => "ERR",
        Some(c) => CODES.iter().find(|k| **k == c).copied().unwrap_or("OTHER"),
    }
}

/// The refusal of a command that could overtake journaled writes.
pub(crate) fn overtake_error() -> Error {
    Error::unavailable(
        ErrorKind::Fallback,
        "journaled writes are waiting for their replay: commands the fallback cannot serve are \
         refused until it is done, so that they cannot overtake them",
    )
}

pub(crate) fn server_error(err: PoolError) -> Error {
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

pub(crate) fn unavailable(err: PoolError) -> Error {
    Error::Unavailable {
        kind: err.kind(),
        message: err.to_string(),
        source: Some(Box::new(err)),
    }
}
