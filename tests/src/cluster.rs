//! A real Redis Cluster of `redis-server` processes on free loopback ports, owned by one test.

use std::time::{Duration, Instant};

use crate::{RedisServer, free_port};

/// How long the cluster may take to form (or to recover after a failover).
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster: `primaries` primaries, each with `replicas` replicas, made with
/// `redis-cli --cluster create`. Nodes declare a primary failed after 1 s without an answer
/// (`cluster-node-timeout 1000`), so a replica takes over a killed primary within a few
/// seconds, and the other primaries keep serving their slots meanwhile
/// (`cluster-require-full-coverage no`). Every node keeps each acknowledged write on disk (`appendfsync always`), so a node
/// killed and restarted before its replica took over comes back with its data. Every node is
/// killed when this is dropped.
///
/// ```no_run
/// let mut cluster = resilient_redis_tests::RedisCluster::start(3, 1);
/// let nodes = cluster.urls();
/// let port = cluster.primary_of_slot(0).unwrap();
/// cluster.kill(port); // SIGKILL one primary
/// cluster.wait_until_ok(); // its replica took over
/// # drop(nodes);
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, makes the cluster, and waits until every node reports
    /// `cluster_state:ok` and knows every other node.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing or the cluster does not form.
    #[must_use]
    pub fn start(primaries: usize, replicas: usize) -> Self {
        Self::try_start(primaries, replicas)
            .unwrap_or_else(|e| panic!("the Redis Cluster did not form: {e}"))
    }

    /// As [`RedisCluster::start`], with the reason as an error instead of a panic.
    ///
    /// # Errors
    /// When a node does not start, `redis-cli` is missing or fails, or the cluster does not
    /// become ok in time.
    pub fn try_start(primaries: usize, replicas: usize) -> Result<Self, String> {
        let count = primaries * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(
                RedisServer::builder()
                    .config("cluster-enabled", "yes")
                    .config("cluster-config-file", "nodes.conf")
                    .config("cluster-node-timeout", "1000")
                    // The bus port is chosen free too (the default, port + 10000, may not be).
                    .config("cluster-port", free_port().to_string())
                    .config("repl-diskless-sync-delay", "0")
                    // The other primaries keep serving their slots while one is down.
                    .config("cluster-require-full-coverage", "no")
                    .durable()
                    .try_start()?,
            );
        }
        let mut cli = std::process::Command::new("redis-cli");
        cli.arg("--cluster").arg("create");
        for n in &nodes {
            cli.arg(format!("127.0.0.1:{}", n.port()));
        }
        cli.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = cli
            .output()
            .map_err(|e| format!("cannot run redis-cli (apt-get install -y redis-tools): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let cluster = Self { nodes };
        cluster.try_wait_until_ok()?;
        Ok(cluster)
    }

    /// The nodes' URLs (`redis://127.0.0.1:<port>`), killed ones included.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The ports of the nodes still running.
    #[must_use]
    pub fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(RedisServer::port)
            .collect()
    }

    /// The port of the primary serving `slot` now, as a running node reports it.
    #[must_use]
    pub fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        for port in self.running_ports() {
            let Ok(mut c) = connect(port) else { continue };
            let Ok(ranges) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Vec<redis::Value>>(&mut c)
            else {
                continue;
            };
            for range in ranges {
                let redis::Value::Array(items) = range else {
                    continue;
                };
                let (Some(redis::Value::Int(from)), Some(redis::Value::Int(to))) =
                    (items.first(), items.get(1))
                else {
                    continue;
                };
                if (*from..=*to).contains(&i64::from(slot))
                    && let Some(redis::Value::Array(primary)) = items.get(2)
                    && let Some(redis::Value::Int(p)) = primary.get(1)
                {
                    return u16::try_from(*p).ok();
                }
            }
        }
        None
    }

    /// SIGKILLs the node on `port`.
    ///
    /// # Panics
    /// When no node of this cluster has that port.
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
            .kill();
    }

    /// Freezes the node on `port` (SIGSTOP): its sockets stay open and accept connections, but
    /// nothing answers, as with a hung process or a blackholed host. [`RedisCluster::resume`]
    /// thaws it.
    ///
    /// # Panics
    /// When no running node has that port.
    pub fn pause(&self, port: u16) {
        self.signal(port, "-STOP");
    }

    /// Thaws a node frozen by [`RedisCluster::pause`] (SIGCONT).
    ///
    /// # Panics
    /// When no running node has that port.
    pub fn resume(&self, port: u16) {
        self.signal(port, "-CONT");
    }

    fn signal(&self, port: u16, signal: &str) {
        let pid = self
            .nodes
            .iter()
            .find(|n| n.port() == port)
            .and_then(RedisServer::pid)
            .unwrap_or_else(|| panic!("no running node on port {port}"));
        let sent = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal} {pid} failed");
    }

    /// Starts the node on `port` again (after [`RedisCluster::kill`]) with its data directory
    /// and cluster state: a primary replaced meanwhile rejoins as a replica.
    ///
    /// # Errors
    /// When no node has that port or it does not come up.
    pub fn restart(&mut self, port: u16) -> Result<(), String> {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .ok_or_else(|| format!("no node on port {port}"))?
            .try_restart()
    }

    /// Waits until every running node reports `cluster_state:ok`.
    ///
    /// # Panics
    /// When that does not happen within 30 s.
    pub fn wait_until_ok(&self) {
        if let Err(e) = self.try_wait_until_ok() {
            panic!("{e}");
        }
    }

    fn try_wait_until_ok(&self) -> Result<(), String> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let total = self.nodes.len();
        loop {
            let ok = self.running_ports().into_iter().all(|port| {
                connect(port).is_ok_and(|mut c| {
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query(&mut c)
                        .unwrap_or_default();
                    info.contains("cluster_state:ok")
                        && info.contains(&format!("cluster_known_nodes:{total}"))
                })
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the cluster was not ok within {FORM_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_connection_with_timeout(Duration::from_secs(1))
}
