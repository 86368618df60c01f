//! The node protocol: every command a node answers over the relay, as types.
//!
//! Each command is a unit type implementing [`NodeCommand`]: its wire name ([`NodeCommand::NAME`],
//! the envelope's `command`), the type of its request body and the type of its answer. The
//! node parses a body into `Body` and answers through `Answer`; the client (`zos_client::NodeClient`)
//! sends a `Body` and decodes an `Answer`. Neither side writes a command name or reads an
//! answer by index: both use these types (the Firecracker `VmmAction` / Cloud Hypervisor
//! `ApiAction` pattern).
//!
//! - The commands are declared once, by the `commands!` macro below, which also builds
//!   [`COMMANDS`], the table the docs show (a test in `tests/node_api_docs.rs` checks that
//!   `docs/deployments.md` and `docs/network.md` list exactly these).
//! - Bodies refuse unknown fields (a misspelt field is an error, not silently ignored). Answers
//!   accept them, so a client keeps reading the answers of a newer node that adds a field.
//! - Commands without a body take `()`: the node accepts no body, `null` or `{}`.
//! - List commands ([`Paged`]) take `limit` and `cursor` and answer a page, sorted by the key
//!   [`Paged::key`] reads; an empty page is the end (see `crates/zosd/src/api.rs`).
//! - A refusal is a [`NodeError`]: a [`ErrorKind`] and a message saying what to do next. On the
//!   wire it is the reply `{"error": "<message>", "kind": "<kind>"}`; a reply without `kind`
//!   (a node from before the kinds) reads as [`ErrorKind::Internal`].
//! - The serde shapes are those the node answered as plain JSON before these types, so stored
//!   result logs and old callers keep working; [`results`] types each workload's result data.

use std::net::Ipv4Addr;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::deployment::{ContractId, Deployment, WorkloadResult};
use crate::registry::PublicConfig;
use crate::workload::WorkloadType;
use crate::{Capacity, NodeId, TwinId};

pub mod results;

/// A command of the node protocol.
pub trait NodeCommand {
    /// Its name on the wire (the envelope's `command`).
    const NAME: &'static str;
    /// Its request body.
    type Body: Serialize + DeserializeOwned + Send + Sync;
    /// Its answer.
    type Answer: Serialize + DeserializeOwned + Send;
}

/// A list command: its answer is a page of items sorted by a key, and its body takes the key
/// of the last item seen as `cursor`.
pub trait Paged: NodeCommand<Answer = Vec<Self::Item>> {
    type Item: Serialize + DeserializeOwned + Send;
    type Cursor: Serialize + DeserializeOwned + Copy + PartialEq + Send;
    /// The key of `item`, the page's order.
    fn key(item: &Self::Item) -> Self::Cursor;
    /// The cursor `body` carries.
    fn cursor(body: &Self::Body) -> Option<Self::Cursor>;
    /// `body` asking for the items after `cursor`.
    fn set_cursor(body: &mut Self::Body, cursor: Self::Cursor);
}

/// One row of the command table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    pub name: &'static str,
    /// The body, as the docs show it.
    pub body: &'static str,
    /// The answer, as the docs show it.
    pub answer: &'static str,
}

