//! Networking of a node: the node's own setup, private networks of twins (network resources
//! joined by WireGuard), VMs' interfaces, and public IPs with anti-spoofing filters.
//!
//! Layout (names carry the node's prefix `<p>`; inside the node's own namespaces they need not):
//!
//! ```text
//!  host (zosd's namespace)            ndmz (<p>ndmz)                 network resource (<p>n-<netid>)
//!  uplink ── NAT ── <p>dmz ─────────── up0   100.127.255.2/30
//!           100.127.255.1/30           nr<netid> 100.127.0.1/32 ──── dmz  100.127.x.y/32 (NAT)
//!  <p>b<netid> (bridge) ── <p>l<netid> ───────────────────────────── lan  <subnet>.1/24
//!     └── VM taps <p>t…                                              <p>w<netid> WireGuard, routes the /16
//!  <p>pub (bridge) ── exit NIC, <p>pubv ── public (<p>public), VM public taps <p>p…
//! ```
//!
//! - Workloads reach the outside through their network resource (masquerade to its transit
//!   address), `ndmz` (routes, refuses resource-to-resource traffic and SMTP) and the host
//!   (masquerade to the node's address). Nothing new comes in; workloads never reach the node.
//! - WireGuard's UDP socket lives in the host (the node's address), its interface in the
//!   resource: the kernel's implementation when the kernel has it, otherwise `boringtun-cli` as
//!   its own process, which survives a restart or upgrade of zosd and is adopted on start.
//! - Everything made is recorded in a versioned state file; every operation is idempotent, and
//!   [`Networker::reconcile`] re-applies the whole state after a restart.
//!
//! [`LinuxNetworker`] is the real implementation, `RecordingNetworker` (feature `fake`) the fake
//! with the same rules. See `docs/network.md`.

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod link;
pub mod names;
pub mod netns;
mod nft;
mod real;
mod rules;
mod state;
pub mod wireguard;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use zos_runtime::find_program;
use zos_types::TwinId;
use zos_types::deployment::WorkloadId;
pub use zos_types::node_api::Interface;
use zos_types::node_api::NetworkResource;
use zos_types::registry::{FarmIp, PublicConfig};
use zos_types::workload::Network;

#[cfg(any(test, feature = "fake"))]
pub use fake::{Call, RecordingNetworker};
pub use names::{Names, NetId};
pub use real::LinuxNetworker;
pub use state::{STATE_FILE, STATE_VERSION};
pub use wireguard::{PeerStatus, WgBackend, WgStatus, WireguardMode};

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The request itself is wrong; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error("network {name:?} of twin {twin} belongs to contract {contract} on this node")]
    Owned {
        twin: TwinId,
        name: String,
        contract: u64,
    },
    #[error("no network {name:?} of twin {twin} on this node")]
    NoNetwork { twin: TwinId, name: String },
    #[error("wireguard listen port {0} is taken on this node")]
    PortTaken(u16),
    #[error("address {ip} is taken in network {network:?}")]
    AddressTaken { ip: Ipv4Addr, network: String },
    #[error("interface name {0} is already used by another workload")]
    NameClash(String),
    #[error("the node's network is not set up yet")]
    NotReady,
    #[error("this node has no public config")]
    NoPublicConfig,
    #[error("this node has no public IPv6")]
    NoPublicIpv6,
    #[error("public address {0} is used by another workload")]
    PublicIpTaken(Ipv4Addr),
    #[error("no public ip workload {0} on this node")]
    NoPublicIp(String),
    #[error("network namespace {0} does not exist")]
    NoNamespace(String),
    #[error("interface {0} does not exist")]
    NoLink(String),
    #[error("{op} {target} failed")]
    System {
        op: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {target} failed: {reason}")]
    Netlink {
        op: &'static str,
        target: String,
        reason: String,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed in {ns}: {stderr}")]
    Command {
        cmd: String,
        ns: String,
        stderr: String,
    },
    #[error("userspace wireguard for {ifname} did not start: {log}")]
    Userspace { ifname: String, log: String },
    #[error(transparent)]
    State(#[from] zos_runtime::StateError),
    #[error("{0}")]
    Internal(String),
}

/// Shorthand for network results.
pub type Result<T, E = NetworkError> = std::result::Result<T, E>;

/// The node's public configuration (from its farmer) and the interface it leaves through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicSetup {
    pub config: PublicConfig,
    /// The host interface joined to the public bridge (a second NIC; no addresses of its own).
    pub exit_iface: String,
}

/// How a VM's interface is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VmLink {
    /// A persistent tap in the host that a VMM opens by name; the VM configures its address
    /// itself (cloud-init) with what [`Attachment`] says.
    Tap,
    /// A veth whose other end moves into the namespace at `netns` as `ifname` and is
    /// configured there (containers, and namespaces standing in for VMs in tests).
    Veth {
        netns: PathBuf,
        ifname: String,
        /// Route everything through this interface's gateway (otherwise only the network).
        default_route: bool,
    },
}

