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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisConnectionInfo, RedisError, RedisResult};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;

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

/// Slots in [`Watch::waiting`]: more than the `CHECKS + 1` looks a request may wait.
const SLOTS: usize = 32;

/// What a shared connection's watchdog reads: how many requests wait, by when they started.
pub(crate) struct Watch {
    /// The watchdog's looks so far: a request started after look `e` is counted in slot
    /// `e % SLOTS` until it ends.
    looks: AtomicU32,
    /// Requests waiting, by the look they started after.
    waiting: [AtomicU32; SLOTS],
    /// Set by the watchdog when it stopped the connection: its waiting requests timed out.
    hung: AtomicBool,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            looks: AtomicU32::new(0),
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

    /// Whether the watchdog stopped the connection.
    pub(crate) fn hung(&self) -> bool {
        self.hung.load(Ordering::Acquire)
    }

    fn slot(&self, look: u32) -> &AtomicU32 {
        &self.waiting[look as usize % SLOTS]
    }

    /// The watchdog's next look: whether a request that started more than `CHECKS` looks ago
    /// (so at least a socket timeout ago, and at most `1 + 1/CHECKS` of it) still waits.
    /// Each look judges the requests of one earlier look, so every request is judged once,
    /// when it is old enough: a reply to a newer one does not make an older one young.
    fn look(&self) -> bool {
        let now = self.looks.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let judged = now.wrapping_sub(CHECKS + 1);
        // The first looks have nothing old enough to judge (`judged` wrapped round).
        now > CHECKS && self.slot(judged).load(Ordering::Acquire) > 0
    }
}

/// A request waiting on a shared connection, counted until it ends: with its reply
/// ([`Ticket::answered`]) or because its caller gave up (dropped).
pub(crate) struct Ticket<'a> {
    watch: &'a Watch,
    look: u32,
    /// Started after the watchdog stopped the connection: never sent, so its failure is no
    /// timeout.
    late: bool,
}

impl Ticket<'_> {
    /// The request has its reply (or its error). Whether it failed because the watchdog
    /// stopped the connection while it waited (it may have been applied: a timeout).
    pub(crate) fn answered(self) -> bool {
        !self.late && self.watch.hung()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.watch.slot(self.look).fetch_sub(1, Ordering::Release);
    }
}

/// Looks at `lane` `CHECKS` times per `timeout` until it is gone or its driver has ended; when
/// a request has waited `timeout` with no reply, marks the lane broken and hung, stops its
/// driver (every waiting request fails at once) and wakes the keeper to replace it.
pub(crate) async fn watchdog(lane: Weak<Lane>, driver: AbortHandle, timeout: Duration) {
    let every = (timeout / CHECKS).max(Duration::from_millis(1));
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
        if watch.look() {
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

    /// Looks until the watchdog would stop the connection; how many it took (at most 100).
    fn looks_until_hung(watch: &Watch) -> u32 {
        (1..=100).find(|_| watch.look()).unwrap_or(u32::MAX)
    }

    #[test]
    fn a_request_is_judged_hung_once_it_has_waited_a_whole_timeout() {
        let watch = Watch::default();
        for _ in 0..5 {
            assert!(!watch.look(), "nothing waits");
        }
        let ticket = watch.start();
        // Started after look 5: older than CHECKS looks at look 5 + CHECKS + 1.
        assert_eq!(looks_until_hung(&watch), CHECKS + 1);
        drop(ticket);
    }

    #[test]
    fn replies_to_newer_requests_do_not_make_an_older_one_young() {
        let watch = Watch::default();
        let old = watch.start();
        // A newer request answered at every look: the old one is still judged on time.
        let hung_at = (1..=100).find(|_| {
            let newer = watch.start();
            assert!(!newer.answered());
            watch.look()
        });
        assert_eq!(hung_at, Some(CHECKS + 1));
        drop(old);
    }

    #[test]
    fn requests_that_end_in_time_or_are_given_up_never_make_a_hang() {
        let watch = Watch::default();
        for _ in 0..200 {
            let answered = watch.start();
            let given_up = watch.start();
            assert!(!answered.answered(), "no hang, no timeout");
            drop(given_up);
            assert!(!watch.look());
        }
        // The idle connection goes on being fine, past every slot's wrap.
        for _ in 0..100 {
            assert!(!watch.look());
        }
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
}
