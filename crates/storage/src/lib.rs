//! Storage: pools on every empty disk, the node's cache, volumes, virtual disks and zdb devices.
//!
//! A node owns the empty disks it is allowed to use and turns each one into a btrfs *pool*,
//! labelled as ours, with quotas on. Pools made earlier are found again by their label. Every
//! pool is SSD or HDD, decided once (rotational flag, or a per-disk override) and kept in the pool.
//!
//! - The *cache* (the node's own state) is a subvolume on an SSD pool, limited by a quota that
//!   follows its usage. Without an SSD the node keeps its state on a small tmpfs and runs
//!   *limited*: it says so in its registration and takes no deployments.
//! - A *volume* is a subvolume with a qgroup limit; a *virtual disk* (zmount) a sparse file with
//!   copy-on-write off; a *zdb device* a subvolume on an HDD pool. They can grow, never shrink.
//! - Space is reserved, never over-provisioned: a pool's used space is the sum of its volume
//!   limits, virtual disk sizes, zdb data and cache quota.
//!
//! [`BtrfsStorage`] is the real implementation, `MemoryStorage` (feature `fake`) the fake; both
//! implement [`Storage`]. The agent starts storage with [`BtrfsStorage::start`]. See
//! `docs/storage.md`.

mod btrfs;
#[cfg(feature = "conformance")]
pub mod conformance;
mod discovery;
#[cfg(any(test, feature = "fake"))]
mod fake;
mod meta;
mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zos_types::capacity::{GIB, MIB};

pub use btrfs::BtrfsStorage;
pub use discovery::{
    BlockDevice, DiskContent, probe_content, scan_sysfs, skip_reason, sysfs_device,
};
#[cfg(any(test, feature = "fake"))]
pub use fake::MemoryStorage;
pub use meta::{POOL_META_FILE, POOL_META_VERSION, PoolMeta};
pub use rules::{
    MAX_SIZE, MIN_SIZE, next_cache_quota, owns_label, pick_pool, pool_label, validate_name,
};

/// SSD or HDD: decides what a pool is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// Solid state: the cache, volumes and virtual disks.
    Ssd,
    /// Rotating: zdb devices.
    Hdd,
}

impl fmt::Display for DiskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DiskKind::Ssd => "ssd",
            DiskKind::Hdd => "hdd",
        })
    }
}

impl FromStr for DiskKind {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ssd" => Ok(DiskKind::Ssd),
            "hdd" => Ok(DiskKind::Hdd),
            _ => Err(StorageError::Config(format!(
                "disk kind {s:?} is not ssd or hdd"
            ))),
        }
    }
}

/// Which block devices the node may own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// Every whole disk the kernel shows, except loop, ram, zram, optical, device-mapper, md,
    /// nbd, removable and USB devices (real hardware).
    Discover,
    /// Exactly these devices and nothing else (test hosts and devnets pass their loop devices).
    Only(Vec<PathBuf>),
}

/// A device given on the command line: `PATH` or `PATH:ssd` / `PATH:hdd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    /// Forces the kind of a new pool on this device (test hosts; loop devices look rotational).
    pub kind: Option<DiskKind>,
}

impl FromStr for DiskSpec {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, kind) = match s.rsplit_once(':') {
            Some((p, k)) if k.eq_ignore_ascii_case("ssd") || k.eq_ignore_ascii_case("hdd") => {
                (p, Some(k.parse()?))
            }
            _ => (s, None),
        };
        if !path.starts_with("/dev/") {
            return Err(StorageError::Config(format!(
                "disk {s:?} is not a device path like /dev/sdb or /dev/loop3:ssd"
            )));
        }
        Ok(DiskSpec {
            path: path.into(),
            kind,
        })
    }
}

/// How the cache quota follows usage: start at `initial`; at 60 % use or more add `step`; under
/// 20 % shrink to twice the use rounded up to `step`, never under `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub initial: u64,
    pub step: u64,
    pub min: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            initial: 5 * GIB,
            step: 5 * GIB,
            min: 5 * GIB,
        }
    }
}

