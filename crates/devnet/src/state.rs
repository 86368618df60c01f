//! What a devnet is asked for ([`DevnetOptions`]) and what it made ([`DevnetState`], kept in
//! `<dir>/devnet.json` through [`StateFile`]), with the markers that recognise its processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zos_client::GridClient;
use zos_runtime::supervise::Marker;
use zos_runtime::{StateFile, Versioned};
use zos_types::boot::NodeArg;
use zos_types::{FarmId, Identity, NodeId, TwinId};

use crate::error::{DevnetError, Result};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// What `zos devnet up` is asked for.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Short name (1 to 5 of a-z, 0-9) that prefixes every namespace, link and node prefix.
    pub name: String,
    /// Where the state file, logs, keys and node state go.
    pub dir: PathBuf,
    pub nodes: usize,
    pub report_interval: Duration,
    pub grid_bin: PathBuf,
    pub zosd_bin: PathBuf,
    /// How long to wait for every node to be online before giving up.
    pub wait: Duration,
    /// The disks each node gets: sparse files on loop devices.
    pub disks: Vec<DiskPlan>,
    /// Node VMs booting the node image beside the namespace nodes (none when None).
    pub vms: Option<VmOptions>,
    /// The namespace nodes' zosd runs under zos-init from a release (none: zosd alone).
    pub supervised: Option<SupervisedOptions>,
    /// The grid bills contracts (none: `--no-billing`, the default).
    pub billing: Option<DevnetBilling>,
}

/// A devnet whose grid bills (`zos devnet up --billing-period SECS`): short periods and grace,
/// so that running out of money, grace and its end can be seen in minutes (docs/billing.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevnetBilling {
    /// Length of a billing period, seconds. Each period is billed as soon as it ends, and the
    /// grid looks for periods to bill every second.
    pub period_secs: u64,
    /// Seconds a contract stays in grace for lack of money before it is cancelled.
    pub grace_secs: u64,
    /// The most tokens a twin deposits to itself at once.
    pub faucet_tokens: u64,
}

impl DevnetBilling {
    /// Periods of `period_secs` and grace of `grace_secs`, with the devnet's usual faucet (1000
    /// tokens).
    pub fn new(period_secs: u64, grace_secs: u64) -> Self {
        Self {
            period_secs,
            grace_secs,
            faucet_tokens: FAUCET_TOKENS,
        }
    }
}

/// What a devnet's faucet gives a twin at most at once, in tokens.
pub const FAUCET_TOKENS: u64 = 1000;

/// Namespace nodes supervised by zos-init (`zos devnet up --supervised`): each node's zosd
/// runs from the devnet's signed dev release under `zos-init --node-test`, so it upgrades live
/// and rolls back like a node VM (see [`crate::supervised`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisedOptions {
    /// `zos-init`.
    pub init_bin: PathBuf,
    /// `zos-flist-mount`, which zos-init mounts the runtime flists with.
    pub mounter: PathBuf,
    /// The devnet's release key: it signs the releases the nodes run.
    pub release_key: PathBuf,
    /// The health gate after a switch, in seconds.
    pub gate_secs: u64,
    /// The periodic release check, in seconds (±25 % jitter); the grid's notice on the uplink
    /// comes sooner.
    pub check_secs: u64,
}

impl SupervisedOptions {
    /// With the devnet's short upgrade timings (the same as node VMs': a 120 s gate, a check
    /// every 20 s).
    pub fn new(init_bin: PathBuf, mounter: PathBuf, release_key: PathBuf) -> Self {
        Self {
            init_bin,
            mounter,
            release_key,
            gate_secs: 120,
            check_secs: 20,
        }
    }
}

/// The node VMs of a devnet (`zos devnet up --vm-nodes N`): each boots the node image through
/// the grid's boot service, as a server of a farm does.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub count: usize,
    /// The node image (`scripts/build-node.sh` output), built to trust `release_key`.
    pub image: PathBuf,
    /// The devnet's release key: it signs the release the VMs boot.
    pub release_key: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Sizes of each VM's sparse virtio disks.
    pub disks: Vec<u64>,
    /// How long to wait for every VM node to come online.
    pub wait: Duration,
    /// Extra kernel arguments of every VM node: by default short upgrade timings (a 120 s
    /// health gate, a check every 20 s), shorter on devnets than on farms.
    pub node_args: Vec<NodeArg>,
    /// Extra kernel arguments of single VMs (by 1-based index), over [`Self::node_args`]
    /// (an argument given here replaces the same key there).
    pub vm_args: BTreeMap<usize, Vec<NodeArg>>,
    /// How the VMs boot: QEMU's iPXE ROM by network (the default), or the farm's bootloader ISO.
    pub boot: VmBoot,
}