macro_rules! commands {
    ($(
        $(#[$meta:meta])*
        $ty:ident = $name:literal, $body:ty => $answer:ty, $bdoc:literal, $adoc:literal;
    )*) => {
        $(
            $(#[$meta])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq)]
            pub struct $ty;
            impl NodeCommand for $ty {
                const NAME: &'static str = $name;
                type Body = $body;
                type Answer = $answer;
            }
        )*
        /// Every command, in the order the docs list them.
        pub const COMMANDS: &[CommandInfo] = &[$(CommandInfo {
            name: $name,
            body: $bdoc,
            answer: $adoc,
        }),*];
    };
}

commands! {
    /// Stores a new deployment and queues its workloads.
    Deploy = "zos.deployment.deploy", Deployment => (),
        "`Deployment`", "`null` once stored and queued";
    /// Stores a new version of a deployment and queues the changed workloads.
    Update = "zos.deployment.update", Deployment => (),
        "`Deployment`", "`null` once stored and queued";
    /// One of the sender's deployments, with its workloads' latest results.
    Get = "zos.deployment.get", ContractBody => Deployment,
        "`{\"contract_id\": N}`", "the deployment with results";
    /// A page of a deployment's result log.
    Changes = "zos.deployment.changes", ChangesBody => Vec<LogEntry>,
        "`{\"contract_id\": N, \"limit\": N?, \"cursor\": SEQ?}`",
        "a page of its result log, by `seq` (1,000 by default)";
    /// A page of the sender's deployments.
    List = "zos.deployment.list", Page<ContractId> => Vec<Deployment>,
        "`{\"limit\": N?, \"cursor\": CONTRACT?}` or none",
        "a page of the sender's deployments, by contract id (50 by default)";
    /// The node's capacity and use.
    GetStatistics = "zos.statistics.get", () => Statistics,
        "–", "`total`, `used` (workloads + system), `system`, `users` counts";
    /// The node's storage pools.
    Pools = "zos.storage.pools", () => Vec<Pool>,
        "–", "every pool: name, type, size, used";
    /// The version of `zosd`.
    Version = "zos.system.version", () => VersionAnswer,
        "–", "`{\"zos\": \"<version>\"}`";
    /// The health of each module of the node.
    GetDiagnostics = "zos.system.diagnostics", () => Diagnostics,
        "–", "health of each module";
    /// A page of the WireGuard listen ports taken.
    WgPorts = "zos.network.list_wg_ports", Page<u16> => Vec<u16>,
        "`{\"limit\": N?, \"cursor\": PORT?}` or none",
        "a page of the WireGuard listen ports taken on the node (1,024 by default)";
    /// The node's public config.
    PublicConfigGet = "zos.network.public_config_get", () => PublicConfig,
        "–", "the node's public config, as the node applied it (not found when none)";
    /// The node's interfaces.
    Interfaces = "zos.network.interfaces", () => Vec<Interface>,
        "–", "`[{name, namespace, mac, addrs}]` of the host and the public namespace";
    /// A page of the addresses machines use in one of the sender's networks.
    PrivateIps = "zos.network.list_private_ips", PrivateIpsBody => Vec<Ipv4Addr>,
        "`{\"network_name\": S, \"limit\": N?, \"cursor\": IP?}`",
        "a page of the addresses machines use in the sender's network (1,024 by default)";
    /// The public addresses `ip` workloads use.
    PublicIps = "zos.network.list_public_ips", () => Vec<Ipv4Addr>,
        "–", "public IPv4 addresses `ip` workloads use on the node";
    /// One of the sender's network resources and its WireGuard state.
    Wireguard = "zos.network.wireguard", NetworkBody => WireguardAnswer,
        "`{\"network_name\": S}`",
        "the sender's network resource: key, port, peers and transfer counters";
    /// The tail of a machine's console log.
    Console = "zos.zmachine.console", ConsoleBody => ConsoleAnswer,
        "`{\"contract_id\": N, \"name\": S, \"bytes\": N?}`",
        "`{\"name\", \"console\", \"truncated\"}`: the last bytes (64 KiB by default, 256 KiB at most) of the sender's machine's console log";
}

/// The command table as Markdown rows (`| command | body | answer |`), for the commands whose
/// name starts with one of `prefixes`; the docs hold this text (see the module's header).
pub fn markdown_table(prefixes: &[&str]) -> String {
    let mut out = String::from("| command | body | answer |\n|---|---|---|\n");
    for c in COMMANDS
        .iter()
        .filter(|c| prefixes.iter().any(|p| c.name.starts_with(p)))
    {
        out.push_str(&format!("| `{}` | {} | {} |\n", c.name, c.body, c.answer));
    }
    out
}

/// The command named `name`, if the protocol has one.
pub fn command(name: &str) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.name == name)
}

