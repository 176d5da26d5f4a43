//! [`ClusterPool`]: a Redis Cluster behind the same [`ConnectionPool`] trait, on redis-rs's
//! own cluster support; and [`key_slot`] / [`slot_tag`] for code that must keep keys in one
//! slot (the fallback replay).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use resilient_redis_config::{ErrorKind, RedisConfig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::{ConnectionPool, PoolError, PoolStatus, PooledConnection, SharedConnection, classify};

/// The number of hash slots of a Redis Cluster.
pub const CLUSTER_SLOTS: u16 = 16384;

/// The hash slot of `key` in a Redis Cluster: CRC16 (XMODEM) of the key, or of its hash tag (the
/// text between the first `{` and the next `}`, when not empty), modulo 16384.
#[must_use]
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % CLUSTER_SLOTS
}

/// A short hash tag (`{...}` content) whose keys all fall in `slot`: a key that contains
/// `{<tag>}` lives in that slot. Found once for all slots (a few milliseconds) on first use.
#[must_use]
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); usize::from(CLUSTER_SLOTS)];
        let mut missing = usize::from(CLUSTER_SLOTS);
        let mut n: u64 = 0;
        while missing > 0 {
            let tag = n.to_string();
            let s = usize::from(key_slot(tag.as_bytes()));
            if tags[s].is_empty() {
                tags[s] = tag;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot % CLUSTER_SLOTS)]
}

/// Connections to a Redis Cluster, through redis-rs's cluster client: it learns the slot map
/// from `nodes`, sends each command to its key's primary (or, with `read_from_replicas`, a
/// read to a replica), follows MOVED and ASK redirects, and refreshes the map when a failover
/// moves slots.
///
/// - [`ConnectionPool::shared`] hands out the cluster connection, multiplexed over one
///   connection per node; it takes no lock and does no I/O.
///   [`ConnectionPool::shared_at_most_once`] hands out a second one whose client never resends a
///   request by itself, for writes that must not apply twice. A keeper task opens it in the
///   background (Redis need not be up to build the pool) and retries every
///   `pool.create_retry_interval` until it succeeds.
/// - Each request is bounded by `socket_timeout`, redirects and redis-rs's own retries
///   included.
/// - [`ConnectionPool::get`] opens a dedicated cluster connection for the caller (for blocking
///   commands), at most `pool.max_size` at once, waiting up to `pool.acquire_timeout` for a
///   turn; it is closed when dropped, never reused, and never resends a request. Transactions
///   (MULTI/EXEC, WATCH, atomic pipelines) are refused: a cluster connection would send their
///   commands to nodes at random.
pub struct ClusterPool {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::cluster::ClusterClient,
    /// The same cluster through a client that never resends a request by itself.
    once_client: redis::cluster::ClusterClient,
    conn: ArcSwapOption<ClusterConnection>,
    once: ArcSwapOption<ClusterConnection>,
    /// What [`ClusterPool::primaries`] found last.
    primaries: ArcSwapOption<Vec<PrimaryStatus>>,
    last_error: Mutex<Option<(ErrorKind, String)>>,
    shown: String,
    connect_timeout: Duration,
    retry_interval: Duration,
    acquire_timeout: Duration,
    max_size: u32,
    exclusive: Arc<Semaphore>,
    in_use: Arc<AtomicU32>,
    waiters: AtomicU32,
    created: AtomicU64,
    closed_count: Arc<AtomicU64>,
    timeouts: AtomicU64,
    closed: AtomicBool,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ClusterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPool")
            .field("nodes", &self.inner.shown)
            .field("status", &self.status())
            .finish()
    }
}

/// The cluster client for `config`: its `nodes`, the user and password of `url` and the
/// `username`/`password` fields, TLS when `url` is `rediss://` (with the `[tls]`
/// certificates), timeouts, and replica reads when asked.
///
/// # Errors
/// [`PoolError::Connect`] of kind `Validation` when a node URL does not parse or the client
/// cannot be built, of kind `Tls` for unreadable certificates.
pub fn cluster_client(config: &RedisConfig) -> Result<redis::cluster::ClusterClient, PoolError> {
    cluster_client_with(config, 3)
}

