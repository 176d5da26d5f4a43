//! Development tasks for resilient-redis. `cargo xtask <task>`; see `cargo xtask help`.

mod bench;
mod chaos;
mod ci;
mod demo;
mod tidy;
mod util;

use std::process::ExitCode;

const HELP: &str = "\
cargo xtask <task>

Tasks:
  ci      every check CI runs: fmt, clippy, tests, doctests, docs, cargo-deny, tidy, chaos
  demo    the main job: a workload through an outage and recovery (see README)
  bench   the benchmarks, compared with raw redis-rs and peer crates in the same run
  chaos   a seeded fault campaign with a history checker ([--seed N] [--duration 20s] [--apps 2]
          [--only FAULT] [--schedule STEPS] [--shrink] [--report FILE])
  tidy    the architecture invariants (cargo tree) and stub checks only
  help    this text
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_else(|| "help".to_owned());
    let rest: Vec<String> = args.collect();
    let ok = match task.as_str() {
        "ci" => ci::run(&rest),
        "demo" => demo::run(&rest),
        "bench" => bench::run(&rest),
        "chaos" => chaos::run(&rest),
        "tidy" => tidy::run(),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            true
        }
        other => {
            eprintln!("unknown task `{other}`\n\n{HELP}");
            false
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
