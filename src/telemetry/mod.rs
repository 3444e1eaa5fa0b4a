//! Observability: Prometheus metrics, the health endpoints, logs and OpenTelemetry traces.

pub mod http;
pub mod metrics;
pub mod process;
pub mod trace;
