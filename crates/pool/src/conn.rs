//! Connection handles: shared (multiplexed) and exclusive (pooled).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, Value};
use resilient_redis_config::ErrorKind;
use tokio::sync::Notify;

use crate::PoolError;
use crate::error::classify;
use crate::manager::RedisManager;
use crate::session::{self, Session};

/// Classifies a request's failure: a timeout or I/O failure marks the connection broken. The
/// deadline itself is not set here. On an exclusive connection (and on a shared one over TLS)
/// it is redis-rs's response timeout, `socket_timeout`, which bounds the whole request,
/// queueing included. On a shared connection the pool opened itself it is the connection's
/// watchdog (see `watch.rs`), which costs no timer per request.
///
/// A function over the result, not a wrapper future: an `async fn` taking the request future
/// as an argument would hold it twice in its state (the argument and the awaited copy), which
/// doubled the size of every request future the hot path moves around.
fn guard<T>(
    result: Result<T, RedisError>,
    broken: &AtomicBool,
    wake: Option<&Notify>,
) -> Result<T, RedisError> {
    if let Err(e) = &result
        && matches!(classify(e), ErrorKind::Connection | ErrorKind::Timeout)
    {
        broken.store(true, Ordering::Release);
        if let Some(wake) = wake {
            wake.notify_one();
        }
    }
    result
}

fn to_pool_error(e: RedisError) -> PoolError {
    PoolError::Command {
        kind: classify(&e),
        source: e,
    }
}

/// One of the shared multiplexed connections: what ordinary commands run on.
pub(crate) struct Lane {
    pub(crate) mux: MultiplexedConnection,
    pub(crate) broken: Arc<AtomicBool>,
    pub(crate) created: tokio::time::Instant,
    pub(crate) wake: Arc<Notify>,
    /// The mobc connection this lane borrowed; closed (not returned) when the lane goes.
    pub(crate) held: std::sync::Mutex<Option<mobc::Connection<RedisManager>>>,
    /// Who it is to the server (for fencing, should a request on it time out).
    pub(crate) identity: Option<crate::fence::Identity>,
    /// For a connection the pool opened itself: `mux` has no per-request timer, and this counts
    /// what its watchdog needs to bound replies by `socket_timeout` instead.
    pub(crate) watch: Option<crate::watch::Watch>,
    /// That connection's driver task.
    pub(crate) driver: Option<tokio::task::AbortHandle>,
    pub(crate) socket_timeout: std::time::Duration,
}

impl Lane {
    /// Counts a request for the watchdog. A command sent without waiting for a reply counts
    /// too, until redis-rs has queued it (a stuck connection may keep it from the queue).
    fn ticket(&self) -> Option<crate::watch::Ticket<'_>> {
        self.watch.as_ref().map(crate::watch::Watch::start)
    }

    /// Stops a lane found hung (a request waited `socket_timeout` with no reply): requests
    /// waiting on it fail at once with a timeout, and the keeper replaces it.
    pub(crate) fn stop_hung(&self) {
        if let Some(watch) = &self.watch {
            watch.set_hung();
        }
        self.broken.store(true, Ordering::Release);
        if let Some(driver) = &self.driver {
            driver.abort();
        }
        self.wake.notify_one();
    }

    /// The end of a request on this lane: its ticket settled, the failure of a request that
    /// was waiting when the watchdog stopped the connection reported as the timeout it was, and
    /// the lane marked broken on a timeout or I/O failure.
    fn settle<T>(
        &self,
        ticket: Option<crate::watch::Ticket<'_>>,
        result: Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let timed_out = ticket.is_some_and(crate::watch::Ticket::answered);
        let result = match result {
            Err(_) if timed_out => Err(crate::watch::timed_out(self.socket_timeout)),
            other => other,
        };
        guard(result, &self.broken, Some(&self.wake))
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(conn) = self.held.get_mut().ok().and_then(Option::take) {
            drop(conn.into_inner());
        }
    }
}

/// A handle on a shared multiplexed connection, for ordinary commands. Cheap to get
/// ([`crate::ConnectionPool::shared`] takes no lock and does no I/O) and to clone; many callers
/// use the same connection at once. Every request runs under the socket timeout: when
/// requests have waited that long with no reply, the connection is stopped and every request
/// waiting on it fails with a timeout (over TLS, each request has redis-rs's response timeout
/// instead). A request that times out or hits an I/O error takes the connection out of service
/// and the pool replaces it in the background.
///
/// A pool written outside this crate (a mock, a proxy, another client) hands out its own
/// connection with [`SharedConnection::from_connection`].
#[derive(Clone)]
pub struct SharedConnection(SharedKind);

#[derive(Clone)]
enum SharedKind {
    Lane {
        mux: MultiplexedConnection,
        lane: Arc<Lane>,
    },
    Custom(Box<dyn CustomConnection>),
}

