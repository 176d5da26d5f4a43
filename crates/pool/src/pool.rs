//! [`RedisPool`]: shared lanes on the hot path, mobc-managed exclusive connections beside them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use resilient_redis_config::{ErrorKind, PoolConfig, RedisConfig};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::Lane;
use crate::manager::{Counters, LastError, RedisManager, ping};
use crate::{ConnectionPool, PoolError, PoolStatus, PooledConnection, SharedConnection};

/// The connection pool: a few multiplexed connections shared by every caller for ordinary
/// commands, and exclusive connections checked out on demand, all opened, validated, reaped and
/// replaced under mobc.
///
/// - [`ConnectionPool::shared`] picks a healthy shared connection round-robin without a lock or
///   I/O; a background keeper PINGs them every `validation_interval` and replaces one that is
///   broken (a command timed out or hit an I/O error), failed its PING, or outlived
///   `max_lifetime`.
/// - [`ConnectionPool::get`] checks out an exclusive connection, waiting first come, first
///   served up to `acquire_timeout`; a connection idle longer than `validate_after_idle` is
///   PINGed first; one that broke is closed on return; a reaper closes connections idle longer
///   than `idle_timeout` every `reap_interval`, keeping `min_size` open.
///
/// Building does not need Redis to be up: the keeper connects when it can, and until then
/// `shared()` fails fast with the reason (refused, timed out, wrong password).
#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPool")
            .field("url", &self.inner.shared.manager_url)
            .field("status", &self.status())
            .finish()
    }
}

/// What connections need to reach back to.
pub(crate) struct Shared {
    counters: Arc<Counters>,
    /// Connections to kill server-side before a new shared connection serves.
    pub(crate) fence: crate::fence::Fence,
    returned: Notify,
    manager_url: String,
}

impl Shared {
    pub(crate) fn returned(&self) {
        self.counters.in_use.fetch_sub(1, Ordering::AcqRel);
        self.returned.notify_waiters();
    }
}

