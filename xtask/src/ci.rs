//! `cargo xtask ci`: the one gate, the same locally and in CI.

use std::time::Instant;

use crate::util::{cargo, has_cargo_tool, status};

struct Step {
    name: &'static str,
    ok: bool,
    seconds: f64,
}

pub(crate) fn run(_args: &[String]) -> bool {
    let mut steps: Vec<Step> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> bool| {
        eprintln!("\n==> {name}");
        let started = Instant::now();
        let ok = f();
        steps.push(Step {
            name,
            ok,
            seconds: started.elapsed().as_secs_f64(),
        });
        if !ok {
            eprintln!("==> {name}: FAILED");
        }
    };

    step("fmt", &mut || {
        require("fmt", "rustup component add rustfmt")
            && status(cargo().args(["fmt", "--all", "--check"]))
    });
    step("clippy", &mut || {
        require("clippy", "rustup component add clippy")
            && status(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]))
    });
    step("tests", &mut || {
        // The `ring-provider` feature's install path: no workspace member enables the feature,
        // so its test is compiled only when asked for.
        let ring = [
            "-p",
            "resilient-redis-pool",
            "--features",
            "ring-provider",
            "--locked",
            "--test",
            "no_crypto_provider",
        ];
        if has_cargo_tool("nextest") {
            let workspace = status(cargo().args([
                "nextest",
                "run",
                "--workspace",
                "--locked",
                "--no-fail-fast",
            ]));
            let feature = status(cargo().args(["nextest", "run"]).args(ring));
            workspace && feature
        } else {
            eprintln!(
                "(cargo-nextest not installed: using cargo test; `cargo install --locked cargo-nextest` is faster)"
            );
            let workspace = status(cargo().args([
                "test",
                "--workspace",
                "--locked",
                "--no-fail-fast",
                "--lib",
                "--bins",
                "--tests",
            ]));
            let feature = status(cargo().arg("test").args(ring));
            workspace && feature
        }
    });
    step("doctests", &mut || {
        status(cargo().args(["test", "--workspace", "--locked", "--doc"]))
    });
    step("docs", &mut || {
        status(
            cargo()
                .args(["doc", "--workspace", "--no-deps", "--locked"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )
    });
    step("deny", &mut || {
        require("deny", "cargo install --locked cargo-deny")
            && status(cargo().args(["deny", "--locked", "check", "licenses", "bans", "sources"]))
    });
    step("tidy", &mut crate::tidy::run);
    step("chaos", &mut crate::chaos::campaign);

    eprintln!("\ncargo xtask ci summary");
    for s in &steps {
        eprintln!(
            "  {:<9} {:<6} {:>7.1}s",
            s.name,
            if s.ok { "ok" } else { "FAILED" },
            s.seconds
        );
    }
    let failed: Vec<&str> = steps.iter().filter(|s| !s.ok).map(|s| s.name).collect();
    if failed.is_empty() {
        eprintln!("all {} steps passed", steps.len());
        true
    } else {
        eprintln!("failed: {}", failed.join(", "));
        false
    }
}

/// A missing tool fails the step with the command that installs it.
fn require(tool: &str, install: &str) -> bool {
    if has_cargo_tool(tool) {
        true
    } else {
        eprintln!("`cargo {tool}` is not installed; install it with: {install}");
        false
    }
}
