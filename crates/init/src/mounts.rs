//! Mounts at boot: the kernel's file systems, and (later) the runtime flists on `/usr`.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

/// One mount of the boot sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

/// The kernel's file systems, in order: what everything after needs.
pub fn early() -> Vec<Mount> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    vec![
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nosuid,
            data: None,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid,
            data: None,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("mode=0755"),
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("mode=0620,ptmxmode=0666,gid=5"),
        },
        Mount {
            source: "tmpfs",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
    ]
}

/// Mounts each of `mounts` under `root` (`/` at boot, a directory in tests), creating the
/// mount points; a file system already mounted there (`EBUSY`) is left as it is. Answers the
/// failures, which are logged and do not stop the others.
pub fn apply(root: &Path, mounts: &[Mount]) -> Vec<(String, Errno)> {
    let mut failed = Vec::new();
    for m in mounts {
        let target = root.join(m.target.trim_start_matches('/'));
        let _ = std::fs::create_dir_all(&target);
        match mount(Some(m.source), &target, Some(m.fstype), m.flags, m.data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => {
                tracing::warn!(fstype = m.fstype, target = %target.display(), error = %e, "cannot mount");
                failed.push((target.display().to_string(), e));
            }
        }
    }
    failed
}

/// The links a devtmpfs lacks and programs expect (udev makes them elsewhere): `/dev/fd` and
/// `/dev/stdin`, `/dev/stdout`, `/dev/stderr` into `/proc/self/fd` (`wg set … private-key
/// /dev/stdin` reads a key through one). Links already there are kept.
pub fn dev_links(root: &Path) -> Vec<(String, std::io::Error)> {
    let mut failed = Vec::new();
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let link = root.join("dev").join(name);
        match std::os::unix::fs::symlink(target, &link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => failed.push((link.display().to_string(), e)),
        }
    }
    failed
}

/// What the kernel offers for cgroups, from `/proc/filesystems` and `/proc/cgroups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPlan {
    /// The unified hierarchy on `/sys/fs/cgroup`, these controllers enabled for children.
    V2 { controllers: Vec<String> },
    /// A tmpfs on `/sys/fs/cgroup` and one hierarchy per v1 controller under it.
    V1 { controllers: Vec<String> },
}

/// The v2 controllers the node enables for its services and VMs (those the kernel has).
const V2_CONTROLLERS: [&str; 5] = ["cpuset", "cpu", "io", "memory", "pids"];

/// Chooses cgroup v2 when the kernel has it, else v1 with every enabled controller.
pub fn cgroup_plan(filesystems: &str, proc_cgroups: &str) -> Option<CgroupPlan> {
    let has_fs = |name: &str| {
        filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some(name))
    };
    // `/proc/cgroups`: subsys_name hierarchy num_cgroups enabled
    let enabled: Vec<String> = proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == "1").then(|| f[0].to_string())
        })
        .collect();
    if has_fs("cgroup2") {
        let controllers = V2_CONTROLLERS
            .iter()
            .filter(|c| enabled.is_empty() || enabled.iter().any(|e| e == *c))
            .map(|c| c.to_string())
            .collect();
        Some(CgroupPlan::V2 { controllers })
    } else if has_fs("cgroup") && !enabled.is_empty() {
        Some(CgroupPlan::V1 {
            controllers: enabled,
        })
    } else {
        None
    }
}

