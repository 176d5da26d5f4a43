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

/// In cluster mode: the slot map, then a PING to every primary on its own. A failure names
/// each primary that did not answer and the slots it serves (or the slots no primary serves),
/// so the health report says which node is down.
pub struct ClusterProbe {
    pool: Arc<resilient_redis_pool::ClusterPool>,
    budget: std::time::Duration,
}

impl ClusterProbe {
    /// A probe over `pool` that has its answer within `budget` (keep it inside the health
    /// monitor's own timeout, so that a hung primary is named rather than the probe timing
    /// out).
    #[must_use]
    pub fn new(pool: Arc<resilient_redis_pool::ClusterPool>, budget: std::time::Duration) -> Self {
        Self { pool, budget }
    }
}

#[async_trait::async_trait]
impl Probe for ClusterProbe {
    async fn probe(&self) -> Result<(), ProbeError> {
        let primaries = self
            .pool
            .primaries(self.budget)
            .await
            .map_err(|e| ProbeError(e.to_string()))?;
        let failing: Vec<String> = primaries
            .iter()
            .filter(|p| p.error.is_some())
            .map(ToString::to_string)
            .collect();
        if !failing.is_empty() {
            return Err(ProbeError(failing.join("; ")));
        }
        let served: u32 = primaries
            .iter()
            .flat_map(|p| &p.slots)
            .map(|(a, b)| u32::from(b.saturating_sub(*a)) + 1)
            .sum();
        if served < u32::from(resilient_redis_pool::CLUSTER_SLOTS) {
            return Err(ProbeError(format!(
                "only {served} of {} slots have a primary",
                resilient_redis_pool::CLUSTER_SLOTS
            )));
        }
        Ok(())
    }
}

/// The server a configuration points at, as `host:port/db` (`unix:PATH/db` for a socket),
/// never with a password: what a fallback journal records as its server.
#[must_use]
pub fn server_identity(url: &str) -> String {
    metrics_server(url).map_or_else(String::new, |s| {
        if s.port == 0 {
            format!("unix:{}/{}", s.address, s.namespace)
        } else {
            format!("{}:{}/{}", s.address, s.port, s.namespace)
        }
    })
}

/// What a journal records as its server: `host:port/db` of the URL; in sentinel mode
/// `sentinel:<master_name>@<sentinels>/db`, the sentinels' `host:port` sorted (a failover
/// changes the primary's address, not the data set; another set of sentinels watching a
/// `mymaster` of its own is another data set); in cluster mode `cluster:<nodes>/0`, the seed
/// nodes' `host:port` sorted.
pub(crate) fn config_identity(config: &resilient_redis_config::RedisConfig) -> String {
    match config.mode {
        resilient_redis_config::Mode::Sentinel => {
            let mut sentinels: Vec<String> = config
                .sentinels
                .iter()
                .filter_map(|s| metrics_server(s.expose()))
                .map(|s| format!("{}:{}", s.address, s.port))
                .collect();
            sentinels.sort();
            sentinels.dedup();
            format!(
                "sentinel:{}@{}/{}",
                config.master_name.as_deref().unwrap_or(""),
                sentinels.join(","),
                metrics_server(config.url.expose()).map_or(0, |s| s.namespace)
            )
        }
        resilient_redis_config::Mode::Cluster => format!("cluster:{}/0", cluster_nodes(config)),
        _ => server_identity(config.url.expose()),
    }
}

/// A cluster's seed nodes as `host:port`, sorted and deduplicated, comma-separated.
fn cluster_nodes(config: &resilient_redis_config::RedisConfig) -> String {
    let mut nodes: Vec<String> = config
        .nodes
        .iter()
        .filter_map(|s| metrics_server(s.expose()))
        .map(|s| format!("{}:{}", s.address, s.port))
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes.join(",")
}

/// The server the metrics name: the URL's, in sentinel mode the primary's name (port 0), in
/// cluster mode the first seed node (the pool name lists them all).
pub(crate) fn config_server(
    config: &resilient_redis_config::RedisConfig,
) -> Option<resilient_redis_metrics::Server> {
    let server = metrics_server(config.url.expose())?;
    match config.mode {
        resilient_redis_config::Mode::Cluster => {
            let first = metrics_server(config.nodes.first()?.expose())?;
            Some(first.pool_name(format!("cluster:{}", cluster_nodes(config))))
        }
        resilient_redis_config::Mode::Sentinel => Some(
            resilient_redis_metrics::Server::new(config.master_name.clone().unwrap_or_default(), 0)
                .namespace(server.namespace),
        ),
        _ => Some(server),
    }
}

/// The server a URL names, as the metrics' attributes describe it (`server.address`,
/// `server.port`, `db.namespace`); a Unix socket is its path with port 0.
#[must_use]
pub(crate) fn metrics_server(url: &str) -> Option<resilient_redis_metrics::Server> {
    let parsed = url::Url::parse(url).ok()?;
    let db_in_query = || {
        parsed
            .query_pairs()
            .find(|(k, _)| k == "db")
            .and_then(|(_, v)| v.parse::<u16>().ok())
            .unwrap_or(0)
    };
    Some(match parsed.scheme() {
        "unix" | "redis+unix" => {
            resilient_redis_metrics::Server::new(parsed.path(), 0).namespace(db_in_query())
        }
        _ => {
            let db = parsed
                .path()
                .trim_start_matches('/')
                .parse::<u16>()
                .unwrap_or(0);
            resilient_redis_metrics::Server::new(
                parsed.host_str().unwrap_or("localhost"),
                parsed.port().unwrap_or(6379),
            )
            .namespace(db)
        }
    })
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
        let server = super::metrics_server("redis://:pw@10.0.0.7:7000/5").unwrap();
        assert_eq!(
            (server.address.as_str(), server.port, server.namespace),
            ("10.0.0.7", 7000, 5)
        );
        assert_eq!(server.pool_name_or_default(), "10.0.0.7:7000/5");

        // Sentinel mode: the primary's name and the sentinels (in any order), never an address
        // of the primary (a failover moves it) nor a password.
        let mut config = resilient_redis_config::RedisConfig::default();
        config.url = resilient_redis_config::RedisUrl::new("redis://:pw@ignored:1/2");
        config.mode = resilient_redis_config::Mode::Sentinel;
        config.master_name = Some("mymaster".into());
        config.sentinels = vec![
            resilient_redis_config::RedisUrl::new("redis://:s3cret@10.0.0.6:26379"),
            resilient_redis_config::RedisUrl::new("redis://10.0.0.5:26379"),
        ];
        let a = super::config_identity(&config);
        config.sentinels.reverse();
        assert_eq!(a, super::config_identity(&config));
        assert_eq!(a, "sentinel:mymaster@10.0.0.5:26379,10.0.0.6:26379/2");
    }
}
