//! A real `redis-server` process on a free loopback port, owned by one test.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary started; override with `REDIS_SERVER_BIN`.
fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER_BIN")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// Builds a [`RedisServer`] with extra `redis-server` arguments.
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct RedisServerBuilder {
    args: Vec<String>,
    password: Option<String>,
    tls: bool,
    tls_client_auth: bool,
    /// The server's certificate expired yesterday.
    tls_expired: bool,
    /// `(name, primary port, quorum)`: run as a sentinel monitoring that primary.
    sentinel: Option<(String, u16, u32)>,
}

impl RedisServerBuilder {
    /// Runs as a Redis Sentinel (`--sentinel`, from a config file in its directory) that
    /// monitors the primary at `127.0.0.1:<primary_port>` as `name`, with `quorum`; a primary
    /// is down after 500 ms without an answer, and a failover may take 2 s.
    pub fn sentinel(mut self, name: &str, primary_port: u16, quorum: u32) -> Self {
        self.sentinel = Some((name.to_owned(), primary_port, quorum));
        self
    }

    /// Adds one command-line argument (`"--maxclients"`, then `"1"`).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds several arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Serves TLS only, with a certificate for 127.0.0.1 and the name `resilient-redis.test`
    /// (which no DNS resolves), signed by a CA made for this server
    /// (needs `openssl`); [`RedisServer::url`] is then `rediss://`.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// As [`RedisServerBuilder::tls`], and every client must present a certificate signed by
    /// the same CA (mutual TLS): [`RedisServer::tls_file`] has `client.crt` and `client.key`.
    pub fn tls_client_auth(mut self) -> Self {
        self.tls = true;
        self.tls_client_auth = true;
        self
    }

    /// As [`RedisServerBuilder::tls`], with a server certificate that expired a day ago (its
    /// CA is valid).
    pub fn tls_expired(mut self) -> Self {
        self.tls = true;
        self.tls_expired = true;
        self
    }

    /// Adds `--name value`.
    pub fn config(self, name: &str, value: impl Into<String>) -> Self {
        self.arg(format!("--{name}")).arg(value)
    }

