//! The README's examples compile (each ```rust block is wrapped in an async function by
//! `build.rs`); they are not run: they need a Redis of their own and serve forever. The check
//! is the compilation itself: a README example that no longer compiles fails this target.

#[allow(unused, clippy::all, clippy::pedantic, missing_docs)]
mod examples {
    include!(concat!(env!("OUT_DIR"), "/readme.rs"));
}

// Using the library, the redis-rs drop-in, the health endpoints with metrics, configuration:
// a README that lost its code blocks (a fence renamed, say) would compile nothing.
const _: () = assert!(examples::EXAMPLES >= 4);

#[test]
fn the_readme_examples_are_futures_of_a_fallible_result() {
    // Made, not polled: each is checked as a whole by the compiler.
    let futures = [
        Box::pin(examples::example_1())
            as std::pin::Pin<Box<dyn Future<Output = Result<(), Box<dyn std::error::Error>>>>>,
        Box::pin(examples::example_2()),
        Box::pin(examples::example_3()),
        Box::pin(examples::example_4()),
    ];
    assert_eq!(futures.len(), examples::EXAMPLES);
}
