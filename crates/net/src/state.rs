//! What the network module made, kept in a versioned JSON file so that a restarted zosd
//! reconciles (adopts running WireGuard processes, re-checks links) instead of recreating.
//!
//! The file holds WireGuard private keys: it is a [`StateFile`], written with mode 0600,
//! atomically.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use zos_runtime::{StateFile, Versioned};
use zos_types::TwinId;
use zos_types::deployment::ContractId;
use zos_types::deployment::WorkloadId;
use zos_types::workload::Network;

use super::names::NetId;
use super::wireguard::WgBackend;
use super::{NetworkError, PublicSetup, VmLink};

/// Version of the state file this code writes.
pub const STATE_VERSION: u32 = 1;

/// File name of the state under the module's state directory.
pub const STATE_FILE: &str = "network.json";

/// A workload id as stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WlRef {
    pub twin: TwinId,
    pub contract: ContractId,
    pub name: String,
}

impl From<&WorkloadId> for WlRef {
    fn from(w: &WorkloadId) -> Self {
        Self {
            twin: w.twin,
            contract: w.contract,
            name: w.name.clone(),
        }
    }
}

impl WlRef {
    pub fn id(&self) -> WorkloadId {
        WorkloadId {
            twin: self.twin,
            contract: self.contract,
            name: self.name.clone(),
        }
    }
}

/// The node-level setup that was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(default)]
    pub public: Option<PublicSetup>,
}

/// One network resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NrRecord {
    pub netid: NetId,
    /// The `network` workload that made it.
    pub owner: WlRef,
    pub network: Network,
    /// Its transit slot in `ndmz` (address `100.127.<hi>.<lo>`).
    pub slot: u16,
    pub backend: WgBackend,
    pub wg_ifname: String,
    /// The boringtun process (userspace backend).
    #[serde(default)]
    pub pid: Option<i32>,
    /// The private key last applied to the interface.
    #[serde(default)]
    pub applied_key: Option<String>,
}

/// Which bridge a VM's port is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "snake_case")]
pub enum PortTarget {
    /// A network resource's bridge.
    Private { netid: NetId, network: String },
    /// The public bridge; the owner is the `ip` workload.
    Public,
}

/// A VM's interface on one of the node's bridges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    pub ifname: String,
    /// The workload the port belongs to (the machine; for public ports the `ip` workload).
    pub owner: WlRef,
    pub target: PortTarget,
    pub mac: [u8; 6],
    #[serde(default)]
    pub ipv4: Option<Ipv4Net>,
    #[serde(default)]
    pub gateway4: Option<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Option<Ipv6Net>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// Whether the link exists (taps and veths are made on attach).
    #[serde(default)]
    pub link: Option<VmLink>,
}

/// Everything the module persists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub node: Option<NodeRecord>,
    /// By network id.
    #[serde(default)]
    pub networks: BTreeMap<NetId, NrRecord>,
    /// By interface name (private and public ports).
    #[serde(default)]
    pub ports: BTreeMap<String, PortRecord>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            node: None,
            networks: BTreeMap::new(),
            ports: BTreeMap::new(),
        }
    }
}

impl Versioned for State {
    const VERSION: u32 = STATE_VERSION;
    const OLDEST: u32 = 0;
}

impl State {
    /// Reads the state at `path`; a missing file is an empty state. A file written by a newer
    /// version is refused rather than misread.
    pub fn load(path: &Path) -> Result<Self, NetworkError> {
        Ok(StateFile::new(path).load()?.unwrap_or_default())
    }

    /// Writes the state to `path` atomically (temporary file, fsync, rename, fsync of the
    /// directory), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), NetworkError> {
        Ok(StateFile::new(path).save(self)?)
    }

    /// The lowest transit slot no network resource holds.
    pub fn free_slot(&self) -> Option<u16> {
        let used: std::collections::BTreeSet<u16> =
            self.networks.values().map(|n| n.slot).collect();
        (super::names::SLOT_MIN..=super::names::SLOT_MAX).find(|s| !used.contains(s))
    }

    /// Listen ports of all network resources, sorted.
    pub fn wg_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .networks
            .values()
            .map(|n| n.network.wireguard_listen_port)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The network resource of `(twin, name)`.
    pub fn network(&self, twin: TwinId, name: &str) -> Option<&NrRecord> {
        self.networks.get(&NetId::new(twin, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_runtime::private::tmp_path;

    #[test]
    fn round_trip_and_newer_versions_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n/network.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let s = State {
            node: Some(NodeRecord { public: None }),
            ..State::default()
        };
        // A world-readable temporary file left by a crash does not lend its mode.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(tmp_path(&path), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp_path(&path), std::fs::Permissions::from_mode(0o644)).unwrap();
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, r#"{"version": 99}"#).unwrap();
        let e = State::load(&path).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
    }

    #[test]
    fn slots_are_reused() {
        let s = State::default();
        assert_eq!(s.free_slot(), Some(super::super::names::SLOT_MIN));
    }
}
