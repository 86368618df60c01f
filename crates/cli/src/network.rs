//! `zos network …`: private networks across nodes, made of one `network` deployment per node.
//!
//! `create` picks a /24 of the range for each node and a listen port each node has free (asked
//! with `zos.network.list_wg_ports`), makes a WireGuard key per node, finds each node's
//! endpoint (`zos.network.interfaces`), and deploys a network workload on every node with the
//! others as peers. With `--access` a laptop joins as well: it gets its own /24, dials the
//! first node, and the other nodes reach it through that node; `wg-config` prints the file to
//! load with `wg-quick`. What was made (keys included) is kept in
//! `$XDG_STATE_HOME/zos/networks/<name>.json` (mode 0600) for `show`, `add-access`, `free-ip`,
//! `wg-config` and `delete`. Machines join a network by naming it, with an address of their
//! node's /24 (`free-ip` picks one).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Subcommand;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zos_client::GridClient;
use zos_runtime::{StateFile, Versioned};
use zos_types::deployment::{
    ContractId, Deployment, SignatureRequest, SignatureRequirement, Workload,
};
use zos_types::node_api::{self, ContractBody, Page, PrivateIpsBody};
use zos_types::workload::{Network, Peer, WorkloadType};
use zos_types::{NodeId, TwinId};

use crate::Global;
use crate::commands::signed_client;
use crate::deploy;
use crate::output::{self, Table, fields};

/// Version of the local network file.
const FILE_VERSION: u32 = 1;
/// Listen ports are picked in this range.
const PORTS: std::ops::RangeInclusive<u16> = 2000..=32000;

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a private network across nodes: subnets, ports, keys and a deployment per node.
    Create {
        name: String,
        /// Nodes of the network, e.g. `1,2,3`.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<NodeId>,
        /// The whole network, a private /16.
        #[arg(long, default_value = "10.20.0.0/16")]
        ip_range: Ipv4Net,
        /// Also let this machine join (see `zos network wg-config`).
        #[arg(long)]
        access: bool,
        /// The address other members dial for a node, `NODE=HOST` (a node behind NAT, say);
        /// repeat for more. By default, the node's own address.
        #[arg(long = "endpoint", value_parser = parse_endpoint)]
        endpoints: Vec<(NodeId, String)>,
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Let this machine join an existing network.
    AddAccess {
        name: String,
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// The network's nodes with their subnet, port, endpoint and the addresses in use.
    Show { name: String },
    /// Networks made from this machine.
    List,
    /// An address of `node`'s subnet that no machine uses, for a new machine.
    FreeIp {
        name: String,
        #[arg(long)]
        node: NodeId,
    },
    /// The WireGuard configuration that joins this machine to the network (`wg-quick up FILE`).
    WgConfig { name: String },
    /// Cancel the network's contracts on every node and forget it.
    Delete {
        name: String,
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
}

/// One node of a network, as made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodePart {
    node_id: NodeId,
    contract_id: ContractId,
    subnet: Ipv4Net,
    listen_port: u16,
    /// `host:port` other members dial.
    endpoint: String,
    private_key: String,
    public_key: String,
}

/// This machine, when it joins the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Access {
    subnet: Ipv4Net,
    /// The node it dials.
    node_id: NodeId,
    private_key: String,
    public_key: String,
}

/// The local record of a network, `<state>/zos/networks/<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NetworkFile {
    version: u32,
    name: String,
    twin_id: TwinId,
    ip_range: Ipv4Net,
    nodes: Vec<NodePart>,
    #[serde(default)]
    access: Option<Access>,
}

impl Versioned for NetworkFile {
    const VERSION: u32 = FILE_VERSION;
    const PROGRAM: &'static str = "zos";
}

fn networks_dir() -> PathBuf {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".local/state"),
    };
    base.join("zos").join("networks")
}

fn valid_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        bail!("network name {name:?} must be 1 to 32 of a-z, A-Z, 0-9, '_' and '-'");
    }
    Ok(())
}

