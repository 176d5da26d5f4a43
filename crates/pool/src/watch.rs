//! Shared connections without a timer per request.
//!
//! redis-rs bounds each request on a multiplexed connection with its response timeout: a timer
//! put into tokio's timer wheel and taken out again on every call. On a busy shared connection
//! that was the largest single cost of a request (measured in `docs/performance.md`). Instead,
//! the pool opens plain TCP and Unix-socket connections itself and spawns their driver task (the
//! one that writes requests and reads replies). Each shared connection counts its waiting
//! requests by when they started, in steps of a twentieth of the socket timeout, and a watchdog
//! takes one step per twentieth. When a request has waited a whole socket timeout (at most a
//! twentieth more), the watchdog stops the driver, which fails every waiting request at once;
//! those requests report a timeout, and the connection is replaced as after any timeout. A
//! request is judged by its own age, as a timer of its own would: replies to newer requests do
//! not excuse it, and a caller that gives up takes its request out of the count.
//!
//! TLS connections are opened by redis-rs (it builds their TLS configuration), so they keep its
//! per-request timer.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

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

/// A connection as the pool opened it. `mux` has redis-rs's response timeout: for exclusive use
/// (one request at a time, blocking commands with their own deadline) and for the pool's own
/// probes.
pub(crate) struct Connected {
    pub(crate) mux: MultiplexedConnection,
    /// For a connection the pool opened itself (plain TCP, Unix socket).
    pub(crate) untimed: Option<Untimed>,
}

/// A handle without redis-rs's per-request timer, for a shared connection whose watchdog
/// bounds its replies, and the connection's driver task.
pub(crate) struct Untimed {
    pub(crate) mux: MultiplexedConnection,
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
) -> RedisResult<Option<Connected>> {
    let info = client.get_connection_info();
    let config = config.clone().set_response_timeout(None);
    match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = connect_tcp(dial_host.unwrap_or(host), *port).await?;
            // The pool sets no other TCP option (keepalive, linger, user timeout): redis-rs's
            // defaults leave them to the system, as here.
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

/// Connects to every address `host` resolves to at once and keeps the first to answer, as
/// redis-rs does (a name with an address that drops packets still connects by another).
async fn connect_tcp(host: &str, port: u16) -> RedisResult<tokio::net::TcpStream> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    match addrs.as_slice() {
        [] => Err(RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "No address found for host",
        ))),
        [one] => Ok(tokio::net::TcpStream::connect(one).await?),
        _ => {
            let mut tries = tokio::task::JoinSet::new();
            for addr in addrs {
                tries.spawn(tokio::net::TcpStream::connect(addr));
            }
            let mut last = None;
            while let Some(tried) = tries.join_next().await {
                match tried {
                    Ok(Ok(stream)) => return Ok(stream),
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => {}
                }
            }
            Err(last.map_or_else(
                || RedisError::from((redis::ErrorKind::Io, "no address could be tried")),
                RedisError::from,
            ))
        }
    }
}

async fn start<S>(
    redis: &RedisConnectionInfo,
    stream: S,
    config: AsyncConnectionConfig,
    socket_timeout: Duration,
) -> RedisResult<Connected>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (untimed, driver) = MultiplexedConnection::new_with_config(redis, stream, config).await?;
    let driver = Driver(tokio::spawn(driver).abort_handle());
    let mut mux = untimed.clone();
    mux.set_response_timeout(socket_timeout);
    Ok(Connected {
        mux,
        untimed: Some(Untimed {
            mux: untimed,
            driver,
        }),
    })
}

/// Slots in [`Watch::waiting`]: well above the `CHECKS + 2` looks that can pass before a
/// request is judged (tokio's interval keeps its schedule, so looks do not bunch up).
const SLOTS: usize = 64;