struct Inner {
    mobc: mobc::Pool<RedisManager>,
    /// The last failure to connect (shared with the manager), to explain "no connection".
    last_error: Arc<LastError>,
    lanes: Box<[ArcSwapOption<Lane>]>,
    next_lane: AtomicUsize,
    wake_keeper: Arc<Notify>,
    config: PoolConfig,
    socket_timeout: Duration,
    closed: AtomicBool,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The redis-rs client for the server `config` names now: [`redis_client`] in standalone mode;
/// in sentinel mode the primary the sentinels name at this moment (asked now, with the same
/// credentials and certificates the pool uses). For tools that want a plain redis-rs
/// connection beside the manager (a benchmark's baseline, an independent check).
///
/// # Errors
/// As [`redis_client`]; in sentinel mode [`PoolError::Connect`] when no sentinel names a
/// primary that answers as one.
pub async fn primary_client(config: &RedisConfig) -> Result<redis::Client, PoolError> {
    match config.mode {
        resilient_redis_config::Mode::Sentinel => {
            let crate::manager::Target::Sentinel { recipe, .. } = sentinel_target(config)? else {
                unreachable!("sentinel_target makes a sentinel target");
            };
            let fail = |e: redis::RedisError| PoolError::Connect {
                kind: crate::classify(&e),
                url: format!(
                    "the primary sentinels name `{}`",
                    config.master_name.as_deref().unwrap_or("")
                ),
                message: e.to_string(),
            };
            recipe
                .client()
                .map_err(fail)?
                .async_get_client()
                .await
                .map_err(fail)
        }
        _ => redis_client(config),
    }
}

/// The names of the primaries the sentinels of `config` monitor (`SENTINEL MASTERS` of the
/// first sentinel that answers), reached with the same credentials and certificates the pool
/// uses: for telling a wrong `master_name` from an outage.
///
/// # Errors
/// [`PoolError::Connect`] when no sentinel answers (or `config` is not in sentinel mode).
pub async fn sentinel_names(config: &RedisConfig) -> Result<Vec<String>, PoolError> {
    let crate::manager::Target::Sentinel { recipe, .. } = sentinel_target(config)? else {
        unreachable!("sentinel_target makes a sentinel target");
    };
    let mut last = String::from("no sentinel is configured");
    for addr in &recipe.sentinels {
        let asked = async {
            let mut conn = recipe
                .sentinel_client(addr)?
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("SENTINEL")
                .arg("MASTERS")
                .query_async::<Vec<std::collections::HashMap<String, String>>>(&mut conn)
                .await
        };
        match tokio::time::timeout(config.connect_timeout, asked).await {
            Ok(Ok(masters)) => {
                return Ok(masters
                    .into_iter()
                    .filter_map(|m| m.get("name").cloned())
                    .collect());
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer within {:?}", config.connect_timeout),
        }
    }
    Err(PoolError::Connect {
        kind: ErrorKind::Connection,
        url: "the sentinels".into(),
        message: last,
    })
}

/// The sentinels of `config`, and how to reach the primary they name: the URL's scheme (TLS),
/// user, password and database, the `[tls]` certificates (for the sentinels too, when their
/// URLs are `rediss://`). A sentinel client is made from it at every connect, so connects never
/// wait on one another's lookups.
fn sentinel_target(config: &RedisConfig) -> Result<crate::manager::Target, PoolError> {
    let fail = |message: String| PoolError::Connect {
        kind: ErrorKind::Validation,
        url: config.url.redacted(),
        message,
    };
    // The primary's settings come from the URL (its host and port are not used).
    let template = redis_client(config)?;
    let info = template.get_connection_info();
    let tls_mode = |addr: &redis::ConnectionAddr| match addr {
        redis::ConnectionAddr::TcpTls { insecure, .. } => Some(if *insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        }),
        _ => None,
    };
    let mut sentinels = Vec::new();
    let mut sentinel_auth = (None, None);
    let mut sentinel_tls = None;
    for url in &config.sentinels {
        let parsed = redis::IntoConnectionInfo::into_connection_info(url.expose())
            .map_err(|e| fail(format!("sentinel {}: {e}", url.redacted())))?;
        if sentinel_auth.0.is_none() && sentinel_auth.1.is_none() {
            let s = parsed.redis_settings();
            sentinel_auth = (
                s.username().map(str::to_owned),
                s.password().map(str::to_owned),
            );
        }
        sentinel_tls = sentinel_tls.or_else(|| tls_mode(parsed.addr()));
        sentinels.push(parsed.addr().clone());
    }
    let redis = info.redis_settings();
    Ok(crate::manager::Target::Sentinel {
        recipe: Box::new(crate::manager::SentinelRecipe {
            sentinels,
            name: config.master_name.clone().unwrap_or_default(),
            sentinel_auth,
            sentinel_tls,
            db: redis.db(),
            username: redis.username().map(str::to_owned),
            password: redis.password().map(str::to_owned),
            tls: tls_mode(info.addr()),
            certificates: tls_certificates(config)?,
        }),
        last: std::sync::Mutex::new(None),
    })
}

/// The redis-rs client for `config`: its URL, the user and password that override the URL's,
/// and, for a `rediss://` URL, the `[tls]` certificates (a CA to trust, a client certificate and
/// key). The pool connects through it; a tool that wants a plain redis-rs connection to the
/// same server with the same credentials (a benchmark's baseline, say) can too.
///
/// For a TLS URL, rustls needs a process-wide crypto provider (redis-rs's rustls support brings
/// none). The application installs the one it chooses at start (for example
/// `rustls::crypto::ring::default_provider().install_default()`), or enables this crate's
/// `ring-provider` feature (the manager's too), which installs ring's here when none is
/// installed yet. Nothing is installed behind the application's back.
///
/// With `tls.server_name` the client connects by that name: open connections from it with
/// [`connection_config`], whose resolver sends the name to the URL's host.
///
/// # Errors
/// [`PoolError::Connect`] of kind `Validation` when the URL does not parse, of kind `Tls` when a
/// certificate file cannot be read or holds no usable PEM (naming the field).
pub fn redis_client(config: &RedisConfig) -> Result<redis::Client, PoolError> {
    let fail = |kind: ErrorKind, message: String| PoolError::Connect {
        kind,
        url: config.url.redacted(),
        message,
    };
    ensure_crypto_provider(config)?;
    if config.url.is_tls() && config.url.expose().ends_with("#insecure") {
        tracing::warn!(
            url = %config.url,
            "TLS certificate checks are off for this URL (#insecure): anyone on the path can \
             read and change the traffic"
        );
    }
    let info = redis::IntoConnectionInfo::into_connection_info(config.url.expose())
        .map_err(|e| fail(ErrorKind::Validation, e.to_string()))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    let mut info = info.set_redis_settings(settings);
    // The certificate's name, when it is not the URL's host: connect by that name (it is what
    // rustls checks and sends as SNI); `connection_config` resolves it to the URL's host.
    if let (
        Some(name),
        redis::ConnectionAddr::TcpTls {
            port,
            insecure,
            tls_params,
            ..
        },
    ) = (&config.tls.server_name, info.addr().clone())
    {
        info = info.set_addr(redis::ConnectionAddr::TcpTls {
            host: name.clone(),
            port,
            insecure,
            tls_params,
        });
    }
    match tls_certificates(config)? {
        None => redis::Client::open(info).map_err(|e| fail(ErrorKind::Validation, e.to_string())),
        Some(certificates) => redis::Client::build_with_tls(info, certificates)
            .map_err(|e| fail(ErrorKind::Tls, format!("the [tls] certificates: {e}"))),
    }
}

/// A TLS connection (the URL's, or a sentinel's) needs a process-wide rustls crypto provider:
/// installed by the application (or, with the `ring-provider` feature, ring's here). Asked for
/// explicitly, even when rustls could pick one from its crate features: without one, rustls
/// panics inside the connect.
fn ensure_crypto_provider(config: &RedisConfig) -> Result<(), PoolError> {
    let tls = config.url.is_tls()
        || config
            .sentinels
            .iter()
            .any(resilient_redis_config::RedisUrl::is_tls);
    if !tls {
        return Ok(());
    }
    #[cfg(feature = "ring-provider")]
    let _ = rustls::crypto::ring::default_provider().install_default();
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        return Err(PoolError::Connect {
            kind: ErrorKind::Tls,
            url: config.url.redacted(),
            message: "no rustls crypto provider is installed in this process: install one at \
                      start (rustls::crypto::ring::default_provider().install_default()), or \
                      enable the `ring-provider` feature of resilient-redis-manager (or -pool)"
                .into(),
        });
    }
    Ok(())
}