impl NetworkFile {
    fn path(name: &str) -> PathBuf {
        Self::path_in(&networks_dir(), name)
    }

    fn path_in(dir: &std::path::Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.json"))
    }

    fn load(name: &str) -> anyhow::Result<Self> {
        valid_name(name)?;
        let path = Self::path(name);
        StateFile::<Self>::new(&path).load()?.with_context(|| {
            format!(
                "no network {name:?} made from this machine ({} is missing): `zos network list` shows them",
                path.display()
            )
        })
    }

    /// Writes the file atomically, readable by its owner only (it holds private keys), in a
    /// directory only its owner can open.
    fn save(&self) -> anyhow::Result<()> {
        self.save_in(&networks_dir())
    }

    fn save_in(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        Ok(StateFile::new(Self::path_in(dir, &self.name)).save(self)?)
    }

    /// The network workload of `part`: every other node as a peer, and the access peer on
    /// the node it dials (the other nodes reach it through that node).
    fn workload(&self, part: &NodePart) -> anyhow::Result<Workload> {
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
            data: serde_json::to_value(&net)?,
            metadata: String::new(),
            description: format!("network {}", self.name),
            result: None,
        })
    }

    fn deployment(&self, part: &NodePart) -> anyhow::Result<Deployment> {
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
        d.validate()
            .context("the network deployment is not valid")?;
        Ok(d)
    }

    /// The wg-quick file of the access peer.
    fn wg_config(&self) -> anyhow::Result<String> {
        let a = self.access.as_ref().with_context(|| {
            format!(
                "this machine has no access to network {:?}: run `zos network add-access {}`",
                self.name, self.name
            )
        })?;
        let node = self
            .nodes
            .iter()
            .find(|n| n.node_id == a.node_id)
            .context("the access node is no longer part of the network")?;
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

/// `.1` of a subnet: a node's gateway, or the laptop's address in its own subnet.
pub fn dot_one(subnet: Ipv4Net) -> Ipv4Addr {
    let base = u32::from(subnet.network());
    Ipv4Addr::from(base + 1)
}

/// A fresh WireGuard key pair, base64 (private, public).
fn wg_keypair() -> anyhow::Result<(String, String)> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).context("reading randomness for a WireGuard key")?;
    let secret = x25519_dalek::StaticSecret::from(seed);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok((b64.encode(secret.to_bytes()), b64.encode(public.as_bytes())))
}

/// The `i`-th /24 of the range after `.0` and `.1`: `.2.0/24`, `.3.0/24`, …
fn nth_subnet(range: Ipv4Net, i: usize) -> anyhow::Result<Ipv4Net> {
    range
        .subnets(24)
        .context("the range must be larger than a /24")?
        .nth(i + 2)
        .with_context(|| format!("{range} has no room for {} subnets", i + 1))
}

/// A port in [`PORTS`] not in `taken`, random so that two people picking at once rarely clash.
fn free_port(taken: &[u16]) -> anyhow::Result<u16> {
    let mut r = [0u8; 2];
    getrandom::getrandom(&mut r)?;
    let span = (PORTS.end() - PORTS.start()) as u32 + 1;
    let start = u16::from_le_bytes(r) as u32 % span;
    (0..span)
        .map(|k| PORTS.start() + ((start + k) % span) as u16)
        .find(|p| !taken.contains(p))
        .context("every listen port is taken on this node")
}

/// The address other members reach `node` at: the first IPv4 of its own namespace that is not
/// loopback, link-local or zos's internal 100.127.0.0/16.
async fn endpoint_host(c: &GridClient, twin: TwinId, node: NodeId) -> anyhow::Result<Ipv4Addr> {
    let ifaces = c
        .node(twin)
        .call::<node_api::Interfaces>(&())
        .await
        .with_context(|| format!("asking node {node} for its interfaces"))?;
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
    bail!("node {node} reports no address other nodes could reach it at")
}

