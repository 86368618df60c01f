//! The user workflows: what `zos` does for a person, as library calls that tests, benchmarks
//! and other tools make directly.
//!
//! - [`deploy`]: a deployment on a node (contract, signature, send, follow until every workload
//!   settles, cancel the contract when the node refuses), its updates, and its cancellation.
//! - [`network`]: private networks across nodes (subnets, listen ports, WireGuard keys, the
//!   configuration of the user's own machine), made of one deployment per node, and the local
//!   store of what was made.
//! - [`proposal`]: deployments, updates and cancels a group of twins approves together on the
//!   grid; the signer completing the weight delivers them to the node.
//!
//! A workflow never prints. It reports progress by calling the callback it is given with an
//! event ([`deploy::DeployEvent`], [`network::NetworkEvent`]), answers a typed result, and fails
//! with a typed error whose sources carry the cause.
//!
//! Following is polling: the workflow reads the node's result log (`zos.deployment.changes`)
//! every [`POLL`] until each workload it waits for has a settled result, then reads the
//! deployment (`zos.deployment.get`); a cancellation is followed by reading the deployment until
//! the node answers that it has none.

use std::time::Duration;

pub mod deploy;
pub mod network;
pub mod proposal;

/// How often a workflow asks the node how far it got.
pub const POLL: Duration = Duration::from_millis(500);
