//! Observability: Prometheus metrics and the health endpoints (tracing export is issue 8).

pub mod http;
pub mod metrics;