/// How the pool opens connections for `config`: its connect and socket timeouts, and with
/// `tls.server_name` a resolver that sends that name to the URL's host. A tool that opens its
/// own connection from [`redis_client`] (a benchmark's baseline, an independent check) uses it
/// too, so that a server-name override resolves.
#[must_use]
pub fn connection_config(config: &RedisConfig) -> redis::AsyncConnectionConfig {
    let c = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.socket_timeout));
    match (&config.tls.server_name, url_host(config)) {
        (Some(name), Some(host)) => c.set_dns_resolver(NameOverride {
            name: name.clone(),
            host,
        }),
        _ => c,
    }
}

/// The URL's host (for TCP URLs).
fn url_host(config: &RedisConfig) -> Option<String> {
    match redis::IntoConnectionInfo::into_connection_info(config.url.expose())
        .ok()?
        .addr()
    {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
            Some(host.clone())
        }
        _ => None,
    }
}

/// Resolves the certificate's name (`tls.server_name`) to the URL's host; any other name as
/// usual.
struct NameOverride {
    name: String,
    host: String,
}

impl redis::io::AsyncDNSResolver for NameOverride {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let target = if host.eq_ignore_ascii_case(&self.name) {
                self.host.as_str()
            } else {
                host
            };
            let found = tokio::net::lookup_host((target, port)).await?;
            Ok(Box::new(found) as Box<dyn Iterator<Item = std::net::SocketAddr> + Send>)
        })
    }
}

