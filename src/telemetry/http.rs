//! `/metrics` (Prometheus text), `/healthz` (the process serves) and `/readyz` (every member cluster's
//! caches hold their first list).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::metrics::Metrics;

/// Names of member clusters that are not ready yet; empty = ready.
pub type Readiness = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

async fn metrics_text(State(s): State<AppState>) -> (StatusCode, String) {
    match s.metrics.encode() {
        Ok(text) => (StatusCode::OK, text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}"),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    let waiting = (s.readiness)();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for caches of: {}\n", waiting.join(", ")),
        )
    }
}

/// Binds `addr` and serves until the process ends. Binding errors are returned (a taken port is a
/// clear startup error, not a silent missing endpoint).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, readiness: Readiness) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, readiness });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-addr {addr}: cannot listen: {e}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
