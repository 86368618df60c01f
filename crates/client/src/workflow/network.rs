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

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use zos_runtime::{StateError, StateFile, Versioned};
use zos_types::deployment::{
    ContractId, Deployment, DeploymentError, ResultState, SignatureRequest, SignatureRequirement,
    Workload,
};
use zos_types::node_api::{self, Page, PrivateIpsBody};
use zos_types::workload::{Network, Peer, WorkloadType};
use zos_types::{NodeId, TwinId};

use super::deploy::{self, DeployError, DeployEvent};
use crate::{ClientError, GridClient};

/// Version of the local network file.
pub const FILE_VERSION: u32 = 1;
/// Listen ports are picked in this range.
pub const PORTS: std::ops::RangeInclusive<u16> = 2000..=32000;

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
    #[error(transparent)]
    State(#[from] StateError),
    #[error("network name {name:?} must be 1 to 32 of a-z, A-Z, 0-9, '_' and '-'")]
    Name { name: String },
    #[error(
        "no network {name:?} made from this machine ({} is missing): `zos network list` shows them",
        .path.display()
    )]
    Missing { name: String, path: PathBuf },
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

/// One node of a network, as made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePart {
    pub node_id: NodeId,
    pub contract_id: ContractId,
    pub subnet: Ipv4Net,
    pub listen_port: u16,
    /// `host:port` other members dial.
    pub endpoint: String,
    pub private_key: String,
    pub public_key: String,
}

/// The user's machine, when it joins the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Access {
    pub subnet: Ipv4Net,
    /// The node it dials.
    pub node_id: NodeId,
    pub private_key: String,
    pub public_key: String,
}

/// The local record of a network: what was made on every node, keys included.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub version: u32,
    pub name: String,
    pub twin_id: TwinId,
    pub ip_range: Ipv4Net,
    pub nodes: Vec<NodePart>,
    #[serde(default)]
    pub access: Option<Access>,
}

impl Versioned for NetworkRecord {
    const VERSION: u32 = FILE_VERSION;
    const PROGRAM: &'static str = "zos";
}

/// Checks a network name: 1 to 32 of a-z, A-Z, 0-9, '_' and '-' (it names a file and a
/// workload).
pub fn valid_name(name: &str) -> Result<(), NetworkError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(NetworkError::Name { name: name.into() });
    }
    Ok(())
}

/// Where network records live: `<dir>/<name>.json`, each owner-only (they hold private keys),
/// in a directory only its owner can open.
#[derive(Debug, Clone)]
pub struct NetworkStore {
    dir: PathBuf,
}

