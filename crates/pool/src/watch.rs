//! Shared connections without a timer per request.
//!
//! redis-rs bounds each request on a multiplexed connection with its response timeout: a timer
//! put into tokio's timer wheel and taken out again on every call. On a busy shared connection
//! that was the largest single cost of a request (measured in `docs/performance.md`). Redis
//! answers one connection's requests in order, so "a request waited longer than the socket
//! timeout" is the same fault as "requests were waiting and no reply came for the socket
//! timeout". The pool opens plain TCP and Unix-socket connections itself, spawns their driver
//! task (the one that writes requests and reads replies), and gives each shared connection a
//! watchdog that checks that second condition a few times per socket timeout. When it holds,
//! the watchdog stops the driver, which fails every waiting request at once; those requests
//! report a timeout, and the connection is replaced as after any timeout.
//!
//! TLS connections are opened by redis-rs (it builds their TLS configuration), so they keep its
//! per-request timer.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisConnectionInfo, RedisError, RedisResult};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::conn::Lane;

/// How many times per socket timeout the watchdog looks: a hung connection's requests fail
/// between one socket timeout and 1 + 1/`CHECKS` of it after they were sent.
const CHECKS: u32 = 20;

/// One waiting request, in the low half of [`Watch::state`].
const WAITING: u64 = 1;
/// One answered request, in the high half.
const ANSWERED: u64 = 1 << 32;

/// A connection's driver task, stopped when the connection is dropped (as redis-rs stops the
/// tasks it spawns itself): requests still waiting on it fail.
pub(crate) struct Driver(AbortHandle);

impl Driver {
    /// A handle on the task, for the watchdog.
    pub(crate) fn handle(&self) -> AbortHandle {
        self.0.clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection opened by the pool, with its driver task.
pub(crate) struct Owned {
    /// With redis-rs's response timeout: for exclusive use (one request at a time, blocking
    /// commands with their own deadline) and for the pool's own probes.
    pub(crate) mux: MultiplexedConnection,
    /// Without it: for a shared connection, whose watchdog bounds its replies.
    pub(crate) untimed: MultiplexedConnection,
    pub(crate) driver: Driver,
}

/// Opens a connection to `client`'s address with a driver task of the pool's own, for plain
/// TCP and Unix sockets; `Ok(None)` for TLS, which redis-rs opens. `dial_host` replaces the
/// address's host (the name a certificate is checked against is not always dialable).
pub(crate) async fn open(
    client: &redis::Client,
    config: &AsyncConnectionConfig,
    socket_timeout: Duration,
    dial_host: Option<&str>,
) -> RedisResult<Option<Owned>> {
    let info = client.get_connection_info();
    let config = config.clone().set_response_timeout(None);
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let host = dial_host.unwrap_or(host);
            let stream = tokio::net::TcpStream::connect((host, *port)).await?;
            stream.set_nodelay(info.tcp_settings().nodelay())?;
            start(info.redis_settings(), stream, config, socket_timeout)
                .await
                .map(Some)
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await?;
            start(info.redis_settings(), stream, config, socket_timeout)
                .await
                .map(Some)
        }
        _ => Ok(None),
    }
}

async fn start<S>(
    redis: &RedisConnectionInfo,
    stream: S,
    config: AsyncConnectionConfig,
    socket_timeout: Duration,
) -> RedisResult<Owned>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (untimed, driver) = MultiplexedConnection::new_with_config(redis, stream, config).await?;
    let driver = Driver(tokio::spawn(driver).abort_handle());
    let mut mux = untimed.clone();
    mux.set_response_timeout(socket_timeout);
    Ok(Owned {
        mux,
        untimed,
        driver,
    })
}

/// What a shared connection's watchdog reads: requests waiting and replies so far.
#[derive(Default)]
pub(crate) struct Watch {
    /// Low half: requests sent and not yet answered. High half: answers so far (wrapping).
    state: AtomicU64,
    /// Set by the watchdog when it stopped the connection: its failed requests timed out.
    hung: AtomicBool,
}

impl Watch {
    /// A request is about to be sent.
    pub(crate) fn start(&self) -> Ticket<'_> {
        self.state.fetch_add(WAITING, Ordering::Relaxed);
        Ticket {
            watch: self,
            late: self.hung(),
        }
    }

    /// Whether the watchdog stopped the connection.
    pub(crate) fn hung(&self) -> bool {
        self.hung.load(Ordering::Acquire)
    }
}

/// A request waiting on a shared connection. [`Ticket::answered`] when it has its reply;
/// dropped without that (its caller gave up), it stops counting as waiting but is no answer:
/// callers that give up must not make a hung connection look alive.
pub(crate) struct Ticket<'a> {
    watch: &'a Watch,
    /// Started after the watchdog stopped the connection: never sent, so its failure is no
    /// timeout.
    late: bool,
}

impl Ticket<'_> {
    /// The request has its reply (or its error). Whether it failed because the watchdog
    /// stopped the connection while it waited (it may have been applied: a timeout).
    pub(crate) fn answered(self) -> bool {
        // One more answer, one fewer waiting: the low half is at least 1, so the carry moves
        // exactly one into the high half.
        self.watch
            .state
            .fetch_add(ANSWERED - WAITING, Ordering::Relaxed);
        let timed_out = !self.late && self.watch.hung();
        std::mem::forget(self);
        timed_out
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.watch.state.fetch_sub(WAITING, Ordering::Relaxed);
    }
}

