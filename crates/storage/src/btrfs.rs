//! The real storage: btrfs pools on block devices, driven through btrfs-progs and a few syscalls.
//!
//! Layout of a pool mounted at `<mount_root>/<label>`:
//!
//! ```text
//! .zos-pool.json        version and kind (PoolMeta)
//! zos-cache/            subvolume: the node's state, with a quota (one SSD pool only)
//! volumes/<name>        subvolumes with a qgroup limit
//! vdisks/<name>         sparse files, copy-on-write off (the directory too)
//! zdb/                  subvolume for one zdb (HDD pools)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zos_runtime::error_chain;

use nix::mount::MsFlags;
use tokio::process::Command;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};
use zos_types::capacity::human_bytes;

use super::discovery::{self, BlockDevice, DiskContent};
use super::meta::PoolMeta;
use super::rules::{self, is_zos_label, no_space, owns_label, pick_pool, pool_label};
use super::{
    CacheBacking, CacheInfo, Devices, DiskKind, DiskReport, DiskState, PoolInfo, Result, Storage,
    StorageCapacity, StorageConfig, StorageError, StorageStart, VDisk, Volume, ZdbDevice,
};

const CACHE: &str = "zos-cache";
const VOLUMES: &str = "volumes";
const VDISKS: &str = "vdisks";
const ZDB: &str = "zdb";
const FS_NOCOW_FL: libc::c_int = 0x0080_0000;

/// A mounted pool of ours.
#[derive(Debug, Clone)]
struct Pool {
    label: String,
    kind: DiskKind,
    device: PathBuf,
    path: PathBuf,
    size: u64,
}

#[derive(Debug, Clone)]
enum Cache {
    Pool { label: String, path: PathBuf },
    Tmpfs { path: PathBuf, size: u64 },
}

impl Cache {
    fn path(&self) -> &Path {
        match self {
            Cache::Pool { path, .. } | Cache::Tmpfs { path, .. } => path,
        }
    }
}

#[derive(Debug)]
struct Inner {
    pools: Vec<Pool>,
}

/// The real [`Storage`]: btrfs pools on the disks the node owns.
#[derive(Debug)]
pub struct BtrfsStorage {
    cfg: StorageConfig,
    cache: Cache,
    limited: Option<String>,
    disks: Vec<DiskReport>,
    inner: Mutex<Inner>,
}

/// One row of `btrfs qgroup show -re --raw`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Qgroup {
    referenced: u64,
    max_referenced: Option<u64>,
}

/// A pool with what it holds, read from the file system.
#[derive(Debug)]
struct Scan {
    info: PoolInfo,
    volumes: Vec<Volume>,
    disks: Vec<VDisk>,
    /// Bytes the zdb subvolume takes, when there is one.
    zdb: Option<u64>,
    /// Quota and usage of the cache subvolume, when it is on this pool.
    cache: Option<(u64, u64)>,
}

impl Scan {
    fn zdb_device(&self) -> Option<ZdbDevice> {
        self.zdb.map(|used| ZdbDevice {
            id: self.info.name.clone(),
            path: self.info.path.join(ZDB),
            size: self.info.size,
            used,
            free: self.info.free(),
        })
    }
}

