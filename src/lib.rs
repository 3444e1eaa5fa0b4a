//! kubedirector-rs: a KubeDirector-compatible operator built for scale.
//!
//! `api` holds the KubeDirector v1beta1 types; the pure decision logic lives in `model`.

pub mod admission;
pub mod api;
pub mod fleet;
pub mod model;
pub mod queue;
pub mod reconcile;
pub mod shard;
pub mod telemetry;
