//! The `mobc::Manager` for redis-rs 1.x multiplexed connections.
//!
//! `mobc-redis` pins redis 0.28, which would put a second, older redis in the tree whose types
//! do not mix with ours; this is the small manager it would have given us.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use resilient_redis_config::ErrorKind;
use tokio::time::Instant;

use crate::PoolError;
use crate::error::classify;
use crate::watch::{Connected, Untimed};

/// Counters shared by the pool, its manager and its connections.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) created: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) in_use: AtomicU32,
    pub(crate) waiters: AtomicU32,
    pub(crate) timeouts: AtomicU64,
    pub(crate) validation_failures: AtomicU64,
}

/// A connection as the pool holds it.
pub(crate) struct RawConn {
    pub(crate) mux: MultiplexedConnection,
    /// Set when a command on it failed with an I/O error or timed out: it is discarded on
    /// return, never handed out again.
    pub(crate) broken: Arc<AtomicBool>,
    pub(crate) created: Instant,
    /// When a caller last gave it back (the reaper's measure of idleness).
    pub(crate) last_used: Instant,
    /// The reply deadline of its commands (a blocking command gets its block time on top).
    pub(crate) socket_timeout: Duration,
    /// Who it is to the server, so that it can be fenced if a request on it times out.
    pub(crate) identity: Option<crate::fence::Identity>,
    /// For a connection the pool opened itself (plain TCP, Unix socket): a handle without
    /// redis-rs's per-request timer, for use as a shared connection under a watchdog, and the
    /// driver task (stopped when this is dropped).
    pub(crate) untimed: Option<Untimed>,
    counters: Arc<Counters>,
}

impl Drop for RawConn {
    fn drop(&mut self) {
        self.counters.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Where connections go: one server, or the primary the sentinels name at each connect.
pub(crate) enum Target {
    Fixed(redis::Client),
    Sentinel {
        recipe: Box<SentinelRecipe>,
        /// The primary found last (for the plain-text and greeting probes).
        last: std::sync::Mutex<Option<redis::Client>>,
    },
}

/// What a sentinel client is made of: the sentinels and how to reach them, the primary's name,
/// and how to reach the primary.
pub(crate) struct SentinelRecipe {
    pub(crate) sentinels: Vec<redis::ConnectionAddr>,
    pub(crate) name: String,
    /// The first sentinel URL's user and password, for every sentinel.
    pub(crate) sentinel_auth: (Option<String>, Option<String>),
    pub(crate) sentinel_tls: Option<redis::TlsMode>,
    pub(crate) db: i64,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) tls: Option<redis::TlsMode>,
    pub(crate) certificates: Option<redis::TlsCertificates>,
}

impl SentinelRecipe {
    /// A client for the sentinel at `addr` itself (not the primary it names), with the
    /// sentinels' credentials and certificates, as [`SentinelRecipe::client`] reaches them.
    pub(crate) fn sentinel_client(
        &self,
        addr: &redis::ConnectionAddr,
    ) -> redis::RedisResult<redis::Client> {
        let info = redis::IntoConnectionInfo::into_connection_info(addr.clone())?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.sentinel_auth.0 {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.sentinel_auth.1 {
            settings = settings.set_password(password);
        }
        let info = info.set_redis_settings(settings);
        match (&self.certificates, addr) {
            (Some(certs), redis::ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certs.clone())
            }
            _ => redis::Client::open(info),
        }
    }