async fn wg_ports(c: &GridClient, twin: TwinId, node: NodeId) -> anyhow::Result<Vec<u16>> {
    c.node(twin)
        .all::<node_api::WgPorts>(Page::default())
        .await
        .with_context(|| format!("asking node {node} for its taken ports"))
}

async fn node_twin(c: &GridClient, node: NodeId) -> anyhow::Result<TwinId> {
    let n = c
        .get_node(node)
        .await
        .with_context(|| format!("node {node}"))?;
    if !n.online {
        bail!("node {node} is offline: pick online nodes (`zos node list --online`)");
    }
    Ok(n.twin_id)
}

/// Addresses machines use in `name` on `node`.
async fn used_ips(c: &GridClient, twin: TwinId, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let body = PrivateIpsBody {
        network_name: name.to_string(),
        limit: None,
        cursor: None,
    };
    Ok(c.node(twin).all::<node_api::PrivateIps>(body).await?)
}

pub async fn run(cmd: NetworkCmd, g: &Global) -> anyhow::Result<()> {
    match cmd {
        NetworkCmd::Create {
            name,
            nodes,
            ip_range,
            access,
            endpoints,
            wait,
        } => {
            let plan = Plan {
                nodes: &nodes,
                ip_range,
                access,
                endpoints: &endpoints,
            };
            create(&name, &plan, Duration::from_secs(wait), g).await
        }
        NetworkCmd::AddAccess { name, wait } => {
            add_access(&name, Duration::from_secs(wait), g).await
        }
        NetworkCmd::Show { name } => show(&name, g).await,
        NetworkCmd::List => list(g),
        NetworkCmd::FreeIp { name, node } => {
            let f = NetworkFile::load(&name)?;
            let part = f
                .nodes
                .iter()
                .find(|p| p.node_id == node)
                .with_context(|| format!("network {name:?} has no part on node {node}"))?;
            let c = signed_client(g).await?;
            let twin = node_twin(&c, node).await?;
            let used = used_ips(&c, twin, &name).await?;
            let ip = part
                .subnet
                .hosts()
                .skip(1) // .1 is the gateway
                .find(|ip| !used.contains(ip))
                .with_context(|| format!("subnet {} of node {node} is full", part.subnet))?;
            if g.json {
                output::json(&json!({"ip": ip, "subnet": part.subnet, "node_id": node}))
            } else {
                println!("{ip}");
                Ok(())
            }
        }
        NetworkCmd::WgConfig { name } => {
            print!("{}", NetworkFile::load(&name)?.wg_config()?);
            Ok(())
        }
        NetworkCmd::Delete { name, wait } => {
            let f = NetworkFile::load(&name)?;
            let c = signed_client(g).await?;
            let mut failed = Vec::new();
            for part in &f.nodes {
                if let Err(e) =
                    deploy::cancel(&c, part.contract_id, Duration::from_secs(wait), g.json).await
                {
                    failed.push(format!("node {}: {e:#}", part.node_id));
                }
            }
            if !failed.is_empty() {
                bail!(
                    "network {name:?} was not removed everywhere (its file is kept, run delete again): {}",
                    failed.join("; ")
                );
            }
            std::fs::remove_file(NetworkFile::path(&name))?;
            if g.json {
                output::json(&json!({"name": name, "deleted": true}))
            } else {
                println!("network {name} removed from {} node(s)", f.nodes.len());
                Ok(())
            }
        }
    }
}

/// What `zos network create` is asked for.
struct Plan<'a> {
    nodes: &'a [NodeId],
    ip_range: Ipv4Net,
    access: bool,
    endpoints: &'a [(NodeId, String)],
}

/// `NODE=HOST` of `--endpoint`.
fn parse_endpoint(s: &str) -> Result<(NodeId, String), String> {
    let (node, host) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NODE=HOST, like 3=203.0.113.7"))?;
    let node: NodeId = node
        .parse()
        .map_err(|_| format!("{node:?} is not a node id"))?;
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok((node, host.to_string()))
}

