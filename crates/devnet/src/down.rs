//! Taking a devnet down: every process, namespace, link, mount, cgroup and loop device its
//! nodes and grid made, found from its state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use zos_runtime::supervise;

use crate::error::{DevnetError, Result};
use crate::netns;
use crate::state::{DevnetNode, DevnetState};

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
    for m in zos_runtime::mounts::mounts().unwrap_or_default() {
        if m.fstype == "cgroup" || m.fstype == "cgroup2" {
            out.push(m.mount_point);
        }
    }
    out
}

/// What [`down`] found already gone: parts the state records that did not exist when it began
/// (removed by hand, or with their namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownReport {
    pub missing: Vec<String>,
}

/// The parts of `state` that do not exist (any more).
fn missing_parts(state: &DevnetState) -> Vec<String> {
    let mut missing = Vec::new();
    if state.grid_pid > 0 && !state.grid_running() {
        missing.push("grid process".to_string());
    }
    for bridge in [&state.bridge, &state.public_bridge] {
        if !bridge.is_empty() && !netns::link_exists(bridge) {
            missing.push(format!("bridge {bridge}"));
        }
    }
    for n in &state.nodes {
        if n.pid > 0 && !state.node_running(n) {
            missing.push(format!("zosd of node {}", n.index));
        }
        if !netns::netns_exists(&n.netns) {
            missing.push(format!("namespace {}", n.netns));
        }
        for link in [&n.host_if, &n.public_if] {
            if !link.is_empty() && !netns::link_exists(link) {
                missing.push(format!("link {link}"));
            }
        }
    }
    missing
}

/// Removes every process, namespace, link, mount and disk of the devnet, then its data (grid
/// database, node state, farmer key) and its state file, so the next `up` starts a fresh devnet.
/// Parts already gone are fine: they are answered in the [`DownReport`]; the call fails only
/// when something of the devnet is left.
pub fn down(state: &DevnetState) -> Result<DownReport> {
    let missing = missing_parts(state);
    let mut problems = Vec::new();
    // A supervised node's zos-init stops zosd, then sweeps its namespace (its grace each):
    // every node is told at once, so they stop side by side rather than one after another.
    if state.supervised.is_some() {
        for n in state.nodes.iter().filter(|n| state.node_running(n)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(n.pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for n in &state.nodes {
        remove_node(state, n, &mut problems);
    }
    for vm in &state.vms {
        crate::vms::remove_vm(state, vm, &mut problems);
    }
    crate::vms::stop_dhcp(state);
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
    problems.extend(still_there(state));
    if problems.is_empty()
        && let Err(e) = clear_data(&state.dir)
    {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        return Err(DevnetError::NotRemoved {
            name: state.name.clone(),
            problems,
        });
    }
    let _ = std::fs::remove_file(DevnetState::state_file(&state.dir));
    Ok(DownReport { missing })
}

/// Stops node `n`'s zosd and removes its namespaces, mounts, cgroups, disks and links.
fn remove_node(state: &DevnetState, n: &DevnetNode, problems: &mut Vec<String>) {
    if n.pid > 0 {
        supervise::stop_blocking(n.pid, &state.node_marker(n), state.node_grace());
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
    // A supervised node's runtime (flists, `/usr`), when its mounts reached the host's.
    if state.supervised.is_some()
        && let Err(e) = crate::disk::unmount_under(&n.state_dir)
    {
        problems.push(format!("mounts under {}: {e}", n.state_dir.display()));
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

/// The namespaces and links of `state` that still exist, after giving the kernel up to five
/// seconds to finish removing the root ends of veths whose namespaces were deleted.
fn still_there(state: &DevnetState) -> Vec<String> {
    let left = || {
        let mut left = Vec::new();
        for n in &state.nodes {
            if netns::netns_exists(&n.netns) {
                left.push(format!("namespace {} is still there", n.netns));
            }
            for link in [
                &n.host_if,
                &n.public_if,
                &state.bridge,
                &state.public_bridge,
            ] {
                if !link.is_empty() && netns::link_exists(link) {
                    left.push(format!("link {link} is still there"));
                }
            }
        }
        left.dedup();
        left
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let l = left();
        if l.is_empty() || std::time::Instant::now() >= deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the data a devnet keeps in `dir` (the grid's database, the nodes' state directories,
/// the farmer's key, what it published releases from), so the next devnet in `dir` starts
/// fresh: a farm name, twins and contracts of a devnet that is gone would only collide with the
/// new one's. Logs stay. Refuses (and removes nothing) while anything is mounted under `dir`.
pub(crate) fn clear_data(dir: &Path) -> Result<()> {
    let mounted = crate::disk::mounts_under(dir).map_err(DevnetError::io("reading mounts", dir))?;
    if let Some(m) = mounted.first() {
        return Err(DevnetError::StillMounted(m.clone()));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let numbered = |prefix: &str| {
            name.strip_prefix(prefix)
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        };
        let node_dir = numbered("node") || numbered("vm");
        let p = e.path();
        let r = match name.as_str() {
            "grid" | "release" => std::fs::remove_dir_all(&p),
            "grid.ready" | "farmer.key" | "release-keys.json" | "dnsmasq.leases" => {
                std::fs::remove_file(&p)
            }
            _ if node_dir && p.is_dir() => std::fs::remove_dir_all(&p),
            _ => Ok(()),
        };
        r.map_err(DevnetError::io("removing", &p))?;
    }
    Ok(())
}

/// Removes what a devnet called `name` left without a state file: its bridges, its nodes'
/// namespaces (with their processes) and links. Answers what it removed (empty when nothing of
/// it was there).
pub fn down_leftovers(name: &str) -> Result<Vec<String>> {
    crate::state::validate_name(name)?;
    let node_ns = |ns: &str| {
        ns.strip_prefix(&format!("{name}-n"))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut removed = Vec::new();
    let mut problems = Vec::new();
    for ns in netns::list_netns().into_iter().filter(|ns| node_ns(ns)) {
        match netns::delete_netns(&ns) {
            Ok(()) => removed.push(format!("namespace {ns}")),
            Err(e) => problems.push(format!("namespace {ns}: {e}")),
        }
    }
    // Node VMs (QEMU named `<name>-vm<i>`), their taps `<name>v<i>` and their dnsmasq.
    let vm_procs = supervise::find(&supervise::Marker::containing(format!("{name}-vm")))
        .into_iter()
        .chain(supervise::find(
            &supervise::Marker::program("dnsmasq").arg(format!("--interface={name}br")),
        ));
    for (pid, argv) in vm_procs {
        supervise::stop_blocking(pid, &supervise::Marker::exact(argv), Duration::from_secs(5));
        removed.push(format!("process {pid}"));
    }
    let tap = |l: &str| {
        l.strip_prefix(&format!("{name}v"))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
    };
    for link in netns::list_links().into_iter().filter(|l| tap(l)) {
        match netns::delete_link(&link) {
            Ok(()) => removed.push(format!("tap {link}")),
            Err(e) => problems.push(format!("tap {link}: {e}")),
        }
    }
    for bridge in [format!("{name}br"), format!("{name}pb")] {
        if netns::link_exists(&bridge) {
            match netns::delete_link(&bridge) {
                Ok(()) => removed.push(format!("bridge {bridge}")),
                Err(e) => problems.push(format!("bridge {bridge}: {e}")),
            }
        }
    }
    if !problems.is_empty() {
        return Err(DevnetError::NotRemoved {
            name: name.into(),
            problems,
        });
    }
    Ok(removed)
}
