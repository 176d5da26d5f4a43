//! Architecture invariants (checked with `cargo tree`) and a stub check.
//!
//! Invariants, from `docs/architecture.md`:
//! - breaker, health, fallback and metrics do not depend on `redis`, nor on `figment`;
//! - nothing but manager, cli and tests depends on more than one sibling crate.

use crate::util::{cargo, crate_packages, output, root};

const REDIS_FREE: [&str; 4] = [
    "resilient-redis-breaker",
    "resilient-redis-health",
    "resilient-redis-fallback",
    "resilient-redis-metrics",
];
const COMPOSERS: [&str; 3] = [
    "resilient-redis-manager",
    "resilient-redis-cli",
    "resilient-redis-tests",
];

pub(crate) fn run() -> bool {
    let mut problems = Vec::new();
    let packages = crate_packages();
    for pkg in &packages {
        let Some(tree) = output(cargo().args([
            "tree", "--locked", "-p", pkg, "-e", "normal", "--prefix", "none",
        ])) else {
            problems.push(format!("`cargo tree -p {pkg}` failed"));
            continue;
        };
        if REDIS_FREE.contains(&pkg.as_str()) && tree.lines().any(|l| l.starts_with("figment v")) {
            problems.push(format!(
                "{pkg} depends on `figment`; only what loads a configuration needs it (the config \
                 crate's `load` feature)"
            ));
        }
        if REDIS_FREE.contains(&pkg.as_str()) && tree.lines().any(|l| l.starts_with("redis v")) {
            problems.push(format!(
                "{pkg} depends on `redis`; it must know nothing of Redis"
            ));
        }
        if !COMPOSERS.contains(&pkg.as_str()) {
            let direct = output(cargo().args([
                "tree", "--locked", "-p", pkg, "-e", "normal", "--prefix", "none", "--depth", "1",
            ]))
            .unwrap_or_default();
            let siblings: Vec<&str> = direct
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .filter(|name| name.starts_with("resilient-redis-"))
                .collect();
            if siblings.len() > 1 {
                problems.push(format!(
                    "{pkg} depends on {} sibling crates ({}); only manager, cli and tests compose",
                    siblings.len(),
                    siblings.join(", ")
                ));
            }
        }
    }
    problems.extend(stubs());
    problems.extend(outside_references());
    if problems.is_empty() {
        eprintln!(
            "tidy: {} crates meet the invariants; no stubs",
            packages.len()
        );
        true
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        false
    }
}

/// Stub macros and ignore attributes do not land: a stub is not done and an ignored test
/// hides a failure.
fn stubs() -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["crates", "xtask", "tests"] {
        visit(&root().join(dir), &mut |path, text| {
            for (i, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for needle in [
                    concat!("todo", "!("),
                    concat!("unimplemented", "!("),
                    concat!("#[", "ignore"),
                ] {
                    if code.contains(needle) {
                        found.push(format!("{}:{}: `{needle}`", path.display(), i + 1));
                    }
                }
            }
        });
    }
    found
}

/// The project's docs and comments speak to users, who have only the repository: they name no
/// document outside it.
fn outside_references() -> Vec<String> {
    let needles = [
        concat!("shared", "/"),
        concat!("seed", " design"),
        concat!("the ", "seed's"),
    ];
    let mut found = Vec::new();
    let mut check = |path: &std::path::Path, text: &str| {
        for (i, line) in text.lines().enumerate() {
            for needle in needles {
                if line.contains(needle) {
                    found.push(format!(
                        "{}:{}: names a document outside the repository (`{needle}`)",
                        path.display(),
                        i + 1
                    ));
                }
            }
        }
    };
    for dir in ["crates", "xtask", "tests", "docs"] {
        visit(&root().join(dir), &mut check);
    }
    for file in ["README.md", "Cargo.toml"] {
        if let Ok(text) = std::fs::read_to_string(root().join(file)) {
            check(std::path::Path::new(file), &text);
        }
    }
    found
}

fn visit(dir: &std::path::Path, f: &mut dyn FnMut(&std::path::Path, &str)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            visit(&path, f);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "md")
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            f(&path, &text);
        }
    }
}
