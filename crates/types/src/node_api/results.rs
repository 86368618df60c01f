//! Typed result data of workloads: what `data` of a [`WorkloadResult`] holds once a workload
//! is `ok`, per workload type. The shapes are those the node stored as plain JSON before these
//! types, so result logs already in `provision.sqlite` read as they are; fields a result may
//! lack (an older node, a failed workload) default to empty.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::deployment::WorkloadResult;

/// Result data of a `zmachine` workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ZmachineResult {
    /// The machine's id on the node (`<twin>-<contract>-<name>`).
    pub id: String,
    /// Its address in its private network.
    pub ip: String,
    /// Its public IPv4 (with prefix), empty for none.
    pub public_ip: String,
    pub public_ip6: String,
    /// `vm` (a full image) or `container` (a flist booted by the node's kernel).
    pub mode: String,
    /// Where the node keeps its console log (`file://…`).
    pub console_url: String,
}

/// Result data of a `network` workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkResult {
    pub netid: String,
    /// This node's subnet of the network.
    pub subnet: String,
    pub gateway: String,
    pub wireguard_public_key: String,
    pub wireguard_listen_port: u16,
    /// `kernel` or `userspace`.
    pub backend: String,
}

/// Result data of a `zmount` workload (a virtual disk).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ZmountResult {
    pub volume_id: String,
}

/// Result data of a `volume` workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VolumeResult {
    pub id: String,
}

/// Result data of an `ip` workload: as in Zero-OS, plus the MAC the machine must use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpResult {
    /// IPv4 with prefix, empty for none.
    pub ip: String,
    pub gateway: String,
    pub ip6: String,
    pub gateway6: String,
    pub mac: String,
}

/// Result data of a `gateway-name-proxy` or `gateway-fqdn-proxy` workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayResult {
    /// The host name the node's gateway serves for it (`NAME.<node domain>`, or the FQDN).
    pub fqdn: String,
    /// The node's public address the name must resolve to.
    pub address: String,
}

impl WorkloadResult {
    /// Its data as `T` (one of this module's types); an error when the data has another shape.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.data)
    }
}