// ---- bodies ----

/// `limit` and `cursor` of a list command; both optional, and an array is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page<C> {
    // Absent reads as `None` without `default`, which keeps a JSON array from reading as a
    // page (serde reads structs from sequences too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<C>,
}

impl<C> Default for Page<C> {
    fn default() -> Self {
        Self {
            limit: None,
            cursor: None,
        }
    }
}

/// A body naming one of the sender's deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractBody {
    pub contract_id: ContractId,
}

/// Body of [`Changes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesBody {
    pub contract_id: ContractId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<i64>,
}

/// A body naming one of the sender's networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkBody {
    pub network_name: String,
}

/// Body of [`PrivateIps`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateIpsBody {
    pub network_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Ipv4Addr>,
}

/// Body of [`Console`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleBody {
    pub contract_id: ContractId,
    pub name: String,
    /// Most bytes wanted; the node's default when absent.
    #[serde(default)]
    pub bytes: Option<usize>,
}

// ---- answers ----

/// One entry of a deployment's result log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub seq: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: WorkloadType,
    pub version: u32,
    pub result: WorkloadResult,
}

/// Answer of [`GetStatistics`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statistics {
    pub total: Capacity,
    /// Workloads plus the system.
    pub used: Capacity,
    pub system: Capacity,
    pub users: UserCounts,
}

/// Deployments and workloads a node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCounts {
    pub deployments: u64,
    pub workloads: u64,
}

/// A storage pool's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolType {
    Ssd,
    Hdd,
}

/// One storage pool ([`Pools`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: PoolType,
    /// Bytes.
    pub size: u64,
    /// Bytes reserved.
    pub used: u64,
}

/// Answer of [`Version`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionAnswer {
    pub zos: String,
}

/// Answer of [`GetDiagnostics`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostics {
    pub healthy: bool,
    pub modules: Modules,
    /// The machine's memory as its kernel counts it (absent from older nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryUse>,
}

/// Memory of the machine, from `/proc/meminfo`: what the OS and workloads hold is
/// `total - available`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUse {
    pub total: u64,
    pub available: u64,
}

impl MemoryUse {
    /// `MemTotal` and `MemAvailable` of a `/proc/meminfo` text.
    pub fn from_meminfo(meminfo: &str) -> Option<Self> {
        let field = |name: &str| -> Option<u64> {
            let line = meminfo.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
            kib.checked_mul(1024)
        };
        Some(Self {
            total: field("MemTotal:")?,
            available: field("MemAvailable:")?,
        })
    }

    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }
}

/// The modules [`Diagnostics`] reports on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Modules {
    pub storage: StorageHealth,
    pub registrar: RegistrarHealth,
    pub provision: ProvisionHealth,
    pub network: NetworkHealth,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageHealth {
    pub ok: bool,
    /// Why the node runs limited, when it does.
    pub limited: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrarHealth {
    pub ok: bool,
    pub node_id: Option<NodeId>,
    pub twin_id: Option<TwinId>,
    /// Node clock (unix seconds) of the last accepted uptime report.
    pub last_report: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionHealth {
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkHealth {
    pub ok: bool,
    pub error: Option<String>,
}

/// One interface of the node ([`Interfaces`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// `host` or the namespace's name.
    pub namespace: String,
    pub mac: Option<String>,
    pub addrs: Vec<IpNet>,
}

/// Answer of [`Wireguard`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardAnswer {
    pub network: NetworkResource,
    pub status: WgStatus,
}

/// A network resource as the node made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkResource {
    /// The id every node hosting this network derives (12 hex digits).
    pub netid: String,
    pub twin: TwinId,
    pub name: String,
    pub namespace: String,
    pub bridge: String,
    pub wg_ifname: String,
    /// This node's public key in the network.
    pub wg_public_key: String,
    pub listen_port: u16,
    /// `kernel` or `userspace`.
    pub backend: String,
    pub ip_range: ipnet::Ipv4Net,
    pub subnet: ipnet::Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The userspace WireGuard process, if any.
    pub pid: Option<i32>,
}

