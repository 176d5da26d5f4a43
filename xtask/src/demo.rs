//! `cargo xtask demo`: the main job.
//!
//! With `REDIS_URL` set it runs the demo against that Redis. Otherwise, with `redis-server` on
//! the PATH, it starts one of its own on a free port (so the demo can kill and restart it);
//! with neither, it runs on the in-memory fallback alone and says so. It draws the run into
//! `target/outage.svg` unless given `--plot PATH`.

use crate::util::{cargo, status};

pub(crate) fn run(args: &[String]) -> bool {
    // Cargo's own progress shows while the first build runs (minutes on a fresh clone), so a
    // newcomer can tell it from a hang.
    eprintln!(
        "building the demo (the first build takes a few minutes; cargo shows its progress)..."
    );
    let mut demo = vec!["run", "--locked", "-p", "resilient-redis-cli", "--", "demo"];
    if std::env::var_os("REDIS_URL").is_some() {
        eprintln!(
            "REDIS_URL is set: running the demo against it (no chaos: it is not ours to kill)."
        );
    } else if redis_server_installed() {
        demo.push("--spawn-server");
    } else {
        eprintln!(
            "REDIS_URL is unset and redis-server is not installed: the demo serves everything from \
             the in-memory fallback (install it with `apt-get install -y redis-server` to see an \
             outage and its recovery)."
        );
        demo.push("--no-redis");
    }
    // The picture of the run, unless the caller chose a path.
    let plot = crate::util::root().join("target").join("outage.svg");
    let plot_arg = plot.display().to_string();
    if !args.iter().any(|a| a == "--plot") {
        demo.extend(["--plot", plot_arg.as_str()]);
    }
    status(cargo().args(&demo).args(args))
}

fn redis_server_installed() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
