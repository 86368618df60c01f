//! Virtual machines: QEMU processes that outlive zosd, supervised and adopted.
//!
//! A VM is made from a [`VmSpec`]: CPUs, memory, how it boots ([`Boot`]: our kernel and
//! initramfs with a `guest-init` seed appended, or the VM's own disk), virtiofs shares (one
//! `virtiofsd` per share and boot), virtio block disks with serials, and taps (made by the network
//! module, opened here by name). [`QemuVmm`] runs each VM as a detached QEMU process in its own
//! session and cgroup, records it in a versioned state file, restarts it with backoff when it
//! dies, and adopts it again after a restart of zosd. `MemoryVmm` (feature `fake`) is the fake
//! with the same rules. See `docs/vmm.md`.

mod cgroup;
#[cfg(feature = "conformance")]
pub mod conformance;
mod cpio;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod qemu;
mod qmp;
mod state;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zos_guest_init::seed::Seed;

pub use cpio::{append_seed, newc_archive};
#[cfg(any(test, feature = "fake"))]
pub use fake::MemoryVmm;
pub use qemu::{Accel, QemuVmm, VmmConfig};
pub use state::{STATE_DIR, STATE_VERSION};

/// Least memory a VM gets (less hangs Debian's kernel silently under TCG).
pub const MIN_VM_MEMORY: u64 = 128 << 20;
/// Most CPUs a VM gets.
pub const MAX_VM_CPUS: u8 = 64;

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The spec itself is wrong; nothing was made.
    #[error("vm spec {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no vm {0} on this node")]
    NotFound(String),
    #[error("vm {0} exists with a different spec")]
    Exists(String),
    #[error("vm {name} is {status}, not {want}")]
    State {
        name: String,
        status: VmStatus,
        want: &'static str,
    },
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} of vm {name} did not start: {log}")]
    Start {
        name: String,
        what: &'static str,
        log: String,
    },
    #[error("qmp of vm {name}: {reason}")]
    Qmp { name: String, reason: String },
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: String, reason: String },
    #[error(transparent)]
    StateFile(#[from] zos_runtime::StateError),
    #[error("{0}")]
    Internal(String),
}

/// Shorthand for VMM results.
pub type Result<T, E = VmmError> = std::result::Result<T, E>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> VmmError {
    VmmError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Boot {
    /// Container mode: a kernel (an uncompressed `vmlinux`, booted by PVH on `-M microvm`) and
    /// an initramfs, with the seed appended to the initramfs as a second cpio archive.
    Kernel {
        kernel: PathBuf,
        initramfs: PathBuf,
        /// Appended to `console=ttyS0 panic=-1`.
        #[serde(default)]
        cmdline: String,
        seed: Option<Box<Seed>>,
    },
    /// VM mode: the firmware boots the first disk (`-M q35`, SeaBIOS).
    Disk,
}

/// A host directory shared by virtiofs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The virtiofs tag the guest mounts.
    pub tag: String,
    pub path: PathBuf,
}

/// A virtio block device backed by a file or device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub path: PathBuf,
    /// The serial the guest finds it by (`/sys/block/*/serial`), at most 20 characters.
    pub serial: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A network interface: an existing tap opened by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub tap: String,
    /// `02:…` lower case.
    pub mac: String,
}

/// Everything a VM is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Unique on the node (a workload id): 1 to 64 of ASCII letters, digits, '-', '_', '.'.
    pub name: String,
    pub cpus: u8,
    /// Bytes, at least [`MIN_VM_MEMORY`], a whole number of MiB.
    pub memory: u64,
    pub boot: Boot,
    #[serde(default)]
    pub shares: Vec<Share>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
}

fn word(field: &str, v: &str, max: usize) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= max
        && !v.starts_with(['.', '-'])
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} must be 1 to {max} of ASCII letters, digits, '-', '_', '.'"),
        ))
    }
}