/// A connection from outside the crate, cloneable behind a box.
trait CustomConnection: ConnectionLike + Send + Sync {
    fn clone_box(&self) -> Box<dyn CustomConnection>;
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> CustomConnection for C {
    fn clone_box(&self) -> Box<dyn CustomConnection> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn CustomConnection> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

impl SharedConnection {
    pub(crate) fn new(lane: Arc<Lane>) -> Self {
        Self(SharedKind::Lane {
            mux: lane.mux.clone(),
            lane,
        })
    }

    /// A handle on a connection of a pool written outside this crate: any redis-rs
    /// `ConnectionLike` that clones cheaply (a `MultiplexedConnection`, redis-test's
    /// `MockRedisConnection`, ...). Requests go to it as they are: no timeout or failure
    /// bookkeeping is added, that is the custom pool's business.
    #[must_use]
    pub fn from_connection<C: ConnectionLike + Clone + Send + Sync + 'static>(conn: C) -> Self {
        Self(SharedKind::Custom(Box::new(conn)))
    }

    /// Runs `cmd` and converts the reply.
    ///
    /// # Errors
    /// [`PoolError::Command`] classified by kind (a timeout is `Timeout`).
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, PoolError> {
        // The pool's own connections are awaited in place: no boxed future on the hot path.
        let reply = match &mut self.0 {
            SharedKind::Lane { mux, lane } => {
                let ticket = lane.ticket();
                let result = mux.send_packed_command(cmd).await;
                lane.settle(ticket, result)
            }
            SharedKind::Custom(conn) => conn.req_packed_command(cmd).await,
        };
        let value = reply
            .and_then(Value::extract_error)
            .map_err(to_pool_error)?;
        redis::from_redis_value(value).map_err(|e| PoolError::Command {
            kind: ErrorKind::Validation,
            source: e.into(),
        })
    }
}

impl std::fmt::Debug for SharedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConnection").finish_non_exhaustive()
    }
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            SharedKind::Lane { mux, lane } => Box::pin(async move {
                let ticket = lane.ticket();
                let result = mux.send_packed_command(cmd).await;
                lane.settle(ticket, result)
            }),
            SharedKind::Custom(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            SharedKind::Lane { mux, lane } => Box::pin(async move {
                let ticket = lane.ticket();
                let result = mux.send_packed_commands(pipeline, offset, count).await;
                lane.settle(ticket, result)
            }),
            SharedKind::Custom(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            SharedKind::Lane { mux, .. } => mux.get_db(),
            SharedKind::Custom(conn) => conn.get_db(),
        }
    }
}

/// An exclusive connection checked out of the pool, for what cannot share a connection
/// (blocking commands, WATCH/MULTI). Dropping it gives it back; one whose command timed out or
/// hit an I/O error is closed instead.
///
/// A pool written outside this crate hands out its own with
/// [`PooledConnection::from_connection`].
pub struct PooledConnection {
    conn: Exclusive,
    /// Session state it may carry (a transaction, watches, a database, subscriptions): if any,
    /// it is closed on drop instead of being handed to the next borrower.
    session: Session,
    /// A request was sent and its reply not read (the caller dropped the future): the server
    /// may still be running it (a blocking pop would hand its element to nobody), so the
    /// connection is closed on drop.
    in_flight: bool,
}

#[allow(
    clippy::large_enum_variant,
    reason = "the mobc variant is the common one; boxing it would add an allocation per checkout"
)]
enum Exclusive {
    /// Checked out of mobc; `conn` is `Some` from construction until drop.
    Mobc {
        conn: Option<mobc::Connection<RedisManager>>,
        on_drop: Arc<crate::pool::Shared>,
    },
    Custom(Box<dyn ConnectionLike + Send + Sync>),
}

impl PooledConnection {
    pub(crate) fn new(
        conn: mobc::Connection<RedisManager>,
        on_drop: Arc<crate::pool::Shared>,
    ) -> Self {
        Self::with(Exclusive::Mobc {
            conn: Some(conn),
            on_drop,
        })
    }

    fn with(conn: Exclusive) -> Self {
        Self {
            conn,
            session: Session::default(),
            in_flight: false,
        }
    }

