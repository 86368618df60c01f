//! The cgroup of each VM, with its CPU and memory limits (cgroup v1 `cpu` and `memory`
//! controllers where they are mounted, as on hybrid hosts; cgroup v2 otherwise).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Result, VmmError};

/// Where the controllers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    V1 { cpu: PathBuf, memory: PathBuf },
    V2 { root: PathBuf },
}

/// CFS period: quota = CPUs × period.
const PERIOD_US: u64 = 100_000;

fn cg_err(path: &Path, reason: impl std::fmt::Display) -> VmmError {
    VmmError::Cgroup {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| cg_err(path, format!("cannot write {value:?}: {e}")))
}

impl Cgroups {
    /// Finds the controllers from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Cgroups> {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| cg_err(Path::new("/proc/self/mountinfo"), e))?;
        Self::from_mountinfo(&info).ok_or_else(|| {
            cg_err(
                Path::new("/sys/fs/cgroup"),
                "neither cgroup v1 cpu and memory controllers nor cgroup v2 with them is mounted",
            )
        })
    }

    fn from_mountinfo(info: &str) -> Option<Cgroups> {
        let (mut cpu, mut memory, mut v2) = (None, None, None);
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mut r = right.split_whitespace();
            let (fstype, _src, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
            match fstype {
                Some("cgroup") => {
                    let opts: Vec<&str> = opts.split(',').collect();
                    if opts.contains(&"cpu") && cpu.is_none() {
                        cpu = Some(PathBuf::from(point));
                    }
                    if opts.contains(&"memory") && memory.is_none() {
                        memory = Some(PathBuf::from(point));
                    }
                }
                Some("cgroup2") if v2.is_none() => v2 = Some(PathBuf::from(point)),
                _ => {}
            }
        }
        match (cpu, memory, v2) {
            (Some(cpu), Some(memory), _) => Some(Cgroups::V1 { cpu, memory }),
            (_, _, Some(root)) => {
                let ctl = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                let has = |c: &str| ctl.split_whitespace().any(|x| x == c);
                (has("cpu") && has("memory")).then_some(Cgroups::V2 { root })
            }
            _ => None,
        }
    }

    /// The directories of cgroup `rel` (one per controller hierarchy).
    pub fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        match self {
            Self::V1 { cpu, memory } if cpu == memory => vec![cpu.join(rel)],
            Self::V1 { cpu, memory } => vec![cpu.join(rel), memory.join(rel)],
            Self::V2 { root } => vec![root.join(rel)],
        }
    }

    /// Makes cgroup `rel` (or finds it) with `cpus` CPUs of time and `memory` bytes.
    pub fn create(&self, rel: &str, cpus: u8, memory: u64) -> Result<()> {
        for d in self.dirs(rel) {
            fs::create_dir_all(&d).map_err(|e| cg_err(&d, format!("cannot create: {e}")))?;
        }
        let quota = (cpus as u64 * PERIOD_US).to_string();
        match self {
            Self::V1 { cpu, memory: mem } => {
                write(
                    &cpu.join(rel).join("cpu.cfs_period_us"),
                    &PERIOD_US.to_string(),
                )?;
                write(&cpu.join(rel).join("cpu.cfs_quota_us"), &quota)?;
                write(
                    &mem.join(rel).join("memory.limit_in_bytes"),
                    &memory.to_string(),
                )?;
            }
            Self::V2 { root } => {
                let _ = fs::write(root.join("cgroup.subtree_control"), "+cpu +memory");
                write(
                    &root.join(rel).join("cpu.max"),
                    &format!("{quota} {PERIOD_US}"),
                )?;
                write(&root.join(rel).join("memory.max"), &memory.to_string())?;
            }
        }
        Ok(())
    }

    /// The processes in cgroup `rel`.
    pub fn procs(&self, rel: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for d in self.dirs(rel) {
            let text = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The memory limit of `rel`, bytes.
    pub fn memory_limit(&self, rel: &str) -> Option<u64> {
        let p = match self {
            Self::V1 { memory, .. } => memory.join(rel).join("memory.limit_in_bytes"),
            Self::V2 { root } => root.join(rel).join("memory.max"),
        };
        fs::read_to_string(p).ok()?.trim().parse().ok()
    }

    /// Removes cgroup `rel`, waiting up to 5 s for its processes to be gone; succeeds when it
    /// does not exist.
    pub fn remove(&self, rel: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in self.dirs(rel) {
            loop {
                match fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::trace!(cgroup = %d.display(), "cgroup busy: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(cg_err(&d, format!("cannot remove: {e}"))),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_host_uses_v1() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
33 25 0:29 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset
";
        assert_eq!(
            Cgroups::from_mountinfo(info),
            Some(Cgroups::V1 {
                cpu: "/sys/fs/cgroup/cpu,cpuacct".into(),
                memory: "/sys/fs/cgroup/memory".into(),
            })
        );
        let c = Cgroups::from_mountinfo(info).unwrap();
        assert_eq!(c.dirs("x").len(), 2);
    }

    #[test]
    fn nothing_mounted() {
        assert_eq!(
            Cgroups::from_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }
}