async fn create(name: &str, plan: &Plan<'_>, wait: Duration, g: &Global) -> anyhow::Result<()> {
    let Plan {
        nodes,
        ip_range,
        access,
        endpoints,
    } = *plan;
    valid_name(name)?;
    if let Some((n, _)) = endpoints.iter().find(|(n, _)| !nodes.contains(n)) {
        bail!("--endpoint names node {n}, which is not in --nodes");
    }
    if NetworkFile::path(name).exists() {
        bail!("network {name:?} already exists: `zos network show {name}`, or delete it first");
    }
    if ip_range.prefix_len() != 16 || !ip_range.network().is_private() {
        bail!("--ip-range must be a private /16, like 10.20.0.0/16; {ip_range} is not");
    }
    let mut seen = std::collections::BTreeSet::new();
    if nodes.is_empty() || !nodes.iter().all(|n| seen.insert(*n)) {
        bail!("--nodes must list each node once");
    }
    let c = signed_client(g).await?;
    let me = c.twin_id().context("no twin")?;
    let mut file = NetworkFile {
        version: FILE_VERSION,
        name: name.to_string(),
        twin_id: me,
        ip_range: ip_range.trunc(),
        nodes: Vec::new(),
        access: None,
    };
    for (i, node) in nodes.iter().enumerate() {
        let twin = node_twin(&c, *node).await?;
        let host = match endpoints.iter().find(|(n, _)| n == node) {
            Some((_, h)) => h.clone(),
            None => endpoint_host(&c, twin, *node).await?.to_string(),
        };
        let port = free_port(&wg_ports(&c, twin, *node).await?)?;
        let (private_key, public_key) = wg_keypair()?;
        file.nodes.push(NodePart {
            node_id: *node,
            contract_id: 0,
            subnet: nth_subnet(file.ip_range, i)?,
            listen_port: port,
            endpoint: format!("{host}:{port}"),
            private_key,
            public_key,
        });
    }
    if access {
        let (private_key, public_key) = wg_keypair()?;
        file.access = Some(Access {
            subnet: nth_subnet(file.ip_range, nodes.len())?,
            node_id: nodes[0],
            private_key,
            public_key,
        });
    }
    // Every node's deployment; on a failure the ones made are cancelled again.
    let mut made: Vec<ContractId> = Vec::new();
    for i in 0..file.nodes.len() {
        let part = file.nodes[i].clone();
        if !g.json {
            eprintln!(
                "node {}: subnet {}, port {}",
                part.node_id, part.subnet, part.listen_port
            );
        }
        match deploy::submit(&c, part.node_id, file.deployment(&part)?, wait, g.json).await {
            Ok(d) => {
                made.push(d.contract_id);
                file.nodes[i].contract_id = d.contract_id;
                let state = d.workloads[0]
                    .result
                    .as_ref()
                    .map(|r| (r.state, r.message.clone()));
                if let Some((s, msg)) = state
                    && s != zos_types::deployment::ResultState::Ok
                {
                    rollback(&c, &made, wait).await;
                    bail!("node {} could not make the network: {msg}", part.node_id);
                }
            }
            Err(e) => {
                rollback(&c, &made, wait).await;
                return Err(e.context(format!("deploying network {name} on node {}", part.node_id)));
            }
        }
    }
    file.save()?;
    print_file(&file, g)
}

async fn rollback(c: &GridClient, contracts: &[ContractId], wait: Duration) {
    for k in contracts {
        if let Err(e) = deploy::cancel(c, *k, wait, true).await {
            eprintln!("warning: contract {k} could not be cancelled: {e:#}");
        }
    }
}

