//! Contracts on the registry, and the events they send to nodes.
//!
//! | method and path | signer | body → answer |
//! |---|---|---|
//! | `POST /contracts/node` | the deployment's twin | [`CreateNodeContract`] → 201 [`Contract`] (reserves `public_ips` addresses from the node's farm pool) |
//! | `POST /contracts/name` | any twin | [`CreateNameContract`] → 201 [`Contract`] (names unique while the contract lives) |
//! | `POST /contracts/rent` | any twin | [`CreateRentContract`] → 201 [`Contract`] (one rent contract per node) |
//! | `PUT /contracts/{id}` | the contract's twin | [`UpdateNodeContract`] → 200 [`Contract`] (new deployment hash) |
//! | `DELETE /contracts/{id}` | the contract's twin | → 200 [`Contract`] in state `deleted` (frees its public IPs) |
//! | `POST /contracts/{id}/grace` | the grid's admin twin | [`SetGrace`] → 200 [`Contract`] |
//! | `GET /contracts/{id}`, `GET /contracts?twin_id=&node_id=&state=` | – | [`Contract`]s |
//! | `GET /nodes/{id}/events?after=SEQ` | the node's own twin | [`NodeEventRecord`]s with `seq > SEQ`, oldest first |
//!
//! Every change of a contract that concerns a node is appended to that node's event log with
//! a sequence number; the relay pushes new events over the node's uplink and the node asks for
//! those after the last one it handled when it connects, so none is lost while it is away.

use serde::{Deserialize, Serialize};

use crate::deployment::{ContractId, DeploymentHash};
use crate::registry::FarmIp;
use crate::{NodeId, TwinId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContractState {
    Created,
    /// Unpaid: the node pauses the workloads until the grace period ends.
    GracePeriod,
    Deleted,
}

/// What a contract is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContractKind {
    /// A deployment on a node.
    Node {
        node_id: NodeId,
        deployment_hash: DeploymentHash,
        /// How many public IPv4 addresses the contract reserved.
        public_ips: u32,
        /// The reserved addresses.
        #[serde(default)]
        public_ips_list: Vec<FarmIp>,
    },
    /// A gateway name, unique on the grid.
    Name { name: String },
    /// A whole node for one twin.
    Rent { node_id: NodeId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    pub id: ContractId,
    pub twin_id: TwinId,
    pub state: ContractState,
    #[serde(flatten)]
    pub kind: ContractKind,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Contract {
    /// The node a node or rent contract is about.
    pub fn node_id(&self) -> Option<NodeId> {
        match &self.kind {
            ContractKind::Node { node_id, .. } | ContractKind::Rent { node_id } => Some(*node_id),
            ContractKind::Name { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNodeContract {
    pub node_id: NodeId,
    pub deployment_hash: DeploymentHash,
    #[serde(default)]
    pub public_ips: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateNodeContract {
    pub deployment_hash: DeploymentHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNameContract {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRentContract {
    pub node_id: NodeId,
}

/// Starts (`true`) or ends (`false`) a contract's grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetGrace {
    pub grace: bool,
}

/// Query filters of `GET /contracts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin_id: Option<TwinId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContractState>,
}

/// Something a node must act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeEvent {
    /// The contract's deployment hash changed (an update is coming).
    ContractUpdated {
        contract_id: ContractId,
        deployment_hash: DeploymentHash,
    },
    /// The contract is gone: remove its workloads.
    ContractCancelled { contract_id: ContractId },
    /// Pause the contract's workloads.
    GracePeriodStarted { contract_id: ContractId },
    /// Resume them.
    GracePeriodEnded { contract_id: ContractId },
    /// The farmer changed the node's public configuration.
    PublicConfigChanged,
}

/// An event with its place in the node's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEventRecord {
    pub seq: u64,
    /// Registry time (unix seconds).
    pub at: i64,
    #[serde(flatten)]
    pub event: NodeEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_json_shape() {
        let c = Contract {
            id: 7,
            twin_id: 2,
            state: ContractState::Created,
            kind: ContractKind::Node {
                node_id: 1,
                deployment_hash: DeploymentHash([1; 32]),
                public_ips: 0,
                public_ips_list: vec![],
            },
            created_at: 1,
            updated_at: 1,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["type"], "node");
        assert_eq!(v["state"], "created");
        assert_eq!(serde_json::from_value::<Contract>(v).unwrap(), c);
        assert_eq!(c.node_id(), Some(1));
        let r = NodeEventRecord {
            seq: 3,
            at: 9,
            event: NodeEvent::ContractCancelled { contract_id: 7 },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["event"], "contract_cancelled");
        assert_eq!(serde_json::from_value::<NodeEventRecord>(v).unwrap(), r);
    }
}
