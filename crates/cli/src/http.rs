//! The demo's HTTP endpoint: `/metrics` (Prometheus text) beside the manager's own `/live` and
//! `/ready` (the `axum` feature's health routes).

use std::sync::Arc;

use axum::routing::get;
use resilient_redis_manager::RedisManager;
use resilient_redis_metrics::PrometheusExporter;
use tokio::net::TcpListener;

pub(crate) async fn serve(
    listener: TcpListener,
    exporter: Arc<PrometheusExporter>,
    manager: RedisManager,
) {
    let app = resilient_redis_manager::http::health_routes(manager)
        .route("/metrics", get(move || async move { exporter.render() }));
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("the HTTP endpoint stopped: {e}");
    }
}