/// As [`cluster_client`], with `retries` resends by redis-rs itself (redirects, and requests
/// whose connection broke: 0 for what must not apply twice).
fn cluster_client_with(
    config: &RedisConfig,
    retries: u32,
) -> Result<redis::cluster::ClusterClient, PoolError> {
    let shown = nodes_shown(config);
    let fail = |kind: ErrorKind, message: String| PoolError::Connect {
        kind,
        url: shown.clone(),
        message,
    };
    // Credentials and TLS certificates come the same way as for one server.
    let template = crate::redis_client(config)?;
    let settings = template.get_connection_info().redis_settings();
    let mut nodes = Vec::with_capacity(config.nodes.len());
    for node in &config.nodes {
        let info = redis::IntoConnectionInfo::into_connection_info(node.expose())
            .map_err(|e| fail(ErrorKind::Validation, format!("{}: {e}", node.redacted())))?;
        nodes.push(info);
    }
    let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.socket_timeout)
        // redis-rs follows redirects and retries within the response timeout; the manager's
        // own retries, with backoff, are on top, so keep these few and quick.
        .retries(retries)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if let Some(user) = settings.username() {
        b = b.username(user);
    }
    if let Some(password) = settings.password() {
        b = b.password(password);
    }
    if config.read_from_replicas {
        b = b.read_routing_strategy(redis::cluster_read_routing::RandomReplicaStrategy);
    }
    // `url`'s scheme decides TLS for every node, as for one server (`#insecure` included).
    if config.url.is_tls() {
        b = b.tls(if config.url.expose().ends_with("#insecure") {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
        if let Some(certs) = crate::pool::tls_certificates(config)? {
            b = b.certs(certs);
        }
    }
    b.build()
        .map_err(|e| fail(ErrorKind::Validation, e.to_string()))
}

/// The nodes as errors and logs show them: redacted, comma-separated.
fn nodes_shown(config: &RedisConfig) -> String {
    let nodes: Vec<String> = config
        .nodes
        .iter()
        .map(resilient_redis_config::RedisUrl::redacted)
        .collect();
    format!("cluster {}", nodes.join(","))
}

impl ClusterPool {
    /// Builds the pool from the configuration (`mode = "cluster"`, `nodes`, credentials,
    /// timeouts, `[pool]`) and starts the keeper, which connects in the background. Must run
    /// inside a Tokio runtime.
    ///
    /// # Errors
    /// [`PoolError::Connect`] of kind `Validation` when the configuration breaks a rule or is
    /// not in cluster mode.
    pub async fn new(config: &RedisConfig) -> Result<Self, PoolError> {
        config.validate()?;
        if config.mode != resilient_redis_config::Mode::Cluster {
            return Err(PoolError::Connect {
                kind: ErrorKind::Validation,
                url: config.url.redacted(),
                message: "a cluster pool needs mode = \"cluster\"".into(),
            });
        }
        let client = cluster_client(config)?;
        let once_client = cluster_client_with(config, 0)?;
        let inner = Arc::new(Inner {
            client,
            once_client,
            conn: ArcSwapOption::empty(),
            once: ArcSwapOption::empty(),
            primaries: ArcSwapOption::empty(),
            last_error: Mutex::new(None),
            shown: nodes_shown(config),
            connect_timeout: config.connect_timeout,
            retry_interval: config.pool.create_retry_interval,
            acquire_timeout: config.pool.acquire_timeout,
            max_size: config.pool.max_size,
            exclusive: Arc::new(Semaphore::new(config.pool.max_size as usize)),
            in_use: Arc::new(AtomicU32::new(0)),
            waiters: AtomicU32::new(0),
            created: AtomicU64::new(0),
            closed_count: Arc::new(AtomicU64::new(0)),
            timeouts: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            keeper: Mutex::new(None),
        });
        // The first attempt runs now, so a cluster that is up serves from the first call.
        inner.connect_both().await;
        let keeper = tokio::spawn(keep(Arc::downgrade(&inner)));
        *inner.keeper.lock().unwrap_or_else(PoisonError::into_inner) = Some(keeper);
        Ok(Self { inner })
    }
}

/// A primary of the cluster as [`ClusterPool::primaries`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrimaryStatus {
    /// `host:port`.
    pub address: String,
    /// The slot ranges it serves (inclusive).
    pub slots: Vec<(u16, u16)>,
    /// Why its PING failed; `None` when it answered.
    pub error: Option<String>,
}

