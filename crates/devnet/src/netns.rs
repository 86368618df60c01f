//! Network namespaces, bridges and veth links (devnet nodes, test hosts).

use std::path::Path;
use std::process::Command;

use crate::cmd::{CmdError, ip};
use crate::process::kill_and_wait;

/// True when the namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// True when the link `name` exists in the root namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Kills every process in the namespace, then deletes it. Missing namespaces are fine.
pub fn delete_netns(name: &str) -> Result<(), CmdError> {
    if !netns_exists(name) {
        return Ok(());
    }
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            kill_and_wait(pid, std::time::Duration::from_secs(5));
        }
    }
    // Gone meanwhile (removed by someone else): what was asked for is done.
    match ip(&["netns", "del", name]) {
        Err(_) if !netns_exists(name) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Deletes a link of the root namespace (the peer of a veth goes with it). Missing links are
/// fine, and so is a link that goes while this runs (the kernel removes the root end of a veth
/// some time after its namespace end's namespace is deleted).
pub fn delete_link(name: &str) -> Result<(), CmdError> {
    if !link_exists(name) {
        return Ok(());
    }
    match ip(&["link", "del", name]) {
        Err(_) if !link_exists(name) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// A network namespace that is deleted, with every process in it, when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Makes the namespace with its loopback up. An old one of the same name is removed first.
    pub fn create(name: &str) -> Result<Self, CmdError> {
        delete_netns(name)?;
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
            keep: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip args…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, CmdError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside the namespace (with its own view of /sys).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Leaves the namespace in place when dropped (its owner cleans it up later).
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.name.clone()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = delete_netns(&self.name)
        {
            tracing::warn!(netns = %self.name, error = %e, "cannot delete namespace");
        }
    }
}

/// A bridge in the root namespace with an address: the "LAN" of a set of test hosts.
#[derive(Debug)]
pub struct Bridge {
    name: String,
    keep: bool,
}

impl Bridge {
    /// Makes bridge `name` with address `cidr` (for example `10.213.7.1/24`) and brings it up.
    pub fn create(name: &str, cidr: &str) -> Result<Self, CmdError> {
        delete_link(name)?;
        ip(&["link", "add", name, "type", "bridge"])?;
        let b = Self {
            name: name.to_string(),
            keep: false,
        };
        ip(&["addr", "add", cidr, "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(b)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins `ns` to this bridge; see [`attach`].
    pub fn attach(
        &self,
        ns: &Netns,
        host_if: &str,
        cidr: &str,
        gateway: &str,
    ) -> Result<(), CmdError> {
        attach(&self.name, ns, host_if, cidr, gateway)
    }

    /// Leaves the bridge in place when dropped.
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.name.clone()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = delete_link(&self.name)
        {
            tracing::warn!(link = %self.name, error = %e, "cannot delete bridge");
        }
    }
}

/// Makes tap `name` (for a VM's NIC) on `bridge`, up.
pub fn add_tap(name: &str, bridge: &str) -> Result<(), CmdError> {
    delete_link(name)?;
    ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
    if let Err(e) = ip(&["link", "set", name, "master", bridge, "up"]) {
        let _ = delete_link(name);
        return Err(e);
    }
    Ok(())
}

/// Picks a /24 inside 10.213.0.0/16 that no route of this machine uses yet.
pub fn free_subnet() -> Result<u8, CmdError> {
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    (1..=254u8)
        .find(|i| !routes.contains(&format!("10.213.{i}.")))
        .ok_or_else(|| CmdError::Failed {
            cmd: "free_subnet".into(),
            status: std::process::ExitStatus::default(),
            stderr: "every 10.213.x.0/24 is in use".into(),
        })
}

/// Joins `ns` to `bridge`: a veth whose root end `host_if` is on the bridge and whose other end
/// is `eth0` in `ns`, with address `cidr` and a default route through `gateway`.
pub fn attach(
    bridge: &str,
    ns: &Netns,
    host_if: &str,
    cidr: &str,
    gateway: &str,
) -> Result<(), CmdError> {
    attach_bare(bridge, ns.name(), host_if, "eth0")?;
    let setup = || -> Result<(), CmdError> {
        ns.ip(&["addr", "add", cidr, "dev", "eth0"])?;
        ns.ip(&["route", "add", "default", "via", gateway])?;
        Ok(())
    };
    setup().inspect_err(|_| {
        let _ = delete_link(host_if);
    })
}

/// Joins `ns` to `bridge` with no address: a veth whose root end `host_if` is on the bridge and
/// whose other end is `ifname` in `ns`, up (a node's second NIC, for its public traffic).
pub fn attach_bare(bridge: &str, ns: &str, host_if: &str, ifname: &str) -> Result<(), CmdError> {
    delete_link(host_if)?;
    let peer = format!("{host_if}p");
    ip(&[
        "link", "add", host_if, "type", "veth", "peer", "name", &peer,
    ])?;
    let setup = || -> Result<(), CmdError> {
        ip(&["link", "set", host_if, "master", bridge])?;
        ip(&["link", "set", host_if, "up"])?;
        ip(&["link", "set", &peer, "netns", ns])?;
        ip(&["-n", ns, "link", "set", &peer, "name", ifname])?;
        ip(&["-n", ns, "link", "set", ifname, "up"])?;
        Ok(())
    };
    setup().inspect_err(|_| {
        let _ = delete_link(host_if);
    })
}

/// The names of the links of the root namespace.
pub fn list_links() -> Vec<String> {
    names_in("/sys/class/net")
}

/// The names of the entries of `dir` (none when it cannot be read).
fn names_in(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The names of the network namespaces in `/run/netns`.
pub fn list_netns() -> Vec<String> {
    names_in("/run/netns")
}