fn display_cmd(program: &str, args: &[&OsStr]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command and returns its standard output; a non-zero exit is an error with its stderr.
async fn run(program: &str, args: &[&OsStr]) -> Result<String> {
    let cmd = display_cmd(program, args);
    debug!(cmd = %cmd, "running");
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|source| StorageError::Io {
            op: "running",
            path: PathBuf::from(program),
            source,
        })?;
    if !out.status.success() {
        return Err(StorageError::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn btrfs(args: &[&OsStr]) -> Result<String> {
    run("btrfs", args).await
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Parses `btrfs qgroup show -re --raw` into path → qgroup (stale qgroups left out).
fn parse_qgroups(text: &str) -> HashMap<String, Qgroup> {
    let mut map = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[0].contains('/') || f[0].starts_with('-') {
            continue;
        }
        let (Ok(referenced), max) = (f[1].parse::<u64>(), f[3]) else {
            continue;
        };
        let path = f[5..].join(" ");
        if path.starts_with('<') {
            continue;
        }
        map.insert(
            path,
            Qgroup {
                referenced,
                max_referenced: max.parse().ok(),
            },
        );
    }
    map
}

async fn qgroups(root: &Path, sync: bool) -> Result<HashMap<String, Qgroup>> {
    let mut args = vec![os("qgroup"), os("show"), os("-re"), os("--raw")];
    if sync {
        args.push(os("--sync"));
    }
    args.push(root.as_os_str());
    Ok(parse_qgroups(&btrfs(&args).await?))
}

/// Total bytes of the btrfs devices, from `btrfs filesystem show --raw`.
fn parse_fs_size(text: &str) -> Option<u64> {
    let sizes: Vec<u64> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("devid"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "size")?;
            f.get(i + 1)?.parse().ok()
        })
        .collect();
    (!sizes.is_empty()).then(|| sizes.iter().sum())
}

fn random_u64() -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn get_flags(file: &File) -> std::io::Result<libc::c_int> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which lives for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

/// Turns copy-on-write off (`chattr +C`); on a file it only works while the file is empty.
fn set_nocow(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(StorageError::io("opening", path))?;
    let flags = get_flags(&file).map_err(StorageError::io("reading flags of", path))?;
    if flags & FS_NOCOW_FL == 0 {
        let new = flags | FS_NOCOW_FL;
        // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, which lives for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &new) };
        if r < 0 {
            return Err(StorageError::io("setting no-copy-on-write on", path)(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// True when copy-on-write is off for this file.
pub(crate) fn is_nocow(path: &Path) -> std::io::Result<bool> {
    Ok(get_flags(&File::open(path)?)? & FS_NOCOW_FL != 0)
}

fn vdisk_of(pool: &str, path: PathBuf) -> Option<VDisk> {
    let name = path.file_name()?.to_str()?.to_string();
    rules::validate_name(&name).ok()?;
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some(VDisk {
        name,
        pool: pool.to_string(),
        size: meta.len(),
        allocated: meta.blocks() * 512,
        path,
    })
}

fn dir_names(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut names = Vec::new();
            for e in rd {
                let e = e.map_err(StorageError::io("listing", dir))?;
                if let Some(n) = e.file_name().to_str()
                    && rules::validate_name(n).is_ok()
                {
                    names.push(n.to_string());
                }
            }
            names.sort();
            Ok(names)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StorageError::io("listing", dir)(e)),
    }
}

async fn scan_pool(pool: &Pool, sync: bool) -> Result<Scan> {
    let q = qgroups(&pool.path, sync).await?;
    let limit_or_used = |g: &Qgroup| g.max_referenced.unwrap_or(g.referenced);
    let mut used = 0u64;
    let mut volumes = Vec::new();
    for name in dir_names(&pool.path.join(VOLUMES))? {
        let g = q.get(&format!("{VOLUMES}/{name}"));
        let size = g.map(limit_or_used).unwrap_or(0);
        used = used.saturating_add(size);
        volumes.push(Volume {
            path: pool.path.join(VOLUMES).join(&name),
            pool: pool.label.clone(),
            size,
            used: g.map(|g| g.referenced).unwrap_or(0),
            name,
        });
    }
    let mut disks = Vec::new();
    for name in dir_names(&pool.path.join(VDISKS))? {
        if let Some(d) = vdisk_of(&pool.label, pool.path.join(VDISKS).join(&name)) {
            used = used.saturating_add(d.size);
            disks.push(d);
        }
    }
    let zdb = pool
        .path
        .join(ZDB)
        .is_dir()
        .then(|| q.get(ZDB).map(limit_or_used).unwrap_or(0));
    used = used.saturating_add(zdb.unwrap_or(0));
    let cache = pool.path.join(CACHE).is_dir().then(|| {
        q.get(CACHE)
            .map(|g| (limit_or_used(g), g.referenced))
            .unwrap_or((0, 0))
    });
    let system = cache.map(|c| c.0).unwrap_or(0);
    used = used.saturating_add(system);
    Ok(Scan {
        info: PoolInfo {
            name: pool.label.clone(),
            kind: pool.kind,
            device: pool.device.clone(),
            path: pool.path.clone(),
            size: pool.size,
            used,
            system,
        },
        volumes,
        disks,
        zdb,
        cache,
    })
}

async fn scan_all(pools: &[Pool]) -> Result<Vec<Scan>> {
    let mut out = Vec::with_capacity(pools.len());
    for p in pools {
        out.push(scan_pool(p, false).await?);
    }
    Ok(out)
}

fn infos(scans: &[Scan]) -> Vec<PoolInfo> {
    scans.iter().map(|s| s.info.clone()).collect()
}

fn find_volume<'a>(scans: &'a [Scan], name: &str) -> Option<(usize, &'a Volume)> {
    scans
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.volumes.iter().find(|v| v.name == name).map(|v| (i, v)))
}

fn find_disk<'a>(scans: &'a [Scan], name: &str) -> Option<(usize, &'a VDisk)> {
    scans
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.disks.iter().find(|d| d.name == name).map(|d| (i, d)))
}

