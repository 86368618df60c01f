//! Types shared by every part of zos: the grid, the node agent, the CLI and the tests.
//!
//! This crate does no I/O. It holds identities and signatures ([`identity`]), the signed-request
//! scheme of the grid API ([`auth`]), capacity units ([`capacity`]), prices and accounts ([`billing`]) and the objects of the
//! registry API ([`registry`]), node OS releases ([`release`]), how a machine names its flist ([`flistref`]), and the node protocol ([`node_api`]): every command a node answers
//! over the relay, with its body, answer and error types.

pub mod auth;
pub mod billing;
pub mod boot;
pub mod capacity;
pub mod contract;
pub mod deployment;
pub mod envelope;
pub mod flistref;
pub mod identity;
pub mod node_api;
pub mod policy;
pub mod proposal;
pub mod registry;
pub mod relay;
pub mod release;
pub mod workload;

pub use capacity::Capacity;
pub use identity::{Identity, PublicKey, Signature};

/// Ids the registry gives out.
pub type TwinId = u32;
/// Farm id given by the registry.
pub type FarmId = u32;
/// Node id given by the registry.
pub type NodeId = u32;
