//! zosd, the zos node agent: one process, one module per subsystem.
//!
//! The node opens every connection itself and listens on no port.

pub mod agent;
pub mod api;
pub mod client_view;
pub mod config;
pub mod flist;
pub mod identity;
pub mod network;
pub mod provision;
pub mod registrar;
pub mod storage;
pub mod system;
pub mod uplink;
pub mod version;
pub mod vmm;