/// Mounts a btrfs device at `target`, or accepts it already mounted there; true when it
/// mounted it now.
fn mount_btrfs(device: &Path, target: &Path) -> Result<bool> {
    std::fs::create_dir_all(target).map_err(StorageError::io("creating", target))?;
    if let Some(m) = discovery::read_mountinfo()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target)
    {
        if m.fstype == "btrfs" && discovery::same_device(&m.source, device) {
            debug!(device = %device.display(), path = %target.display(), "pool already mounted");
            return Ok(false);
        }
        return Err(StorageError::Device {
            device: device.to_path_buf(),
            reason: format!(
                "{} is already mounted from {} ({})",
                target.display(),
                m.source,
                m.fstype
            ),
        });
    }
    nix::mount::mount(
        Some(device),
        target,
        Some("btrfs"),
        MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| StorageError::io("mounting on", target)(e.into()))?;
    Ok(true)
}

/// Mounts a tmpfs of `size` bytes at `target`, or accepts one already there.
fn mount_tmpfs(target: &Path, size: u64) -> Result<()> {
    std::fs::create_dir_all(target).map_err(StorageError::io("creating", target))?;
    if let Some(m) = discovery::read_mountinfo()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == target)
    {
        if m.fstype == "tmpfs" {
            return Ok(());
        }
        return Err(StorageError::Config(format!(
            "{} is already mounted from {} ({})",
            target.display(),
            m.source,
            m.fstype
        )));
    }
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={size},mode=0700").as_str()),
    )
    .map_err(|e| StorageError::io("mounting tmpfs on", target)(e.into()))
}

/// Refuses a device some other holder has open exclusively (mounted, in a RAID, in use).
fn check_unclaimed(device: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(device)
        .map(drop)
        .map_err(|e| StorageError::Device {
            device: device.to_path_buf(),
            reason: format!("is in use ({e})"),
        })
}

impl BtrfsStorage {
    /// Brings storage up: finds the devices the node may own, makes a pool on each empty one,
    /// finds and mounts the pools made earlier, and prepares the cache (a subvolume on the
    /// SSD pool with the most room, or a tmpfs and a `limited` reason without one).
    ///
    /// Disks holding anything else are reported and never written to. Only a bad
    /// configuration or an unusable mount root is an error; a disk that fails is reported.
    pub async fn start(cfg: StorageConfig) -> Result<(BtrfsStorage, StorageStart)> {
        check_config(&cfg)?;
        std::fs::create_dir_all(&cfg.mount_root)
            .map_err(StorageError::io("creating", &cfg.mount_root))?;
        let mut disks = Vec::new();
        let candidates = candidates(&cfg, &mut disks)?;
        let pools = make_pools(&cfg, candidates, &mut disks).await;
        let (cache, limited) = prepare_cache(&cfg, &pools).await?;
        let storage = BtrfsStorage {
            cfg,
            cache,
            limited,
            disks,
            inner: Mutex::new(Inner { pools }),
        };
        let capacity = storage.capacity().await?;
        let cache = storage.cache().await?;
        if let Some(reason) = &storage.limited {
            warn!(reason = %reason, state_dir = %cache.path.display(), "storage runs limited");
        }
        let start = StorageStart {
            state_dir: cache.path.clone(),
            limited: storage.limited.clone(),
            capacity,
            cache,
            disks: storage.disks.clone(),
        };
        Ok((storage, start))
    }

    /// What start found on each device.
    pub fn disk_reports(&self) -> &[DiskReport] {
        &self.disks
    }

    /// The configuration storage runs with.
    pub fn config(&self) -> &StorageConfig {
        &self.cfg
    }

