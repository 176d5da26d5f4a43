//! `cargo xtask bench`: the criterion benchmarks of every crate that has them.

use crate::util::{cargo, status};

pub(crate) fn run(args: &[String]) -> bool {
    // Benchmarks compare against raw redis-rs and peer crates inside each bench, in the same run,
    // and print ratios; see docs/performance.md.
    status(
        cargo()
            .args(["bench", "--workspace", "--locked"])
            .args(args),
    )
}