/// Everything the real implementation needs to know.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The devices this node may own.
    pub devices: Devices,
    /// Kind of a new pool per device, over the rotational flag. A pool keeps the kind it was
    /// made with; an override that disagrees with it is ignored with a warning.
    pub kind_overrides: BTreeMap<PathBuf, DiskKind>,
    /// Pools are mounted at `<mount_root>/<label>` (`/mnt` on real hardware).
    pub mount_root: PathBuf,
    /// The node's prefix (empty on real hardware); pool labels are `<prefix>zos-<16 hex>`.
    pub prefix: String,
    /// Where the kernel's sysfs is (`/sys`); unit tests pass a fake tree.
    pub sysfs: PathBuf,
    pub cache: CachePolicy,
    /// Size of the tmpfs that holds the node's state when there is no SSD.
    pub tmpfs_size: u64,
}

impl StorageConfig {
    /// Real hardware: every disk, pools under `/mnt`, no prefix.
    pub fn host() -> Self {
        StorageConfig {
            devices: Devices::Discover,
            kind_overrides: BTreeMap::new(),
            mount_root: "/mnt".into(),
            prefix: String::new(),
            sysfs: "/sys".into(),
            cache: CachePolicy::default(),
            tmpfs_size: 500 * MIB,
        }
    }

    /// A test host or devnet node: exactly `disks`, pools under `mount_root`, names with `prefix`.
    pub fn only(disks: &[DiskSpec], mount_root: impl Into<PathBuf>, prefix: &str) -> Self {
        StorageConfig {
            devices: Devices::Only(disks.iter().map(|d| d.path.clone()).collect()),
            kind_overrides: disks
                .iter()
                .filter_map(|d| d.kind.map(|k| (d.path.clone(), k)))
                .collect(),
            mount_root: mount_root.into(),
            prefix: prefix.to_string(),
            ..StorageConfig::host()
        }
    }
}

/// A pool as the node reports it (`zos.storage.pools`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// The pool's label, also its directory under the mount root.
    pub name: String,
    pub kind: DiskKind,
    pub device: PathBuf,
    pub path: PathBuf,
    /// Bytes of the btrfs device.
    pub size: u64,
    /// Bytes reserved on it: volume limits, virtual disk sizes, zdb data and the cache quota.
    pub used: u64,
    /// Part of `used` the system keeps for itself (the cache quota).
    pub system: u64,
}

impl PoolInfo {
    /// Bytes still free for reservations.
    pub fn free(&self) -> u64 {
        self.size.saturating_sub(self.used)
    }
}

/// Storage figures for registration and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageCapacity {
    /// Total bytes of SSD pools.
    pub sru: u64,
    /// Total bytes of HDD pools.
    pub hru: u64,
    /// SSD bytes the system keeps (the cache quota).
    pub reserved_sru: u64,
    /// SSD bytes reserved, the system's included.
    pub used_sru: u64,
    /// HDD bytes reserved.
    pub used_hru: u64,
}

impl StorageCapacity {
    /// Sums pools by kind.
    pub fn from_pools(pools: &[PoolInfo]) -> Self {
        let mut c = StorageCapacity::default();
        for p in pools {
            match p.kind {
                DiskKind::Ssd => {
                    c.sru += p.size;
                    c.used_sru += p.used;
                    c.reserved_sru += p.system;
                }
                DiskKind::Hdd => {
                    c.hru += p.size;
                    c.used_hru += p.used;
                }
            }
        }
        c
    }
}

/// A volume: a subvolume with a size limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub pool: String,
    pub path: PathBuf,
    /// The limit, in bytes.
    pub size: u64,
    /// Bytes referenced by the volume (as last accounted by btrfs).
    pub used: u64,
}