    /// Moves the cache quota after its usage ([`rules::next_cache_quota`]); run it every few
    /// minutes. A growth the pool has no room for is skipped with a warning.
    pub async fn cache_adjust(&self) -> Result<CacheInfo> {
        let Cache::Pool { label, path } = &self.cache else {
            return self.cache().await;
        };
        let inner = self.inner.lock().await;
        let Some(pool) = inner.pools.iter().find(|p| &p.label == label) else {
            return self.cache_locked(&inner).await;
        };
        let scan = scan_pool(pool, true).await?;
        let (quota, used) = scan.cache.unwrap_or((0, 0));
        let next = rules::next_cache_quota(quota, used, &self.cfg.cache);
        if next > quota && next - quota > scan.info.free() {
            warn!(pool = %label, quota, used, wanted = next, free = scan.info.free(),
                  "cache is filling up but its pool has no room to grow it");
        } else if next != quota {
            btrfs(&[
                os("qgroup"),
                os("limit"),
                os(&next.to_string()),
                path.as_os_str(),
            ])
            .await?;
            info!(pool = %label, used, from = quota, to = next, "cache quota changed");
        }
        self.cache_locked(&inner).await
    }

    async fn cache_locked(&self, inner: &Inner) -> Result<CacheInfo> {
        let backing = match &self.cache {
            Cache::Tmpfs { size, .. } => CacheBacking::Tmpfs { size: *size },
            Cache::Pool { label, .. } => {
                let pool = inner.pools.iter().find(|p| &p.label == label);
                let (quota, used) = match pool {
                    Some(p) => scan_pool(p, false).await?.cache.unwrap_or((0, 0)),
                    None => (0, 0),
                };
                CacheBacking::Pool {
                    pool: label.clone(),
                    quota,
                    used,
                }
            }
        };
        Ok(CacheInfo {
            path: self.cache.path().to_path_buf(),
            backing,
        })
    }

    fn check_limited(&self) -> Result<()> {
        match &self.limited {
            Some(reason) => Err(StorageError::Limited(reason.clone())),
            None => Ok(()),
        }
    }
}

enum Adopt {
    Foreign(String),
    Failed(StorageError),
}

impl From<StorageError> for Adopt {
    fn from(e: StorageError) -> Self {
        Adopt::Failed(e)
    }
}

/// Turns one device into a pool of ours: found again, or made on an empty disk.
async fn adopt(
    cfg: &StorageConfig,
    dev: &BlockDevice,
    kind_override: Option<DiskKind>,
    pools: &[Pool],
) -> std::result::Result<(Pool, bool), Adopt> {
    let (label, created) = claim(cfg, dev, pools).await?;
    let path = cfg.mount_root.join(&label);
    let mounted_now = mount_btrfs(&dev.path, &path)?;
    // Read what the pool is before changing anything in it: a pool this build cannot read
    // (written by a newer zosd) is left as it was.
    let meta = match PoolMeta::load(&path) {
        Ok(meta) => meta,
        Err(e) => {
            if mounted_now {
                let _ = nix::mount::umount(&path);
            }
            return Err(e.into());
        }
    };
    btrfs(&[os("quota"), os("enable"), path.as_os_str()]).await?;
    let kind = pool_kind(&path, &label, meta, dev, kind_override)?;
    let shown = btrfs(&[os("filesystem"), os("show"), os("--raw"), path.as_os_str()]).await?;
    let size = parse_fs_size(&shown).ok_or_else(|| StorageError::Device {
        device: dev.path.clone(),
        reason: "btrfs filesystem show gave no device size".into(),
    })?;
    Ok((
        Pool {
            label,
            kind,
            device: dev.path.clone(),
            path,
            size,
        },
        created,
    ))
}

/// The label of the pool on `dev`: one of ours found again (and not a copy of one in
/// `pools`), or a new pool made on an empty disk (answered with `true`); anything else is
/// foreign.
async fn claim(
    cfg: &StorageConfig,
    dev: &BlockDevice,
    pools: &[Pool],
) -> std::result::Result<(String, bool), Adopt> {
    match discovery::probe_content(dev).await? {
        DiskContent::Foreign(reason) => Err(Adopt::Foreign(reason)),
        DiskContent::Btrfs { label } if owns_label(&cfg.prefix, &label) => {
            if let Some(other) = pools.iter().find(|p| p.label == label) {
                return Err(Adopt::Foreign(format!(
                    "btrfs pool {label} has the same label as the pool on {} (a copy?)",
                    other.device.display()
                )));
            }
            Ok((label, false))
        }
        DiskContent::Btrfs { label } if is_zos_label(&label) => Err(Adopt::Foreign(format!(
            "holds pool {label} of another zos node"
        ))),
        DiskContent::Btrfs { label } => Err(Adopt::Foreign(format!(
            "holds a btrfs file system labelled {label:?}"
        ))),
        DiskContent::Empty => {
            check_unclaimed(&dev.path)?;
            let random =
                random_u64().map_err(StorageError::io("reading", Path::new("/dev/urandom")))?;
            let label = pool_label(&cfg.prefix, random);
            info!(device = %dev.path.display(), pool = %label, size = dev.size, "making a pool on an empty disk");
            run(
                "mkfs.btrfs",
                &[os("-q"), os("-L"), os(&label), dev.path.as_os_str()],
            )
            .await?;
            Ok((label, true))
        }
    }
}