    /// A handle on an exclusive connection of a pool written outside this crate: any redis-rs
    /// `ConnectionLike`. Dropping the handle drops `conn`: what happens to the connection then
    /// (closed, or given back to the other pool) is `conn`'s own `Drop`. Before dropping it,
    /// check [`PooledConnection::carries_session_state`] (an open transaction, watches, a
    /// database, subscriptions); the pool's own connections are closed in that case, and after
    /// a request whose reply was never read, but nothing here can close yours.
    #[must_use]
    pub fn from_connection<C: ConnectionLike + Send + Sync + 'static>(conn: C) -> Self {
        Self::with(Exclusive::Custom(Box::new(conn)))
    }

    /// Whether it may carry session state (an open transaction, watched keys, a selected
    /// database, subscriptions, client tracking): such a connection is closed when dropped,
    /// never handed to another borrower.
    #[must_use]
    pub fn carries_session_state(&self) -> bool {
        self.session.is_dirty()
    }

    /// Runs `cmd` and converts the reply.
    ///
    /// # Errors
    /// [`PoolError::Command`] classified by kind.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, PoolError> {
        // The session and in-flight bookkeeping live in `req_packed_command`; an error reply
        // comes back from it as a value, and is an error here.
        let value = self
            .req_packed_command(cmd)
            .await
            .and_then(Value::extract_error)
            .map_err(to_pool_error)?;
        redis::from_redis_value(value).map_err(|e| PoolError::Command {
            kind: ErrorKind::Validation,
            source: e.into(),
        })
    }

    /// Whether a failure has taken this connection out of service (it will be closed on drop).
    #[must_use]
    pub fn is_broken(&self) -> bool {
        match &self.conn {
            Exclusive::Mobc { conn, .. } => conn
                .as_ref()
                .is_some_and(|c| c.broken.load(Ordering::Acquire)),
            Exclusive::Custom(_) => false,
        }
    }
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("broken", &self.is_broken())
            .finish_non_exhaustive()
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Exclusive::Mobc { conn, on_drop } = &mut self.conn else {
            return;
        };
        if let Some(mut conn) = conn.take() {
            conn.last_used = tokio::time::Instant::now();
            if conn.broken.load(Ordering::Acquire) || self.in_flight {
                // A request on it may still reach Redis late: kill it server-side before a new
                // shared connection serves.
                on_drop.fence.add(conn.identity.as_ref());
            }
            if conn.broken.load(Ordering::Acquire) || self.session.is_dirty() || self.in_flight {
                // Closed now, not when mobc gets round to it.
                drop(conn.into_inner());
            } else {
                drop(conn);
            }
        }
        on_drop.returned();
    }
}

/// The connection to send `cmd` on: for a blocking command, a handle whose reply deadline is
/// its block time plus the socket timeout (otherwise it would time out at the socket timeout
/// and the connection be thrown away).
fn deadline_for(raw: &crate::manager::RawConn, cmd: &Cmd) -> MultiplexedConnection {
    let mut mux = raw.mux.clone();
    if let Some(block) = session::block_time(cmd) {
        mux.set_response_timeout(block.saturating_add(raw.socket_timeout));
    }
    mux
}

/// Where an exclusive handle's requests go.
enum Target<'a> {
    Raw(&'a mut crate::manager::RawConn),
    Custom(&'a mut (dyn ConnectionLike + Send + Sync)),
}

fn target_of(conn: &mut Exclusive) -> Target<'_> {
    match conn {
        // `conn` is Some from construction until drop.
        Exclusive::Mobc { conn, .. } => Target::Raw(
            conn.as_deref_mut()
                .unwrap_or_else(|| unreachable!("connection taken before drop")),
        ),
        Exclusive::Custom(c) => Target::Custom(c.as_mut()),
    }
}

impl ConnectionLike for PooledConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let effect = session::effect(cmd);
        self.session.before(effect);
        let Self {
            conn,
            session,
            in_flight,
            ..
        } = self;
        let target = target_of(conn);
        Box::pin(async move {
            *in_flight = true;
            let reply = match target {
                Target::Raw(raw) => {
                    let mut mux = deadline_for(raw, cmd);
                    guard(mux.send_packed_command(cmd).await, &raw.broken, None)
                }
                Target::Custom(c) => c.req_packed_command(cmd).await,
            };
            *in_flight = false;
            if matches!(&reply, Ok(v) if !matches!(v, Value::ServerError(_))) {
                session.after_ok(effect);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let effects: Vec<session::Effect> = pipeline.cmd_iter().map(session::effect).collect();
        let start = self.session;
        for e in &effects {
            self.session.before(*e);
        }
        let Self {
            conn,
            session,
            in_flight,
            ..
        } = self;
        let target = target_of(conn);
        Box::pin(async move {
            *in_flight = true;
            let reply = match target {
                Target::Raw(raw) => guard(
                    raw.mux.send_packed_commands(pipeline, offset, count).await,
                    &raw.broken,
                    None,
                ),
                Target::Custom(c) => c.req_packed_commands(pipeline, offset, count).await,
            };
            *in_flight = false;
            // Only a reply with one clean answer per command shows how the session ended:
            // replay the commands in order from where it started. Otherwise assume the worst.
            if let Ok(values) = &reply
                && values.len() == effects.len()
                && !values.iter().any(|v| matches!(v, Value::ServerError(_)))
            {
                let mut replayed = start;
                for e in effects {
                    replayed.before(e);
                    replayed.after_ok(e);
                }
                *session = replayed;
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Exclusive::Mobc { conn, .. } => conn.as_ref().map_or(0, |c| c.mux.get_db()),
            Exclusive::Custom(c) => c.get_db(),
        }
    }
}