impl VmSpec {
    /// Refuses a kernel boot whose kernel or initramfs is not a file on this host (the node's
    /// guest image is not there, or not yet): every VMM checks it before it makes anything.
    pub fn check_boot_files(&self) -> Result<()> {
        let Boot::Kernel {
            kernel, initramfs, ..
        } = &self.boot
        else {
            return Ok(());
        };
        for (field, path) in [("boot.kernel", kernel), ("boot.initramfs", initramfs)] {
            if !path.is_file() {
                return Err(VmmError::Invalid {
                    field: field.into(),
                    reason: format!(
                        "{} does not exist: the node's guest image is not there (yet); \
                         see guest_flist= and scripts/build-guest.sh",
                        path.display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Checks the spec; what passes is safe to put on a QEMU command line.
    pub fn validate(&self) -> Result<()> {
        word("name", &self.name, 64)?;
        if self.cpus == 0 || self.cpus > MAX_VM_CPUS {
            return Err(invalid("cpus", format!("must be 1 to {MAX_VM_CPUS}")));
        }
        if self.memory < MIN_VM_MEMORY {
            return Err(invalid(
                "memory",
                format!("must be at least {} MiB", MIN_VM_MEMORY >> 20),
            ));
        }
        if !self.memory.is_multiple_of(1 << 20) {
            return Err(invalid("memory", "must be a whole number of MiB"));
        }
        match &self.boot {
            Boot::Kernel {
                kernel,
                initramfs,
                cmdline,
                seed,
            } => {
                for (f, p) in [("boot.kernel", kernel), ("boot.initramfs", initramfs)] {
                    if !p.is_absolute() {
                        return Err(invalid(f, format!("{} is not absolute", p.display())));
                    }
                }
                if cmdline.len() > 1024 || cmdline.contains(['\n', '\0']) {
                    return Err(invalid("boot.cmdline", "must be one line of at most 1 KiB"));
                }
                if let Some(s) = seed {
                    s.validate()
                        .map_err(|e| invalid(format!("boot.seed.{}", e.field), e.reason))?;
                }
            }
            Boot::Disk => {
                if self.disks.is_empty() {
                    return Err(invalid("disks", "a vm that boots its disk needs one"));
                }
            }
        }
        for (i, s) in self.shares.iter().enumerate() {
            word(&format!("shares[{i}].tag"), &s.tag, 36)?;
            if !s.path.is_absolute() {
                return Err(invalid(format!("shares[{i}].path"), "must be absolute"));
            }
            if self.shares[..i].iter().any(|o| o.tag == s.tag) {
                return Err(invalid(format!("shares[{i}].tag"), "is used twice"));
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            word(&format!("disks[{i}].serial"), &d.serial, 20)?;
            if !d.path.is_absolute() || d.path.to_string_lossy().contains(',') {
                return Err(invalid(
                    format!("disks[{i}].path"),
                    "must be absolute, without ','",
                ));
            }
            if self.disks[..i].iter().any(|o| o.serial == d.serial) {
                return Err(invalid(format!("disks[{i}].serial"), "is used twice"));
            }
        }
        for (i, n) in self.nics.iter().enumerate() {
            word(&format!("nics[{i}].tap"), &n.tap, 15)?;
            if !zos_guest_init::seed::valid_mac(&n.mac) {
                return Err(invalid(
                    format!("nics[{i}].mac"),
                    format!("{:?} is not a lower-case xx:xx:xx:xx:xx:xx MAC", n.mac),
                ));
            }
        }
        Ok(())
    }

    /// Memory in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.memory >> 20
    }
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    Running,
    /// Stopped by QMP `stop` (grace period); memory kept.
    Paused,
    /// Died; the supervisor starts it again after a backoff.
    Restarting,
    /// Shut down on request; stays down until started.
    Stopped,
}

impl std::fmt::Display for VmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        })
    }
}

/// A VM as the VMM sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub spec: VmSpec,
    pub status: VmStatus,
    /// The QEMU process while it runs.
    pub pid: Option<i32>,
    /// One `virtiofsd` per share, while the VM runs.
    pub virtiofsd: Vec<i32>,
    /// Times the supervisor started it again since it was created.
    pub restarts: u32,
    /// The console log (the guest's serial port).
    pub console_log: PathBuf,
    /// The cgroup (relative to each controller's root).
    pub cgroup: String,
}

/// What [`Vmm::reconcile`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmReconcile {
    /// VMs found running and kept (same process).
    pub adopted: Vec<String>,
    /// VMs whose process was gone and that were started again.
    pub restarted: Vec<String>,
    /// VMs that could not be brought back, with why.
    pub failed: Vec<String>,
}

