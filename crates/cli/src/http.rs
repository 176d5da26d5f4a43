//! A minimal HTTP endpoint for the demo: `/metrics` (Prometheus text) and `/health` (JSON).

use std::sync::Arc;

use resilient_redis_manager::RedisManager;
use resilient_redis_metrics::PrometheusExporter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub(crate) async fn serve(
    listener: TcpListener,
    exporter: Arc<PrometheusExporter>,
    manager: RedisManager,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let (exporter, manager) = (Arc::clone(&exporter), manager.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, kind, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", exporter.render()),
                "/health" => {
                    let report = manager.health_check().await;
                    let status = match report.verdict {
                        resilient_redis_manager::Verdict::Unhealthy => "503 Service Unavailable",
                        _ => "200 OK",
                    };
                    (
                        status,
                        "application/json",
                        serde_json::to_string_pretty(&report).unwrap_or_default(),
                    )
                }
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /health\n".to_owned(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
