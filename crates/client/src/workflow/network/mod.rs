//! Private networks across nodes, made of one `network` deployment per node.
//!
//! [`create`] picks a /24 of the range for each node and a listen port each node has free
//! (asked with `zos.network.list_wg_ports`), makes a WireGuard key per node, finds each node's
//! endpoint (`zos.network.interfaces`), and deploys a network workload on every node with the
//! others as peers. With access, the user's machine joins as well: it gets its own /24, dials
//! the first node, and the other nodes reach it through that node;
//! [`NetworkRecord::wg_config`] is the file it loads with `wg-quick`. What was made (keys
//! included) is kept in a [`NetworkStore`] (one owner-only state file per network) for
//! [`add_access`], [`free_ip`], [`status`] and [`delete`]. Machines join a network by naming it,
//! with an address of their node's /24 ([`free_ip`] picks one).
//!
//! `plan` checks a request and picks the subnets, ports, endpoints and keys; `record` is what
//! follows from the plan alone (workloads, deployments, the `wg-quick` file) and the store.

mod pick;
mod plan;
mod record;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use zos_runtime::StateError;
use zos_types::deployment::{ContractId, DeploymentError, ResultState};
use zos_types::node_api::{self, PrivateIpsBody};
use zos_types::{NodeId, TwinId};

pub use pick::{leaves_ip_out, pick_ips};
pub use plan::{CreateRequest, PORTS, plan};
pub use record::{
    Access, FILE_VERSION, NetworkRecord, NetworkStore, NodePart, dot_one, grid_id, valid_name,
};

use super::deploy::{self, DeployError, DeployEvent};
use crate::{ClientError, GridClient};
use plan::{node_twin, nth_subnet, wg_keypair};

/// What a network workflow reports while it runs.
#[derive(Debug)]
pub enum NetworkEvent {
    /// Node `node` gets `subnet` and listens on `listen_port`; its deployment is made next.
    Planned {
        node: NodeId,
        subnet: Ipv4Net,
        listen_port: u16,
    },
    /// Progress of the deployment (or its update, or cancellation) on node `node`.
    Node { node: NodeId, event: DeployEvent },
    /// A contract made before a failure was cancelled again.
    RolledBack { contract: ContractId },
    /// A contract made before a failure could not be cancelled: it is left behind.
    RollbackFailed {
        contract: ContractId,
        error: DeployError,
    },
}

/// Why a network workflow failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("workload {workload:?}: picking an address in network {network:?}")]
    PickIp {
        workload: String,
        network: String,
        #[source]
        source: Box<NetworkError>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("network name {name:?} must be 1 to 32 of a-z, A-Z, 0-9, '_' and '-'")]
    Name { name: String },
    #[error(
        "no network {name:?} made from this machine ({} is missing): `zos network list` shows them",
        .path.display()
    )]
    Missing { name: String, path: PathBuf },
    #[error(
        "network {name:?} was recorded by an older zos that kept networks by name alone ({}); \
         it does not say which grid it is on: if it is this grid's and twin's, move it to {}, \
         otherwise delete it",
        .old.display(),
        .new.display()
    )]
    Unkeyed {
        name: String,
        old: PathBuf,
        new: PathBuf,
    },
    #[error("network {name:?} already exists: `zos network show {name}`, or delete it first")]
    Exists { name: String },
    #[error("an endpoint is given for node {node}, which is not one of the network's nodes")]
    EndpointNotMember { node: NodeId },
    #[error("the ip range must be a private /16, like 10.20.0.0/16; {range} is not")]
    Range { range: Ipv4Net },
    #[error("the network's nodes must be listed, each once")]
    Nodes,
    #[error("node {node}")]
    Node {
        node: NodeId,
        #[source]
        source: ClientError,
    },
    #[error("node {node} is offline: pick online nodes (`zos node list --online`)")]
    Offline { node: NodeId },
    #[error("asking node {node} for its interfaces")]
    Interfaces {
        node: NodeId,
        #[source]
        source: ClientError,
    },
    #[error("node {node} reports no address other nodes could reach it at")]
    NoEndpoint { node: NodeId },
    #[error("asking node {node} for its taken ports")]
    WgPorts {
        node: NodeId,
        #[source]
        source: ClientError,
    },
    #[error("every listen port is taken on this node")]
    PortsFull,
    #[error("reading randomness for a WireGuard key")]
    Random(#[source] getrandom::Error),
    #[error("the range must be larger than a /24")]
    RangeTooSmall,
    #[error("{range} has no room for {count} subnets")]
    NoRoom { range: Ipv4Net, count: usize },
    #[error("the network's range is full")]
    RangeFull,
    #[error("cannot encode the network workload")]
    Encode(#[source] serde_json::Error),
    #[error("the network deployment is not valid")]
    Invalid(#[source] DeploymentError),
    #[error("deploying network {name} on node {node}")]
    Deploy {
        name: String,
        node: NodeId,
        #[source]
        source: DeployError,
    },
    #[error("node {node} could not make the network: {message}")]
    NotMade { node: NodeId, message: String },
    #[error("updating network {name} on node {node}")]
    Update {
        name: String,
        node: NodeId,
        #[source]
        source: DeployError,
    },
    #[error(
        "network {name:?} was not removed everywhere (its file is kept, run delete again): {}",
        failures_text(.failures)
    )]
    NotRemoved {
        name: String,
        /// Each node the network stayed on, with why.
        failures: Vec<(NodeId, DeployError)>,
    },
    #[error("this machine has no access to network {name:?}: run `zos network add-access {name}`")]
    NoAccess { name: String },
    #[error("the access node is no longer part of the network")]
    AccessNodeGone,
    #[error("network {name:?} has no part on node {node}")]
    NoPart { name: String, node: NodeId },
    #[error("subnet {subnet} of node {node} is full")]
    SubnetFull { subnet: Ipv4Net, node: NodeId },
}

