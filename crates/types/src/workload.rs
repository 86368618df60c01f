//! Workload types and their `data`: what each primitive is asked to be, and its rules.
//!
//! A [`crate::deployment::Workload`] carries its `type` and its `data` as raw JSON; [`WorkloadData::parse`]
//! turns them into one of the typed structs here (unknown fields refused), whose `validate` checks
//! the rules of the original Zero-OS and whose `capacity` is what the node reserves for it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use base64::Engine;
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::capacity::{Capacity, GIB, MIB};

/// A workload rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WorkloadError {
    pub field: String,
    pub reason: String,
}

pub(crate) fn werr(field: impl Into<String>, reason: impl Into<String>) -> WorkloadError {
    WorkloadError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The kinds of workload a deployment can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WorkloadType {
    #[serde(rename = "zmount")]
    Zmount,
    #[serde(rename = "volume")]
    Volume,
    #[serde(rename = "network")]
    Network,
    #[serde(rename = "ip")]
    Ip,
    #[serde(rename = "zmachine")]
    Zmachine,
    #[serde(rename = "zdb")]
    Zdb,
    #[serde(rename = "gateway-name-proxy")]
    GatewayNameProxy,
    #[serde(rename = "gateway-fqdn-proxy")]
    GatewayFqdnProxy,
    #[serde(rename = "zlogs")]
    Zlogs,
}

impl WorkloadType {
    pub const ALL: [WorkloadType; 9] = [
        Self::Zmount,
        Self::Volume,
        Self::Network,
        Self::Ip,
        Self::Zmachine,
        Self::Zdb,
        Self::GatewayNameProxy,
        Self::GatewayFqdnProxy,
        Self::Zlogs,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Zmount => "zmount",
            Self::Volume => "volume",
            Self::Network => "network",
            Self::Ip => "ip",
            Self::Zmachine => "zmachine",
            Self::Zdb => "zdb",
            Self::GatewayNameProxy => "gateway-name-proxy",
            Self::GatewayFqdnProxy => "gateway-fqdn-proxy",
            Self::Zlogs => "zlogs",
        }
    }

    /// Position in the order workloads are applied: disks and volumes first, then networks and
    /// addresses, then machines, then what uses machines. Removal runs in the reverse order.
    pub fn apply_order(&self) -> u8 {
        match self {
            Self::Zmount => 0,
            Self::Volume => 1,
            Self::Zdb => 2,
            Self::Network => 3,
            Self::Ip => 4,
            Self::Zmachine => 5,
            Self::Zlogs => 6,
            Self::GatewayNameProxy => 7,
            Self::GatewayFqdnProxy => 8,
        }
    }
}

impl fmt::Display for WorkloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkloadType {
    type Err = WorkloadError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| werr("type", format!("unknown workload type {s:?}")))
    }
}

/// Checks a workload or network name: 1 to 36 of a-z, A-Z, 0-9, `_` (36 is the virtio-fs tag limit).
pub fn validate_name(field: &str, name: &str) -> Result<(), WorkloadError> {
    let ok = (1..=36).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(werr(
            field,
            format!("{name:?} must be 1 to 36 of a-z, A-Z, 0-9, '_'"),
        ));
    }
    Ok(())
}

/// A virtual disk: a sparse file attached to a machine as a block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zmount {
    /// Bytes.
    pub size: u64,
}

/// A volume: a directory with a size limit, shared into machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Bytes.
    pub size: u64,
}

/// Largest disk or volume one workload may ask for.
pub const MAX_DISK_SIZE: u64 = crate::capacity::PIB;

fn check_size(size: u64) -> Result<(), WorkloadError> {
    if size == 0 {
        return Err(werr("size", "must be more than 0"));
    }
    if size > MAX_DISK_SIZE {
        return Err(werr(
            "size",
            format!("{size} is beyond the limit of {MAX_DISK_SIZE}"),
        ));
    }
    Ok(())
}