/// The kind of the pool at `path`: the one it was made with (an override that differs is
/// ignored), or, for a pool without metadata yet, the override or what the device reports,
/// stored in the pool.
fn pool_kind(
    path: &Path,
    label: &str,
    meta: Option<PoolMeta>,
    dev: &BlockDevice,
    kind_override: Option<DiskKind>,
) -> Result<DiskKind> {
    let detected = kind_override.unwrap_or(if dev.rotational {
        DiskKind::Hdd
    } else {
        DiskKind::Ssd
    });
    match meta {
        Some(meta) => {
            if kind_override.is_some_and(|k| k != meta.kind) {
                warn!(pool = %label, kept = %meta.kind, asked = %detected,
                      "a pool keeps the kind it was made with; override ignored");
            }
            Ok(meta.kind)
        }
        None => {
            PoolMeta::new(detected).store(path)?;
            Ok(detected)
        }
    }
}

/// Refuses a prefix other than a-z, 0-9 and '-' (at most 16 bytes) and a relative mount root.
fn check_config(cfg: &StorageConfig) -> Result<()> {
    if !cfg
        .prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || cfg.prefix.len() > 16
    {
        return Err(StorageError::Config(format!(
            "prefix {:?} may only hold a-z, 0-9 and '-'",
            cfg.prefix
        )));
    }
    if !cfg.mount_root.is_absolute() {
        return Err(StorageError::Config(format!(
            "mount root {} is not an absolute path",
            cfg.mount_root.display()
        )));
    }
    Ok(())
}

/// The devices the node may make pools on: the discovered ones it does not skip, or the
/// configured ones (once each); the skipped and the unreadable are reported in `disks`.
fn candidates(cfg: &StorageConfig, disks: &mut Vec<DiskReport>) -> Result<Vec<BlockDevice>> {
    let mut candidates: Vec<BlockDevice> = Vec::new();
    match &cfg.devices {
        Devices::Discover => {
            for dev in discovery::scan_sysfs(&cfg.sysfs)? {
                match discovery::skip_reason(&dev) {
                    Some(reason) => disks.push(DiskReport {
                        device: dev.path.clone(),
                        size: dev.size,
                        rotational: dev.rotational,
                        state: DiskState::Skipped { reason },
                    }),
                    None => candidates.push(dev),
                }
            }
        }
        Devices::Only(list) => {
            for path in list {
                match discovery::sysfs_device(&cfg.sysfs, path) {
                    Ok(dev) => {
                        if !candidates.iter().any(|c| c.path == dev.path) {
                            candidates.push(dev);
                        }
                    }
                    Err(e) => disks.push(DiskReport {
                        device: path.clone(),
                        size: 0,
                        rotational: false,
                        state: DiskState::Failed {
                            error: error_chain(&e),
                        },
                    }),
                }
            }
        }
    }
    Ok(candidates)
}

/// Adopts each candidate as a pool (in label order), reporting every device in `disks`: a
/// pool, foreign data left untouched, or a failure.
async fn make_pools(
    cfg: &StorageConfig,
    candidates: Vec<BlockDevice>,
    disks: &mut Vec<DiskReport>,
) -> Vec<Pool> {
    let overrides: BTreeMap<PathBuf, DiskKind> = cfg
        .kind_overrides
        .iter()
        .map(|(p, k)| (p.canonicalize().unwrap_or_else(|_| p.clone()), *k))
        .collect();
    let mut pools: Vec<Pool> = Vec::new();
    for dev in candidates {
        let kind = overrides.get(&dev.path).copied();
        let state = match adopt(cfg, &dev, kind, &pools).await {
            Ok((pool, created)) => {
                let state = DiskState::Pool {
                    pool: pool.label.clone(),
                    kind: pool.kind,
                    created,
                };
                info!(device = %dev.path.display(), pool = %pool.label, kind = %pool.kind,
                      size = pool.size, created, "storage pool ready");
                pools.push(pool);
                state
            }
            Err(Adopt::Foreign(reason)) => {
                warn!(device = %dev.path.display(), reason = %reason,
                      "disk holds data that is not ours; left untouched");
                DiskState::Foreign { reason }
            }
            Err(Adopt::Failed(e)) => {
                warn!(device = %dev.path.display(), error = %error_chain(&e), "disk not usable");
                DiskState::Failed {
                    error: error_chain(&e),
                }
            }
        };
        disks.push(DiskReport {
            device: dev.path.clone(),
            size: dev.size,
            rotational: dev.rotational,
            state,
        });
    }
    pools.sort_by(|a, b| a.label.cmp(&b.label));
    pools
}