impl std::fmt::Display for PrimaryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<String> = self
            .slots
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        write!(f, "primary {} (slots {})", self.address, ranges.join(","))?;
        match &self.error {
            Some(e) => write!(f, ": {e}"),
            None => f.write_str(": ok"),
        }
    }
}

impl ClusterPool {
    /// The cluster's primaries and whether each answers, all within `budget`: the slot map as
    /// a node reports it (`CLUSTER SLOTS`, asked at once of every primary the last map named
    /// and of two nodes at random, within half the budget; the first answer wins), then a PING
    /// to every primary at once; a primary that has not answered when the budget runs out is
    /// failing (a hung node is found as surely as a dead one). When no node gives the map in
    /// time (all slow, or all refusing), the primaries of the last map are pinged instead: their
    /// slot ranges may then be out of date, until a node answers again. For a health probe
    /// that names the node that fails: give it a budget within the probe's timeout.
    ///
    /// # Errors
    /// As [`ConnectionPool::shared`] when not connected; [`PoolError::Command`] or
    /// [`PoolError::CommandTimeout`] when no node gave the slot map and none ever did.
    pub async fn primaries(&self, budget: Duration) -> Result<Vec<PrimaryStatus>, PoolError> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let started = tokio::time::Instant::now();
        let deadline = started + budget;
        let map_deadline = started + budget / 2;
        let conn = self
            .inner
            .conn
            .load_full()
            .ok_or_else(|| self.shared().err().unwrap_or(PoolError::Closed))?;
        // Asked at once of every primary the last map named and of two nodes at random (from
        // the client's own view of the cluster, which it refreshes by itself), the first
        // answer wins: one hung node cannot hide the map, and a cluster whose primaries all
        // moved (a failover of every shard, new addresses) is found again.
        let last = self.last_primaries();
        let mut routes = vec![SingleNodeRoutingInfo::Random; 2];
        if let Some(last) = &last {
            routes.extend(last.iter().filter_map(|p| {
                let (host, port) = host_port(&p.address)?;
                Some(SingleNodeRoutingInfo::ByAddress { host, port })
            }));
        }
        let mut asks = tokio::task::JoinSet::new();
        for route in routes {
            let mut c = ClusterConnection::clone(&conn);
            asks.spawn(async move {
                tokio::time::timeout_at(
                    map_deadline,
                    c.route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(route),
                    ),
                )
                .await
            });
        }
        let mut map = Err(PoolError::CommandTimeout(budget / 2));
        while let Some(done) = asks.join_next().await {
            match done {
                Ok(Ok(Ok(answer))) => {
                    map = Ok(answer);
                    break;
                }
                Ok(Ok(Err(e))) => {
                    map = Err(PoolError::Command {
                        kind: classify(&e),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        asks.abort_all();
        let mut primaries = match map {
            Ok(map) => primaries_of(&map),
            // No node gave the map in time (every node slow, or some hung and the rest
            // refusing): the primaries of the last map are asked to PING all the same, so that
            // a slow answer is not taken for the outage of the whole cluster, nor one hung
            // primary for all of them.
            Err(e) => match &last {
                Some(last) if !last.is_empty() => last
                    .iter()
                    .map(|p| PrimaryStatus {
                        error: None,
                        ..p.clone()
                    })
                    .collect(),
                _ => {
                    self.inner.primaries.store(None);
                    return Err(e);
                }
            },
        };
        let mut pings = tokio::task::JoinSet::new();
        for (i, p) in primaries.iter().enumerate() {
            let mut c = ClusterConnection::clone(&conn);
            let (host, port) = host_port(&p.address).unwrap_or_default();
            pings.spawn(async move {
                let answer = tokio::time::timeout_at(
                    deadline,
                    c.route_command(
                        redis::cmd("PING").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                    ),
                )
                .await;
                let error = match answer {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!("no answer to PING within {budget:?}")),
                };
                (i, error)
            });
        }
        while let Some(done) = pings.join_next().await {
            if let Ok((i, error)) = done {
                primaries[i].error = error;
            }
        }
        primaries.sort_by_key(|p| p.slots.first().copied());
        self.inner
            .primaries
            .store(Some(Arc::new(primaries.clone())));
        Ok(primaries)
    }

    /// The shared connection whose client never sends a request twice by itself (redis-rs
    /// otherwise resends a request whose connection broke, and follows redirects). A redirect
    /// (`MOVED`, `ASK`) or `TRYAGAIN` comes back as that error reply, which proves the command
    /// did not run (redis-rs refreshes its slot map on `MOVED`): the caller may send it again.
    fn once_connection(&self) -> Result<SharedConnection, PoolError> {
        if let Some(conn) = &*self.inner.once.load()
            && !self.inner.closed.load(Ordering::Acquire)
        {
            return Ok(SharedConnection::from_connection(ClusterConnection::clone(
                conn,
            )));
        }
        self.shared().and(Err(PoolError::Connect {
            kind: ErrorKind::Connection,
            url: self.inner.shown.clone(),
            message: "not connected to the cluster yet".into(),
        }))
    }

    /// What [`ClusterPool::primaries`] found the last time it ran (no I/O): the slot map and
    /// which primaries answered then.
    #[must_use]
    pub fn last_primaries(&self) -> Option<Arc<Vec<PrimaryStatus>>> {
        self.inner.primaries.load_full()
    }
}

/// `host:port` as its two parts (the host may be an IPv6 address: the port is after the last
/// colon).
fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// The primaries a `CLUSTER SLOTS` reply names, each with its slot ranges (in the reply's
/// order); entries that do not read as a range and a primary are skipped.
fn primaries_of(map: &Value) -> Vec<PrimaryStatus> {
    let mut primaries: Vec<PrimaryStatus> = Vec::new();
    let Value::Array(ranges) = map else {
        return primaries;
    };
    for range in ranges {
        let Value::Array(items) = range else { continue };
        let (Some(Value::Int(from)), Some(Value::Int(to)), Some(Value::Array(node))) =
            (items.first(), items.get(1), items.get(2))
        else {
            continue;
        };
        let host = match node.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = node.get(1) else {
            continue;
        };
        let address = format!("{host}:{port}");
        let (Ok(from), Ok(to)) = (u16::try_from(*from), u16::try_from(*to)) else {
            continue;
        };
        match primaries.iter_mut().find(|p| p.address == address) {
            Some(p) => p.slots.push((from, to)),
            None => primaries.push(PrimaryStatus {
                address,
                slots: vec![(from, to)],
                error: None,
            }),
        }
    }
    primaries
}

impl Inner {
    /// Opens whichever of the two shared connections is not open yet; whether both are.
    async fn connect_both(&self) -> bool {
        if self.conn.load().is_none()
            && let Ok(conn) = self.open(&self.client).await
        {
            self.conn.store(Some(Arc::new(conn)));
        }
        if self.once.load().is_none()
            && let Ok(conn) = self.open(&self.once_client).await
        {
            self.once.store(Some(Arc::new(conn)));
        }
        self.conn.load().is_some() && self.once.load().is_some()
    }

    /// Opens a cluster connection within the connect timeout, recording why it failed.
    async fn open(
        &self,
        client: &redis::cluster::ClusterClient,
    ) -> Result<ClusterConnection, PoolError> {
        let result =
            match tokio::time::timeout(self.connect_timeout, client.get_async_connection()).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err((classify(&e), e.to_string())),
                Err(_) => Err((
                    ErrorKind::Timeout,
                    format!("no node answered within {:?}", self.connect_timeout),
                )),
            };
        match result {
            Ok(conn) => {
                self.created.fetch_add(1, Ordering::Relaxed);
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                Ok(conn)
            }
            Err((kind, message)) => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((kind, message.clone()));
                Err(PoolError::Connect {
                    kind,
                    url: self.shown.clone(),
                    message,
                })
            }
        }
    }
}