/// The watchdog's judgement, apart from its clock and its task.
#[derive(Debug, Default)]
struct Judge {
    /// Answers counted at the last look.
    answers: u32,
    /// Since when requests have waited with no answer, as far as the looks saw.
    since: Option<Instant>,
}

impl Judge {
    /// Whether the connection is hung: requests have waited `timeout` with no reply.
    fn hung(&mut self, state: u64, now: Instant, timeout: Duration) -> bool {
        let waiting = state & (ANSWERED - 1);
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the high half of a u64 fits a u32"
        )]
        let answers = (state >> 32) as u32;
        let progressed = answers != self.answers;
        self.answers = answers;
        if waiting == 0 {
            self.since = None;
            return false;
        }
        match self.since {
            Some(since) if !progressed => now.duration_since(since) >= timeout,
            _ => {
                // The first look that sees these requests waiting: they were sent before it.
                self.since = Some(now);
                false
            }
        }
    }
}

/// Looks at `lane` `CHECKS` times per `timeout` until it is gone or its driver has ended; when
/// its requests have waited `timeout` with no reply, marks it broken and hung, stops its driver
/// (every waiting request fails at once) and wakes the keeper to replace it.
pub(crate) async fn watchdog(lane: Weak<Lane>, driver: AbortHandle, timeout: Duration) {
    let every = (timeout / CHECKS).max(Duration::from_millis(1));
    let mut judge = Judge::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if driver.is_finished() {
            return;
        }
        let Some(lane) = lane.upgrade() else {
            return;
        };
        let Some(watch) = &lane.watch else {
            return;
        };
        if judge.hung(watch.state.load(Ordering::Acquire), Instant::now(), timeout) {
            tracing::warn!(
                ?timeout,
                "no reply on a shared connection within socket_timeout: closing it"
            );
            watch.hung.store(true, Ordering::Release);
            lane.broken.store(true, Ordering::Release);
            driver.abort();
            lane.wake.notify_one();
            return;
        }
    }
}

/// The error a request on a connection the watchdog stopped reports: a timeout, as redis-rs
/// reports its own response timeout.
pub(crate) fn timed_out(timeout: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no reply within socket_timeout ({timeout:?})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(100);

    fn state(waiting: u64, answers: u64) -> u64 {
        answers << 32 | waiting
    }

    #[test]
    fn a_connection_is_hung_only_after_a_whole_timeout_of_waiting_without_a_reply() {
        let t0 = Instant::now();
        let mut judge = Judge::default();
        assert!(!judge.hung(state(0, 0), t0, T), "nothing waits");
        // Requests are first seen waiting at t0 + 10 ms: the timeout counts from there.
        assert!(!judge.hung(state(3, 0), t0 + T / 10, T));
        assert!(
            !judge.hung(state(3, 0), t0 + T, T),
            "only 90 ms of waiting seen"
        );
        assert!(judge.hung(state(3, 0), t0 + T + T / 10, T));
    }

    #[test]
    fn a_reply_restarts_the_count_and_an_idle_connection_is_never_hung() {
        let t0 = Instant::now();
        let mut judge = Judge::default();
        assert!(!judge.hung(state(2, 5), t0, T));
        // One reply came in between: progress, though requests still wait.
        assert!(!judge.hung(state(2, 6), t0 + T, T));
        assert!(!judge.hung(state(2, 6), t0 + T + T / 2, T));
        assert!(judge.hung(state(2, 6), t0 + 2 * T, T));
        // Idle for ever: never hung.
        let mut idle = Judge::default();
        for i in 0..50 {
            assert!(!idle.hung(state(0, 9), t0 + T * i, T));
        }
    }

    #[test]
    fn callers_who_give_up_neither_keep_a_request_waiting_nor_count_as_a_reply() {
        let watch = Watch::default();
        let a = watch.start();
        let b = watch.start();
        assert_eq!(watch.state.load(Ordering::Relaxed), state(2, 0));
        assert!(!a.answered(), "no hang, no timeout");
        assert_eq!(watch.state.load(Ordering::Relaxed), state(1, 1));
        drop(b);
        assert_eq!(
            watch.state.load(Ordering::Relaxed),
            state(0, 1),
            "a dropped request is no answer"
        );
    }

    #[test]
    fn only_requests_waiting_when_the_connection_was_stopped_timed_out() {
        let watch = Watch::default();
        let waiting = watch.start();
        watch.hung.store(true, Ordering::Release);
        let late = watch.start();
        assert!(waiting.answered(), "it waited on the hung connection");
        assert!(
            !late.answered(),
            "never sent: a plain failure, not a timeout"
        );
    }

    #[test]
    fn the_answer_count_wraps_without_touching_the_waiting_count() {
        let watch = Watch::default();
        watch
            .state
            .store(state(1, u64::from(u32::MAX)), Ordering::Relaxed);
        let t = watch.start();
        assert!(!t.answered());
        assert_eq!(watch.state.load(Ordering::Relaxed), state(1, 0));
    }
}