/// How a devnet's node VMs boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmBoot {
    /// QEMU's iPXE ROM on the NIC, DHCP naming the VM's bootloader script.
    #[default]
    Pxe,
    /// The farm's bootloader ISO (`zos farm bootloader --format iso`, with the VM's node
    /// arguments) as a CD-ROM; DHCP still from the devnet's dnsmasq.
    Iso,
}

impl VmOptions {
    /// `count` VMs of 3 GiB and 2 vCPUs with disks of 16 GiB (an SSD) and 32 GiB (an HDD). A
    /// node keeps max(10 %, 2 GiB) of its memory for itself, as v3 does: 2 GiB would leave
    /// nothing for workloads (a network resource takes 32 MiB).
    pub fn new(count: usize, image: PathBuf, release_key: PathBuf) -> Self {
        use zos_types::capacity::GIB;
        Self {
            count,
            image,
            release_key,
            memory_mib: 3072,
            vcpus: 2,
            disks: vec![16 * GIB, 32 * GIB],
            wait: Duration::from_secs(900),
            node_args: DEVNET_NODE_ARGS.to_vec(),
            vm_args: BTreeMap::new(),
            boot: VmBoot::Pxe,
        }
    }

    /// VM `index` (1-based) boots with `args` besides the devnet's, e.g. `[NodeArg::Debug]`
    /// for a debug shell on its console.
    pub fn with_args(mut self, index: usize, args: &[NodeArg]) -> Self {
        self.vm_args
            .entry(index)
            .or_default()
            .extend_from_slice(args);
        self
    }

    /// The extra kernel arguments of VM `index`.
    pub fn args_of(&self, index: usize) -> Vec<NodeArg> {
        let own = self.vm_args.get(&index).map_or(&[][..], Vec::as_slice);
        let mut args: Vec<NodeArg> = self
            .node_args
            .iter()
            .filter(|a| !own.iter().any(|o| o.key() == a.key()))
            .copied()
            .collect();
        for a in own {
            if !args.iter().any(|b| b.key() == a.key()) {
                args.push(*a);
            }
        }
        args
    }
}

/// The extra kernel arguments every devnet VM node gets by default.
pub const DEVNET_NODE_ARGS: [NodeArg; 2] = [NodeArg::UpgradeGate(120), NodeArg::UpgradeCheck(20)];

/// One disk every node of a devnet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// `ssd` or `hdd`.
    pub ssd: bool,
    pub size: u64,
}

impl DiskPlan {
    /// Two SSDs of 16 GiB and one HDD of 64 GiB (sparse: they cost what is written).
    pub fn defaults() -> Vec<DiskPlan> {
        use zos_types::capacity::GIB;
        vec![
            DiskPlan {
                ssd: true,
                size: 16 * GIB,
            },
            DiskPlan {
                ssd: true,
                size: 16 * GIB,
            },
            DiskPlan {
                ssd: false,
                size: 64 * GIB,
            },
        ]
    }
}

impl std::str::FromStr for DiskPlan {
    type Err = String;
    /// `ssd:16G` or `hdd:1T`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, size) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected ssd:SIZE or hdd:SIZE"))?;
        let ssd = match kind {
            "ssd" => true,
            "hdd" => false,
            _ => return Err(format!("{kind:?} is not ssd or hdd")),
        };
        let size = zos_types::capacity::parse_bytes(size)
            .filter(|b| *b >= 256 * zos_types::capacity::MIB)
            .ok_or_else(|| format!("{size:?} is not a size of at least 256M"))?;
        Ok(DiskPlan { ssd, size })
    }
}

/// A disk of a devnet node: a sparse file attached to a loop device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetDisk {
    pub file: PathBuf,
    #[serde(default)]
    pub device: Option<PathBuf>,
    pub ssd: bool,
}

