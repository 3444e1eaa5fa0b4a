//! Integration tests against the real local control plane (make integration / make test start it).
//! Each test is `#[ignore]`d so that a bare `cargo test` without a test bed reports them as skipped
//! rather than failing; `make test` runs them with `--include-ignored` on a fresh test bed.

#[path = "../common/mod.rs"]
mod common;

mod admission;
mod catalog;
mod chart;
mod connections;
mod crds;
mod fault;
mod fleet;
mod guest;
mod health;
mod http;
mod leases;
mod operator;
mod proxy;
mod reconcile;
mod restore;
mod sharding;
mod takeover;
mod testbed;
mod traces;
