//! Admission: KubeDirector's defaulting (mutating) and validation (validating) for apps, clusters and
//! kd-global-config, served over HTTPS by every replica. Decisions read the member cluster through
//! watch caches (`world`), never this process's memory, so any replica answers the same.
//!
//! `review` (pure decision), `app` / `cluster` / `config` (the rules), `world` (what a decision may
//! look at), `caches` (the watches behind it), `tls` (certificates), `server` (HTTPS endpoint).

pub mod app;
pub mod caches;
pub mod cluster;
pub mod config;
pub mod lookups;
pub mod review;
pub mod server;
pub mod tls;
pub mod world;
