//! The README's examples compile (each ```rust block is wrapped in an async function by
//! `build.rs`); they are not run: they need a Redis of their own and serve forever.

#[allow(unused, clippy::all, clippy::pedantic, missing_docs)]
mod examples {
    include!(concat!(env!("OUT_DIR"), "/readme.rs"));
}

#[test]
fn the_readme_has_its_examples() {
    // Using the library, the redis-rs drop-in, the health endpoints and metrics, configuration.
    assert!(examples::EXAMPLES >= 4, "{}", examples::EXAMPLES);
    // Each is a future of the right type (so the compiler checked it as a whole).
    let _: fn() -> _ = examples::example_1;
}