/// Opens the shared cluster connection when there is none, retrying until the pool closes.
/// Once open, redis-rs keeps it: it reconnects to nodes and refreshes the slot map itself.
async fn keep(inner: std::sync::Weak<Inner>) {
    if inner
        .upgrade()
        .is_some_and(|i| i.conn.load().is_some() && i.once.load().is_some())
    {
        return;
    }
    loop {
        let Some(i) = inner.upgrade() else { return };
        if i.closed.load(Ordering::Acquire) {
            return;
        }
        if i.connect_both().await {
            return;
        }
        let wait = i.retry_interval;
        drop(i);
        tokio::time::sleep(wait).await;
    }
}

/// A dedicated cluster connection with its turn: dropping it closes the connection and frees
/// the turn.
struct Dedicated {
    conn: ClusterConnection,
    _turn: OwnedSemaphorePermit,
    in_use: Arc<AtomicU32>,
    closed: Arc<AtomicU64>,
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        self.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether `cmd` is part of a transaction, which a cluster connection would send to nodes at
/// random (the commands of one transaction must reach one node on one connection).
fn is_transaction(cmd: &Cmd) -> bool {
    matches!(
        cmd.args_iter().next(),
        Some(redis::Arg::Simple(name))
            if [&b"MULTI"[..], b"EXEC", b"WATCH", b"UNWATCH", b"DISCARD"]
                .iter()
                .any(|t| name.eq_ignore_ascii_case(t))
    )
}

fn no_transactions() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "transactions are not supported in cluster mode",
        "MULTI, EXEC, WATCH and atomic pipelines need one node; use a Lua script on keys of one \
         slot instead"
            .to_owned(),
    ))
}