/// Finds the cache subvolume again, or makes one on the SSD pool with the most room, or falls
/// back to a tmpfs and says why the node is limited.
async fn prepare_cache(cfg: &StorageConfig, pools: &[Pool]) -> Result<(Cache, Option<String>)> {
    let ssd: Vec<&Pool> = pools.iter().filter(|p| p.kind == DiskKind::Ssd).collect();
    if let Some(p) = ssd.iter().find(|p| p.path.join(CACHE).is_dir()) {
        info!(pool = %p.label, "cache found");
        return Ok((
            Cache::Pool {
                label: p.label.clone(),
                path: p.path.join(CACHE),
            },
            None,
        ));
    }
    let scans = scan_all(pools).await?;
    let infos = infos(&scans);
    let reason = match pick_pool(&infos, DiskKind::Ssd, cfg.cache.initial) {
        Some(i) => {
            let p = &pools[i];
            let path = p.path.join(CACHE);
            btrfs(&[os("subvolume"), os("create"), path.as_os_str()]).await?;
            if let Err(e) = btrfs(&[
                os("qgroup"),
                os("limit"),
                os(&cfg.cache.initial.to_string()),
                path.as_os_str(),
            ])
            .await
            {
                let _ = btrfs(&[os("subvolume"), os("delete"), path.as_os_str()]).await;
                return Err(e);
            }
            info!(pool = %p.label, quota = cfg.cache.initial, "cache made");
            return Ok((
                Cache::Pool {
                    label: p.label.clone(),
                    path,
                },
                None,
            ));
        }
        None if ssd.is_empty() => "no ssd disk".to_string(),
        None => format!(
            "no ssd pool has {} free for the cache",
            human_bytes(cfg.cache.initial)
        ),
    };
    let path = cfg.mount_root.join(format!("{}zos-cache", cfg.prefix));
    mount_tmpfs(&path, cfg.tmpfs_size)?;
    let limited = format!(
        "{reason}: node state is on a {} tmpfs, no deployments accepted",
        human_bytes(cfg.tmpfs_size)
    );
    Ok((
        Cache::Tmpfs {
            path,
            size: cfg.tmpfs_size,
        },
        Some(limited),
    ))
}

impl Storage for BtrfsStorage {
    async fn pools(&self) -> Result<Vec<PoolInfo>> {
        let inner = self.inner.lock().await;
        Ok(infos(&scan_all(&inner.pools).await?))
    }

    async fn capacity(&self) -> Result<StorageCapacity> {
        Ok(StorageCapacity::from_pools(&self.pools().await?))
    }

    async fn cache(&self) -> Result<CacheInfo> {
        let inner = self.inner.lock().await;
        self.cache_locked(&inner).await
    }

    fn limited(&self) -> Option<String> {
        self.limited.clone()
    }

    async fn volume_create(&self, name: &str, size: u64) -> Result<Volume> {
        rules::validate_name(name)?;
        rules::validate_size("volume", name, size)?;
        self.check_limited()?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        if find_volume(&scans, name).is_some() {
            return Err(StorageError::Exists {
                what: "volume",
                name: name.into(),
            });
        }
        let infos = infos(&scans);
        let i = pick_pool(&infos, DiskKind::Ssd, size)
            .ok_or_else(|| no_space(format!("volume {name:?}"), &infos, DiskKind::Ssd, size))?;
        let pool = &inner.pools[i];
        let dir = pool.path.join(VOLUMES);
        std::fs::create_dir_all(&dir).map_err(StorageError::io("creating", &dir))?;
        let path = dir.join(name);
        btrfs(&[os("subvolume"), os("create"), path.as_os_str()]).await?;
        if let Err(e) = btrfs(&[
            os("qgroup"),
            os("limit"),
            os(&size.to_string()),
            path.as_os_str(),
        ])
        .await
        {
            let _ = btrfs(&[os("subvolume"), os("delete"), path.as_os_str()]).await;
            return Err(e);
        }
        info!(volume = name, pool = %pool.label, size, "volume created");
        Ok(Volume {
            name: name.into(),
            pool: pool.label.clone(),
            path,
            size,
            used: 0,
        })
    }

