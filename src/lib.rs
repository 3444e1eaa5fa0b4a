//! kubedirector-rs: a KubeDirector-compatible operator built for scale.
//!
//! `api` holds the KubeDirector v1beta1 types; the pure decision logic lives in `model`. Both live in
//! the `kd-core` crate (`core/`), which has no kube client, and are re-exported here under their paths.

pub use kd_core::{api, model};

pub mod admission;
pub mod cli;
pub(crate) mod fleet;
pub(crate) mod member;
pub(crate) mod queue;
pub mod reconcile;
pub mod shard;
pub mod telemetry;
