//! The pure core: every decision of the operator as functions of plain data, no API client.
//! `plan::plan_cluster` is the entry point of a reconcile's decision.

pub mod cardinality;
pub mod catalog;
pub mod configmeta;
pub mod connections;
pub mod desired;
pub mod globalconfig;
pub mod guest;
pub mod labels;
pub mod members;
pub mod names;
pub mod plan;
pub mod podparts;
pub mod restore;
pub mod role_rules;
pub mod rollout;
pub mod secretkeys;
pub mod settings;
pub mod status;
pub mod validate;

#[cfg(test)]
mod guest_tests;
#[cfg(test)]
mod tests;