    async fn volume_grow(&self, name: &str, size: u64) -> Result<Volume> {
        rules::validate_name(name)?;
        rules::validate_size("volume", name, size)?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        let (i, vol) = find_volume(&scans, name).ok_or_else(|| StorageError::NotFound {
            what: "volume",
            name: name.into(),
        })?;
        if size < vol.size {
            return Err(StorageError::Shrink {
                what: "volume",
                name: name.into(),
                current: vol.size,
                requested: size,
            });
        }
        if size == vol.size {
            return Ok(vol.clone());
        }
        let info = &scans[i].info;
        if size - vol.size > info.free() {
            return Err(StorageError::NoSpace {
                what: format!("growing volume {name:?} on pool {}", info.name),
                kind: info.kind,
                needed: size - vol.size,
                most_free: info.free(),
            });
        }
        btrfs(&[
            os("qgroup"),
            os("limit"),
            os(&size.to_string()),
            vol.path.as_os_str(),
        ])
        .await?;
        info!(volume = name, pool = %info.name, from = vol.size, to = size, "volume grown");
        Ok(Volume {
            size,
            ..vol.clone()
        })
    }

    async fn volume_delete(&self, name: &str) -> Result<()> {
        rules::validate_name(name)?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        let Some((_, vol)) = find_volume(&scans, name) else {
            debug!(volume = name, "volume to delete does not exist");
            return Ok(());
        };
        btrfs(&[os("subvolume"), os("delete"), vol.path.as_os_str()]).await?;
        info!(volume = name, pool = %vol.pool, "volume deleted");
        Ok(())
    }

    async fn volume_get(&self, name: &str) -> Result<Option<Volume>> {
        rules::validate_name(name)?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        Ok(find_volume(&scans, name).map(|(_, v)| v.clone()))
    }

    async fn volume_list(&self) -> Result<Vec<Volume>> {
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        Ok(scans.into_iter().flat_map(|s| s.volumes).collect())
    }

