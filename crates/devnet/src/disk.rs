//! Loop devices and mounts: what a devnet node's disks need, and what removing it needs
//! (every mount a node left below its directory or under its name prefix).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, umount2};
use tracing::warn;

/// Runs `program args…` and answers its stdout; a failure carries its stderr.
pub fn command(program: &str, args: &[&std::ffi::OsStr]) -> io::Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} {:?} failed ({}): {}",
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Attaches `file` to a free loop device and returns the device.
pub fn attach(file: &Path) -> io::Result<PathBuf> {
    let mut last = None;
    // Another process may take the free device between the lookup and the attach: retry.
    for _ in 0..5 {
        match command(
            "losetup",
            &["-f".as_ref(), "--show".as_ref(), file.as_os_str()],
        ) {
            Ok(out) => return Ok(PathBuf::from(out.trim())),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(last.unwrap_or_else(|| io::Error::other("losetup failed")))
}

/// Detaches a loop device (after making btrfs forget it).
pub fn detach(device: &Path) -> io::Result<()> {
    // btrfs remembers devices it has seen; forget this one before the number is reused.
    let _ = Command::new("btrfs")
        .args(["device", "scan", "--forget"])
        .arg(device)
        .output();
    command("losetup", &["-d".as_ref(), device.as_os_str()]).map(drop)
}

pub use zos_runtime::mounts::{Mount, mounts};

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut points: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    Ok(points)
}

/// Unmounts `path`, lazily when it is busy.
pub fn unmount(path: &Path) -> io::Result<()> {
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            warn!(path = %path.display(), "busy; detaching the mount lazily");
            umount2(path, MntFlags::MNT_DETACH).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

/// Unmounts everything at or below `dir`, deepest first (lazily when busy). Stacked mounts
/// on one point are all removed.
pub fn unmount_under(dir: &Path) -> io::Result<()> {
    for _ in 0..16 {
        let points = mounts_under(dir)?;
        if points.is_empty() {
            return Ok(());
        }
        for p in points {
            unmount(&p)?;
        }
    }
    Err(io::Error::other(format!(
        "mounts under {} keep coming back",
        dir.display()
    )))
}

/// Unmounts every mount whose path starts with the text `prefix` (for example
/// `/run/zos-flist/zdnn1`: every mount point a node named with its prefix), deepest first.
pub fn unmount_prefixed(prefix: &str) -> io::Result<()> {
    for _ in 0..16 {
        let mut points: Vec<PathBuf> = mounts()?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.to_string_lossy().starts_with(prefix))
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in points {
            unmount(&p)?;
        }
    }
    Err(io::Error::other(format!(
        "mounts at {prefix}* keep coming back"
    )))
}