/// Mounts the cgroups `plan` says under `root` (`/sys/fs/cgroup` below it).
pub fn apply_cgroups(root: &Path, plan: &CgroupPlan) -> Result<(), String> {
    let base = root.join("sys/fs/cgroup");
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let fail = |what: &str, e: Errno| format!("cannot mount {what} on {}: {e}", base.display());
    match plan {
        CgroupPlan::V2 { controllers } => {
            match mount(Some("cgroup2"), &base, Some("cgroup2"), flags, None::<&str>) {
                Ok(()) | Err(Errno::EBUSY) => {}
                Err(e) => return Err(fail("cgroup2", e)),
            }
            let want: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
            let ctl = base.join("cgroup.subtree_control");
            for c in want {
                if let Err(e) = std::fs::write(&ctl, &c) {
                    tracing::warn!(controller = %c, error = %e, "cannot enable cgroup controller");
                }
            }
        }
        CgroupPlan::V1 { controllers } => {
            match mount(
                Some("cgroup"),
                &base,
                Some("tmpfs"),
                flags,
                Some("mode=0755"),
            ) {
                Ok(()) | Err(Errno::EBUSY) => {}
                Err(e) => return Err(fail("tmpfs", e)),
            }
            for c in controllers {
                let dir = base.join(c);
                let _ = std::fs::create_dir_all(&dir);
                match mount(
                    Some("cgroup"),
                    &dir,
                    Some("cgroup"),
                    flags,
                    Some(c.as_str()),
                ) {
                    Ok(()) | Err(Errno::EBUSY) => {}
                    Err(e) => {
                        tracing::warn!(controller = %c, error = %e, "cannot mount cgroup controller")
                    }
                }
            }
        }
    }
    Ok(())
}

/// The `lowerdir=` of a read-only overlay: `layers` top first, each checked to be usable in
/// the option string.
pub fn lowerdir(layers: &[PathBuf]) -> Result<String, String> {
    let mut parts = Vec::new();
    for l in layers {
        let s = l
            .to_str()
            .filter(|s| s.starts_with('/') && !s.contains([',', ':', '\\']))
            .ok_or_else(|| format!("layer {} cannot be named in overlay options", l.display()))?;
        parts.push(s.to_string());
    }
    if parts.is_empty() {
        return Err("an overlay needs at least one layer".into());
    }
    Ok(format!("lowerdir={}", parts.join(":")))
}

/// Stacks `layers` (top first) read-only on `target`: an overlay, or a read-only bind mount
/// of a single layer (an overlay without an upper layer needs two).
pub fn overlay_ro(layers: &[PathBuf], target: &Path) -> Result<(), String> {
    let opts = lowerdir(layers)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    if layers.len() == 1 {
        mount(
            Some(&layers[0]),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "cannot bind {} on {}: {e}",
                layers[0].display(),
                target.display()
            )
        })?;
        return mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
            None::<&str>,
        )
        .map_err(|e| format!("cannot make {} read-only: {e}", target.display()));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(opts.as_str()),
    )
    .map_err(|e| {
        format!(
            "cannot mount the overlay on {} ({opts}): {e}",
            target.display()
        )
    })
}

/// One runtime flist mounted by a `zos-flist-mount` process.
#[derive(Debug)]
pub struct FlistMount {
    pub name: String,
    pub mountpoint: PathBuf,
    /// The mount process (a child of this process, reaped by the supervisor).
    pub pid: i32,
}

/// How runtime flists are mounted.
#[derive(Debug, Clone)]
pub struct FlistMounter {
    /// The `zos-flist-mount` binary (in the initramfs).
    pub binary: PathBuf,
    /// The block cache directory.
    pub cache: PathBuf,
    /// The cache's size limit, in bytes.
    pub cache_bytes: u64,
    /// Block store URLs (the grid's hub); empty: the flist's own routes.
    pub stores: Vec<String>,
    /// How long a mount may take to be ready.
    pub ready_timeout: std::time::Duration,
}