/// A private network resource on one node: its /24 of the network's /16, and WireGuard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The whole network, a /16 of private space: `10.20.0.0/16`.
    pub ip_range: Ipv4Net,
    /// This node's /24 inside it: `10.20.1.0/24`.
    pub subnet: Ipv4Net,
    /// Base64 of the 32-byte WireGuard private key of this node in this network.
    pub wireguard_private_key: String,
    pub wireguard_listen_port: u16,
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// Another member of the network: a node's resource, or a person's laptop (an access peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's /24.
    pub subnet: Ipv4Net,
    /// Base64 of the peer's 32-byte WireGuard public key.
    pub wireguard_public_key: String,
    pub allowed_ips: Vec<IpNet>,
    /// `host:port` where the peer listens; empty for peers that only dial in.
    #[serde(default)]
    pub endpoint: String,
}

fn wg_key(field: &str, key: &str) -> Result<(), WorkloadError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .map_err(|_| werr(field, "is not base64"))?;
    if raw.len() != 32 {
        return Err(werr(
            field,
            format!("a WireGuard key is 32 bytes, this is {}", raw.len()),
        ));
    }
    Ok(())
}

impl Network {
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.ip_range.prefix_len() != 16 || !self.ip_range.addr().is_private() {
            return Err(werr("ip_range", "must be a private /16, like 10.20.0.0/16"));
        }
        if self.ip_range.addr() != self.ip_range.network() {
            return Err(werr("ip_range", "must be the network address of its /16"));
        }
        if self.subnet.prefix_len() != 24
            || !self.ip_range.contains(&self.subnet)
            || self.subnet.addr() != self.subnet.network()
        {
            return Err(werr(
                "subnet",
                "must be a /24 inside ip_range, like 10.20.1.0/24",
            ));
        }
        wg_key("wireguard_private_key", &self.wireguard_private_key)?;
        if self.wireguard_listen_port == 0 {
            return Err(werr("wireguard_listen_port", "must not be 0"));
        }
        if self.peers.len() > 1024 {
            return Err(werr("peers", "more than 1024"));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let f = |x: &str| format!("peers[{i}].{x}");
            wg_key(&f("wireguard_public_key"), &p.wireguard_public_key)?;
            if p.allowed_ips.is_empty() {
                return Err(werr(f("allowed_ips"), "needs at least one"));
            }
            if p.subnet == self.subnet {
                return Err(werr(f("subnet"), "is this node's own subnet"));
            }
            if !p.endpoint.is_empty() && p.endpoint.parse::<std::net::SocketAddr>().is_err() {
                return Err(werr(
                    f("endpoint"),
                    format!("{:?} is not ip:port", p.endpoint),
                ));
            }
        }
        Ok(())
    }
}

/// Network settings of a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineNetwork {
    /// Name of an `ip` workload of the same deployment, for a public address; empty for none.
    #[serde(default)]
    pub public_ip: String,
    /// Yggdrasil is not offered by this implementation; must be false.
    #[serde(default)]
    pub planetary: bool,
    pub interfaces: Vec<MachineInterface>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineInterface {
    /// Name of the network (a `network` workload of the same twin).
    pub network: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeCapacity {
    pub cpu: u8,
    /// Bytes.
    pub memory: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Name of a `zmount` or `volume` workload of the same deployment.
    pub name: String,
    pub mountpoint: String,
}

/// A virtual machine booted from a flist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zmachine {
    /// The flist that holds the root file system (or a disk image): its URL, or `TWIN/NAME` /
    /// `NAME` of a flist on the grid's hub ([`crate::flistref::FlistRef`]).
    pub flist: String,
    pub network: MachineNetwork,
    /// Size of the writable root, bytes; 0 means the minimum.
    #[serde(default)]
    pub size: u64,
    pub compute_capacity: ComputeCapacity,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub entrypoint: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Not offered by this implementation; must be false.
    #[serde(default)]
    pub corex: bool,
    /// PCI devices to pass through; only on rented nodes.
    #[serde(default)]
    pub gpu: Vec<String>,
}

/// Least memory a machine may have.
pub const MIN_MACHINE_MEMORY: u64 = 250 * MIB;

/// What one network resource holds on its node, counted like any workload's capacity: a
/// namespace, a bridge, nftables tables and a WireGuard endpoint (a userspace WireGuard process
/// takes about 10 MiB; the rest is headroom for conntrack and buffers). See docs/network.md.
pub const NETWORK_RESOURCE_COST: Capacity = Capacity {
    cru: 0,
    mru: 32 * MIB,
    sru: 0,
    hru: 0,
};

