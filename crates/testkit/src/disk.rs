//! Loop-device disks for test hosts.
//!
//! A [`LoopDisk`] is a sparse file attached to a free loop device (`losetup -f --show`, never
//! a fixed `/dev/loopN`); dropping it, also while a test panics, unmounts whatever was mounted
//! from it, detaches it and deletes the file. [`TestDisks`] groups the disks of one test host
//! with a directory to mount things under, and removes every mount, device and file on drop.
//!
//! Names carry the process id (`zos-loop-<pid>-…`, `zos-testkit-<pid>-…`), so a test run that
//! was killed before it could clean up is recognised: the first disk made by a later run
//! sweeps what dead processes left behind ([`sweep_stale`]).
//!
//! Attaching, detaching and unmounting are the devnet's ([`zos_devnet::disk`]), re-exported.

use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use tracing::{debug, warn};
pub use zos_devnet::disk::{
    Mount, attach, detach, mounts, mounts_under, unmount_prefixed, unmount_under,
};
use zos_devnet::disk::{command, unmount};

const LOOP_PREFIX: &str = "zos-loop-";
const DIR_PREFIX: &str = "zos-testkit-";

/// True when this process can make loop devices and mount (root, `/dev/loop-control`). When it
/// cannot, prints why, so a skipped test says so.
pub fn can_use_loop_devices(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED {test}: needs root for loop devices and mounts");
        return false;
    }
    if !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIPPED {test}: no /dev/loop-control");
        return false;
    }
    true
}

/// A sparse file attached to a loop device; detached and deleted on drop.
#[derive(Debug)]
pub struct LoopDisk {
    file: PathBuf,
    device: PathBuf,
    size: u64,
}

impl LoopDisk {
    /// Makes a sparse file of `size` bytes named `zos-loop-<pid>-<label>.img` in `dir` and
    /// attaches it to a free loop device.
    pub fn create(dir: &Path, size: u64, label: &str) -> io::Result<LoopDisk> {
        sweep_stale_once();
        if label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("loop disk label {label:?} may only hold a-z, A-Z, 0-9 and '-'"),
            ));
        }
        std::fs::create_dir_all(dir)?;
        let file = dir.join(format!("{LOOP_PREFIX}{}-{label}.img", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)?;
        f.set_len(size)?;
        drop(f);
        match attach(&file) {
            Ok(device) => {
                debug!(device = %device.display(), file = %file.display(), size, "loop disk attached");
                Ok(LoopDisk { file, device, size })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                Err(e)
            }
        }
    }

    /// The loop device, for example `/dev/loop3`.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The backing file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Detaches the file and attaches it again, as a reboot would: the device may change.
    /// Unmount what was mounted from it first.
    pub fn reattach(&mut self) -> io::Result<()> {
        if let Some(m) = mounts()?
            .iter()
            .find(|m| Path::new(&m.source) == self.device)
        {
            return Err(io::Error::other(format!(
                "{} is still mounted at {}",
                self.device.display(),
                m.mount_point.display()
            )));
        }
        detach(&self.device)?;
        self.device = attach(&self.file)?;
        Ok(())
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if let Ok(ms) = mounts() {
            let mut points: Vec<PathBuf> = ms
                .into_iter()
                .filter(|m| Path::new(&m.source) == self.device)
                .map(|m| m.mount_point)
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in points {
                if let Err(e) = unmount(&p) {
                    warn!(path = %p.display(), error = %e, "cannot unmount");
                }
            }
        }
        if let Err(e) = detach(&self.device) {
            warn!(device = %self.device.display(), error = %e, "cannot detach loop device");
        }
        if let Err(e) = std::fs::remove_file(&self.file) {
            warn!(file = %self.file.display(), error = %e, "cannot remove loop file");
        }
    }
}

