//! zosd, the zos node agent: one process that wires the node's subsystems together.
//!
//! The subsystems are crates of their own (`zos-net`, `zos-storage`, `zos-vmm`, `zos-mounts`,
//! `zos-provision`); this crate holds the agent around them: configuration, identity,
//! registration, the node API and the uplink to the grid. The node opens every connection itself
//! and listens on no port.

pub mod agent;
pub mod api;
pub mod client_view;
pub mod config;
pub mod console;
pub mod gateway;
pub mod health;
pub mod identity;
pub mod registrar;
pub mod system;
pub mod uplink;
pub mod version;