    /// A sentinel client for the primary named `name`: every sentinel, their credentials and
    /// certificates, and the primary's own.
    pub(crate) fn client(&self) -> redis::RedisResult<redis::sentinel::SentinelClient> {
        let mut b = redis::sentinel::SentinelClientBuilder::new(
            self.sentinels.iter().cloned(),
            &self.name,
            redis::sentinel::SentinelServerType::Master,
        )?
        .set_client_to_redis_db(self.db);
        if let Some(user) = &self.username {
            b = b.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            b = b.set_client_to_redis_password(password);
        }
        if let Some(mode) = self.tls {
            b = b.set_client_to_redis_tls_mode(mode);
            if let Some(certs) = &self.certificates {
                b = b.set_client_to_redis_certificates(certs.clone());
            }
        }
        if let Some(user) = &self.sentinel_auth.0 {
            b = b.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &self.sentinel_auth.1 {
            b = b.set_client_to_sentinel_password(password);
        }
        if let Some(mode) = self.sentinel_tls {
            b = b.set_client_to_sentinel_tls_mode(mode);
            if let Some(certs) = &self.certificates {
                b = b.set_client_to_sentinel_certificates(certs.clone());
            }
        }
        b.build()
    }
}

pub(crate) struct RedisManager {
    pub(crate) target: Target,
    pub(crate) connection_config: redis::AsyncConnectionConfig,
    pub(crate) connect_timeout: Duration,
    pub(crate) socket_timeout: Duration,
    pub(crate) retry_count: u32,
    pub(crate) retry_interval: Duration,
    pub(crate) max_lifetime: Duration,
    pub(crate) url: String,
    /// `rediss://`: a failed handshake is checked for a plain-text server.
    pub(crate) tls: bool,
    pub(crate) counters: Arc<Counters>,
    /// The last failure to connect, to explain "no connection" to callers.
    pub(crate) last_error: Arc<LastError>,
    /// The host to dial for the plain-text probes when the client's host is a certificate
    /// name (`tls.server_name`).
    pub(crate) dial_host: Option<String>,
}

impl RedisManager {
    async fn connect_once(&self) -> Result<Connected, PoolError> {
        let result = if self.tls {
            // A TLS handshake against a plain-text server hangs (the server waits for a command
            // line). Shortly after starting it, ask in plain text whether that is the case, so
            // the mismatch is reported at once rather than after connect_timeout.
            let plain_text_server = async {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if self.answers_plain_resp().await {
                    PoolError::Connect {
                        kind: ErrorKind::Tls,
                        url: self.url.clone(),
                        message: "the server answers plain RESP, not TLS: use redis:// or enable \
                                  TLS on the server"
                            .to_owned(),
                    }
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                r = self.connect_attempt() => r,
                e = plain_text_server => Err(e),
            }
        } else {
            self.connect_attempt().await
        };
        if let Err(PoolError::Connect {
            kind: ErrorKind::Timeout | ErrorKind::Connection,
            ..
        }) = &result
            && self.tls
            && self.answers_plain_resp().await
        {
            return Err(PoolError::Connect {
                kind: ErrorKind::Tls,
                url: self.url.clone(),
                message: "the server answers plain RESP, not TLS: use redis:// or enable TLS \
                          on the server"
                    .to_owned(),
            });
        }
        result
    }

    /// The client for the server to connect to now: the fixed one, or the primary the
    /// sentinels name (asked each time, so a failover is followed by the next connection).
    async fn client(&self) -> Result<redis::Client, redis::RedisError> {
        match &self.target {
            Target::Fixed(client) => Ok(client.clone()),
            Target::Sentinel { recipe, last } => {
                // A client of its own per connect: no lookup waits on another's.
                let client = recipe.client()?.async_get_client().await?;
                if let Ok(mut last) = last.lock() {
                    *last = Some(client.clone());
                }
                Ok(client)
            }
        }
    }

    async fn connect_attempt(&self) -> Result<Connected, PoolError> {
        let attempt = async {
            let client = self.client().await?;
            let owned = crate::watch::open(
                &client,
                &self.connection_config,
                self.socket_timeout,
                self.dial_host.as_deref(),
            )
            .await?;
            match owned {
                Some(connected) => Ok(connected),
                None => client
                    .get_multiplexed_async_connection_with_config(&self.connection_config)
                    .await
                    .map(|mux| Connected { mux, untimed: None }),
            }
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(connected)) => Ok(connected),
            Ok(Err(e)) => {
                let mut kind = classify(&e);
                let mut message = e.to_string();
                if e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel
                    && let Target::Sentinel { recipe, .. } = &self.target
                {
                    // Either the name is wrong or the sentinels are failing over: say both.
                    message = format!(
                        "no sentinel names a primary `{}` that is up: check master_name (`resilient-redis check` lists the names the sentinels monitor), or a failover is in progress",
                        recipe.name
                    );
                } else if kind == ErrorKind::Connection
                    && !e.is_connection_refusal()
                    && let Some(said) = self.what_the_server_says().await
                {
                    // The server greeted us with an error and hung up (maxclients, say):
                    // report its words rather than "broken pipe".
                    message = format!("the server refused the connection: {said}");
                    kind = ErrorKind::Connection;
                }
                Err(PoolError::Connect {
                    kind,
                    url: self.url.clone(),
                    message,
                })
            }
            Err(_) => Err(PoolError::Connect {
                kind: ErrorKind::Timeout,
                url: self.url.clone(),
                message: format!(
                    "no connection within connect_timeout ({:?})",
                    self.connect_timeout
                ),
            }),
        }
    }

