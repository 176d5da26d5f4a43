//! Health endpoints for an `axum` service (feature `axum`): mount them beside your own routes.
//!
//! ```no_run
//! # async fn run(manager: resilient_redis_manager::RedisManager) -> std::io::Result<()> {
//! let app = axum::Router::new()
//!     // ... the application's own routes ...
//!     .merge(resilient_redis_manager::http::health_routes(manager));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::{RedisManager, Verdict};

/// `GET /live` and `GET /ready`, answered from the manager's cached state (no PING per request):
///
/// - `/live`: `200 live` while the process can answer at all (a liveness probe restarts the
///   process otherwise; Redis being down is no reason to).
/// - `/ready`: the [`HealthReport`](crate::HealthReport) as JSON (`latency_ms` in
///   milliseconds, the pool's figures as fields); `200` when the verdict is `healthy` or
///   `degraded` (still serving, from memory if need be), `503` when `unhealthy` (Redis
///   unreachable and no fallback: requests fail). A service that wants out of rotation while
///   degraded reads `verdict` from the body.
pub fn health_routes(manager: RedisManager) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .with_state(manager)
}

async fn live() -> &'static str {
    "live\n"
}

async fn ready(State(manager): State<RedisManager>) -> impl IntoResponse {
    let report = manager.health_report();
    let status = if report.verdict == Verdict::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(report))
}
