//! kubedirector-rs's pure core. `api` holds the KubeDirector v1beta1 types; `model` every decision
//! of the operator as functions of plain data. This crate has no kube client: the compiler keeps
//! API calls out of the planner (the operator crate re-exports both modules under the same paths).

pub mod api;
pub mod model;
