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
    record: Option<Arc<std::path::PathBuf>>,
}

/// The reconcile record (`--reconcile-record`), for audits of replicas whose files are out of reach
/// (pods with a read-only root filesystem; the loadtest on kind).
async fn record(State(s): State<AppState>) -> (StatusCode, String) {
    let Some(path) = s.record else {
        return (
            StatusCode::NOT_FOUND,
            "not recording: --reconcile-record is unset\n".to_string(),
        );
    };
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || std::fs::read_to_string(path.as_ref())).await
    };
    let Ok(read) = read else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the record was cancelled\n".to_string(),
        );
    };
    match read {
        Ok(text) => (StatusCode::OK, text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (StatusCode::OK, String::new()),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading {}: {e}\n", path.display()),
        ),
    }
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
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    record_path: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/debug/reconcile-record", get(record))
        .with_state(AppState {
            metrics,
            readiness,
            record: record_path.map(Arc::new),
        });
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
