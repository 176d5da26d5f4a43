//! Turns each ```rust block of the repository's README into an async function, so that
//! `tests/readme.rs` compiles them: the README's examples cannot rot.

use std::fmt::Write as _;

fn main() {
    let readme = "../README.md";
    println!("cargo::rerun-if-changed={readme}");
    let text = std::fs::read_to_string(readme).expect("the repository's README");
    let mut out = String::new();
    let mut block: Option<String> = None;
    let mut n = 0;
    for line in text.lines() {
        match &mut block {
            None if line.trim_start() == "```rust" => block = Some(String::new()),
            None => {}
            Some(_) if line.trim_start() == "```" => {
                let body = block.take().unwrap_or_default();
                n += 1;
                let _ = write!(
                    out,
                    "/// README example {n}.\n\
                     pub(crate) async fn example_{n}() -> Result<(), Box<dyn std::error::Error>> {{\n\
                     {body}\nOk(())\n}}\n\n"
                );
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    let _ = writeln!(
        out,
        "/// How many examples the README holds.\npub(crate) const EXAMPLES: usize = {n};"
    );
    let dest = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("readme.rs");
    std::fs::write(dest, out).expect("write the README examples");
}