    async fn disk_create(&self, name: &str, size: u64) -> Result<VDisk> {
        rules::validate_name(name)?;
        rules::validate_size("virtual disk", name, size)?;
        self.check_limited()?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        if find_disk(&scans, name).is_some() {
            return Err(StorageError::Exists {
                what: "virtual disk",
                name: name.into(),
            });
        }
        let infos = infos(&scans);
        let i = pick_pool(&infos, DiskKind::Ssd, size).ok_or_else(|| {
            no_space(
                format!("virtual disk {name:?}"),
                &infos,
                DiskKind::Ssd,
                size,
            )
        })?;
        let pool = &inner.pools[i];
        let dir = pool.path.join(VDISKS);
        std::fs::create_dir_all(&dir).map_err(StorageError::io("creating", &dir))?;
        set_nocow(&dir)?;
        let path = dir.join(name);
        let made = (|| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(StorageError::io("creating", &path))?;
            set_nocow(&path)?;
            if !is_nocow(&path).map_err(StorageError::io("reading flags of", &path))? {
                return Err(StorageError::io("setting no-copy-on-write on", &path)(
                    std::io::Error::other("the flag did not stick"),
                ));
            }
            file.set_len(size)
                .map_err(StorageError::io("sizing", &path))?;
            file.sync_all().map_err(StorageError::io("syncing", &path))
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        info!(disk = name, pool = %pool.label, size, "virtual disk created");
        vdisk_of(&pool.label, path).ok_or_else(|| StorageError::NotFound {
            what: "virtual disk",
            name: name.into(),
        })
    }

    async fn disk_grow(&self, name: &str, size: u64) -> Result<VDisk> {
        rules::validate_name(name)?;
        rules::validate_size("virtual disk", name, size)?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        let (i, disk) = find_disk(&scans, name).ok_or_else(|| StorageError::NotFound {
            what: "virtual disk",
            name: name.into(),
        })?;
        if size < disk.size {
            return Err(StorageError::Shrink {
                what: "virtual disk",
                name: name.into(),
                current: disk.size,
                requested: size,
            });
        }
        if size == disk.size {
            return Ok(disk.clone());
        }
        let info = &scans[i].info;
        if size - disk.size > info.free() {
            return Err(StorageError::NoSpace {
                what: format!("growing virtual disk {name:?} on pool {}", info.name),
                kind: info.kind,
                needed: size - disk.size,
                most_free: info.free(),
            });
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk.path)
            .map_err(StorageError::io("opening", &disk.path))?;
        file.set_len(size)
            .and_then(|_| file.sync_all())
            .map_err(StorageError::io("sizing", &disk.path))?;
        info!(disk = name, pool = %info.name, from = disk.size, to = size, "virtual disk grown");
        vdisk_of(&disk.pool, disk.path.clone()).ok_or_else(|| StorageError::NotFound {
            what: "virtual disk",
            name: name.into(),
        })
    }

    async fn disk_delete(&self, name: &str) -> Result<()> {
        rules::validate_name(name)?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        let Some((_, disk)) = find_disk(&scans, name) else {
            debug!(disk = name, "virtual disk to delete does not exist");
            return Ok(());
        };
        std::fs::remove_file(&disk.path).map_err(StorageError::io("removing", &disk.path))?;
        info!(disk = name, pool = %disk.pool, "virtual disk deleted");
        Ok(())
    }

    async fn disk_get(&self, name: &str) -> Result<Option<VDisk>> {
        rules::validate_name(name)?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        Ok(find_disk(&scans, name).map(|(_, d)| d.clone()))
    }

    async fn disk_list(&self) -> Result<Vec<VDisk>> {
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        Ok(scans.into_iter().flat_map(|s| s.disks).collect())
    }

    async fn zdb_allocate(&self, min: u64) -> Result<ZdbDevice> {
        self.check_limited()?;
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        let free: Vec<PoolInfo> = scans
            .iter()
            .map(|s| {
                let mut info = s.info.clone();
                if s.zdb.is_some() {
                    // A pool holds one zdb: a pool that has one offers nothing more.
                    info.used = info.size;
                }
                info
            })
            .collect();
        let i = pick_pool(&free, DiskKind::Hdd, min)
            .ok_or_else(|| no_space("a new zdb device".into(), &free, DiskKind::Hdd, min))?;
        let pool = &inner.pools[i];
        let path = pool.path.join(ZDB);
        btrfs(&[os("subvolume"), os("create"), path.as_os_str()]).await?;
        info!(pool = %pool.label, "zdb device allocated");
        Ok(ZdbDevice {
            id: pool.label.clone(),
            path,
            size: pool.size,
            used: 0,
            free: scans[i].info.free(),
        })
    }

    async fn zdb_list(&self) -> Result<Vec<ZdbDevice>> {
        let inner = self.inner.lock().await;
        let scans = scan_all(&inner.pools).await?;
        Ok(scans.iter().filter_map(Scan::zdb_device).collect())
    }

    async fn zdb_release(&self, id: &str) -> Result<()> {
        rules::validate_name(id)?;
        let inner = self.inner.lock().await;
        let Some(pool) = inner.pools.iter().find(|p| p.label == id) else {
            return Ok(());
        };
        let path = pool.path.join(ZDB);
        if path.is_dir() {
            btrfs(&[os("subvolume"), os("delete"), path.as_os_str()]).await?;
            info!(pool = %pool.label, "zdb device released");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qgroup_table() {
        let text = "\
Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path \n\
--------    ----------    ---------  --------------  -------------   ---- \n\
0/5              16384        16384            none           none   <toplevel>\n\
0/256            32768        32768        52428800           none   volumes/x:y\n\
0/257                0            0            none           none   zdb\n\
0/258                0            0            none           none   <stale>\n";
        let q = parse_qgroups(text);
        assert_eq!(q.len(), 2);
        assert_eq!(
            q["volumes/x:y"],
            Qgroup {
                referenced: 32768,
                max_referenced: Some(52428800)
            }
        );
        assert_eq!(q["zdb"].max_referenced, None);
    }

    #[test]
    fn fs_show_size() {
        let text = "Label: 'zos-test'  uuid: a35a1ba4-a0f2-4662-9241-1c0bc832be54\n\
\tTotal devices 1 FS bytes used 163840\n\
\tdevid    1 size 1073741824 used 132513792 path /dev/loop0\n";
        assert_eq!(parse_fs_size(text), Some(1 << 30));
        assert_eq!(parse_fs_size("nothing"), None);
    }
}
