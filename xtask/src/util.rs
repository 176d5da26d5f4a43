//! Running cargo and finding the project.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The workspace root: the parent of this crate's folder.
pub(crate) fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// `cargo`, as the one running us (`$CARGO`), at the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command with inherited output; true when it exits 0.
pub(crate) fn status(cmd: &mut Command) -> bool {
    match cmd.status() {
        Ok(status) => status.success(),
        Err(e) => {
            eprintln!("cannot run {cmd:?}: {e}");
            false
        }
    }
}

/// Runs a command quietly and returns its stdout when it exits 0.
pub(crate) fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `cargo <sub> --version` works (an installed cargo subcommand).
pub(crate) fn has_cargo_tool(sub: &str) -> bool {
    output(cargo().args([sub, "--version"])).is_some()
}

/// Package names of the library crates under `crates/`, read from their manifests.
pub(crate) fn crate_packages() -> Vec<String> {
    let mut names = Vec::new();
    let Ok(dirs) = std::fs::read_dir(root().join("crates")) else {
        return names;
    };
    for dir in dirs.flatten() {
        let Ok(text) = std::fs::read_to_string(dir.path().join("Cargo.toml")) else {
            continue;
        };
        if let Some(name) = text.lines().find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "name").then(|| value.trim().trim_matches('"').to_owned())
        }) {
            names.push(name);
        }
    }
    names.sort();
    names
}