    /// After a failed handshake over TCP: connect again and read what the server sends
    /// unprompted. A server at `maxclients` writes `-ERR max number of clients reached` and
    /// closes; redis-rs only sees the closed socket.
    async fn what_the_server_says(&self) -> Option<String> {
        use tokio::io::AsyncReadExt;
        if self.tls {
            return None;
        }
        let (host, port) = self.tcp_addr()?;
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .ok()?;
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(&buf[..n]);
            let line = text.lines().next()?.strip_prefix('-')?.to_owned();
            Some(line)
        };
        tokio::time::timeout(Duration::from_millis(200), probe)
            .await
            .ok()
            .flatten()
    }

    /// After a failed TLS handshake: does the server speak plain RESP on that port?
    async fn answers_plain_resp(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some((host, port)) = self.tcp_addr() else {
            return false;
        };
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .ok()?;
            stream.write_all(b"PING\r\n").await.ok()?;
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).await.ok()?;
            Some(buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
        };
        tokio::time::timeout(Duration::from_millis(200), probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    fn tcp_addr(&self) -> Option<(String, u16)> {
        let client = match &self.target {
            Target::Fixed(client) => client.clone(),
            Target::Sentinel { last, .. } => last.lock().ok()?.clone()?,
        };
        let (host, port) = match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
            _ => return None,
        };
        // With `tls.server_name` the client's host is the certificate's name: dial the URL's.
        Some((self.dial_host.clone().unwrap_or(host), port))
    }
}

/// The last failure to connect, shared by the manager (which sees every attempt) and the pool
/// (which explains "no connection" with it).
#[derive(Default)]
pub(crate) struct LastError(std::sync::Mutex<Option<(ErrorKind, String)>>);

impl LastError {
    pub(crate) fn record(&self, err: &PoolError) {
        if let PoolError::Connect { kind, message, .. } = err
            && let Ok(mut last) = self.0.lock()
        {
            *last = Some((*kind, message.clone()));
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut last) = self.0.lock() {
            *last = None;
        }
    }

    pub(crate) fn get(&self) -> Option<(ErrorKind, String)> {
        self.0.lock().ok().and_then(|l| l.clone())
    }
}

#[async_trait::async_trait]
impl mobc::Manager for RedisManager {
    type Connection = RawConn;
    type Error = PoolError;

    /// Opens a connection, retrying `create_retry_count` times with exponential backoff and
    /// jitter; a refused password or a configuration error is not retried.
    async fn connect(&self) -> Result<RawConn, PoolError> {
        let mut delay = self.retry_interval;
        let mut attempt = 1;
        loop {
            let connected = match self.connect_once().await {
                Ok(mut c) => crate::fence::identify(&mut c.mux, self.socket_timeout)
                    .await
                    .map(|identity| (c, identity))
                    .map_err(|e| match e {
                        PoolError::Connect { kind, message, .. } => PoolError::Connect {
                            kind,
                            url: self.url.clone(),
                            message,
                        },
                        other => other,
                    }),
                Err(e) => Err(e),
            };
            match connected {
                Ok((Connected { mux, untimed }, identity)) => {
                    self.counters.created.fetch_add(1, Ordering::Relaxed);
                    self.last_error.clear();
                    let now = Instant::now();
                    return Ok(RawConn {
                        mux,
                        untimed,
                        broken: Arc::new(AtomicBool::new(false)),
                        created: now,
                        last_used: now,
                        socket_timeout: self.socket_timeout,
                        identity,
                        counters: Arc::clone(&self.counters),
                    });
                }
                Err(e) => {
                    self.last_error.record(&e);
                    let retry = matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout);
                    if !retry || attempt >= self.retry_count {
                        return Err(e);
                    }
                    tracing::debug!(attempt, error = %e, "connect failed; retrying");
                    let jitter = delay.mul_f64(fastrand::f64() * 0.5);
                    tokio::time::sleep(delay + jitter).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }

    /// PING, on checkout of a connection idle longer than `validate_after_idle`.
    async fn check(&self, mut conn: RawConn) -> Result<RawConn, PoolError> {
        match ping(&mut conn.mux, self.socket_timeout).await {
            Ok(()) => Ok(conn),
            Err(e) => {
                self.counters
                    .validation_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// On return: a broken or expired connection is closed, never pooled again.
    fn validate(&self, conn: &mut RawConn) -> bool {
        !conn.broken.load(Ordering::Acquire) && conn.created.elapsed() < self.max_lifetime
    }
}

/// PING under a deadline.
pub(crate) async fn ping(
    mux: &mut MultiplexedConnection,
    deadline: Duration,
) -> Result<(), PoolError> {
    let cmd = redis::cmd("PING");
    let pinged = cmd.query_async::<String>(mux);
    match tokio::time::timeout(deadline, pinged).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(PoolError::Command {
            kind: classify(&e),
            source: e,
        }),
        Err(_) => Err(PoolError::CommandTimeout(deadline)),
    }
}