async fn add_access(name: &str, wait: Duration, g: &Global) -> anyhow::Result<()> {
    let mut file = NetworkFile::load(name)?;
    if file.access.is_some() {
        return print_file(&file, g);
    }
    let taken: Vec<Ipv4Net> = file.nodes.iter().map(|n| n.subnet).collect();
    let subnet = (0..252)
        .map(|i| nth_subnet(file.ip_range, i))
        .find(|s| s.as_ref().is_ok_and(|s| !taken.contains(s)))
        .context("the network's range is full")??;
    let (private_key, public_key) = wg_keypair()?;
    file.access = Some(Access {
        subnet,
        node_id: file.nodes[0].node_id,
        private_key,
        public_key,
    });
    let c = signed_client(g).await?;
    // Every node learns the new peer (directly, or through the access node).
    for part in &file.nodes {
        let desired = file.deployment(part)?;
        deploy::update_to(&c, part.contract_id, &desired, wait, g.json)
            .await
            .with_context(|| format!("updating network {name} on node {}", part.node_id))?;
    }
    file.save()?;
    print_file(&file, g)
}

fn print_file(f: &NetworkFile, g: &Global) -> anyhow::Result<()> {
    if g.json {
        return output::json(&json!({
            "name": f.name,
            "ip_range": f.ip_range,
            "nodes": f.nodes.iter().map(|n| json!({
                "node_id": n.node_id, "contract_id": n.contract_id, "subnet": n.subnet,
                "gateway": dot_one(n.subnet), "listen_port": n.listen_port,
                "endpoint": n.endpoint, "public_key": n.public_key,
            })).collect::<Vec<_>>(),
            "access": f.access.as_ref().map(|a| json!({
                "subnet": a.subnet, "address": dot_one(a.subnet), "node_id": a.node_id,
                "public_key": a.public_key,
            })),
        }));
    }
    fields(&[
        ("network", f.name.clone()),
        ("ip range", f.ip_range.to_string()),
        (
            "access",
            f.access.as_ref().map_or("none".to_string(), |a| {
                format!(
                    "{} through node {} (`zos network wg-config {}`)",
                    dot_one(a.subnet),
                    a.node_id,
                    f.name
                )
            }),
        ),
    ]);
    println!();
    let mut t = Table::new(&["NODE", "CONTRACT", "SUBNET", "GATEWAY", "ENDPOINT"]);
    for n in &f.nodes {
        t.row(vec![
            n.node_id.to_string(),
            n.contract_id.to_string(),
            n.subnet.to_string(),
            dot_one(n.subnet).to_string(),
            n.endpoint.clone(),
        ]);
    }
    t.print();
    Ok(())
}

