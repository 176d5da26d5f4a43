//! `cargo xtask bench`: every criterion benchmark, then a table comparing ours with the peers
//! measured in the same run.
//!
//! Convention: within a criterion group, benchmarks named `resilient_redis*` are ours and every
//! other one is a peer (raw redis-rs, failsafe, deadpool, ...). The table prints each of ours
//! with its time and how many times faster (> 1) or slower (< 1) than each peer it is.

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::{cargo, root, status};

pub(crate) fn run(args: &[String]) -> bool {
    let ok = status(
        cargo()
            .args(["bench", "--workspace", "--locked"])
            .args(args),
    );
    let results = collect(&root().join("target").join("criterion"));
    if results.is_empty() {
        eprintln!("no criterion results under target/criterion");
        return ok;
    }
    println!(
        "\n{:<34} {:<32} {:>12}  ratio (peer time / ours)",
        "group", "benchmark", "mean"
    );
    for (group, benches) in &results {
        let peers: Vec<(&String, &f64)> = benches
            .iter()
            .filter(|(name, _)| !name.starts_with("resilient_redis"))
            .collect();
        for (name, ns) in benches {
            let ratios = if name.starts_with("resilient_redis") {
                peers
                    .iter()
                    .map(|(peer, peer_ns)| format!("{:.2}x vs {peer}", *peer_ns / ns))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                String::from("(peer)")
            };
            println!("{group:<34} {name:<32} {:>12}  {ratios}", human(*ns));
        }
    }
    ok
}

/// group → benchmark → mean time in nanoseconds, from criterion's `new/estimates.json` files.
fn collect(dir: &Path) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    let Ok(groups) = std::fs::read_dir(dir) else {
        return out;
    };
    for group in groups.flatten().filter(|e| e.path().is_dir()) {
        let Ok(benches) = std::fs::read_dir(group.path()) else {
            continue;
        };
        for bench in benches.flatten() {
            let estimates = bench.path().join("new").join("estimates.json");
            let Ok(text) = std::fs::read_to_string(&estimates) else {
                continue;
            };
            if let Some(ns) = mean_point_estimate(&text) {
                out.entry(group.file_name().to_string_lossy().into_owned())
                    .or_default()
                    .insert(bench.file_name().to_string_lossy().into_owned(), ns);
            }
        }
    }
    out
}

/// `{"mean":{"confidence_interval":{...},"point_estimate":12.3,...},...}` → 12.3, without a
/// JSON dependency in xtask.
fn mean_point_estimate(json: &str) -> Option<f64> {
    let mean = &json[json.find("\"mean\"")?..];
    let at = mean.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = &mean[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_mean_of_a_criterion_estimate() {
        let json = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":10.9,"upper_bound":11.2},"point_estimate":11.05,"standard_error":0.07},"median":{"point_estimate":9.0}}"#;
        assert_eq!(mean_point_estimate(json), Some(11.05));
    }
}