/// What WireGuard says about an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgStatus {
    pub ifname: String,
    pub public_key: String,
    pub listen_port: u16,
    pub peers: Vec<PeerStatus>,
}

impl WgStatus {
    /// Bytes received and sent through all peers.
    pub fn totals(&self) -> (u64, u64) {
        self.peers
            .iter()
            .fold((0, 0), |(r, t), p| (r + p.rx_bytes, t + p.tx_bytes))
    }
}

/// What WireGuard says about one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub public_key: String,
    pub endpoint: Option<String>,
    pub allowed_ips: Vec<String>,
    /// Unix seconds of the last handshake, 0 for none (userspace reports it unreliably).
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Seconds, when set.
    pub persistent_keepalive: Option<u16>,
}

/// Answer of [`Console`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleAnswer {
    pub name: String,
    pub console: String,
    /// The log holds more than `console`.
    pub truncated: bool,
}

// ---- paging ----

impl Paged for List {
    type Item = Deployment;
    type Cursor = ContractId;
    fn key(item: &Deployment) -> ContractId {
        item.contract_id
    }
    fn cursor(body: &Page<ContractId>) -> Option<ContractId> {
        body.cursor
    }
    fn set_cursor(body: &mut Page<ContractId>, cursor: ContractId) {
        body.cursor = Some(cursor);
    }
}

impl Paged for Changes {
    type Item = LogEntry;
    type Cursor = i64;
    fn key(item: &LogEntry) -> i64 {
        item.seq
    }
    fn cursor(body: &ChangesBody) -> Option<i64> {
        body.cursor
    }
    fn set_cursor(body: &mut ChangesBody, cursor: i64) {
        body.cursor = Some(cursor);
    }
}

impl Paged for WgPorts {
    type Item = u16;
    type Cursor = u16;
    fn key(item: &u16) -> u16 {
        *item
    }
    fn cursor(body: &Page<u16>) -> Option<u16> {
        body.cursor
    }
    fn set_cursor(body: &mut Page<u16>, cursor: u16) {
        body.cursor = Some(cursor);
    }
}

impl Paged for PrivateIps {
    type Item = Ipv4Addr;
    type Cursor = Ipv4Addr;
    fn key(item: &Ipv4Addr) -> Ipv4Addr {
        *item
    }
    fn cursor(body: &PrivateIpsBody) -> Option<Ipv4Addr> {
        body.cursor
    }
    fn set_cursor(body: &mut PrivateIpsBody, cursor: Ipv4Addr) {
        body.cursor = Some(cursor);
    }
}

// ---- errors ----

/// What kind of refusal a [`NodeError`] is: what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// What the request names does not exist (for the sender).
    NotFound,
    /// The sender may not do this.
    Forbidden,
    /// The request is malformed or breaks a rule: change it.
    Invalid,
    /// The request clashes with the node's state (an older version, a taken name…).
    Conflict,
    /// The node cannot do it now (a module is down): retry later.
    Unavailable,
    /// The node is busy with other requests: retry in a few seconds.
    Busy,
    /// The node failed.
    Internal,
}

impl ErrorKind {
    /// The kind's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Forbidden => "forbidden",
            Self::Invalid => "invalid",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Busy => "busy",
            Self::Internal => "internal",
        }
    }

    /// The kind named `s`; `Internal` for a name this version does not know.
    pub fn from_wire(s: &str) -> Self {
        [
            Self::NotFound,
            Self::Forbidden,
            Self::Invalid,
            Self::Conflict,
            Self::Unavailable,
            Self::Busy,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .unwrap_or(Self::Internal)
    }
}

/// A node's refusal of a command: its kind and a message saying what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl NodeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The refusal of a command this protocol does not have.
    pub fn unknown_command(name: &str) -> Self {
        Self::new(ErrorKind::Invalid, format!("unknown command {name:?}"))
    }
}

#[cfg(test)]
mod tests;
