//! `resilient-redis`: the demo, a connection check, and the effective configuration.

mod bench;
mod check;
mod config_cmd;
mod demo;
mod http;
mod journal_cmd;
mod plot;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// resilient-redis: keep a service working while its Redis misbehaves.
///
/// Configuration comes from defaults, the TOML file named by REDIS_CONFIG_FILE, and REDIS_*
/// environment variables (REDIS_URL, REDIS_PASSWORD, REDIS_POOL_MAX_SIZE, ...).
///
/// Examples:
///   resilient-redis demo --spawn-server          run a workload through a Redis outage
///   REDIS_URL=redis://cache:6379 resilient-redis check
///   resilient-redis check rediss://user@cache.internal:6380
///   resilient-redis bench redis://cache:6379 --tasks 64 --duration 10s
///   REDIS_CONFIG_FILE=redis.toml resilient-redis config
///   resilient-redis config --toml > redis.toml   a commented starter file
///   resilient-redis journal inspect /var/lib/app/redis.journal
#[derive(Parser, Debug)]
#[command(name = "resilient-redis", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a mixed workload (reads, writes, counters) with a live status line, then print the
    /// metrics report and check that every acknowledged write reached Redis.
    ///
    /// With --spawn-server it starts its own redis-server and (with --chaos, on by default)
    /// kills it partway and restarts it, so you watch the breaker open, the fallback serve, and
    /// recovery replay the journal. Exits non-zero if any acknowledged write is missing.
    #[command(verbatim_doc_comment)]
    Demo(demo::Args),
    /// Connect through the configured stack and report TLS, credentials, PING latency (over
    /// several PINGs on one connection), server version, mode, role, memory, and whether this
    /// user may run the commands the library needs.
    ///
    /// Exit codes: 0 all good, 2 invalid configuration, 3 Redis unreachable, 4 credentials
    /// refused, 5 TLS failed, 6 a needed command not permitted (ACL), 1 anything else.
    #[command(verbatim_doc_comment)]
    Check {
        /// Redis URL; defaults to the configuration's (REDIS_URL).
        url: Option<String>,
        /// Print the findings as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure GET and SET through resilient-redis against raw redis-rs on your own Redis: ops/s,
    /// p50 and p99 for each, and the ratio, with a progress line while it runs. Writes only
    /// keys under `resilient-redis-bench:<run>:` and deletes them afterwards.
    Bench(bench::Args),
    /// Print the effective configuration and where each value came from (secrets redacted).
    Config {
        /// Print it as a commented TOML file instead, every field with its rule and variables:
        /// a starter file (`resilient-redis config --toml > redis.toml`). A password is never
        /// written.
        #[arg(long)]
        toml: bool,
    },
    /// Read a fallback journal file.
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Subcommand, Debug)]
enum JournalCommand {
    /// List what the journal holds: its server, a replay in progress, the writes waiting to be
    /// replayed and the dead letters (writes Redis refused at replay). Keys are shown, values
    /// only with --show-values. Safe while an application runs on the file (it only reads).
    Inspect {
        /// The journal file (`fallback.journal_path`).
        path: std::path::PathBuf,
        /// Also print values (they may be sensitive).
        #[arg(long)]
        show_values: bool,
        /// The key of a sealed journal (`fallback.journal_key_file`).
        #[arg(long, env = "REDIS_FALLBACK__JOURNAL_KEY_FILE")]
        key_file: Option<std::path::PathBuf>,
    },
}

/// The configuration from the environment (and `REDIS_CONFIG_FILE`), with `url` in place of
/// the configured URL when given; every problem in words.
pub(crate) fn load_config(
    url: Option<String>,
) -> Result<resilient_redis_config::RedisConfig, String> {
    let mut config = resilient_redis_config::ConfigLoader::from_process_env()
        .load()
        .map_err(|e| e.to_string())?;
    if let Some(u) = url {
        config.url = resilient_redis_config::RedisUrl::new(u);
        config.validate().map_err(|e| e.to_string())?;
    }
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // For rediss:// URLs: this application's rustls crypto provider (the library installs
    // none behind an application's back).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let done = |ok: bool| {
            if ok {
                check::exit::OK
            } else {
                check::exit::OTHER
            }
        };
        match cli.command {
            Command::Demo(args) => done(demo::run(args).await),
            Command::Check { url, json } => check::run(url, json).await,
            Command::Bench(args) => done(bench::run(args).await),
            Command::Config { toml } => done(config_cmd::run(toml)),
            Command::Journal(JournalCommand::Inspect {
                path,
                show_values,
                key_file,
            }) => done(journal_cmd::inspect(
                &path,
                show_values,
                key_file.as_deref(),
            )),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}