async fn show(name: &str, g: &Global) -> anyhow::Result<()> {
    let f = NetworkFile::load(name)?;
    let c = signed_client(g).await?;
    let mut rows = Vec::new();
    for n in &f.nodes {
        let twin = c.get_node(n.node_id).await.map(|x| x.twin_id);
        let (state, used) = match twin {
            Ok(twin) => {
                let get = ContractBody {
                    contract_id: n.contract_id,
                };
                let state = match c.node(twin).call::<node_api::Get>(&get).await {
                    Ok(d) => d
                        .workloads
                        .first()
                        .and_then(|w| w.result.as_ref())
                        .map_or_else(|| "-".to_string(), |r| r.state.to_string()),
                    Err(e) => format!("unreachable: {e}"),
                };
                (state, used_ips(&c, twin, name).await.unwrap_or_default())
            }
            Err(e) => (format!("unknown node: {e}"), Vec::new()),
        };
        rows.push((n, state, used));
    }
    if g.json {
        return output::json(&json!({
            "name": f.name, "ip_range": f.ip_range,
            "nodes": rows.iter().map(|(n, state, used)| json!({
                "node_id": n.node_id, "contract_id": n.contract_id, "subnet": n.subnet,
                "listen_port": n.listen_port, "endpoint": n.endpoint, "state": state,
                "used_ips": used,
            })).collect::<Vec<_>>(),
            "access": f.access.as_ref().map(|a| json!({"subnet": a.subnet, "node_id": a.node_id})),
        }));
    }
    let mut t = Table::new(&[
        "NODE", "CONTRACT", "SUBNET", "ENDPOINT", "STATE", "MACHINES",
    ]);
    for (n, state, used) in &rows {
        t.row(vec![
            n.node_id.to_string(),
            n.contract_id.to_string(),
            n.subnet.to_string(),
            n.endpoint.clone(),
            state.clone(),
            used.iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    t.print();
    Ok(())
}

fn list(g: &Global) -> anyhow::Result<()> {
    let mut files = Vec::new();
    if let Ok(dir) = std::fs::read_dir(networks_dir()) {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
                && let Ok(f) = NetworkFile::load(stem)
            {
                files.push(f);
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    if g.json {
        let v: Vec<Value> = files
            .iter()
            .map(|f| {
                json!({"name": f.name, "ip_range": f.ip_range,
                "nodes": f.nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
                "access": f.access.is_some()})
            })
            .collect();
        return output::json(&v);
    }
    let mut t = Table::new(&["NAME", "RANGE", "NODES", "ACCESS"]);
    for f in &files {
        t.row(vec![
            f.name.clone(),
            f.ip_range.to_string(),
            f.nodes
                .iter()
                .map(|n| n.node_id.to_string())
                .collect::<Vec<_>>()
                .join(","),
            if f.access.is_some() { "yes" } else { "no" }.into(),
        ]);
    }
    t.print();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(access: bool) -> NetworkFile {
        let part = |node: NodeId, i: u8, port: u16| NodePart {
            node_id: node,
            contract_id: node as u64 + 10,
            subnet: format!("10.20.{i}.0/24").parse().unwrap(),
            listen_port: port,
            endpoint: format!("192.0.2.{node}:{port}"),
            private_key: wg_keypair().unwrap().0,
            public_key: wg_keypair().unwrap().1,
        };
        NetworkFile {
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

    fn peers(f: &NetworkFile, node: usize) -> Vec<Peer> {
        let w = f.workload(&f.nodes[node]).unwrap();
        let net: Network = serde_json::from_value(w.data).unwrap();
        net.peers
    }

    #[test]
    fn a_stale_world_readable_temporary_does_not_leak_the_network_keys() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("zos/networks");
        let f = file(true);
        // A save interrupted earlier (or a file planted by another user of a shared directory)
        // left `net.json.tmp` readable by all; the keys must not be written into it.
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join("net.json.tmp");
        std::fs::write(&tmp, "").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        f.save_in(&dir).unwrap();
        let path = NetworkFile::path_in(&dir, "net");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o600,
            "the file with the WireGuard keys is owner-only"
        );
        assert!(!tmp.exists());
        let back: NetworkFile = StateFile::new(&path).load().unwrap().unwrap();
        assert_eq!(back.nodes[0].private_key, f.nodes[0].private_key);
        // A file from a newer zos is refused, not misread.
        std::fs::write(&path, r#"{"version": 9, "name": "net"}"#).unwrap();
        let e = StateFile::<NetworkFile>::new(&path).load().unwrap_err();
        assert!(e.to_string().contains("upgrade zos"), "{e}");
    }

    #[test]
    fn every_node_peers_with_the_others_and_the_access_peer_rides_on_its_node() {
        let f = file(true);
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
        let f = file(true);
        let conf = f.wg_config().unwrap();
        assert!(conf.contains("Address = 10.20.5.1/24"), "{conf}");
        assert!(conf.contains("AllowedIPs = 10.20.0.0/16"), "{conf}");
        assert!(conf.contains("Endpoint = 192.0.2.1:3000"), "{conf}");
        assert!(conf.contains(&format!("PublicKey = {}", f.nodes[0].public_key)));
        let e = file(false).wg_config().unwrap_err();
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
        assert_eq!(
            parse_endpoint("3=203.0.113.7").unwrap(),
            (3, "203.0.113.7".to_string())
        );
        assert!(parse_endpoint("3").is_err());
        assert!(parse_endpoint("x=1.2.3.4").is_err());
        assert!(parse_endpoint("3=a b").is_err());
        assert!(valid_name("my-net_1").is_ok());
        assert!(valid_name("../x").is_err());
        assert!(valid_name("").is_err());
    }
}