    /// Requires this password (`--requirepass`).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        let password = password.into();
        self.password = Some(password.clone());
        self.config("requirepass", password)
    }

    /// Keeps every acknowledged write across a SIGKILL (`--appendonly yes --appendfsync always`).
    pub fn durable(self) -> Self {
        self.config("appendonly", "yes")
            .config("appendfsync", "always")
    }

    /// Starts the server on a free loopback port and waits until it answers.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not come up, with a message that says so.
    pub fn start(self) -> RedisServer {
        self.try_start()
            .unwrap_or_else(|e| panic!("redis-server did not start: {e}"))
    }

    /// As [`RedisServerBuilder::start`], with the reason as an error instead of a panic (for
    /// the CLI's demo).
    ///
    /// # Errors
    /// When `redis-server` is not installed or does not come up, saying which.
    pub fn try_start(self) -> Result<RedisServer, String> {
        let mut last_error = String::new();
        // A port found free can be taken by someone else before redis binds it: try a few.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("resilient-redis-server-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            let port = free_port();
            let mut args = self.args.clone();
            let mut conf = None;
            if let Some((name, primary, quorum)) = &self.sentinel {
                let path = dir.path().join("sentinel.conf");
                std::fs::write(
                    &path,
                    format!(
                        "sentinel monitor {name} 127.0.0.1 {primary} {quorum}\n\
                         sentinel down-after-milliseconds {name} 500\n\
                         sentinel failover-timeout {name} 2000\n\
                         sentinel parallel-syncs {name} 1\n"
                    ),
                )
                .map_err(|e| format!("cannot write the sentinel's config: {e}"))?;
                conf = Some(path);
                args.push("--sentinel".into());
            }
            if self.tls {
                // The test process is the application: it chooses the rustls crypto provider
                // its TLS connections use.
                let _ = rustls::crypto::ring::default_provider().install_default();
                args.extend(tls_args(
                    dir.path(),
                    port,
                    self.tls_client_auth,
                    self.tls_expired,
                ));
            }
            let mut server = RedisServer {
                port,
                conf,
                args,
                password: self.password.clone(),
                tls: self.tls,
                dir,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

/// A `redis-server` child process on `127.0.0.1:<port>`, killed when dropped.
///
/// ```no_run
/// let mut server = resilient_redis_tests::RedisServer::start();
/// let url = server.url();
/// server.kill();    // SIGKILL, like a crash
/// server.restart(); // same port, same data directory
/// # drop(url);
/// ```
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    /// The config file given first (a sentinel's).
    conf: Option<PathBuf>,
    args: Vec<String>,
    password: Option<String>,
    tls: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with default settings.
    ///
    /// # Panics
    /// See [`RedisServerBuilder::start`].
    #[must_use]
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A builder for extra arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:<port>` (with the password, when one is required).
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A file of a TLS server's certificates, in its directory: `ca.crt` (the CA that signed
    /// the server's certificate and the client's), `client.crt` and `client.key` (a client
    /// certificate for mutual TLS).
    #[must_use]
    pub fn tls_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's data directory (append-only files live here).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process with SIGKILL, by pid, and reaps it: no shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same arguments and data directory.
    ///
    /// # Panics
    /// When it does not come up (for example, the port was taken meanwhile).
    pub fn restart(&mut self) {
        if let Err(e) = self.try_restart() {
            panic!("{e}");
        }
    }

    /// As [`RedisServer::restart`], with the reason as an error instead of a panic.
    ///
    /// # Errors
    /// When it does not come up.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
            .map_err(|e| format!("redis-server did not restart on port {}: {e}", self.port))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(binary());
        if let Some(conf) = &self.conf {
            cmd.arg(conf);
        }
        cmd.arg("--port")
            .arg(if self.tls {
                "0".to_owned()
            } else {
                self.port.to_string()
            })
            .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "`{}` is not installed or not on PATH ({e}); install it with \
                     `apt-get install -y redis-server` or set REDIS_SERVER_BIN",
                    binary().display()
                )
            } else {
                format!("cannot run `{}`: {e}", binary().display())
            }
        })?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut stderr);
                }
                let logged = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "exited with {status} on port {}: {}{}",
                    self.port,
                    stderr.trim(),
                    last_lines(&logged, 5)
                ));
            }
            let up = if self.tls {
                TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok()
            } else {
                answers_ping(self.port)
            };
            if up {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer on port {} within {READY_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A port nobody listens on right now (the OS picks it).
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// True when something on the port answers a RESP PING (`+PONG`, or `-NOAUTH` behind a
/// password: either way the server is up).
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if n > 0 => buf[0] == b'+' || buf[..n].starts_with(b"-NOAUTH"),
        _ => false,
    }
}

/// Makes a CA and a certificate for 127.0.0.1 in `dir` with `openssl`, and returns the
/// arguments that make redis-server serve TLS only on `port`.
fn tls_args(dir: &Path, port: u16, client_auth: bool, expired: bool) -> Vec<String> {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("openssl is needed for the TLS tests (apt-get install -y openssl): {e}")
            });
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    // A certificate signed by the CA: `<name>.key`, `<name>.crt`, with these X.509 v3
    // extensions (rustls takes no other version).
    let issue = |name: &str, subject: &str, extensions: &str, days: &str| {
        let (key, csr, crt, cnf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.cnf"),
        );
        std::fs::write(dir.join(&cnf), extensions).expect("write the extensions");
        run(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            days,
            "-extfile",
            &cnf,
            "-out",
            &crt,
        ]);
    };
    // `-days -1`: valid until yesterday.
    issue(
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:resilient-redis.test\n",
        if expired { "-1" } else { "2" },
    );
    // For mutual TLS.
    issue(
        "client",
        "/CN=resilient-redis-test-client",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        "2",
    );
    let path = |f: &str| dir.join(f).display().to_string();
    vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        path("server.crt"),
        "--tls-key-file".into(),
        path("server.key"),
        "--tls-ca-cert-file".into(),
        path("ca.crt"),
        "--tls-auth-clients".into(),
        if client_auth { "yes" } else { "no" }.into(),
    ]
}