fn failures_text(failures: &[(NodeId, DeployError)]) -> String {
    failures
        .iter()
        .map(|(node, e)| format!("node {node}: {}", zos_runtime::error_chain(e)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Addresses machines use in network `name` on the node with twin `twin`.
pub async fn used_ips(
    c: &GridClient,
    twin: TwinId,
    name: &str,
) -> Result<Vec<Ipv4Addr>, ClientError> {
    let body = PrivateIpsBody {
        network_name: name.to_string(),
        limit: None,
        cursor: None,
    };
    c.node(twin).all::<node_api::PrivateIps>(body).await
}

/// Creates the network of `req`: plans it, deploys it on every node (cancelling what was made
/// when one fails), and records it in `store`.
pub async fn create(
    c: &GridClient,
    store: &NetworkStore,
    req: &CreateRequest,
    wait: Duration,
    on: &mut (impl FnMut(NetworkEvent) + Send),
) -> Result<NetworkRecord, NetworkError> {
    req.check(store)?;
    let me = c.twin_id().ok_or(ClientError::NoTwin)?;
    let mut rec = plan(c, req, me).await?;
    let mut made: Vec<ContractId> = Vec::new();
    for i in 0..rec.nodes.len() {
        let part = rec.nodes[i].clone();
        let node = part.node_id;
        on(NetworkEvent::Planned {
            node,
            subnet: part.subnet,
            listen_port: part.listen_port,
        });
        let d = rec.deployment(&part)?;
        let mut forward = |event: DeployEvent| on(NetworkEvent::Node { node, event });
        match deploy::deploy(c, node, d, wait, &mut forward).await {
            Ok(done) => {
                made.push(done.deployment.contract_id);
                rec.nodes[i].contract_id = done.deployment.contract_id;
                let result = done.deployment.workloads[0].result.as_ref();
                if let Some(r) = result
                    && r.state != ResultState::Ok
                {
                    let message = r.message.clone();
                    rollback(c, &made, wait, on).await;
                    return Err(NetworkError::NotMade { node, message });
                }
            }
            Err(source) => {
                rollback(c, &made, wait, on).await;
                return Err(NetworkError::Deploy {
                    name: rec.name.clone(),
                    node,
                    source,
                });
            }
        }
    }
    store.save(&rec)?;
    Ok(rec)
}

async fn rollback(
    c: &GridClient,
    contracts: &[ContractId],
    wait: Duration,
    on: &mut (impl FnMut(NetworkEvent) + Send),
) {
    for contract in contracts.iter().copied() {
        match deploy::cancel(c, contract, wait, &mut |_: DeployEvent| {}).await {
            Ok(_) => on(NetworkEvent::RolledBack { contract }),
            Err(error) => {
                let chain = zos_runtime::error_chain(&error);
                tracing::debug!(contract, error = %chain, "rollback: contract left behind");
                on(NetworkEvent::RollbackFailed { contract, error });
            }
        }
    }
}

/// Lets the user's machine join network `name` (nothing changes when it already has access):
/// a subnet of its own, dialling the first node, which every node learns as a peer.
pub async fn add_access(
    c: &GridClient,
    store: &NetworkStore,
    name: &str,
    wait: Duration,
    on: &mut (impl FnMut(NetworkEvent) + Send),
) -> Result<NetworkRecord, NetworkError> {
    let mut rec = store.load(name)?;
    if rec.access.is_some() {
        return Ok(rec);
    }
    let taken: Vec<Ipv4Net> = rec.nodes.iter().map(|n| n.subnet).collect();
    let subnet = (0..252)
        .map(|i| nth_subnet(rec.ip_range, i))
        .find(|s| s.as_ref().is_ok_and(|s| !taken.contains(s)))
        .ok_or(NetworkError::RangeFull)??;
    let (private_key, public_key) = wg_keypair()?;
    rec.access = Some(Access {
        subnet,
        node_id: rec.nodes[0].node_id,
        private_key,
        public_key,
    });
    // Every node learns the new peer (directly, or through the access node).
    for part in &rec.nodes {
        let desired = rec.deployment(part)?;
        let node = part.node_id;
        let mut forward = |event: DeployEvent| on(NetworkEvent::Node { node, event });
        deploy::update(c, part.contract_id, &desired, wait, &mut forward)
            .await
            .map_err(|source| NetworkError::Update {
                name: name.into(),
                node,
                source,
            })?;
    }
    store.save(&rec)?;
    Ok(rec)
}

/// Cancels network `name`'s contract on every node, waiting for each node to remove it, and
/// forgets the network; answers what it was. When a node fails, the record is kept.
pub async fn delete(
    c: &GridClient,
    store: &NetworkStore,
    name: &str,
    wait: Duration,
    on: &mut (impl FnMut(NetworkEvent) + Send),
) -> Result<NetworkRecord, NetworkError> {
    let rec = store.load(name)?;
    let mut failures = Vec::new();
    for part in &rec.nodes {
        let node = part.node_id;
        let mut forward = |event: DeployEvent| on(NetworkEvent::Node { node, event });
        if let Err(e) = deploy::cancel(c, part.contract_id, wait, &mut forward).await {
            failures.push((node, e));
        }
    }
    if !failures.is_empty() {
        return Err(NetworkError::NotRemoved {
            name: name.into(),
            failures,
        });
    }
    store.remove(name)?;
    Ok(rec)
}

/// An address of `node`'s subnet in `rec` that no machine uses (after the gateway, `.1`),
/// with the subnet.
pub async fn free_ip(
    c: &GridClient,
    rec: &NetworkRecord,
    node: NodeId,
) -> Result<(Ipv4Addr, Ipv4Net), NetworkError> {
    free_ip_besides(c, rec, node, &[]).await
}

/// [`free_ip`], not one of `taken` either (addresses picked but not deployed yet).
pub async fn free_ip_besides(
    c: &GridClient,
    rec: &NetworkRecord,
    node: NodeId,
    taken: &[Ipv4Addr],
) -> Result<(Ipv4Addr, Ipv4Net), NetworkError> {
    let part = rec.part(node)?;
    let twin = node_twin(c, node).await?;
    let used = used_ips(c, twin, &rec.name).await?;
    let ip = part
        .subnet
        .hosts()
        .skip(1) // .1 is the gateway
        .find(|ip| !used.contains(ip) && !taken.contains(ip))
        .ok_or(NetworkError::SubnetFull {
            subnet: part.subnet,
            node,
        })?;
    Ok((ip, part.subnet))
}

/// What a node says about its part of a network.
#[derive(Debug)]
pub enum PartState {
    /// The state of the network workload.
    Result(ResultState),
    /// The workload has no result yet.
    NoResult,
    /// The node did not answer.
    Unreachable(ClientError),
    /// The grid does not know the node.
    UnknownNode(ClientError),
}

/// One node of a network, as it is now.
#[derive(Debug)]
pub struct PartStatus {
    pub part: NodePart,
    pub state: PartState,
    /// Addresses machines use in the network on that node (empty when it did not say).
    pub used_ips: Vec<Ipv4Addr>,
}

/// Asks every node of `rec` about its part; a node that does not answer is reported as such.
pub async fn status(c: &GridClient, rec: &NetworkRecord) -> Vec<PartStatus> {
    let mut out = Vec::new();
    for n in &rec.nodes {
        let (state, used) = match c.get_node(n.node_id).await.map(|x| x.twin_id) {
            Ok(twin) => {
                let state = match deploy::fetch(c, twin, n.contract_id).await {
                    Ok(d) => d
                        .workloads
                        .first()
                        .and_then(|w| w.result.as_ref())
                        .map_or(PartState::NoResult, |r| PartState::Result(r.state)),
                    Err(e) => PartState::Unreachable(e),
                };
                (
                    state,
                    used_ips(c, twin, &rec.name).await.unwrap_or_default(),
                )
            }
            Err(e) => (PartState::UnknownNode(e), Vec::new()),
        };
        out.push(PartStatus {
            part: n.clone(),
            state,
            used_ips: used,
        });
    }
    out
}