/// One node of a devnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetNode {
    pub index: usize,
    pub netns: String,
    /// The root-namespace end of its veth pair, on the devnet bridge.
    pub host_if: String,
    /// Its address on the devnet bridge.
    pub address: String,
    /// The root-namespace end of its second NIC (`eth1`), on the public bridge.
    #[serde(default)]
    pub public_if: String,
    /// Its public address (the public config the farmer gives it).
    #[serde(default)]
    pub public_address: String,
    /// Prefix of the names the node makes in global spaces.
    pub prefix: String,
    pub state_dir: PathBuf,
    /// Where its storage pools are mounted.
    pub mount_root: PathBuf,
    #[serde(default)]
    pub disks: Vec<DevnetDisk>,
    pub log: PathBuf,
    pub pid: i32,
    #[serde(default)]
    pub twin_id: Option<TwinId>,
    #[serde(default)]
    pub node_id: Option<NodeId>,
    /// More arguments its zosd is started with (a test's ACME CA or DNS server), kept for
    /// its restarts.
    #[serde(default)]
    pub zosd_args: Vec<String>,
}

impl DevnetNode {
    /// The `zos-init --node-test` configuration of a supervised node.
    pub fn init_config(&self) -> PathBuf {
        self.state_dir.join("init.json")
    }

    /// The runtime directory of a supervised node: zos-init's flists and mounts, and the
    /// local channel its zosd writes.
    pub fn run_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }

    /// The domain of its public config: gateway names are `NAME.<this>`.
    pub fn domain(&self, devnet: &str) -> String {
        format!("n{}.{devnet}.test", self.index)
    }
}

/// A node VM of a devnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetVm {
    pub index: usize,
    /// QEMU's `-name`: it marks the VM's process.
    pub name: String,
    /// Its tap on the devnet bridge.
    pub tap: String,
    pub mac: String,
    pub dir: PathBuf,
    pub disks: Vec<PathBuf>,
    /// The serial console, as a file.
    pub serial: PathBuf,
    /// QEMU's QMP socket (power button, state).
    pub qmp: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// The bootloader ISO it boots from, when it does not boot by network.
    #[serde(default)]
    pub iso: Option<PathBuf>,
    pub pid: i32,
    #[serde(default)]
    pub twin_id: Option<TwinId>,
    #[serde(default)]
    pub node_id: Option<NodeId>,
}

/// Everything a devnet made, written to `<dir>/devnet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetState {
    pub version: u32,
    pub name: String,
    pub dir: PathBuf,
    /// The grid as users reach it (loopback).
    pub grid_url: String,
    /// The grid as nodes reach it (the bridge address).
    pub grid_node_url: String,
    pub grid_port: u16,
    pub grid_pid: i32,
    pub grid_bin: PathBuf,
    pub zosd_bin: PathBuf,
    pub report_interval_secs: u64,
    pub bridge: String,
    pub subnet: String,
    /// The devnet's stand-in for the public internet: nodes' second NICs, the farm's public IPs.
    #[serde(default)]
    pub public_bridge: String,
    #[serde(default)]
    pub public_subnet: String,
    pub farmer_key: PathBuf,
    pub farmer_twin: TwinId,
    pub farm_id: FarmId,
    pub nodes: Vec<DevnetNode>,
    /// Node VMs (`--vm-nodes`).
    #[serde(default)]
    pub vms: Vec<DevnetVm>,
    /// The DHCP server of the node VMs.
    #[serde(default)]
    pub dnsmasq_pid: i32,
    /// The release keys the grid serves runmode dev with (when there are node VMs or
    /// supervised nodes).
    #[serde(default)]
    pub release_keys: Option<PathBuf>,
    /// Set when the namespace nodes run under zos-init (`--supervised`).
    #[serde(default)]
    pub supervised: Option<SupervisedOptions>,
    /// Set when the grid bills (kept, so a restarted grid bills the same way).
    #[serde(default)]
    pub billing: Option<DevnetBilling>,
}