impl ConnectionLike for Dedicated {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        if is_transaction(cmd) {
            return Box::pin(async { Err(no_transactions()) });
        }
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        if pipeline.is_transaction() || pipeline.cmd_iter().any(is_transaction) {
            return Box::pin(async { Err(no_transactions()) });
        }
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[async_trait::async_trait]
impl ConnectionPool for ClusterPool {
    fn shared(&self) -> Result<SharedConnection, PoolError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        if let Some(conn) = &*self.inner.conn.load() {
            return Ok(SharedConnection::from_connection(ClusterConnection::clone(
                conn,
            )));
        }
        let (kind, message) = self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or((
                ErrorKind::Connection,
                "not connected to the cluster yet".into(),
            ));
        Err(PoolError::Connect {
            kind,
            url: self.inner.shown.clone(),
            message,
        })
    }

    fn shared_at_most_once(&self) -> Result<SharedConnection, PoolError> {
        self.once_connection()
    }

    fn cluster_primaries(&self) -> Option<Arc<Vec<PrimaryStatus>>> {
        self.last_primaries()
    }

    async fn get(&self) -> Result<PooledConnection, PoolError> {
        let i = &self.inner;
        if i.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        i.waiters.fetch_add(1, Ordering::AcqRel);
        let turn =
            tokio::time::timeout(i.acquire_timeout, Arc::clone(&i.exclusive).acquire_owned()).await;
        i.waiters.fetch_sub(1, Ordering::AcqRel);
        let turn = match turn {
            Ok(Ok(turn)) => turn,
            Ok(Err(_)) => return Err(PoolError::Closed),
            Err(_) => {
                i.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Timeout {
                    waited: i.acquire_timeout,
                    status: self.status(),
                });
            }
        };
        // A blocking command or a transaction is never resent by the client.
        let conn = i.open(&i.once_client).await?;
        i.in_use.fetch_add(1, Ordering::AcqRel);
        Ok(PooledConnection::from_connection(Dedicated {
            conn,
            _turn: turn,
            in_use: Arc::clone(&i.in_use),
            closed: Arc::clone(&i.closed_count),
        }))
    }

    fn status(&self) -> PoolStatus {
        let i = &self.inner;
        let shared_up = u32::from(i.conn.load().is_some()) + u32::from(i.once.load().is_some());
        let in_use = i.in_use.load(Ordering::Acquire);
        let mut s = PoolStatus::default();
        s.max_size = i.max_size;
        s.open = shared_up + in_use;
        s.in_use = in_use;
        s.shared_up = shared_up;
        s.shared_total = 2;
        s.waiters = i.waiters.load(Ordering::Acquire);
        s.created = i.created.load(Ordering::Relaxed);
        s.closed = i.closed_count.load(Ordering::Relaxed);
        s.timeouts = i.timeouts.load(Ordering::Relaxed);
        s
    }

    async fn close(&self, deadline: Duration) {
        let i = &self.inner;
        i.closed.store(true, Ordering::Release);
        i.exclusive.close();
        for conn in [&i.conn, &i.once] {
            if conn.swap(None).is_some() {
                i.closed_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let keeper = i
            .keeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(keeper) = keeper {
            keeper.abort();
        }
        // Dedicated connections close as their holders drop them.
        let until = tokio::time::Instant::now() + deadline;
        while i.in_use.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ClusterPool {
    fn drop(&mut self) {
        if Arc::strong_count(&self.inner) == 1
            && let Some(keeper) = self
                .inner
                .keeper
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        {
            keeper.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: i64, to: i64, host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Int(from),
            Value::Int(to),
            Value::Array(vec![Value::BulkString(host.into()), Value::Int(port)]),
        ])
    }

    #[test]
    fn a_slot_map_reads_as_its_primaries_with_every_range_and_skips_what_does_not_read() {
        let map = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 10922, "::1", 7001),
            Value::Int(3),
            range(10923, 16383, "10.0.0.1", 7000),
            range(70_000, 70_001, "10.0.0.9", 7009),
        ]);
        let primaries = primaries_of(&map);
        let read: Vec<(&str, &[(u16, u16)])> = primaries
            .iter()
            .map(|p| (p.address.as_str(), p.slots.as_slice()))
            .collect();
        assert_eq!(
            read,
            [
                ("10.0.0.1:7000", &[(0, 5460), (10923, 16383)][..]),
                ("::1:7001", &[(5461, 10922)][..]),
            ]
        );
        assert!(primaries.iter().all(|p| p.error.is_none()));
        assert_eq!(
            host_port("::1:7001"),
            Some(("::1".to_owned(), 7001)),
            "an IPv6 host keeps its colons"
        );
        assert!(primaries_of(&Value::Nil).is_empty());
    }

    #[test]
    fn slots_match_the_cluster_specification() {
        // Examples from the Redis Cluster specification and redis-cli's CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag is no tag: the whole key is hashed.
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            crc16::State::<crc16::XMODEM>::calculate(b"foo{}{bar}") % 16384
        );
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn every_slot_has_a_tag_that_lands_in_it() {
        for slot in [0, 1, 5000, 12182, 16383] {
            let key = format!("marker:{{{}}}:x", slot_tag(slot));
            assert_eq!(key_slot(key.as_bytes()), slot);
        }
    }
}
