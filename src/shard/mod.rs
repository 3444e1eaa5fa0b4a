//! Sharding: replicas split the KubeDirectorClusters of every member cluster by hashed shards, each
//! shard owned through a Lease in the home cluster. See docs/sharding.md.

pub mod assign;
pub mod lease;
pub mod manager;
pub mod record;