impl NetworkStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of network `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Whether a network `name` was made from here.
    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// The record of network `name`.
    pub fn load(&self, name: &str) -> Result<NetworkRecord, NetworkError> {
        valid_name(name)?;
        let path = self.path(name);
        StateFile::<NetworkRecord>::new(&path)
            .load()?
            .ok_or_else(|| NetworkError::Missing {
                name: name.into(),
                path,
            })
    }

    /// Writes the record atomically, readable by its owner only.
    pub fn save(&self, record: &NetworkRecord) -> Result<(), NetworkError> {
        Ok(StateFile::new(self.path(&record.name)).save(record)?)
    }

    /// Forgets network `name`.
    pub fn remove(&self, name: &str) -> Result<(), NetworkError> {
        valid_name(name)?;
        Ok(StateFile::<NetworkRecord>::new(self.path(name)).remove()?)
    }

    /// Every network made from here that can be read, by name.
    pub fn list(&self) -> Vec<NetworkRecord> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(&self.dir) {
            for e in dir.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "json")
                    && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                    && let Ok(f) = self.load(stem)
                {
                    out.push(f);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

impl NetworkRecord {
    /// The part of the network on `node`.
    pub fn part(&self, node: NodeId) -> Result<&NodePart, NetworkError> {
        self.nodes
            .iter()
            .find(|p| p.node_id == node)
            .ok_or_else(|| NetworkError::NoPart {
                name: self.name.clone(),
                node,
            })
    }

    /// The network workload of `part`: every other node as a peer, and the access peer on
    /// the node it dials (the other nodes reach it through that node).
    pub fn workload(&self, part: &NodePart) -> Result<Workload, NetworkError> {
        let mut peers = Vec::new();
        for other in self.nodes.iter().filter(|o| o.node_id != part.node_id) {
            let mut allowed = vec![IpNet::V4(other.subnet)];
            if let Some(a) = &self.access
                && a.node_id == other.node_id
            {
                allowed.push(IpNet::V4(a.subnet));
            }
            peers.push(Peer {
                subnet: other.subnet,
                wireguard_public_key: other.public_key.clone(),
                allowed_ips: allowed,
                endpoint: other.endpoint.clone(),
            });
        }
        if let Some(a) = &self.access
            && a.node_id == part.node_id
        {
            peers.push(Peer {
                subnet: a.subnet,
                wireguard_public_key: a.public_key.clone(),
                allowed_ips: vec![IpNet::V4(a.subnet)],
                endpoint: String::new(),
            });
        }
        let net = Network {
            ip_range: self.ip_range,
            subnet: part.subnet,
            wireguard_private_key: part.private_key.clone(),
            wireguard_listen_port: part.listen_port,
            peers,
        };
        Ok(Workload {
            version: 0,
            name: self.name.clone(),
            kind: WorkloadType::Network,
            data: serde_json::to_value(&net).map_err(NetworkError::Encode)?,
            metadata: String::new(),
            description: format!("network {}", self.name),
            result: None,
        })
    }

    /// The deployment of `part`, checked as the node will check it.
    pub fn deployment(&self, part: &NodePart) -> Result<Deployment, NetworkError> {
        let d = Deployment {
            version: 0,
            twin_id: self.twin_id,
            contract_id: part.contract_id,
            metadata: String::new(),
            description: format!("network {}", self.name),
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: self.twin_id,
                    required: true,
                    weight: 1,
                }],
                weight_required: 1,
                signatures: vec![],
            },
            workloads: vec![self.workload(part)?],
        };
        d.validate().map_err(NetworkError::Invalid)?;
        Ok(d)
    }

    /// The wg-quick file of the access peer.
    pub fn wg_config(&self) -> Result<String, NetworkError> {
        let a = self.access.as_ref().ok_or_else(|| NetworkError::NoAccess {
            name: self.name.clone(),
        })?;
        let node = self
            .nodes
            .iter()
            .find(|n| n.node_id == a.node_id)
            .ok_or(NetworkError::AccessNodeGone)?;
        Ok(format!(
            "# zos network {name}: this machine joins through node {node_id}\n\
             [Interface]\n\
             PrivateKey = {key}\n\
             Address = {addr}/{len}\n\
             \n\
             [Peer]\n\
             PublicKey = {peer}\n\
             AllowedIPs = {range}\n\
             Endpoint = {endpoint}\n\
             PersistentKeepalive = 25\n",
            name = self.name,
            node_id = a.node_id,
            key = a.private_key,
            addr = dot_one(a.subnet),
            len = a.subnet.prefix_len(),
            peer = node.public_key,
            range = self.ip_range,
            endpoint = node.endpoint,
        ))
    }
}

/// `.1` of a subnet: a node's gateway, or the user's machine's address in its own subnet.
pub fn dot_one(subnet: Ipv4Net) -> Ipv4Addr {
    let base = u32::from(subnet.network());
    Ipv4Addr::from(base + 1)
}

/// A fresh WireGuard key pair, base64 (private, public).
fn wg_keypair() -> Result<(String, String), NetworkError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(NetworkError::Random)?;
    let secret = x25519_dalek::StaticSecret::from(seed);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok((b64.encode(secret.to_bytes()), b64.encode(public.as_bytes())))
}

/// The `i`-th /24 of the range after `.0` and `.1`: `.2.0/24`, `.3.0/24`, …
fn nth_subnet(range: Ipv4Net, i: usize) -> Result<Ipv4Net, NetworkError> {
    range
        .subnets(24)
        .map_err(|_| NetworkError::RangeTooSmall)?
        .nth(i + 2)
        .ok_or(NetworkError::NoRoom {
            range,
            count: i + 1,
        })
}

/// A port in [`PORTS`] not in `taken`, random so that two people picking at once rarely clash.
fn free_port(taken: &[u16]) -> Result<u16, NetworkError> {
    let mut r = [0u8; 2];
    getrandom::getrandom(&mut r).map_err(NetworkError::Random)?;
    let span = (PORTS.end() - PORTS.start()) as u32 + 1;
    let start = u16::from_le_bytes(r) as u32 % span;
    (0..span)
        .map(|k| PORTS.start() + ((start + k) % span) as u16)
        .find(|p| !taken.contains(p))
        .ok_or(NetworkError::PortsFull)
}

/// The address other members reach `node` at: the first IPv4 of its own namespace that is not
/// loopback, link-local or zos's internal 100.127.0.0/16.
async fn endpoint_host(
    c: &GridClient,
    twin: TwinId,
    node: NodeId,
) -> Result<Ipv4Addr, NetworkError> {
    let ifaces = c
        .node(twin)
        .call::<node_api::Interfaces>(&())
        .await
        .map_err(|source| NetworkError::Interfaces { node, source })?;
    let internal: Ipv4Net = "100.127.0.0/16".parse().expect("valid");
    for iface in ifaces.iter().filter(|i| i.namespace == "host") {
        for net in &iface.addrs {
            if let IpAddr::V4(ip) = net.addr()
                && !ip.is_loopback()
                && !ip.is_link_local()
                && !internal.contains(&ip)
            {
                return Ok(ip);
            }
        }
    }
    Err(NetworkError::NoEndpoint { node })
}

async fn wg_ports(c: &GridClient, twin: TwinId, node: NodeId) -> Result<Vec<u16>, NetworkError> {
    c.node(twin)
        .all::<node_api::WgPorts>(Page::default())
        .await
        .map_err(|source| NetworkError::WgPorts { node, source })
}

/// The twin of `node`, which must be online.
async fn node_twin(c: &GridClient, node: NodeId) -> Result<TwinId, NetworkError> {
    let n = c
        .get_node(node)
        .await
        .map_err(|source| NetworkError::Node { node, source })?;
    if !n.online {
        return Err(NetworkError::Offline { node });
    }
    Ok(n.twin_id)
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

/// What [`create`] is asked for.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    /// The nodes, each once; the first is the one the user's machine dials.
    pub nodes: Vec<NodeId>,
    /// The whole network, a private /16.
    pub ip_range: Ipv4Net,
    /// Whether the user's machine joins too.
    pub access: bool,
    /// The address other members dial for a node (`NODE`, `HOST`), instead of its own.
    pub endpoints: Vec<(NodeId, String)>,
}

impl CreateRequest {
    /// Checks the request without asking anyone: the name, the endpoints, the range, the
    /// nodes, and that no network of that name was made from here.
    pub fn check(&self, store: &NetworkStore) -> Result<(), NetworkError> {
        valid_name(&self.name)?;
        if let Some((node, _)) = self.endpoints.iter().find(|(n, _)| !self.nodes.contains(n)) {
            return Err(NetworkError::EndpointNotMember { node: *node });
        }
        if store.exists(&self.name) {
            return Err(NetworkError::Exists {
                name: self.name.clone(),
            });
        }
        if self.ip_range.prefix_len() != 16 || !self.ip_range.network().is_private() {
            return Err(NetworkError::Range {
                range: self.ip_range,
            });
        }
        let mut seen = BTreeSet::new();
        if self.nodes.is_empty() || !self.nodes.iter().all(|n| seen.insert(*n)) {
            return Err(NetworkError::Nodes);
        }
        Ok(())
    }
}

/// Plans the network of `req` (subnets, ports, endpoints, keys), asking each node what it has
/// free; nothing is deployed yet (every contract id is 0).
pub async fn plan(
    c: &GridClient,
    req: &CreateRequest,
    me: TwinId,
) -> Result<NetworkRecord, NetworkError> {
    let mut rec = NetworkRecord {
        version: FILE_VERSION,
        name: req.name.clone(),
        twin_id: me,
        ip_range: req.ip_range.trunc(),
        nodes: Vec::new(),
        access: None,
    };
    for (i, node) in req.nodes.iter().enumerate() {
        let twin = node_twin(c, *node).await?;
        let host = match req.endpoints.iter().find(|(n, _)| n == node) {
            Some((_, h)) => h.clone(),
            None => endpoint_host(c, twin, *node).await?.to_string(),
        };
        let port = free_port(&wg_ports(c, twin, *node).await?)?;
        let (private_key, public_key) = wg_keypair()?;
        rec.nodes.push(NodePart {
            node_id: *node,
            contract_id: 0,
            subnet: nth_subnet(rec.ip_range, i)?,
            listen_port: port,
            endpoint: format!("{host}:{port}"),
            private_key,
            public_key,
        });
    }
    if req.access {
        let (private_key, public_key) = wg_keypair()?;
        rec.access = Some(Access {
            subnet: nth_subnet(rec.ip_range, req.nodes.len())?,
            node_id: req.nodes[0],
            private_key,
            public_key,
        });
    }
    Ok(rec)
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
            Err(error) => on(NetworkEvent::RollbackFailed { contract, error }),
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
    let part = rec.part(node)?;
    let twin = node_twin(c, node).await?;
    let used = used_ips(c, twin, &rec.name).await?;
    let ip = part
        .subnet
        .hosts()
        .skip(1) // .1 is the gateway
        .find(|ip| !used.contains(ip))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(access: bool) -> NetworkRecord {
        let part = |node: NodeId, i: u8, port: u16| NodePart {
            node_id: node,
            contract_id: node as u64 + 10,
            subnet: format!("10.20.{i}.0/24").parse().unwrap(),
            listen_port: port,
            endpoint: format!("192.0.2.{node}:{port}"),
            private_key: wg_keypair().unwrap().0,
            public_key: wg_keypair().unwrap().1,
        };
        NetworkRecord {
            version: FILE_VERSION,
            name: "net".into(),
            twin_id: 7,
            ip_range: "10.20.0.0/16".parse().unwrap(),
            nodes: vec![part(1, 2, 3000), part(2, 3, 3001), part(3, 4, 3002)],
            access: access.then(|| Access {
                subnet: "10.20.5.0/24".parse().unwrap(),
                node_id: 1,
                private_key: wg_keypair().unwrap().0,
                public_key: wg_keypair().unwrap().1,
            }),
        }
    }

    fn peers(f: &NetworkRecord, node: usize) -> Vec<Peer> {
        let w = f.workload(&f.nodes[node]).unwrap();
        let net: Network = serde_json::from_value(w.data).unwrap();
        net.peers
    }

    #[test]
    fn a_stale_world_readable_temporary_does_not_leak_the_network_keys() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let store = NetworkStore::new(d.path().join("zos/networks"));
        let f = record(true);
        // A save interrupted earlier (or a file planted by another user of a shared directory)
        // left `net.json.tmp` readable by all; the keys must not be written into it.
        std::fs::create_dir_all(store.dir()).unwrap();
        let tmp = store.dir().join("net.json.tmp");
        std::fs::write(&tmp, "").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        store.save(&f).unwrap();
        let path = store.path("net");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "the file with the WireGuard keys is owner-only"
        );
        assert!(!tmp.exists());
        let back = store.load("net").unwrap();
        assert_eq!(back.nodes[0].private_key, f.nodes[0].private_key);
        assert_eq!(store.list().len(), 1);
        // A file from a newer zos is refused, not misread.
        std::fs::write(&path, r#"{"version": 9, "name": "net"}"#).unwrap();
        let e = store.load("net").unwrap_err();
        assert!(e.to_string().contains("upgrade zos"), "{e}");
        // A name that is not one is refused before any path is made from it.
        assert!(matches!(
            store.load("../x").unwrap_err(),
            NetworkError::Name { .. }
        ));
        store.remove("net").unwrap();
        assert!(matches!(
            store.load("net").unwrap_err(),
            NetworkError::Missing { .. }
        ));
    }

    #[test]
    fn every_node_peers_with_the_others_and_the_access_peer_rides_on_its_node() {
        let f = record(true);
        let p1 = peers(&f, 0);
        assert_eq!(p1.len(), 3, "two nodes and the laptop");
        let laptop = p1.iter().find(|p| p.endpoint.is_empty()).unwrap();
        assert_eq!(laptop.allowed_ips, vec!["10.20.5.0/24".parse().unwrap()]);
        let p2 = peers(&f, 1);
        assert_eq!(p2.len(), 2);
        let via1 = p2
            .iter()
            .find(|p| p.subnet.to_string() == "10.20.2.0/24")
            .unwrap();
        assert_eq!(
            via1.allowed_ips,
            vec![
                "10.20.2.0/24".parse().unwrap(),
                "10.20.5.0/24".parse().unwrap()
            ],
            "node 2 reaches the laptop through node 1"
        );
        assert!(p2.iter().all(|p| !p.endpoint.is_empty()));
        // Each deployment is valid as the node would check it.
        for part in &f.nodes {
            f.deployment(part).unwrap();
        }
    }

    #[test]
    fn the_laptop_config_dials_the_access_node() {
        let f = record(true);
        let conf = f.wg_config().unwrap();
        assert!(conf.contains("Address = 10.20.5.1/24"), "{conf}");
        assert!(conf.contains("AllowedIPs = 10.20.0.0/16"), "{conf}");
        assert!(conf.contains("Endpoint = 192.0.2.1:3000"), "{conf}");
        assert!(conf.contains(&format!("PublicKey = {}", f.nodes[0].public_key)));
        let e = record(false).wg_config().unwrap_err();
        assert!(e.to_string().contains("add-access"), "{e}");
    }

    #[test]
    fn subnets_and_ports_are_picked_free() {
        let r: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        assert_eq!(nth_subnet(r, 0).unwrap().to_string(), "10.20.2.0/24");
        assert_eq!(nth_subnet(r, 3).unwrap().to_string(), "10.20.5.0/24");
        assert!(nth_subnet(r, 254).is_err());
        let taken: Vec<u16> = PORTS.clone().filter(|p| *p != 4242).collect();
        assert_eq!(free_port(&taken).unwrap(), 4242);
        let all: Vec<u16> = PORTS.collect();
        assert!(free_port(&all).is_err());
        assert!(valid_name("my-net_1").is_ok());
        assert!(valid_name("../x").is_err());
        assert!(valid_name("").is_err());
    }

    #[test]
    fn a_request_is_checked_before_anyone_is_asked() {
        let d = tempfile::tempdir().unwrap();
        let store = NetworkStore::new(d.path());
        let req = CreateRequest {
            name: "lan".into(),
            nodes: vec![1, 2],
            ip_range: "10.20.0.0/16".parse().unwrap(),
            access: true,
            endpoints: vec![(2, "203.0.113.7".into())],
        };
        req.check(&store).unwrap();
        let bad = |f: &dyn Fn(&mut CreateRequest)| {
            let mut r = req.clone();
            f(&mut r);
            r.check(&store).unwrap_err()
        };
        assert!(matches!(
            bad(&|r| r.endpoints = vec![(3, "x".into())]),
            NetworkError::EndpointNotMember { node: 3 }
        ));
        assert!(matches!(
            bad(&|r| r.ip_range = "10.20.0.0/15".parse().unwrap()),
            NetworkError::Range { .. }
        ));
        assert!(matches!(
            bad(&|r| r.ip_range = "8.8.0.0/16".parse().unwrap()),
            NetworkError::Range { .. }
        ));
        assert!(matches!(
            bad(&|r| {
                r.nodes = vec![1, 1];
                r.endpoints.clear();
            }),
            NetworkError::Nodes
        ));
        assert!(matches!(
            bad(&|r| {
                r.nodes.clear();
                r.endpoints.clear();
            }),
            NetworkError::Nodes
        ));
        assert!(matches!(
            bad(&|r| r.name = "a b".into()),
            NetworkError::Name { .. }
        ));
        store.save(&record(false)).unwrap();
        assert!(matches!(
            bad(&|r| r.name = "net".into()),
            NetworkError::Exists { .. }
        ));
    }
}