/// What a shared connection's watchdog reads: how many requests wait, by when they started.
pub(crate) struct Watch {
    /// The watchdog's looks so far: a request started after look `j` (and before look `j + 1`)
    /// is counted in slot `j % SLOTS` until it ends.
    looks: AtomicU64,
    /// Requests waiting, by the look they started after.
    waiting: [AtomicU32; SLOTS],
    /// Set when the connection was stopped as hung: its waiting requests timed out.
    hung: AtomicBool,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            looks: AtomicU64::new(0),
            waiting: std::array::from_fn(|_| AtomicU32::new(0)),
            hung: AtomicBool::new(false),
        }
    }
}

impl Watch {
    /// A request is about to be sent.
    pub(crate) fn start(&self) -> Ticket<'_> {
        let look = self.looks.load(Ordering::Acquire);
        self.slot(look).fetch_add(1, Ordering::Relaxed);
        Ticket {
            watch: self,
            look,
            late: self.hung(),
        }
    }

    /// Whether the connection was stopped as hung.
    pub(crate) fn hung(&self) -> bool {
        self.hung.load(Ordering::Acquire)
    }

    /// Marks the connection hung: requests waiting on it when it stops report a timeout.
    pub(crate) fn set_hung(&self) {
        self.hung.store(true, Ordering::Release);
    }

    fn slot(&self, look: u64) -> &AtomicU32 {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the remainder is below SLOTS"
        )]
        &self.waiting[(look % SLOTS as u64) as usize]
    }
}

/// A request waiting on a shared connection, counted until it ends: with its reply
/// ([`Ticket::answered`]) or because its caller gave up (dropped).
pub(crate) struct Ticket<'a> {
    watch: &'a Watch,
    look: u64,
    /// Started after the connection was stopped: never sent, so its failure is no timeout.
    late: bool,
}

impl Ticket<'_> {
    /// The request has its reply (or its error). Whether it failed because the connection was
    /// stopped as hung while it waited (it may have been applied: a timeout).
    pub(crate) fn answered(self) -> bool {
        !self.late && self.watch.hung()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.watch.slot(self.look).fetch_sub(1, Ordering::Release);
    }
}

/// The watchdog's memory: when its recent looks happened, and the first look whose requests
/// are not judged yet.
struct Judge {
    times: [Option<Instant>; SLOTS],
    next: u64,
}

impl Judge {
    fn new() -> Self {
        Self {
            times: [None; SLOTS],
            next: 0,
        }
    }

    /// Takes the next look at `watch`, at `now`: whether a request still waits that started
    /// at least `timeout` ago. Requests counted after look `j` started before look `j + 1`, so
    /// they are judged once `timeout` has passed since look `j + 1` (never early, whatever
    /// the looks' spacing), each look's requests once: a reply to a newer request does not
    /// make an older one young.
    fn look(&mut self, watch: &Watch, timeout: Duration) -> bool {
        self.look_at(watch, Instant::now, timeout)
    }

    /// [`Judge::look`] with the clock `now`, read after the look is counted: a request that
    /// still saw the previous look started before this time.
    fn look_at(&mut self, watch: &Watch, now: impl FnOnce() -> Instant, timeout: Duration) -> bool {
        let n = watch.looks.fetch_add(1, Ordering::AcqRel) + 1;
        let now = now();
        self.times[Self::index(n)] = Some(now);
        while self.next < n {
            let Some(after) = self.times[Self::index(self.next + 1)] else {
                break;
            };
            if now.duration_since(after) < timeout {
                break;
            }
            if watch.slot(self.next).load(Ordering::Acquire) > 0 {
                return true;
            }
            self.next += 1;
        }
        false
    }

    #[allow(
        clippy::cast_possible_truncation,
        reason = "the remainder is below SLOTS"
    )]
    fn index(look: u64) -> usize {
        (look % SLOTS as u64) as usize
    }
}