/// A network resource as made on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub netid: NetId,
    pub twin: TwinId,
    pub name: String,
    /// Its namespace (under `/run/netns`).
    pub namespace: String,
    /// The bridge VMs' private interfaces join.
    pub bridge: String,
    pub wg_ifname: String,
    /// This node's public key in the network.
    pub wg_public_key: String,
    pub listen_port: u16,
    pub backend: WgBackend,
    pub ip_range: Ipv4Net,
    pub subnet: Ipv4Net,
    /// `.1` of the subnet.
    pub gateway: Ipv4Addr,
    /// The boringtun process, for the userspace backend.
    pub pid: Option<i32>,
}

impl NetworkInfo {
    /// The resource as the node's API shows it: the same facts, with the id and the backend
    /// as text.
    pub fn resource(&self) -> NetworkResource {
        NetworkResource {
            netid: self.netid.to_string(),
            twin: self.twin,
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            bridge: self.bridge.clone(),
            wg_ifname: self.wg_ifname.clone(),
            wg_public_key: self.wg_public_key.clone(),
            listen_port: self.listen_port,
            backend: match self.backend {
                WgBackend::Kernel => "kernel",
                WgBackend::Userspace => "userspace",
            }
            .into(),
            ip_range: self.ip_range,
            subnet: self.subnet,
            gateway: self.gateway,
            pid: self.pid,
        }
    }
}

/// A VM's interface on one of the node's bridges and what the VM must configure on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The host-side interface (the tap, or the host end of the veth).
    pub ifname: String,
    pub bridge: String,
    /// The MAC the VM must use; the filters drop anything else.
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Net>,
    pub gateway4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Net>,
    pub gateway6: Option<Ipv6Addr>,
    /// Routes the VM should add through this interface besides its address's own network
    /// (the whole private network for private interfaces).
    pub routes: Vec<Ipv4Net>,
}

impl Attachment {
    /// The MAC as `02:ab:…`.
    pub fn mac_string(&self) -> String {
        names::mac_string(&self.mac)
    }
}

/// What an `ip` workload asks for: an address the contract reserved, and/or IPv6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIpRequest {
    pub v4: Option<FarmIp>,
    pub v6: bool,
}

/// What [`Networker::reconcile`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub networks: usize,
    /// Userspace WireGuard processes found running and kept.
    pub adopted: usize,
    /// Userspace WireGuard processes that had to be started again.
    pub restarted: usize,
    pub ports: usize,
    /// Networks or ports that could not be brought back, with why.
    pub failed: Vec<String>,
}

/// The first reserved address no other workload uses (the `ip` manager's choice).
pub fn pick_public_ipv4(reserved: &[FarmIp], taken: &[Ipv4Addr]) -> Option<FarmIp> {
    reserved
        .iter()
        .find(|ip| !taken.contains(&ip.ip.addr()))
        .cloned()
}

/// What the provision engine asks of the network.
///
/// Every call is idempotent: making what exists answers it, removing what is gone succeeds.
/// Refused requests change nothing. Networks are keyed by (twin, network name) = the `network`
/// workload's (twin, name); machines' interfaces by the machine's workload id and the network.
pub trait Networker: Send + Sync {
    /// Makes the node's own setup: `ndmz`, the host's rules, and with `public` the public
    /// bridge and namespace. Called at start and when the farmer changes the public config;
    /// `None` removes a public setup made before.
    fn setup_node(&self, public: Option<PublicSetup>) -> impl Future<Output = Result<()>> + Send;

    /// Re-applies everything the state records (zosd's start): adopts running WireGuard
    /// processes, restarts dead ones, re-makes missing links and rules.
    fn reconcile(&self) -> impl Future<Output = Result<ReconcileReport>> + Send;

    /// Removes everything of this node: networks, ports, `ndmz`, public setup, rules, state.
    fn teardown_node(&self) -> impl Future<Output = Result<()>> + Send;

    /// Creates the network resource of `wl` (a `network` workload), or changes it to `net`:
    /// keys, port and peers change in place; peers that did not change keep their sessions.
    fn apply_network(
        &self,
        wl: &WorkloadId,
        net: &Network,
    ) -> impl Future<Output = Result<NetworkInfo>> + Send;

    /// Removes the network resource of `wl` and every VM interface on it.
    fn delete_network(&self, wl: &WorkloadId) -> impl Future<Output = Result<()>> + Send;

    /// The network resource of `(twin, name)`, if this node has it.
    fn network_info(
        &self,
        twin: TwinId,
        name: &str,
    ) -> impl Future<Output = Result<Option<NetworkInfo>>> + Send;