impl Zmachine {
    /// The least root size for this machine: 500 MiB for small machines, 2 GiB from one compute
    /// unit (cpu × memory ≥ 8 GiB) up.
    pub fn min_root_size(&self) -> u64 {
        let cu = self.compute_capacity.cpu as u64 * self.compute_capacity.memory / (8 * GIB);
        if cu == 0 { 500 * MIB } else { 2 * GIB }
    }

    /// The root size the machine gets: what it asked for, at least the minimum.
    pub fn root_size(&self) -> u64 {
        self.size.max(self.min_root_size())
    }

    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.flist.len() > 2048 {
            return Err(werr("flist", "is longer than 2048 bytes"));
        }
        crate::flistref::FlistRef::parse(&self.flist).map_err(|e| werr("flist", e))?;
        if self.compute_capacity.cpu == 0 {
            return Err(werr("compute_capacity.cpu", "must be at least 1"));
        }
        if self.compute_capacity.memory < MIN_MACHINE_MEMORY {
            return Err(werr(
                "compute_capacity.memory",
                format!("must be at least {} MiB", MIN_MACHINE_MEMORY / MIB),
            ));
        }
        if self.compute_capacity.memory > crate::capacity::MAX_MRU {
            return Err(werr("compute_capacity.memory", "is beyond any machine"));
        }
        if self.size != 0 && self.size < self.min_root_size() {
            return Err(werr(
                "size",
                format!("must be 0 or at least {} bytes", self.min_root_size()),
            ));
        }
        if self.size > MAX_DISK_SIZE {
            return Err(werr("size", "is beyond the limit"));
        }
        if self.network.planetary {
            return Err(werr(
                "network.planetary",
                "yggdrasil is not offered on this grid",
            ));
        }
        if self.corex {
            return Err(werr("corex", "corex is not offered on this grid"));
        }
        if self.network.interfaces.len() != 1 {
            return Err(werr(
                "network.interfaces",
                "a machine has exactly one private interface",
            ));
        }
        for (i, nic) in self.network.interfaces.iter().enumerate() {
            validate_name(&format!("network.interfaces[{i}].network"), &nic.network)?;
            let last = nic.ip.octets()[3];
            if !nic.ip.is_private() || last < 2 || last == 255 {
                return Err(werr(
                    format!("network.interfaces[{i}].ip"),
                    "must be a private address .2 to .254 of the node's subnet (.1 is the gateway)",
                ));
            }
        }
        for (i, m) in self.mounts.iter().enumerate() {
            validate_name(&format!("mounts[{i}].name"), &m.name)?;
            let p = &m.mountpoint;
            let clean = p.starts_with('/')
                && p != "/"
                && p.len() <= 4096
                && !p.split('/').any(|c| c == ".." || c == ".");
            if !clean {
                return Err(werr(
                    format!("mounts[{i}].mountpoint"),
                    format!("{p:?} must be an absolute path other than /, without . or .."),
                ));
            }
        }
        if self.entrypoint.len() > 4096 {
            return Err(werr("entrypoint", "longer than 4096 bytes"));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(werr("env", format!("{k:?} is not a variable name")));
            }
        }
        Ok(())
    }
}

/// A public address for a machine of the same deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicIp {
    #[serde(default)]
    pub v4: bool,
    #[serde(default)]
    pub v6: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZdbMode {
    User,
    Seq,
}

/// A key-value namespace on a 0-db on an HDD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zdb {
    pub size: u64,
    pub mode: ZdbMode,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub public: bool,
}

/// A web gateway for `<name>.<node domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayNameProxy {
    pub name: String,
    #[serde(default)]
    pub tls_passthrough: bool,
    pub backends: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// A web gateway for a domain the user owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFqdnProxy {
    pub fqdn: String,
    #[serde(default)]
    pub tls_passthrough: bool,
    pub backends: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

