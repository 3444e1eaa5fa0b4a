//! The I/O edge around the pure core: observe (caches) → plan (`model`) → apply (API writes).

pub mod apply;
pub mod apps;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod context;
pub mod crashpoint;
pub mod error;
pub mod freshness;
pub mod guest;
pub mod index;
pub mod observe;
pub mod restore;
pub mod slim;
pub mod slots;
pub mod wire;