/// A virtual disk (zmount): a sparse file with copy-on-write off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VDisk {
    pub name: String,
    pub pool: String,
    pub path: PathBuf,
    /// Apparent size, in bytes.
    pub size: u64,
    /// Bytes actually written (blocks allocated).
    pub allocated: u64,
}

/// Space for one zdb: a subvolume on an HDD pool; its id is the pool's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZdbDevice {
    pub id: String,
    pub path: PathBuf,
    /// Bytes of the pool.
    pub size: u64,
    /// Bytes the zdb data takes.
    pub used: u64,
    /// Bytes of the pool still free for reservations.
    pub free: u64,
}

/// Where the node keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "on")]
pub enum CacheBacking {
    /// A subvolume on an SSD pool.
    Pool {
        pool: String,
        /// The current quota, in bytes.
        quota: u64,
        /// Bytes in use.
        used: u64,
    },
    /// A tmpfs, lost at reboot: the node runs limited.
    Tmpfs { size: u64 },
}

/// The node's cache as reported in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInfo {
    /// The directory that holds the node's state.
    pub path: PathBuf,
    pub backing: CacheBacking,
}

/// What happened to one device at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum DiskState {
    /// A pool of ours, made now or found again.
    Pool {
        pool: String,
        kind: DiskKind,
        created: bool,
    },
    /// Holds data that is not ours: never touched.
    Foreign { reason: String },
    /// Not a disk the node may own (discovery only).
    Skipped { reason: String },
    /// Ours or empty, but it could not be used.
    Failed { error: String },
}

/// One device the node looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    pub device: PathBuf,
    pub size: u64,
    pub rotational: bool,
    #[serde(flatten)]
    pub state: DiskState,
}

/// What [`BtrfsStorage::start`] hands to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageStart {
    /// Where the node keeps its state (identity, databases, flist block cache).
    pub state_dir: PathBuf,
    /// Why the node cannot take deployments, if it cannot; goes into registration and status.
    pub limited: Option<String>,
    pub capacity: StorageCapacity,
    pub cache: CacheInfo,
    pub disks: Vec<DiskReport>,
}