/// The `[tls]` certificates for a `rediss://` URL, read and checked: `None` without any.
pub(crate) fn tls_certificates(
    config: &RedisConfig,
) -> Result<Option<redis::TlsCertificates>, PoolError> {
    let fail = |kind: ErrorKind, message: String| PoolError::Connect {
        kind,
        url: config.url.redacted(),
        message,
    };
    let tls = &config.tls;
    if !(config.url.is_tls() && tls.is_set()) {
        return Ok(None);
    }
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            fail(
                ErrorKind::Tls,
                format!("{field} `{}` cannot be read: {e}", path.display()),
            )
        })
    };
    let has_pem = |bytes: &[u8], what: &str| {
        String::from_utf8_lossy(bytes).contains(&format!("-----BEGIN {what}"))
    };
    let root_cert = match &tls.ca_file {
        Some(path) => {
            let pem = read("tls.ca_file", path)?;
            if !has_pem(&pem, "CERTIFICATE") {
                return Err(fail(
                    ErrorKind::Tls,
                    format!("tls.ca_file `{}` holds no PEM certificate", path.display()),
                ));
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let client_cert = read("tls.cert_file", cert)?;
            let client_key = read("tls.key_file", key)?;
            if !has_pem(&client_cert, "CERTIFICATE") {
                return Err(fail(
                    ErrorKind::Tls,
                    format!(
                        "tls.cert_file `{}` holds no PEM certificate",
                        cert.display()
                    ),
                ));
            }
            Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

impl RedisPool {
    /// Builds the pool from the whole configuration (URL, credentials, timeouts, `[pool]`),
    /// opens the shared connections and `min_size` connections in all if Redis answers, and
    /// starts the keeper and the reaper. Must run inside a Tokio runtime.
    ///
    /// # Errors
    /// [`PoolError::Connect`] of kind `Validation` when the configuration breaks a rule or the
    /// URL does not parse.
    pub async fn new(config: &RedisConfig) -> Result<Self, PoolError> {
        config.validate()?;
        let target = match config.mode {
            resilient_redis_config::Mode::Sentinel => sentinel_target(config)?,
            _ => crate::manager::Target::Fixed(redis_client(config)?),
        };
        // What errors name: the URL, or in sentinel mode the primary's name (the URL's host is
        // not used then).
        let shown = match config.mode {
            resilient_redis_config::Mode::Sentinel => format!(
                "the primary sentinels name `{}`",
                config.master_name.as_deref().unwrap_or("")
            ),
            _ => config.url.redacted(),
        };
        let counters = Arc::new(Counters::default());
        let last_error = Arc::new(LastError::default());
        let pool_config = config.pool.clone();
        let manager = RedisManager {
            target,
            connection_config: connection_config(config),
            connect_timeout: config.connect_timeout,
            socket_timeout: config.socket_timeout,
            retry_count: pool_config.create_retry_count,
            retry_interval: pool_config.create_retry_interval,
            max_lifetime: pool_config.max_lifetime,
            url: shown.clone(),
            tls: config.url.is_tls(),
            counters: Arc::clone(&counters),
            last_error: Arc::clone(&last_error),
            dial_host: config
                .tls
                .server_name
                .as_ref()
                .and_then(|_| url_host(config)),
        };
        let mobc = mobc::Pool::builder()
            .max_open(u64::from(pool_config.max_size))
            // mobc's default of 2 idle connections churns them: keep what is open.
            .max_idle(u64::from(pool_config.max_size))
            .get_timeout(Some(pool_config.acquire_timeout))
            .max_lifetime(Some(pool_config.max_lifetime))
            .test_on_check_out(true)
            .health_check_interval(Some(pool_config.validate_after_idle))
            .build(manager);
        let shared = Arc::new(Shared {
            counters,
            fence: crate::fence::Fence::default(),
            returned: Notify::new(),
            manager_url: shown,
        });
        let inner = Arc::new(Inner {
            mobc,
            last_error,
            lanes: (0..pool_config.shared_connections)
                .map(|_| ArcSwapOption::empty())
                .collect(),
            next_lane: AtomicUsize::new(0),
            wake_keeper: Arc::new(Notify::new()),
            socket_timeout: config.socket_timeout,
            config: pool_config,
            closed: AtomicBool::new(false),
            shared,
            tasks: Mutex::new(Vec::new()),
        });

        inner.fill_lanes().await;
        inner.warm_exclusive().await;
        let keeper = tokio::spawn(keeper(Arc::downgrade(&inner)));
        let reaper = tokio::spawn(reaper(Arc::downgrade(&inner)));
        inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend([keeper, reaper]);
        Ok(Self { inner })
    }

    /// Runs the reaper once now (it also runs every `reap_interval`): closes exclusive
    /// connections idle longer than `idle_timeout`, keeping `min_size` open. Returns how many it
    /// closed.
    pub async fn reap_now(&self) -> usize {
        self.inner.reap().await
    }

    /// Runs one keeper cycle now (it also runs every `validation_interval`): PINGs the shared
    /// connections and replaces the broken, failing or expired ones.
    pub async fn validate_now(&self) {
        self.inner.keep().await;
    }
}

impl Inner {
    fn exclusive_floor(&self) -> u32 {
        self.config
            .min_size
            .saturating_sub(self.config.shared_connections)
    }

    fn shared_up(&self) -> u32 {
        let up = self
            .lanes
            .iter()
            .filter(|l| {
                l.load()
                    .as_ref()
                    .is_some_and(|lane| !lane.broken.load(Ordering::Acquire))
            })
            .count();
        u32::try_from(up).unwrap_or(u32::MAX)
    }

    fn status(&self) -> PoolStatus {
        let c = &self.shared.counters;
        let created = c.created.load(Ordering::Relaxed);
        let closed = c.closed.load(Ordering::Relaxed);
        let open = u32::try_from(created.saturating_sub(closed)).unwrap_or(u32::MAX);
        let in_use = c.in_use.load(Ordering::Relaxed);
        let lanes_held =
            u32::try_from(self.lanes.iter().filter(|l| l.load().is_some()).count()).unwrap_or(0);
        let mut s = PoolStatus::default();
        s.max_size = self.config.max_size;
        s.open = open;
        s.idle = open.saturating_sub(in_use).saturating_sub(lanes_held);
        s.in_use = in_use;
        s.shared_up = self.shared_up();
        s.shared_total = self.config.shared_connections;
        s.waiters = c.waiters.load(Ordering::Relaxed);
        s.created = created;
        s.closed = closed;
        s.timeouts = c.timeouts.load(Ordering::Relaxed);
        s.validation_failures = c.validation_failures.load(Ordering::Relaxed);
        s
    }

    /// "No shared connection": the reason is the last failure to connect.
    fn unavailable(&self) -> PoolError {
        let last = self.last_error.get();
        let (kind, message) = last.unwrap_or((
            ErrorKind::Connection,
            "no shared connection is up".to_owned(),
        ));
        PoolError::Connect {
            kind,
            url: self.shared.manager_url.clone(),
            message,
        }
    }

    fn map_mobc(&self, err: mobc::Error<PoolError>) -> PoolError {
        match err {
            // Already recorded by the manager's connect.
            mobc::Error::Inner(e) => e,
            mobc::Error::Timeout => {
                let status = self.status();
                let lanes_held =
                    u32::try_from(self.lanes.iter().filter(|l| l.load().is_some()).count())
                        .unwrap_or(0);
                if status.in_use >= self.config.max_size.saturating_sub(lanes_held) {
                    self.shared
                        .counters
                        .timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    PoolError::Timeout {
                        waited: self.config.acquire_timeout,
                        status,
                    }
                } else {
                    // There was room: the time went on connecting.
                    let e = PoolError::Connect {
                        kind: ErrorKind::Timeout,
                        url: self.shared.manager_url.clone(),
                        message: format!(
                            "no connection within acquire_timeout ({:?})",
                            self.config.acquire_timeout
                        ),
                    };
                    self.last_error.record(&e);
                    e
                }
            }
            mobc::Error::BadConn => PoolError::Connect {
                kind: ErrorKind::Connection,
                url: self.shared.manager_url.clone(),
                message: "every connection tried failed its check".to_owned(),
            },
            mobc::Error::PoolClosed => PoolError::Closed,
        }
    }

    async fn open_lane(&self) -> Result<Arc<Lane>, PoolError> {
        let conn = self.mobc.get().await.map_err(|e| self.map_mobc(e))?;
        if !self.shared.fence.is_empty() {
            // Nothing may run on the new connection before the old ones whose requests may
            // still land are gone.
            let mut mux = conn.mux.clone();
            if let Err(e) = self.shared.fence.run(&mut mux, self.socket_timeout).await {
                conn.broken.store(true, Ordering::Release);
                return Err(e);
            }
        }
        // A connection the pool opened itself serves without redis-rs's per-request timer;
        // its watchdog bounds the replies instead.
        let (mux, watch, driver) = match &conn.untimed {
            Some(u) => (
                u.mux.clone(),
                Some(crate::watch::Watch::default()),
                Some(u.driver.handle()),
            ),
            None => (conn.mux.clone(), None, None),
        };
        let lane = Arc::new(Lane {
            identity: conn.identity.clone(),
            mux,
            broken: Arc::clone(&conn.broken),
            created: conn.created,
            wake: Arc::clone(&self.wake_keeper),
            held: std::sync::Mutex::new(Some(conn)),
            watch,
            driver,
            socket_timeout: self.socket_timeout,
        });
        if lane.watch.is_some() {
            tokio::spawn(crate::watch::watchdog(
                Arc::downgrade(&lane),
                self.socket_timeout,
            ));
        }
        Ok(lane)
    }

    async fn fill_lanes(&self) {
        for slot in &*self.lanes {
            if slot.load().is_none() {
                match self.open_lane().await {
                    Ok(lane) => slot.store(Some(lane)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open a shared connection");
                        return;
                    }
                }
            }
        }
    }

    async fn warm_exclusive(&self) {
        let mut warm = Vec::new();
        for _ in 0..self.exclusive_floor() {
            match self.mobc.get().await {
                Ok(conn) => warm.push(conn),
                Err(_) => break,
            }
        }
        // Dropping returns them to the pool, idle and ready.
    }

    /// One keeper cycle: every shared connection is PINGed; broken, failing or expired ones
    /// are replaced (the new one is installed before the old one goes, so callers always find
    /// one if Redis answers).
    async fn keep(&self) {
        for slot in &*self.lanes {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let current = slot.load_full();
            let replace = match &current {
                None => true,
                Some(lane) if lane.broken.load(Ordering::Acquire) => true,
                Some(lane) if lane.created.elapsed() >= self.config.max_lifetime => true,
                Some(lane) => {
                    let mut mux = lane.mux.clone();
                    if let Err(e) = ping(&mut mux, self.socket_timeout).await {
                        self.shared
                            .counters
                            .validation_failures
                            .fetch_add(1, Ordering::Relaxed);
                        if matches!(e, PoolError::CommandTimeout(_)) {
                            // Hung: requests waiting on it time out now, not as the
                            // connection errors the fence's kill would give them.
                            lane.stop_hung();
                        }
                        lane.broken.store(true, Ordering::Release);
                        true
                    } else {
                        false
                    }
                }
            };
            if !replace {
                continue;
            }
            if current
                .as_ref()
                .is_some_and(|l| l.broken.load(Ordering::Acquire))
            {
                // A broken lane serves nobody: drop it at once so it is closed, and kill it
                // server-side before its replacement serves (a request on it may land late).
                if let Some(old) = &current {
                    self.shared.fence.add(old.identity.as_ref());
                }
                slot.store(None);
            }
            match self.open_lane().await {
                Ok(lane) => {
                    tracing::debug!("shared connection (re)opened");
                    slot.store(Some(lane));
                }
                Err(e) => tracing::debug!(error = %e, "cannot reopen a shared connection yet"),
            }
        }
        // Exclusive connections given back mid-request wait here too: fence them through a
        // shared connection that is up.
        if !self.shared.fence.is_empty()
            && let Some(lane) = self
                .lanes
                .iter()
                .filter_map(|slot| slot.load_full())
                .find(|l| !l.broken.load(Ordering::Acquire))
        {
            let mut mux = lane.mux.clone();
            if let Err(e) = self.shared.fence.run(&mut mux, self.socket_timeout).await {
                tracing::debug!(error = %e, "cannot fence yet");
            }
        }
    }

    /// Closes exclusive connections idle longer than `idle_timeout`, keeping `min_size` open.
    /// mobc only notices idleness when a connection is next checked out; this looks at them
    /// all: it borrows every idle connection for an instant and closes the stale ones.
    async fn reap(&self) -> usize {
        let status = self.status();
        let mut keep_open = status
            .open
            .saturating_sub(self.exclusive_floor() + status.shared_total);
        let mut borrowed = Vec::new();
        for _ in 0..status.idle {
            match self.mobc.get_timeout(Duration::from_millis(50)).await {
                Ok(conn) => borrowed.push(conn),
                Err(_) => break,
            }
        }
        let mut closed = 0;
        for conn in borrowed {
            let stale =
                conn.last_used.elapsed() >= self.config.idle_timeout && !conn.is_brand_new();
            if stale && keep_open > 0 {
                keep_open -= 1;
                closed += 1;
                drop(conn.into_inner());
            }
            // Otherwise dropping returns it, its idle time unchanged.
        }
        if closed > 0 {
            tracing::debug!(closed, "reaped idle connections");
        }
        closed
    }
}

async fn keeper(inner: Weak<Inner>) {
    loop {
        let Some(pool) = inner.upgrade() else { return };
        if pool.closed.load(Ordering::Acquire) {
            return;
        }
        let interval = pool.config.validation_interval;
        let wake = Arc::clone(&pool.wake_keeper);
        drop(pool);
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = wake.notified() => {}
        }
        let Some(pool) = inner.upgrade() else { return };
        pool.keep().await;
    }
}

async fn reaper(inner: Weak<Inner>) {
    loop {
        let Some(interval) = inner.upgrade().map(|p| p.config.reap_interval) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(pool) = inner.upgrade() else { return };
        if pool.closed.load(Ordering::Acquire) {
            return;
        }
        pool.reap().await;
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

#[async_trait::async_trait]
impl ConnectionPool for RedisPool {
    #[inline]
    fn shared(&self) -> Result<SharedConnection, PoolError> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            return Err(PoolError::Closed);
        }
        let n = inner.lanes.len();
        // (One lane, the default: no count shared by every caller to move.)
        let start = if n == 1 {
            0
        } else {
            inner.next_lane.fetch_add(1, Ordering::Relaxed)
        };
        for i in 0..n {
            let guard = inner.lanes[(start + i) % n].load();
            if let Some(lane) = &*guard
                && !lane.broken.load(Ordering::Relaxed)
            {
                return Ok(SharedConnection::new(Arc::clone(lane)));
            }
        }
        inner.wake_keeper.notify_one();
        Err(inner.unavailable())
    }

    async fn get(&self) -> Result<PooledConnection, PoolError> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed);
        }
        let counters = &inner.shared.counters;
        counters.waiters.fetch_add(1, Ordering::AcqRel);
        let got = inner.mobc.get().await;
        counters.waiters.fetch_sub(1, Ordering::AcqRel);
        let conn = got.map_err(|e| inner.map_mobc(e))?;
        counters.in_use.fetch_add(1, Ordering::AcqRel);
        Ok(PooledConnection::new(conn, Arc::clone(&inner.shared)))
    }

    fn status(&self) -> PoolStatus {
        self.inner.status()
    }

    async fn close(&self, deadline: Duration) {
        let inner = &*self.inner;
        inner.closed.store(true, Ordering::Release);
        inner.wake_keeper.notify_one();
        for slot in &*inner.lanes {
            slot.store(None);
        }
        let until = Instant::now() + deadline;
        loop {
            // Register for the wake-up before looking, so a return in between is not missed.
            let returned = inner.shared.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if inner.shared.counters.in_use.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(until, returned).await.is_err() {
                tracing::warn!(
                    in_use = inner.shared.counters.in_use.load(Ordering::Acquire),
                    "closing with connections still checked out"
                );
                break;
            }
        }
        // Close what is idle.
        let idle = inner.status().idle;
        for _ in 0..idle {
            match inner.mobc.get_timeout(Duration::from_millis(50)).await {
                Ok(conn) => drop(conn.into_inner()),
                Err(_) => break,
            }
        }
        for task in inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}