fn check_backends(tls_passthrough: bool, backends: &[String]) -> Result<(), WorkloadError> {
    if backends.is_empty() || backends.len() > 64 {
        return Err(werr("backends", "needs 1 to 64 backends"));
    }
    for (i, b) in backends.iter().enumerate() {
        let f = format!("backends[{i}]");
        let host_port = if tls_passthrough {
            b.as_str()
        } else {
            b.strip_prefix("http://").ok_or_else(|| {
                werr(
                    &f,
                    "must be an http:// URL (or ip:port with tls_passthrough)",
                )
            })?
        };
        let host_port = host_port.split('/').next().unwrap_or_default();
        let ip: IpAddr = match host_port.parse::<std::net::SocketAddr>() {
            Ok(sa) => sa.ip(),
            Err(_) if !tls_passthrough => host_port
                .parse()
                .map_err(|_| werr(&f, format!("{b:?} must name an IP address")))?,
            Err(_) => return Err(werr(&f, format!("{b:?} must be ip:port"))),
        };
        if ip.is_loopback() || ip.is_unspecified() {
            return Err(werr(&f, "must not be a loopback or unspecified address"));
        }
    }
    Ok(())
}

/// Streams a machine's console log to a remote endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zlogs {
    /// Name of a `zmachine` of the same deployment.
    pub zmachine: String,
    /// `redis://`, `ws://` or `wss://` URL.
    pub output: String,
}

/// The typed `data` of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadData {
    Zmount(Zmount),
    Volume(Volume),
    Network(Network),
    Ip(PublicIp),
    Zmachine(Zmachine),
    Zdb(Zdb),
    GatewayNameProxy(GatewayNameProxy),
    GatewayFqdnProxy(GatewayFqdnProxy),
    Zlogs(Zlogs),
}

impl WorkloadData {
    /// Parses `data` for a workload of type `kind`; unknown fields are refused.
    pub fn parse(kind: WorkloadType, data: &serde_json::Value) -> Result<Self, WorkloadError> {
        fn from<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T, WorkloadError> {
            T::deserialize(v).map_err(|e| werr("data", e.to_string()))
        }
        Ok(match kind {
            WorkloadType::Zmount => Self::Zmount(from(data)?),
            WorkloadType::Volume => Self::Volume(from(data)?),
            WorkloadType::Network => Self::Network(from(data)?),
            WorkloadType::Ip => Self::Ip(from(data)?),
            WorkloadType::Zmachine => Self::Zmachine(from(data)?),
            WorkloadType::Zdb => Self::Zdb(from(data)?),
            WorkloadType::GatewayNameProxy => Self::GatewayNameProxy(from(data)?),
            WorkloadType::GatewayFqdnProxy => Self::GatewayFqdnProxy(from(data)?),
            WorkloadType::Zlogs => Self::Zlogs(from(data)?),
        })
    }

    pub fn kind(&self) -> WorkloadType {
        match self {
            Self::Zmount(_) => WorkloadType::Zmount,
            Self::Volume(_) => WorkloadType::Volume,
            Self::Network(_) => WorkloadType::Network,
            Self::Ip(_) => WorkloadType::Ip,
            Self::Zmachine(_) => WorkloadType::Zmachine,
            Self::Zdb(_) => WorkloadType::Zdb,
            Self::GatewayNameProxy(_) => WorkloadType::GatewayNameProxy,
            Self::GatewayFqdnProxy(_) => WorkloadType::GatewayFqdnProxy,
            Self::Zlogs(_) => WorkloadType::Zlogs,
        }
    }

    /// The data as canonical JSON (typed, so formatting and key order of the input do not matter).
    pub fn to_value(&self) -> serde_json::Value {
        let v = match self {
            Self::Zmount(d) => serde_json::to_value(d),
            Self::Volume(d) => serde_json::to_value(d),
            Self::Network(d) => serde_json::to_value(d),
            Self::Ip(d) => serde_json::to_value(d),
            Self::Zmachine(d) => serde_json::to_value(d),
            Self::Zdb(d) => serde_json::to_value(d),
            Self::GatewayNameProxy(d) => serde_json::to_value(d),
            Self::GatewayFqdnProxy(d) => serde_json::to_value(d),
            Self::Zlogs(d) => serde_json::to_value(d),
        };
        v.expect("workload data serializes")
    }