impl DevnetState {
    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join("devnet.json")
    }

    /// The state of the devnet kept in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::state_file(dir);
        StateFile::<Self>::new(&path)
            .load()?
            .ok_or(DevnetError::NoState(path))
    }

    /// Writes the state atomically (owner-only: it names the farmer's key).
    pub fn save(&self) -> Result<()> {
        Ok(StateFile::new(Self::state_file(&self.dir)).save(self)?)
    }

    /// What the grid's command line shows: its program and its data directory.
    pub fn grid_marker(&self) -> Marker {
        Marker::program(program_name(&self.grid_bin)).arg(self.dir.join("grid"))
    }

    /// What the command line of `node`'s zosd shows: its program and its mount root; of a
    /// supervised node, what its zos-init's shows: its program and its configuration.
    pub fn node_marker(&self, node: &DevnetNode) -> Marker {
        match &self.supervised {
            Some(s) => Marker::program(program_name(&s.init_bin)).arg(node.init_config()),
            None => Marker::program(program_name(&self.zosd_bin)).arg(&node.mount_root),
        }
    }

    /// How long a node's process may take to stop after SIGTERM: zosd's own grace, or a
    /// supervised node's zos-init stopping zosd and then everything else.
    pub fn node_grace(&self) -> Duration {
        match self.supervised {
            Some(_) => Duration::from_secs(30),
            None => Duration::from_secs(10),
        }
    }

    /// What the command line of node VM `vm`'s QEMU shows: its name.
    pub fn vm_marker(&self, vm: &DevnetVm) -> Marker {
        Marker::program("qemu-system").arg(&vm.name)
    }

    /// Whether `vm`'s QEMU runs.
    pub fn vm_running(&self, vm: &DevnetVm) -> bool {
        vm.pid > 0 && zos_runtime::supervise::alive(vm.pid, &self.vm_marker(vm))
    }

    /// The devnet's dnsmasq: its program and its pid file.
    pub fn dnsmasq_marker(&self) -> Marker {
        Marker::program("dnsmasq").arg(format!(
            "--pid-file={}",
            self.dir.join("dnsmasq.pid").display()
        ))
    }

    /// Whether the grid of this devnet runs (its recorded PID carries [`Self::grid_marker`]).
    pub fn grid_running(&self) -> bool {
        self.grid_pid > 0 && zos_runtime::supervise::alive(self.grid_pid, &self.grid_marker())
    }

    /// Whether `node`'s zosd runs (its recorded PID carries [`Self::node_marker`]).
    pub fn node_running(&self, node: &DevnetNode) -> bool {
        node.pid > 0 && zos_runtime::supervise::alive(node.pid, &self.node_marker(node))
    }

    pub fn farmer(&self) -> Result<Identity> {
        Ok(zos_client::keyfile::load_identity(&self.farmer_key)?)
    }

    /// A client of the grid as the farmer.
    pub fn farmer_client(&self) -> Result<GridClient> {
        Ok(GridClient::new(&self.grid_url)?
            .with_identity(self.farmer()?)
            .with_twin(self.farmer_twin))
    }
}

/// Checks a devnet name: 1 to 5 of a-z, 0-9 (it prefixes namespaces and link names, which
/// the kernel limits to 15 bytes).
pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 5
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(DevnetError::Name { name: name.into() });
    }
    Ok(())
}

impl Versioned for DevnetState {
    const VERSION: u32 = STATE_VERSION;
    const PROGRAM: &'static str = "zos";
}

/// The file name of `bin`, which its command line's first argument ends with.
fn program_name(bin: &Path) -> std::ffi::OsString {
    bin.file_name()
        .map_or_else(|| bin.as_os_str().to_owned(), |n| n.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_missing_or_newer_state_say_what_to_do() {
        assert!(validate_name("zdn1").is_ok());
        for bad in ["", "toolong", "Zdn", "z-n"] {
            assert!(
                matches!(validate_name(bad), Err(DevnetError::Name { .. })),
                "{bad:?}"
            );
        }
        let d = tempfile::tempdir().unwrap();
        let e = DevnetState::load(d.path()).unwrap_err();
        assert!(matches!(e, DevnetError::NoState(_)), "{e}");
        assert!(e.to_string().contains("is a devnet up?"), "{e}");
        std::fs::write(DevnetState::state_file(d.path()), r#"{"version": 9}"#).unwrap();
        let e = DevnetState::load(d.path()).unwrap_err();
        assert!(e.to_string().contains("upgrade zos"), "{e}");
    }
}

#[cfg(test)]
mod vm_args_tests {
    use super::*;

    #[test]
    fn every_vm_gets_short_upgrade_timings_and_one_vm_its_own_arguments() {
        let opts = VmOptions::new(2, "img".into(), "key".into())
            .with_args(1, &[NodeArg::Debug, NodeArg::UpgradeGate(300)]);
        assert_eq!(
            opts.args_of(1),
            [
                NodeArg::UpgradeCheck(20),
                NodeArg::Debug,
                NodeArg::UpgradeGate(300)
            ]
        );
        assert_eq!(opts.args_of(2), DEVNET_NODE_ARGS);
    }
}
