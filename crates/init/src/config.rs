//! Where a boot finds and puts things, and which system-wide steps it takes ([`Boot`]), with the
//! node's defaults; shared by the boot sequence, the runtime and the live upgrade.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{cmdline, gate, modules, release, supervise};

/// Where the runtime lives in the root tmpfs.
pub const RUNTIME_DIR: &str = "/run/zos";
/// Where the flist mounter (`zos-flist-mount`, static or with its libraries) may be in the
/// initramfs; the first that exists is used.
pub const FLIST_MOUNTERS: [&str; 2] = ["/usr/bin/zos-flist-mount", "/usr/sbin/zos-flist-mount"];
/// The service list, in the runtime (`zos` flist); without it, [`default_services`].
pub const SERVICES: &str = "/usr/share/zos/services.json";
/// The size limit of the block cache of the runtime flists, in RAM.
pub const RUNTIME_CACHE_BYTES: u64 = 1 << 30;
/// Grace of a service after SIGTERM on power-off.
pub const GRACE: Duration = Duration::from_secs(10);

/// Where things are and which system-wide steps run: [`Boot::node`] on a node; tests run the
/// same sequence with their own paths and without the steps that would change the host
/// (`zos-init --boot-test CONFIG.json`, as PID 1 of PID, mount and network namespaces).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// The kernel command line.
    pub cmdline: PathBuf,
    /// The pinned release keys.
    pub keys: PathBuf,
    /// The kernel modules' root (`/lib/modules`); none: no module is loaded.
    pub modules_root: Option<PathBuf>,
    /// Early mounts, console, ctrl-alt-del and cgroups.
    pub system: bool,
    /// Set the system clock (else the skew is only reported).
    pub set_clock: bool,
    /// Where the runtime's flists, mounts and cache go.
    pub runtime_dir: PathBuf,
    /// The runtime's target, whose own content is the bottom layer (`/usr`).
    pub usr: PathBuf,
    /// Where the flist mounter may be.
    pub mounters: Vec<PathBuf>,
    /// Where the name servers are written.
    pub resolv_conf: PathBuf,
    /// Where the network interfaces are listed.
    pub sys_class_net: PathBuf,
    /// The interfaces to ask for a lease; empty: every wired one of `sys_class_net`.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Power off at the end (else exit 0).
    pub power_off: bool,
    /// Watch the ACPI power button.
    pub power_button: bool,
    /// Grace of a service after SIGTERM, in milliseconds.
    pub grace_ms: u64,
    /// The live upgrade's check period and health gate.
    #[serde(default)]
    pub upgrade: UpgradeSettings,
    /// Arguments added after a service's own, by service name, in every release: a namespace
    /// node's zosd flags (its grid, farm, disks, name prefix), which a node reads from its
    /// kernel command line. Empty on a node.
    #[serde(default)]
    pub service_args: BTreeMap<String, Vec<String>>,
    /// Environment every service of every release gets, under the release's own (which wins
    /// on the same name): a namespace node's `PATH` to the host's tools. Empty on a node.
    #[serde(default)]
    pub service_env: BTreeMap<String, String>,
}

impl Boot {
    /// The node's own.
    pub fn node() -> Self {
        Self {
            cmdline: PathBuf::from(cmdline::PROC_CMDLINE),
            keys: PathBuf::from(release::KEYS_PATH),
            modules_root: Some(PathBuf::from(modules::MODULES_ROOT)),
            system: true,
            set_clock: true,
            runtime_dir: PathBuf::from(RUNTIME_DIR),
            usr: PathBuf::from("/usr"),
            mounters: FLIST_MOUNTERS.iter().map(PathBuf::from).collect(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            sys_class_net: PathBuf::from("/sys/class/net"),
            interfaces: Vec::new(),
            power_off: true,
            power_button: true,
            grace_ms: GRACE.as_millis() as u64,
            upgrade: UpgradeSettings::default(),
            service_args: BTreeMap::new(),
            service_env: BTreeMap::new(),
        }
    }

    /// The service list in the runtime.
    pub fn services(&self) -> PathBuf {
        self.usr.join("share/zos/services.json")
    }
}

/// The services when the runtime has no list: zosd alone (it reads the kernel command line).
pub fn default_services(usr: &Path) -> Vec<supervise::Service> {
    vec![supervise::Service {
        name: "zosd".into(),
        exec: vec![usr.join("bin/zosd").display().to_string()],
        env: Default::default(),
        log: None,
        console: false,
    }]
}

/// How often and how patiently a node upgrades.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSettings {
    /// The periodic check, in seconds (±25 % jitter).
    pub check_secs: u64,
    /// The health gate's time, in seconds.
    pub gate_secs: u64,
}

impl Default for UpgradeSettings {
    fn default() -> Self {
        Self {
            check_secs: 900,
            gate_secs: gate::DEFAULT_TIME.as_secs(),
        }
    }
}