/// Errors of the storage module.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "name {0:?} is not valid: use 1 to 128 of a-z, A-Z, 0-9, '.', '_', '-', ':', not starting with '.' or '-'"
    )]
    InvalidName(String),
    #[error("size {size} of {what} {name:?} is not between 1 MiB and 64 PiB")]
    InvalidSize {
        what: &'static str,
        name: String,
        size: u64,
    },
    #[error("{what} {name:?} already exists")]
    Exists { what: &'static str, name: String },
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name:?} cannot shrink from {current} to {requested} bytes")]
    Shrink {
        what: &'static str,
        name: String,
        current: u64,
        requested: u64,
    },
    #[error("no {kind} pool has {needed} bytes free for {what} (most free: {most_free})")]
    NoSpace {
        what: String,
        kind: DiskKind,
        needed: u64,
        most_free: u64,
    },
    #[error("the node runs limited and takes no deployments: {0}")]
    Limited(String),
    #[error("storage configuration: {0}")]
    Config(String),
    #[error("device {device}: {reason}")]
    Device { device: PathBuf, reason: String },
    #[error(transparent)]
    Meta(#[from] zos_runtime::StateError),
    #[error("{cmd} failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| StorageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Shorthand for storage results.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// What the provision engine and the reporters ask of storage.
///
/// Names of volumes and virtual disks are checked with [`validate_name`]. Creations pick the
/// pool of the right kind with the most free space and never reserve more than a pool holds.
/// Sizes grow and never shrink; a refused change leaves things as they were. Deleting what
/// does not exist succeeds.
pub trait Storage: Send + Sync {
    /// Every mounted pool with its size and reservations.
    fn pools(&self) -> impl Future<Output = Result<Vec<PoolInfo>>> + Send;
    /// SRU, HRU, the system's reservation and what is used.
    fn capacity(&self) -> impl Future<Output = Result<StorageCapacity>> + Send;
    /// Where the node keeps its state, and on what.
    fn cache(&self) -> impl Future<Output = Result<CacheInfo>> + Send;
    /// Why the node takes no deployments, if it takes none.
    fn limited(&self) -> Option<String>;

    /// Makes a volume of `size` bytes on an SSD pool.
    fn volume_create(&self, name: &str, size: u64) -> impl Future<Output = Result<Volume>> + Send;
    /// Raises a volume's limit to `size` (equal is a no-op, smaller is refused).
    fn volume_grow(&self, name: &str, size: u64) -> impl Future<Output = Result<Volume>> + Send;
    fn volume_delete(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn volume_get(&self, name: &str) -> impl Future<Output = Result<Option<Volume>>> + Send;
    fn volume_list(&self) -> impl Future<Output = Result<Vec<Volume>>> + Send;

    /// Makes a sparse virtual disk of `size` bytes on an SSD pool.
    fn disk_create(&self, name: &str, size: u64) -> impl Future<Output = Result<VDisk>> + Send;
    /// Raises a virtual disk's size to `size` (equal is a no-op, smaller is refused).
    fn disk_grow(&self, name: &str, size: u64) -> impl Future<Output = Result<VDisk>> + Send;
    fn disk_delete(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn disk_get(&self, name: &str) -> impl Future<Output = Result<Option<VDisk>>> + Send;
    fn disk_list(&self) -> impl Future<Output = Result<Vec<VDisk>>> + Send;

    /// Space for a new zdb on an HDD pool that has none yet and at least `min` bytes free.
    fn zdb_allocate(&self, min: u64) -> impl Future<Output = Result<ZdbDevice>> + Send;
    fn zdb_list(&self) -> impl Future<Output = Result<Vec<ZdbDevice>>> + Send;
    /// Deletes a zdb device and its data.
    fn zdb_release(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse() {
        let d: DiskSpec = "/dev/loop3:ssd".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/dev/loop3"));
        assert_eq!(d.kind, Some(DiskKind::Ssd));
        let d: DiskSpec = "/dev/sdb:HDD".parse().unwrap();
        assert_eq!(d.kind, Some(DiskKind::Hdd));
        let d: DiskSpec = "/dev/disk/by-path/pci-0000:00:1f.2-ata-1".parse().unwrap();
        assert_eq!(d.kind, None);
        assert_eq!(
            d.path,
            PathBuf::from("/dev/disk/by-path/pci-0000:00:1f.2-ata-1")
        );
        assert!("sdb".parse::<DiskSpec>().is_err());
        assert!("../../etc/passwd".parse::<DiskSpec>().is_err());
    }

    #[test]
    fn only_config_keeps_overrides() {
        let disks: Vec<DiskSpec> = ["/dev/loop1:ssd", "/dev/loop2:hdd", "/dev/loop3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let cfg = StorageConfig::only(&disks, "/tmp/n1", "n1-");
        assert_eq!(
            cfg.devices,
            Devices::Only(vec![
                "/dev/loop1".into(),
                "/dev/loop2".into(),
                "/dev/loop3".into()
            ])
        );
        assert_eq!(cfg.kind_overrides.len(), 2);
        assert_eq!(cfg.kind_overrides[Path::new("/dev/loop2")], DiskKind::Hdd);
    }

    #[test]
    fn capacity_sums_by_kind() {
        let pool = |kind, size, used, system| PoolInfo {
            name: "p".into(),
            kind,
            device: "/dev/x".into(),
            path: "/mnt/p".into(),
            size,
            used,
            system,
        };
        let c = StorageCapacity::from_pools(&[
            pool(DiskKind::Ssd, 100, 30, 10),
            pool(DiskKind::Ssd, 50, 5, 0),
            pool(DiskKind::Hdd, 1000, 7, 0),
        ]);
        assert_eq!(
            c,
            StorageCapacity {
                sru: 150,
                hru: 1000,
                reserved_sru: 10,
                used_sru: 35,
                used_hru: 7
            }
        );
    }
}