/// Looks at `lane` `CHECKS` times per `timeout` until it is gone or its driver has ended; when
/// a request has waited `timeout` with no reply, stops the lane ([`Lane::stop_hung`]).
pub(crate) async fn watchdog(lane: Weak<Lane>, timeout: Duration) {
    let every = (timeout / CHECKS).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut judge = Judge::new();
    loop {
        tick.tick().await;
        let Some(lane) = lane.upgrade() else {
            return;
        };
        let (Some(watch), Some(driver)) = (&lane.watch, &lane.driver) else {
            return;
        };
        if driver.is_finished() {
            return;
        }
        if judge.look(watch, timeout) {
            tracing::warn!(
                ?timeout,
                "no reply on a shared connection within socket_timeout: closing it"
            );
            lane.stop_hung();
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
    const STEP: Duration = Duration::from_millis(5);

    /// Looks every `STEP` from `t0` until the judge says hung; the time of that look.
    fn hung_at(judge: &mut Judge, watch: &Watch, t0: Instant, mut step: impl FnMut()) -> Duration {
        for i in 1..200 {
            step();
            if judge.look_at(watch, || t0 + STEP * i, T) {
                return STEP * i;
            }
        }
        Duration::MAX
    }

    #[test]
    fn a_request_is_judged_hung_once_it_has_waited_a_whole_timeout_never_before() {
        let (watch, mut judge, t0) = (Watch::default(), Judge::new(), Instant::now());
        for i in 1..=5 {
            assert!(!judge.look_at(&watch, || t0 + STEP * i, T), "nothing waits");
        }
        // Started between the looks at 25 ms and 30 ms: judged at the first look at least
        // 100 ms after 30 ms.
        let ticket = watch.start();
        let mut i = 5;
        let at = loop {
            i += 1;
            if judge.look_at(&watch, || t0 + STEP * i, T) {
                break STEP * i;
            }
        };
        assert_eq!(at, Duration::from_millis(130));
        drop(ticket);
    }

    #[test]
    fn looks_that_bunch_up_do_not_judge_early() {
        let (watch, mut judge, t0) = (Watch::default(), Judge::new(), Instant::now());
        assert!(!judge.look_at(&watch, || t0, T));
        let ticket = watch.start();
        // Ten looks in a burst 1 ms apart, then every 50 ms.
        for i in 1..=10 {
            assert!(!judge.look_at(&watch, || t0 + Duration::from_millis(i), T));
        }
        assert!(!judge.look_at(&watch, || t0 + Duration::from_millis(60), T));
        assert!(
            judge.look_at(&watch, || t0 + Duration::from_millis(101), T),
            "100 ms after the look that followed its start"
        );
        drop(ticket);
    }

    #[test]
    fn replies_to_newer_requests_do_not_make_an_older_one_young() {
        let (watch, mut judge, t0) = (Watch::default(), Judge::new(), Instant::now());
        let old = watch.start();
        // A newer request answered before every look: the old one is still judged on time.
        let at = hung_at(&mut judge, &watch, t0, || {
            let newer = watch.start();
            assert!(!newer.answered());
        });
        assert_eq!(at, Duration::from_millis(105));
        drop(old);
    }

    #[test]
    fn requests_that_end_in_time_or_are_given_up_never_make_a_hang() {
        let (watch, mut judge, t0) = (Watch::default(), Judge::new(), Instant::now());
        for i in 1..400 {
            let answered = watch.start();
            let given_up = watch.start();
            assert!(!answered.answered(), "no hang, no timeout");
            drop(given_up);
            assert!(!judge.look_at(&watch, || t0 + STEP * i, T));
        }
    }

    #[test]
    fn only_requests_waiting_when_the_connection_was_stopped_timed_out() {
        let watch = Watch::default();
        let waiting = watch.start();
        watch.set_hung();
        let late = watch.start();
        assert!(waiting.answered(), "it waited on the hung connection");
        assert!(
            !late.answered(),
            "never sent: a plain failure, not a timeout"
        );
    }
}