    /// Gives machine `vm` an interface with address `ip` on its twin's network `network`.
    fn attach_private(
        &self,
        vm: &WorkloadId,
        network: &str,
        ip: Ipv4Addr,
        link: VmLink,
    ) -> impl Future<Output = Result<Attachment>> + Send;

    /// Removes machine `vm`'s interface on `network`.
    fn detach_private(
        &self,
        vm: &WorkloadId,
        network: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Sets up the `ip` workload `ip_wl`: its addresses and the filter that lets its interface
    /// use only them and its MAC. The interface itself is made by [`Self::attach_public`].
    fn setup_public_ip(
        &self,
        ip_wl: &WorkloadId,
        req: &PublicIpRequest,
    ) -> impl Future<Output = Result<Attachment>> + Send;

    /// Makes the interface of `ip_wl` on the public bridge, for the machine that uses it.
    fn attach_public(
        &self,
        ip_wl: &WorkloadId,
        link: VmLink,
    ) -> impl Future<Output = Result<Attachment>> + Send;

    /// Removes the interface of `ip_wl`, keeping its addresses and filter.
    fn detach_public(&self, ip_wl: &WorkloadId) -> impl Future<Output = Result<()>> + Send;

    /// Removes the `ip` workload `ip_wl`: interface, filter, addresses.
    fn teardown_public_ip(&self, ip_wl: &WorkloadId) -> impl Future<Output = Result<()>> + Send;

    /// The public setup the node has now (`None` when it has none or is not set up).
    fn public_setup(&self) -> impl Future<Output = Result<Option<PublicSetup>>> + Send;

    /// What the `ip` workload `ip_wl` was given, if it is set up.
    fn public_ip(
        &self,
        ip_wl: &WorkloadId,
    ) -> impl Future<Output = Result<Option<Attachment>>> + Send;

    /// WireGuard listen ports taken on this node (`zos.network.list_wg_ports`).
    fn wireguard_ports(&self) -> impl Future<Output = Result<Vec<u16>>> + Send;

    /// Addresses machines use in `(twin, network)` on this node.
    fn private_ips(
        &self,
        twin: TwinId,
        network: &str,
    ) -> impl Future<Output = Result<Vec<Ipv4Addr>>> + Send;

    /// The private networks machine `vm` has an interface on, by name.
    fn machine_networks(&self, vm: &WorkloadId)
    -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Public IPv4 addresses `ip` workloads use on this node.
    fn public_ips(&self) -> impl Future<Output = Result<Vec<Ipv4Addr>>> + Send;

    /// The node's interfaces and addresses (host and `public`).
    fn interfaces(&self) -> impl Future<Output = Result<Vec<Interface>>> + Send;

    /// Peers and transfer counters of the WireGuard interface of `(twin, network)`.
    fn wireguard_status(
        &self,
        twin: TwinId,
        network: &str,
    ) -> impl Future<Output = Result<WgStatus>> + Send;
}

/// Where [`LinuxNetworker`] keeps things and which tools it runs.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Prefix of every global name (empty on real hardware); see [`names::valid_prefix`].
    pub prefix: String,
    /// Where the state file goes (on the node's cache).
    pub state_dir: PathBuf,
    /// Where userspace WireGuard logs go.
    pub run_dir: PathBuf,
    /// The node's host namespace; `None` is zosd's own.
    pub host_netns: Option<PathBuf>,
    pub wireguard: WireguardMode,
    /// Seed of MACs that must differ between nodes (the node's public key, for example).
    pub mac_seed: String,
    pub nft: PathBuf,
    pub wg: PathBuf,
    pub boringtun: PathBuf,
}

impl NetworkConfig {
    /// Defaults: tools from `PATH` (boringtun also from `~/.cargo/bin`), auto WireGuard.
    pub fn new(prefix: &str, state_dir: PathBuf, run_dir: PathBuf, mac_seed: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            state_dir,
            run_dir,
            host_netns: None,
            wireguard: WireguardMode::Auto,
            mac_seed: mac_seed.to_string(),
            nft: find_program("nft"),
            wg: find_program("wg"),
            boringtun: find_program("boringtun-cli"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ipv4_pick_skips_taken() {
        let ip = |s: &str| FarmIp {
            ip: s.parse().unwrap(),
            gateway: "185.0.0.1".parse().unwrap(),
            contract_id: Some(1),
        };
        let reserved = [ip("185.0.0.10/24"), ip("185.0.0.11/24")];
        assert_eq!(
            pick_public_ipv4(&reserved, &[]).unwrap().ip.to_string(),
            "185.0.0.10/24"
        );
        assert_eq!(
            pick_public_ipv4(&reserved, &["185.0.0.10".parse().unwrap()])
                .unwrap()
                .ip
                .to_string(),
            "185.0.0.11/24"
        );
        assert!(
            pick_public_ipv4(
                &reserved,
                &["185.0.0.10".parse().unwrap(), "185.0.0.11".parse().unwrap()]
            )
            .is_none()
        );
    }
}