/// Attached loop devices and their backing files.
pub fn loop_devices() -> io::Result<Vec<(PathBuf, PathBuf)>> {
    let out = command(
        "losetup",
        &[
            "--list".as_ref(),
            "--json".as_ref(),
            "--output".as_ref(),
            "NAME,BACK-FILE".as_ref(),
        ],
    )?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(&out).map_err(io::Error::other)?;
    Ok(v["loopdevices"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| {
                    let name = d["name"].as_str()?;
                    let back = d["back-file"].as_str().unwrap_or_default();
                    let back = back.strip_suffix(" (deleted)").unwrap_or(back);
                    Some((PathBuf::from(name), PathBuf::from(back)))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Bytes really allocated to a file (blocks), as opposed to its apparent size.
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// The first `len` bytes of a device or file, to compare before and after.
pub fn read_head(path: &Path, len: usize) -> io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::with_capacity(len);
    f.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Makes a file system of `fstype` (`ext4`, `xfs`, `btrfs`) on a device, as someone else's data.
pub fn make_fs(device: &Path, fstype: &str, label: &str) -> io::Result<()> {
    let program = format!("mkfs.{fstype}");
    let mut args: Vec<&std::ffi::OsStr> = vec!["-q".as_ref(), "-L".as_ref(), label.as_ref()];
    if fstype == "ext4" {
        args.push("-F".as_ref());
    }
    args.push(device.as_os_str());
    command(&program, &args).map(drop)
}

/// What `blkid` says about a device: its `TYPE`, `LABEL` and `UUID` (`None` when it finds nothing).
pub fn blkid(device: &Path) -> io::Result<Option<String>> {
    let out = Command::new("blkid")
        .args([
            "-p", "-o", "export", "-s", "TYPE", "-s", "LABEL", "-s", "UUID",
        ])
        .arg(device)
        .output()?;
    match out.status.code() {
        Some(0) => Ok(Some(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )),
        Some(2) => Ok(None),
        _ => Err(io::Error::other(format!(
            "blkid {} failed ({})",
            device.display(),
            out.status
        ))),
    }
}

fn pid_of(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

fn stale(name: &str, prefix: &str) -> bool {
    pid_of(name, prefix).is_some_and(|pid| pid != std::process::id() && !alive(pid))
}

/// Removes what test processes that no longer run left behind: mounts under and loop devices
/// of `zos-testkit-<pid>-…` directories and `zos-loop-<pid>-…` files. Never touches anything
/// of a live process.
pub fn sweep_stale() -> io::Result<()> {
    let tmp = std::env::temp_dir();
    // Mounts first, so no directory is removed with a file system still mounted in it.
    let mut stale_points: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| {
            p.strip_prefix(&tmp)
                .ok()
                .and_then(|rest| rest.components().next())
                .is_some_and(|c| stale(&c.as_os_str().to_string_lossy(), DIR_PREFIX))
        })
        .collect();
    stale_points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in stale_points {
        warn!(path = %p.display(), "unmounting what a dead test left mounted");
        let _ = unmount(&p);
    }
    for (device, back) in loop_devices()? {
        let name = back
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if stale(&name, LOOP_PREFIX) {
            warn!(device = %device.display(), file = %back.display(), "detaching a loop device a dead test left");
            let _ = unmount_device(&device);
            let _ = detach(&device);
            let _ = std::fs::remove_file(&back);
        }
    }
    for entry in std::fs::read_dir(&tmp)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name, DIR_PREFIX) && mounts_under(&entry.path())?.is_empty() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

fn unmount_device(device: &Path) -> io::Result<()> {
    for m in mounts()?
        .into_iter()
        .filter(|m| Path::new(&m.source) == device)
    {
        unmount(&m.mount_point)?;
    }
    Ok(())
}

fn sweep_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = sweep_stale() {
            warn!(error = %e, "cannot sweep what earlier test runs left");
        }
    });
}

/// The disks of one test host: a private directory (`$TMPDIR/zos-testkit-<pid>-<name>-<n>`)
/// holding the loop files and a `mnt` directory to mount under. On drop everything mounted
/// below the directory is unmounted, the loop devices detached and the directory removed.
#[derive(Debug)]
pub struct TestDisks {
    dir: PathBuf,
    disks: Vec<(String, LoopDisk)>,
}

impl TestDisks {
    /// A new, empty set of disks named after `name` (letters, digits, '-').
    pub fn new(name: &str) -> io::Result<TestDisks> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        sweep_stale_once();
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{name}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if dir.exists() {
            unmount_under(&dir)?;
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("mnt"))?;
        Ok(TestDisks {
            dir,
            disks: Vec::new(),
        })
    }

    /// Adds a sparse disk of `size` bytes.
    pub fn add(&mut self, label: &str, size: u64) -> io::Result<&LoopDisk> {
        let disk = LoopDisk::create(&self.dir, size, label)?;
        self.disks.push((label.to_string(), disk));
        Ok(&self.disks.last().expect("just pushed").1)
    }

    /// The disk added with `label`.
    pub fn disk(&self, label: &str) -> &LoopDisk {
        &self
            .disks
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no test disk {label:?}"))
            .1
    }

    /// The disks in the order they were added, with their labels.
    pub fn disks(&self) -> impl Iterator<Item = (&str, &LoopDisk)> {
        self.disks.iter().map(|(l, d)| (l.as_str(), d))
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A directory to mount things under (`<dir>/mnt`).
    pub fn mount_root(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// Unmounts everything below the directory and attaches every disk again, as a reboot
    /// would (device names may change).
    pub fn reboot(&mut self) -> io::Result<()> {
        unmount_under(&self.dir)?;
        for (_, d) in &mut self.disks {
            d.reattach()?;
        }
        Ok(())
    }

    /// Unmounts everything below the directory.
    pub fn unmount_all(&self) -> io::Result<()> {
        unmount_under(&self.dir)
    }
}

impl Drop for TestDisks {
    fn drop(&mut self) {
        if let Err(e) = unmount_under(&self.dir) {
            warn!(dir = %self.dir.display(), error = %e, "cannot unmount test mounts");
        }
        self.disks.clear();
        match mounts_under(&self.dir) {
            Ok(m) if m.is_empty() => {
                if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                    warn!(dir = %self.dir.display(), error = %e, "cannot remove test directory");
                }
            }
            // Never delete through a mount that is still there.
            _ => warn!(dir = %self.dir.display(), "mounts remain; directory left in place"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_names() {
        assert_eq!(pid_of("zos-loop-123-ssd1.img", LOOP_PREFIX), Some(123));
        assert_eq!(pid_of("zos-testkit-77-host-0", DIR_PREFIX), Some(77));
        assert_eq!(pid_of("zos-loop-x.img", LOOP_PREFIX), None);
        assert_eq!(pid_of("other", LOOP_PREFIX), None);
        // Our own process is never stale, and neither is a live one (pid 1).
        assert!(!stale(
            &format!("zos-loop-{}-a.img", std::process::id()),
            LOOP_PREFIX
        ));
        assert!(!stale("zos-loop-1-a.img", LOOP_PREFIX));
    }
}