    /// Rules that concern this workload alone.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        match self {
            Self::Zmount(d) => check_size(d.size),
            Self::Volume(d) => check_size(d.size),
            Self::Network(d) => d.validate(),
            Self::Ip(d) => {
                if d.v4 || d.v6 {
                    Ok(())
                } else {
                    Err(werr("data", "ask for v4, v6 or both"))
                }
            }
            Self::Zmachine(d) => d.validate(),
            Self::Zdb(d) => {
                check_size(d.size)?;
                if d.password.len() > 128 {
                    return Err(werr("password", "longer than 128 bytes"));
                }
                Ok(())
            }
            Self::GatewayNameProxy(d) => {
                let ok = (1..=63).contains(&d.name.len())
                    && d.name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if !ok {
                    return Err(werr("name", "1 to 63 of a-z, A-Z, 0-9, '-', '_'"));
                }
                if let Some(n) = &d.network {
                    validate_name("network", n)?;
                }
                check_backends(d.tls_passthrough, &d.backends)
            }
            Self::GatewayFqdnProxy(d) => {
                let labels: Vec<&str> = d.fqdn.split('.').collect();
                let ok = d.fqdn.len() <= 253
                    && labels.len() >= 2
                    && labels.iter().all(|l| {
                        (1..=63).contains(&l.len())
                            && l.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    })
                    && labels.last().is_some_and(|tld| tld.len() >= 2);
                if !ok {
                    return Err(werr("fqdn", format!("{:?} is not a domain name", d.fqdn)));
                }
                if let Some(n) = &d.network {
                    validate_name("network", n)?;
                }
                check_backends(d.tls_passthrough, &d.backends)
            }
            Self::Zlogs(d) => {
                validate_name("zmachine", &d.zmachine)?;
                if !["redis://", "ws://", "wss://"]
                    .iter()
                    .any(|s| d.output.starts_with(s))
                {
                    return Err(werr("output", "must be a redis://, ws:// or wss:// URL"));
                }
                Ok(())
            }
        }
    }

    /// What the node reserves for this workload.
    pub fn capacity(&self) -> Capacity {
        match self {
            Self::Zmount(d) => Capacity {
                sru: d.size,
                ..Capacity::ZERO
            },
            Self::Volume(d) => Capacity {
                sru: d.size,
                ..Capacity::ZERO
            },
            Self::Zmachine(d) => Capacity {
                cru: d.compute_capacity.cpu as u64,
                mru: d.compute_capacity.memory,
                sru: d.root_size(),
                hru: 0,
            },
            Self::Zdb(d) => Capacity {
                hru: d.size,
                ..Capacity::ZERO
            },
            Self::Network(_) => NETWORK_RESOURCE_COST,
            Self::Ip(_)
            | Self::GatewayNameProxy(_)
            | Self::GatewayFqdnProxy(_)
            | Self::Zlogs(_) => Capacity::ZERO,
        }
    }

    /// Public IPv4 addresses this workload takes from the contract's reservation.
    pub fn public_ipv4(&self) -> u32 {
        matches!(self, Self::Ip(PublicIp { v4: true, .. })) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> String {
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    }

    fn machine() -> serde_json::Value {
        json!({
            "flist": "https://hub.example/alpine.fl",
            "network": {"interfaces": [{"network": "net1", "ip": "10.20.1.2"}]},
            "compute_capacity": {"cpu": 1, "memory": 512 * MIB},
            "mounts": [{"name": "data", "mountpoint": "/data"}],
            "env": {"B": "2", "A": "1"}
        })
    }

    #[test]
    fn every_type_parses_and_validates() {
        let cases = [
            ("zmount", json!({"size": GIB})),
            ("volume", json!({"size": GIB})),
            (
                "network",
                json!({"ip_range": "10.20.0.0/16", "subnet": "10.20.1.0/24", "wireguard_private_key": key(),
                "wireguard_listen_port": 6000, "peers": [{"subnet": "10.20.2.0/24", "wireguard_public_key": key(),
                "allowed_ips": ["10.20.2.0/24", "100.64.20.2/32"], "endpoint": "192.0.2.7:6000"}]}),
            ),
            ("ip", json!({"v4": true})),
            ("zmachine", machine()),
            (
                "zdb",
                json!({"size": GIB, "mode": "user", "password": "x", "public": false}),
            ),
            (
                "gateway-name-proxy",
                json!({"name": "web", "backends": ["http://10.20.1.2:8080"]}),
            ),
            (
                "gateway-fqdn-proxy",
                json!({"fqdn": "example.com", "tls_passthrough": true, "backends": ["10.20.1.2:443"]}),
            ),
            (
                "zlogs",
                json!({"zmachine": "vm1", "output": "ws://10.0.0.1:9000"}),
            ),
        ];
        for (t, data) in cases {
            let kind: WorkloadType = t.parse().unwrap();
            let d = WorkloadData::parse(kind, &data).unwrap_or_else(|e| panic!("{t}: {e}"));
            d.validate().unwrap_or_else(|e| panic!("{t}: {e}"));
            assert_eq!(d.kind(), kind);
            assert_eq!(WorkloadData::parse(kind, &d.to_value()).unwrap(), d);
        }
        assert!("vm".parse::<WorkloadType>().is_err());
    }

    #[test]
    fn unknown_fields_and_wrong_shapes_are_refused() {
        assert!(
            WorkloadData::parse(WorkloadType::Zmount, &json!({"size": 1, "extra": 2})).is_err()
        );
        assert!(WorkloadData::parse(WorkloadType::Zmount, &json!({"size": -1})).is_err());
        assert!(
            WorkloadData::parse(WorkloadType::Zdb, &json!({"size": 1, "mode": "weird"})).is_err()
        );
    }

    #[test]
    fn machine_rules() {
        let bad = |f: &dyn Fn(&mut serde_json::Value), field: &str| {
            let mut v = machine();
            f(&mut v);
            let d = WorkloadData::parse(WorkloadType::Zmachine, &v).unwrap();
            let e = d.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        bad(
            &|v| v["compute_capacity"]["cpu"] = json!(0),
            "compute_capacity.cpu",
        );
        bad(
            &|v| v["compute_capacity"]["memory"] = json!(100 * MIB),
            "compute_capacity.memory",
        );
        bad(&|v| v["size"] = json!(MIB), "size");
        bad(
            &|v| v["network"]["interfaces"] = json!([]),
            "network.interfaces",
        );
        bad(
            &|v| v["network"]["interfaces"][0]["ip"] = json!("10.20.1.1"),
            "network.interfaces[0].ip",
        );
        bad(
            &|v| v["mounts"][0]["mountpoint"] = json!("/data/../etc"),
            "mounts[0].mountpoint",
        );
        bad(&|v| v["flist"] = json!("/tmp/alpine.fl"), "flist");
        bad(&|v| v["flist"] = json!("x/alpine.fl"), "flist");
        bad(&|v| v["flist"] = json!("alp ine"), "flist");
        for ok in ["alpine", "1/alpine.fl", "http://hub:8080/a.fl"] {
            let mut v = machine();
            v["flist"] = json!(ok);
            WorkloadData::parse(WorkloadType::Zmachine, &v).unwrap();
        }
        let m = WorkloadData::parse(WorkloadType::Zmachine, &machine()).unwrap();
        assert_eq!(
            m.capacity(),
            Capacity {
                cru: 1,
                mru: 512 * MIB,
                sru: 500 * MIB,
                hru: 0
            }
        );
    }

    #[test]
    fn network_rules() {
        let net = |range: &str, subnet: &str, key: &str, port: u16| {
            WorkloadData::Network(Network {
                ip_range: range.parse().unwrap(),
                subnet: subnet.parse().unwrap(),
                wireguard_private_key: key.into(),
                wireguard_listen_port: port,
                peers: vec![],
            })
            .validate()
        };
        net("10.20.0.0/16", "10.20.1.0/24", &key(), 1).unwrap();
        assert_eq!(
            net("8.8.0.0/16", "8.8.1.0/24", &key(), 1)
                .unwrap_err()
                .field,
            "ip_range"
        );
        assert_eq!(
            net("10.20.0.0/16", "10.21.1.0/24", &key(), 1)
                .unwrap_err()
                .field,
            "subnet"
        );
        assert_eq!(
            net("10.20.0.0/16", "10.20.1.0/24", "abc", 1)
                .unwrap_err()
                .field,
            "wireguard_private_key"
        );
        assert_eq!(
            net("10.20.0.0/16", "10.20.1.0/24", &key(), 0)
                .unwrap_err()
                .field,
            "wireguard_listen_port"
        );
    }

    #[test]
    fn names() {
        validate_name("n", "vm_1").unwrap();
        for bad in ["", "a-b", "a/b", "..", &"x".repeat(37)] {
            assert!(validate_name("n", bad).is_err(), "{bad}");
        }
    }
}