/// What the node asks of its hypervisor: the life of VMs, and nothing else. The disks a VM
/// boots are prepared before (formatted, imaged, seeded) by the provisioning's images module.
///
/// Every call is idempotent: creating a VM that exists with the same spec answers it, deleting
/// one that is gone succeeds.
pub trait Vmm: Send + Sync {
    /// Makes and starts the VM (or answers it when it exists with the same spec).
    fn create(&self, spec: VmSpec) -> impl Future<Output = Result<VmInfo>> + Send;

    /// Stops the VM (clean shutdown, then kill) and removes everything made for it: processes,
    /// sockets, cgroup, console log, state.
    fn delete(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// The VM `name`, if this node has it.
    fn info(&self, name: &str) -> impl Future<Output = Result<Option<VmInfo>>> + Send;

    /// Every VM, by name.
    fn list(&self) -> impl Future<Output = Result<Vec<VmInfo>>> + Send;

    /// Freezes the VM's CPUs (QMP `stop`); it keeps its memory and devices.
    fn pause(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Undoes [`Self::pause`] (QMP `cont`).
    fn resume(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Asks the guest to power off, waits up to `timeout`, then kills it; the VM stays stopped
    /// (no restart) until [`Self::start`].
    fn shutdown(&self, name: &str, timeout: Duration) -> impl Future<Output = Result<()>> + Send;

    /// Starts a stopped VM.
    fn start(&self, name: &str) -> impl Future<Output = Result<VmInfo>> + Send;

    /// Whether the guest is up. A kernel-booted (container-mode) guest is up once its
    /// `guest-init` answers `ready` on the control channel (its entrypoint started); a
    /// disk-booted guest, which has no such agent, once QEMU runs. A VM that is not running
    /// (restarting, stopped, paused) is not up.
    fn guest_ready(&self, name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// The last `max` bytes of the VM's console log.
    fn console(&self, name: &str, max: usize) -> impl Future<Output = Result<String>> + Send;

    /// Brings back every recorded VM (zosd's start): adopts running QEMU processes, starts the
    /// others, and supervises them all from then on.
    fn reconcile(&self) -> impl Future<Output = Result<VmmReconcile>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> VmSpec {
        VmSpec {
            name: "7-1-vm".into(),
            cpus: 1,
            memory: 256 << 20,
            boot: Boot::Kernel {
                kernel: "/k/vmlinux".into(),
                initramfs: "/k/initramfs.cpio".into(),
                cmdline: String::new(),
                seed: None,
            },
            shares: vec![Share {
                tag: "vroot".into(),
                path: "/r".into(),
            }],
            disks: vec![Disk {
                path: "/d/disk".into(),
                serial: "zd0".into(),
                read_only: false,
            }],
            nics: vec![Nic {
                tap: "t0".into(),
                mac: "02:00:00:00:00:01".into(),
            }],
        }
    }

    #[test]
    fn specs_are_checked() {
        assert!(spec().validate().is_ok());
        type Edit = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("name", Box::new(|s| s.name = "a/b".into())),
            ("name", Box::new(|s| s.name = "-x".into())),
            ("cpus", Box::new(|s| s.cpus = 0)),
            ("memory", Box::new(|s| s.memory = 64 << 20)),
            ("memory", Box::new(|s| s.memory = (256 << 20) + 1)),
            (
                "shares[0].tag",
                Box::new(|s| s.shares[0].tag = "a b".into()),
            ),
            (
                "shares[0].path",
                Box::new(|s| s.shares[0].path = "r".into()),
            ),
            (
                "disks[0].serial",
                Box::new(|s| s.disks[0].serial = "x".repeat(21)),
            ),
            (
                "disks[0].path",
                Box::new(|s| s.disks[0].path = "/a,b".into()),
            ),
            ("nics[0].tap", Box::new(|s| s.nics[0].tap = "x".repeat(16))),
            ("nics[0].mac", Box::new(|s| s.nics[0].mac = "02:00".into())),
            (
                "disks",
                Box::new(|s| {
                    s.boot = Boot::Disk;
                    s.disks.clear();
                }),
            ),
        ];
        for (field, edit) in cases {
            let mut s = spec();
            edit(&mut s);
            match s.validate() {
                Err(VmmError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
