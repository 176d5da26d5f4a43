//! Spans of Redis operations exported through OpenTelemetry: `tracing-subscriber` with the
//! `tracing-opentelemetry` layer and a stdout exporter (swap in OTLP for production).
//!
//! `cargo run -p resilient-redis-metrics --example tracing`

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use resilient_redis_metrics::operation_span;
use tracing_subscriber::layer::SubscriberExt;

fn main() {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("resilient-redis")));
    tracing::subscriber::with_default(subscriber, || {
        // What the manager does around each command: a span with the operation's name only.
        let span = operation_span("get");
        let _entered = span.enter();
        // ... the command runs here; on failure the manager records the kind:
        span.record("error.type", "timeout_error");
    });
    let _ = provider.shutdown();
}