/// Mounts flist file `flist` read-only on `mountpoint` through a `zos-flist-mount` process,
/// which checks every block against its hash as it reads it; waits for its `ready` line.
pub fn mount_flist(
    m: &FlistMounter,
    name: &str,
    flist: &Path,
    mountpoint: &Path,
) -> Result<FlistMount, String> {
    use std::io::BufRead;
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| format!("cannot create {}: {e}", mountpoint.display()))?;
    let mut cmd = std::process::Command::new(&m.binary);
    cmd.arg("--flist")
        .arg(flist)
        .arg("--cache")
        .arg(&m.cache)
        .arg("--cache-size")
        .arg(m.cache_bytes.to_string())
        .arg("--fsname")
        .arg(format!("zos-{name}"));
    for s in &m.stores {
        cmd.arg("--store").arg(s);
    }
    cmd.arg(mountpoint)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    crate::supervise::own_session_default_signals(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", m.binary.display()))?;
    let pid = child.id() as i32;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep reading so the mounter never blocks on a full pipe.
        for _ in lines {}
    });
    let ready = match rx.recv_timeout(m.ready_timeout) {
        Ok(Some(Ok(line))) if line.starts_with("ready ") => Ok(()),
        Ok(Some(Ok(line))) => Err(format!("the flist mounter said {line:?} instead of ready")),
        Ok(_) => Err("the flist mounter ended before it was ready".to_string()),
        Err(_) => Err(format!(
            "the flist mounter was not ready within {:?}",
            m.ready_timeout
        )),
    };
    if let Err(e) = ready {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        return Err(format!("runtime flist {name}: {e}"));
    }
    // The child is reaped by the supervisor (or whoever waits for every child).
    drop(child);
    Ok(FlistMount {
        name: name.to_string(),
        mountpoint: mountpoint.to_owned(),
        pid,
    })
}

/// Reads `path` to its end (through a flist mount every block is checked on the way).
pub fn read_through(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut std::io::sink())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FS: &str = "nodev\tsysfs\nnodev\ttmpfs\nnodev\tcgroup\nnodev\tcgroup2\n\text4\n";
    const CG: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t0\t1\t1\ncpu\t0\t1\t1\nmemory\t0\t1\t1\npids\t0\t1\t1\nhugetlb\t0\t1\t1\nrdma\t0\t1\t0\n";

    #[test]
    fn cgroup_v2_is_taken_when_the_kernel_has_it() {
        assert_eq!(
            cgroup_plan(FS, CG),
            Some(CgroupPlan::V2 {
                controllers: vec![
                    "cpuset".into(),
                    "cpu".into(),
                    "memory".into(),
                    "pids".into()
                ]
            })
        );
        let v1_only = FS.replace("nodev\tcgroup2\n", "");
        assert_eq!(
            cgroup_plan(&v1_only, CG),
            Some(CgroupPlan::V1 {
                controllers: vec![
                    "cpuset".into(),
                    "cpu".into(),
                    "memory".into(),
                    "pids".into(),
                    "hugetlb".into()
                ]
            })
        );
        assert_eq!(cgroup_plan("nodev\tproc\n", CG), None);
    }

    #[test]
    fn overlay_layers_are_checked() {
        assert_eq!(
            lowerdir(&[PathBuf::from("/a/usr"), PathBuf::from("/b/usr")]).unwrap(),
            "lowerdir=/a/usr:/b/usr"
        );
        for bad in ["relative", "/a,upperdir=/x", "/a:b", "/a\\b"] {
            assert!(lowerdir(&[PathBuf::from(bad)]).is_err(), "{bad}");
        }
        assert!(lowerdir(&[]).is_err());
    }

    #[test]
    fn early_mounts_come_in_dependency_order() {
        let targets: Vec<&str> = early().iter().map(|m| m.target).collect();
        let pos = |t: &str| targets.iter().position(|x| *x == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/dev") < pos("/dev/shm"));
        assert_eq!(targets[0], "/proc");
    }

    #[test]
    fn dev_links_point_into_proc_self_fd_and_are_kept() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("dev")).unwrap();
        std::os::unix::fs::symlink("/elsewhere", root.path().join("dev/stderr")).unwrap();
        assert!(dev_links(root.path()).is_empty());
        let link = |n: &str| std::fs::read_link(root.path().join("dev").join(n)).unwrap();
        assert_eq!(link("fd"), Path::new("/proc/self/fd"));
        assert_eq!(link("stdin"), Path::new("/proc/self/fd/0"));
        assert_eq!(link("stdout"), Path::new("/proc/self/fd/1"));
        assert_eq!(
            link("stderr"),
            Path::new("/elsewhere"),
            "an existing link is kept"
        );
        assert!(
            dev_links(root.path()).is_empty(),
            "a second run changes nothing"
        );
    }
}
