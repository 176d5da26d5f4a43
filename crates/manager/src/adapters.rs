//! Where the parts meet Redis: the health probe over the pool, and the server identity a
//! journal records. The replay target is in `replay.rs`.

use std::sync::Arc;

use resilient_redis_health::{Probe, ProbeError};
use resilient_redis_pool::ConnectionPool;

/// A PING through the pool's shared connection.
pub struct PoolProbe {
    pool: Arc<dyn ConnectionPool>,
}

impl PoolProbe {
    /// A probe over `pool`.
    #[must_use]
    pub fn new(pool: Arc<dyn ConnectionPool>) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl Probe for PoolProbe {
    async fn probe(&self) -> Result<(), ProbeError> {
        let mut conn = self.pool.shared().map_err(|e| ProbeError(e.to_string()))?;
        conn.query::<String>(&redis::cmd("PING"))
            .await
            .map(drop)
            .map_err(|e| ProbeError(e.to_string()))
    }
}

/// The server a configuration points at, as `host:port/db` (`unix:PATH/db` for a socket),
/// never with a password: what a fallback journal records as its server.
#[must_use]
pub fn server_identity(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else {
        return String::new();
    };
    let db_in_query = || {
        parsed
            .query_pairs()
            .find(|(k, _)| k == "db")
            .map_or_else(|| "0".to_owned(), |(_, v)| v.into_owned())
    };
    match parsed.scheme() {
        "unix" | "redis+unix" => format!("unix:{}/{}", parsed.path(), db_in_query()),
        _ => {
            let host = parsed.host_str().unwrap_or("localhost");
            let port = parsed.port().unwrap_or(6379);
            let db = parsed
                .path()
                .trim_start_matches('/')
                .parse::<i64>()
                .unwrap_or(0);
            format!("{host}:{port}/{db}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::server_identity;

    #[test]
    fn the_identity_names_host_port_and_db_never_the_password() {
        assert_eq!(
            server_identity("redis://user:hunter2@cache.internal:6380/3"),
            "cache.internal:6380/3"
        );
        assert_eq!(server_identity("rediss://h"), "h:6379/0");
        assert_eq!(
            server_identity("unix:///run/redis.sock?db=2"),
            "unix:/run/redis.sock/2"
        );
    }
}
