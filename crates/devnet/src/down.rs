//! Taking a devnet down: every process, namespace, link, mount, cgroup and loop device its
//! nodes and grid made, found from its state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zos_runtime::supervise;

use crate::error::{DevnetError, Result};
use crate::netns;
use crate::state::DevnetState;

/// Removes the entries of `dir` whose names start with `prefix` (directories with rmdir only:
/// cgroups and empty mount points).
fn remove_prefixed(dir: &Path, prefix: &str) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let p = e.path();
            if p.is_dir() {
                let _ = std::fs::remove_dir(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// The cgroup directories VMs' cgroups are made in (v1 controllers, or the v2 root).
fn cgroup_roots() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let fstype = fields.get(dash + 1).copied().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            out.push(PathBuf::from(fields[4]));
        }
    }
    out
}

/// Removes every process, namespace and link of the devnet, then its state file.
pub fn down(state: &DevnetState) -> Result<()> {
    let mut problems = Vec::new();
    for n in &state.nodes {
        if n.pid > 0 {
            supervise::stop_blocking(n.pid, &state.node_marker(n), Duration::from_secs(10));
        }
        // The node's own namespaces (docs/network.md: `<p>ndmz`, `<p>public`, `<p>n-<netid>`),
        // with the processes in them, then its host namespace with its tunnels and machines.
        for ns in netns::list_netns() {
            let own = ns == format!("{}ndmz", n.prefix)
                || ns == format!("{}public", n.prefix)
                || ns.starts_with(&format!("{}n-", n.prefix));
            if own && let Err(e) = netns::delete_netns(&ns) {
                problems.push(format!("namespace {ns}: {e}"));
            }
        }
        if let Err(e) = netns::delete_netns(&n.netns) {
            problems.push(format!("namespace {}: {e}", n.netns));
        }
        // What its machines and flists left in global places: mounts, cgroups, run files.
        let flists = format!("/run/zos-flist/{}-", n.prefix);
        if let Err(e) = crate::disk::unmount_prefixed(&flists) {
            problems.push(format!("flist mounts {flists}*: {e}"));
        }
        remove_prefixed(Path::new("/run/zos-flist"), &format!("{}-", n.prefix));
        let _ = std::fs::remove_dir_all(format!("/run/zos-vmm-{}", n.prefix));
        for dir in cgroup_roots() {
            remove_prefixed(&dir, &format!("{}zos-vm-", n.prefix));
        }
        if let Err(e) = crate::disk::unmount_under(&n.mount_root) {
            problems.push(format!("mounts under {}: {e}", n.mount_root.display()));
        }
        for d in &n.disks {
            if let Some(dev) = &d.device
                && let Err(e) = crate::disk::detach(dev)
            {
                problems.push(format!("loop device {}: {e}", dev.display()));
            }
            let _ = std::fs::remove_file(&d.file);
        }
        for link in [&n.host_if, &n.public_if] {
            if !link.is_empty()
                && let Err(e) = netns::delete_link(link)
            {
                problems.push(format!("link {link}: {e}"));
            }
        }
    }
    if state.grid_pid > 0 {
        supervise::stop_blocking(
            state.grid_pid,
            &state.grid_marker(),
            Duration::from_secs(10),
        );
    }
    for bridge in [&state.bridge, &state.public_bridge] {
        if !bridge.is_empty()
            && let Err(e) = netns::delete_link(bridge)
        {
            problems.push(format!("bridge {bridge}: {e}"));
        }
    }
    if !problems.is_empty() {
        return Err(DevnetError::NotRemoved {
            name: state.name.clone(),
            problems,
        });
    }
    let _ = std::fs::remove_file(DevnetState::state_file(&state.dir));
    Ok(())
}
