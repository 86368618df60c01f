//! Finding block devices in sysfs and telling what they hold, without writing anything.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::StorageError;

/// A whole disk as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name: `sda`, `nvme0n1`, `loop3`.
    pub name: String,
    /// Device node: `/dev/sda`.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    pub rotational: bool,
    pub removable: bool,
    pub read_only: bool,
    /// Hidden by the kernel (NVMe multipath paths).
    pub hidden: bool,
    /// Sits on a USB bus.
    pub usb: bool,
    /// Kernel names of its partitions.
    pub partitions: Vec<String>,
    /// Kernel names of devices built on it (device-mapper, md).
    pub holders: Vec<String>,
}

/// What a disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskContent {
    /// Nothing: no partitions, no signature, a blank first MiB. Safe to format.
    Empty,
    /// A btrfs file system with this label (ours or not: the caller decides).
    Btrfs { label: String },
    /// Anything else; the reason says what.
    Foreign(String),
}

fn read_trimmed(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

fn read_flag(path: &Path) -> bool {
    read_trimmed(path).is_ok_and(|s| s == "1")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Reads one device from its sysfs directory (`/sys/block/<name>` or what `/sys/dev/block/M:m`
/// points to).
fn read_device(dir: &Path) -> Result<BlockDevice, StorageError> {
    let canonical = dir
        .canonicalize()
        .map_err(StorageError::io("resolving", dir))?;
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size_path = canonical.join("size");
    let sectors: u64 = read_trimmed(&size_path)
        .map_err(StorageError::io("reading", &size_path))?
        .parse()
        .map_err(|_| StorageError::Device {
            device: canonical.clone(),
            reason: "sysfs size is not a number".into(),
        })?;
    let partitions = entries(&canonical)
        .into_iter()
        .filter(|e| canonical.join(e).join("partition").exists())
        .collect();
    Ok(BlockDevice {
        path: PathBuf::from("/dev").join(name.replace('!', "/")),
        size: sectors.saturating_mul(512),
        rotational: read_flag(&canonical.join("queue/rotational")),
        removable: read_flag(&canonical.join("removable")),
        read_only: read_flag(&canonical.join("ro")),
        hidden: read_flag(&canonical.join("hidden")),
        usb: canonical.to_string_lossy().contains("/usb"),
        partitions,
        holders: entries(&canonical.join("holders")),
        name,
    })
}

/// Every whole disk under `<sysfs>/block`, sorted by name, none filtered out.
pub fn scan_sysfs(sysfs: &Path) -> Result<Vec<BlockDevice>, StorageError> {
    let dir = sysfs.join("block");
    let names = std::fs::read_dir(&dir).map_err(StorageError::io("listing", &dir))?;
    let mut devices = Vec::new();
    for entry in names {
        let entry = entry.map_err(StorageError::io("listing", &dir))?;
        devices.push(read_device(&entry.path())?);
    }
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(devices)
}

/// Why discovery leaves a disk alone, if it does: virtual and special devices, removable and
/// USB media, read-only or empty devices.
pub fn skip_reason(dev: &BlockDevice) -> Option<String> {
    const SPECIAL: [&str; 10] = [
        "loop", "ram", "zram", "sr", "dm-", "md", "nbd", "fd", "rbd", "drbd",
    ];
    if let Some(p) = SPECIAL.iter().find(|p| dev.name.starts_with(*p)) {
        return Some(format!("{p}* devices are not disks"));
    }
    if dev.hidden {
        return Some("hidden (a path to a multipath disk)".into());
    }
    if dev.removable {
        return Some("removable".into());
    }
    if dev.usb {
        return Some("on a USB bus".into());
    }
    if dev.read_only {
        return Some("read-only".into());
    }
    if dev.size == 0 {
        return Some("no media (size 0)".into());
    }
    None
}

/// The whole disk behind a device node, found through its device number (so any path that
/// names it works: `/dev/sdb`, `/dev/disk/by-id/…`). Partitions are refused.
pub fn sysfs_device(sysfs: &Path, device: &Path) -> Result<BlockDevice, StorageError> {
    let bad = |reason: &str| StorageError::Device {
        device: device.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(device).map_err(StorageError::io("opening", device))?;
    if !meta.file_type().is_block_device() {
        return Err(bad("not a block device"));
    }
    let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let dir = sysfs.join(format!("dev/block/{major}:{minor}"));
    if dir.join("partition").exists() {
        return Err(bad("is a partition; give the whole disk"));
    }
    let mut dev = read_device(&dir)?;
    dev.path = device
        .canonicalize()
        .map_err(StorageError::io("resolving", device))?;
    Ok(dev)
}

/// The mounts this process sees.
pub(crate) fn read_mountinfo() -> Result<Vec<zos_runtime::mounts::Mount>, StorageError> {
    zos_runtime::mounts::mounts().map_err(StorageError::io(
        "reading",
        Path::new("/proc/self/mountinfo"),
    ))
}

/// True when a mount's source is this device.
pub(crate) fn same_device(source: &str, device: &Path) -> bool {
    let src = Path::new(source);
    src == device || src.canonicalize().is_ok_and(|c| c == device)
}

const HEAD: usize = 1 << 20;
const BTRFS_SUPER_OFFSET: usize = 64 * 1024;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";

/// The label of the btrfs file system whose first superblock is in `head`, if there is one.
pub(crate) fn btrfs_label(head: &[u8]) -> Option<String> {
    let sb = head.get(BTRFS_SUPER_OFFSET..BTRFS_SUPER_OFFSET + 4096)?;
    if &sb[64..72] != BTRFS_MAGIC {
        return None;
    }
    let label = &sb[299..299 + 256];
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Some(String::from_utf8_lossy(&label[..end]).into_owned())
}

/// Reads up to the first MiB of a device.
fn read_head(path: &Path) -> Result<Vec<u8>, StorageError> {
    let mut f = std::fs::File::open(path).map_err(StorageError::io("opening", path))?;
    let mut head = Vec::with_capacity(HEAD);
    (&mut f)
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .map_err(StorageError::io("reading", path))?;
    Ok(head)
}

/// Signatures `blkid` finds by probing the device itself (file systems, partition tables, RAID
/// members, swap, LUKS…): `Ok(None)` when it finds none.
async fn blkid_probe(path: &Path) -> Result<Option<String>, StorageError> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .await
        .map_err(StorageError::io("running blkid on", path))?;
    match out.status.code() {
        Some(0) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                    .map(str::to_string)
            };
            let what = match (field("TYPE"), field("PTTYPE")) {
                (Some(t), _) => format!("a {t} signature"),
                (None, Some(pt)) => format!("a {pt} partition table"),
                (None, None) => "a signature blkid knows".into(),
            };
            Ok(Some(what))
        }
        Some(2) => Ok(None),
        Some(8) => Ok(Some("several conflicting signatures".into())),
        _ => Err(StorageError::Command {
            cmd: format!("blkid -p {}", path.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// Tells what a disk holds. Reads only; a disk is `Empty` only when it has no partitions and
/// no holders, blkid finds no signature and its first MiB is all zeros.
pub async fn probe_content(dev: &BlockDevice) -> Result<DiskContent, StorageError> {
    if !dev.partitions.is_empty() {
        return Ok(DiskContent::Foreign(format!(
            "has partitions ({})",
            dev.partitions.join(", ")
        )));
    }
    if !dev.holders.is_empty() {
        return Ok(DiskContent::Foreign(format!(
            "is in use by {}",
            dev.holders.join(", ")
        )));
    }
    let head = read_head(&dev.path)?;
    if let Some(label) = btrfs_label(&head) {
        return Ok(DiskContent::Btrfs { label });
    }
    if let Some(m) = read_mountinfo()?
        .iter()
        .find(|m| same_device(&m.source, &dev.path))
    {
        return Ok(DiskContent::Foreign(format!(
            "is mounted at {}",
            m.mount_point.display()
        )));
    }
    if let Some(what) = blkid_probe(&dev.path).await? {
        return Ok(DiskContent::Foreign(format!("holds {what}")));
    }
    if head.iter().any(|&b| b != 0) {
        return Ok(DiskContent::Foreign(
            "holds data (its first MiB is not blank)".into(),
        ));
    }
    Ok(DiskContent::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn disk(root: &Path, at: &str, name: &str, sectors: u64, rota: bool, removable: bool) {
        let d = root.join(at).join(name);
        fs::create_dir_all(d.join("queue")).unwrap();
        fs::create_dir_all(d.join("holders")).unwrap();
        fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        fs::write(d.join("queue/rotational"), if rota { "1\n" } else { "0\n" }).unwrap();
        fs::write(d.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
        fs::write(d.join("ro"), "0\n").unwrap();
        fs::create_dir_all(root.join("block")).unwrap();
        std::os::unix::fs::symlink(d, root.join("block").join(name)).unwrap();
    }

    #[test]
    fn sysfs_scan_and_filters() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        disk(root, "devices/pci0/ata1", "sda", 2048, true, false);
        disk(root, "devices/pci0/nvme", "nvme0n1", 4096, false, false);
        disk(root, "devices/pci0/usb1/1-1", "sdb", 4096, false, false);
        disk(root, "devices/virtual", "loop0", 4096, true, false);
        disk(root, "devices/virtual", "zram0", 4096, false, false);
        disk(root, "devices/pci0/ata2", "sdc", 4096, true, true);
        disk(root, "devices/pci0/ata3", "sdd", 0, true, false);
        disk(root, "devices/pci0/nvme", "nvme0c0n1", 4096, false, false);
        fs::write(root.join("devices/pci0/nvme/nvme0c0n1/hidden"), "1\n").unwrap();
        // sda has a partition and a holder.
        let sda = root.join("devices/pci0/ata1/sda");
        fs::create_dir_all(sda.join("sda1")).unwrap();
        fs::write(sda.join("sda1/partition"), "1\n").unwrap();
        fs::create_dir_all(sda.join("holders/dm-0")).unwrap();

        let devs = scan_sysfs(root).unwrap();
        let names: Vec<_> = devs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "loop0",
                "nvme0c0n1",
                "nvme0n1",
                "sda",
                "sdb",
                "sdc",
                "sdd",
                "zram0"
            ]
        );
        let by = |n: &str| devs.iter().find(|d| d.name == n).unwrap();
        let sda = by("sda");
        assert_eq!(sda.path, PathBuf::from("/dev/sda"));
        assert_eq!(sda.size, 2048 * 512);
        assert!(sda.rotational);
        assert_eq!(sda.partitions, ["sda1"]);
        assert_eq!(sda.holders, ["dm-0"]);
        let nvme = by("nvme0n1");
        assert!(!nvme.rotational && nvme.partitions.is_empty());

        let skip = |n: &str| skip_reason(by(n));
        assert_eq!(
            skip("loop0").as_deref(),
            Some("loop* devices are not disks")
        );
        assert_eq!(skip("nvme0n1"), None);
        assert_eq!(skip("sda"), None);
        assert_eq!(skip("sdb").as_deref(), Some("on a USB bus"));
        assert_eq!(skip("sdc").as_deref(), Some("removable"));
        assert_eq!(skip("sdd").as_deref(), Some("no media (size 0)"));
        assert_eq!(
            skip("zram0").as_deref(),
            Some("zram* devices are not disks")
        );
        assert!(skip("nvme0c0n1").unwrap().starts_with("hidden"));
    }

    #[test]
    fn btrfs_superblock_label() {
        let mut head = vec![0u8; HEAD];
        assert_eq!(btrfs_label(&head), None);
        head[BTRFS_SUPER_OFFSET + 64..BTRFS_SUPER_OFFSET + 72].copy_from_slice(BTRFS_MAGIC);
        assert_eq!(btrfs_label(&head).as_deref(), Some(""));
        head[BTRFS_SUPER_OFFSET + 299..BTRFS_SUPER_OFFSET + 303].copy_from_slice(b"zos-");
        assert_eq!(btrfs_label(&head).as_deref(), Some("zos-"));
        assert_eq!(btrfs_label(&head[..1000]), None);
    }

    /// Discovery on this machine's real sysfs reads only. The host's own root disk holds a
    /// mounted file system and must never come out as empty.
    #[tokio::test]
    async fn the_host_root_disk_is_never_empty() {
        let mounts = read_mountinfo().unwrap();
        let Some(root) = mounts.iter().find(|m| m.mount_point == Path::new("/")) else {
            return;
        };
        let Ok(dev) = sysfs_device(Path::new("/sys"), Path::new(&root.source)) else {
            eprintln!("skipped: / is not on a block device ({})", root.source);
            return;
        };
        // Either it is seen to hold something, or it cannot even be read (some hosts forbid
        // opening their root disk): never empty, so never formatted.
        match probe_content(&dev).await {
            Ok(content) => assert!(
                matches!(content, DiskContent::Foreign(_)),
                "{}: {content:?}",
                dev.path.display()
            ),
            Err(e) => eprintln!("{} cannot be probed: {e}", dev.path.display()),
        }
        let all = scan_sysfs(Path::new("/sys")).unwrap();
        assert!(all.iter().any(|d| d.name == dev.name));
    }
}
