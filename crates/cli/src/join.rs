//! `zos network join` and `leave`: this machine as the access peer of a network, without
//! `wg-quick` and without needing the kernel's WireGuard.
//!
//! The interface is made with the node's own WireGuard code (`zos_net::wireguard`): the
//! kernel's implementation when `/sys/module/wireguard` exists, otherwise `boringtun-cli` as a
//! process of its own; both are configured with `wg`. It gets the access address (`.1` of the
//! access subnet), the network's range as its route and the access node as its only peer:
//! what `zos network wg-config` writes for `wg-quick`. What `join` made (interface, backend,
//! boringtun's PID) is kept in a [`StateFile`] beside the network's record, so `leave` works
//! from another shell, and `join` twice leaves the first one as it is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use zos_client::workflow::network::{NetworkRecord, NetworkStore, dot_one};
use zos_net::netns::Ns;
use zos_net::wireguard::{self, WG_MTU, WgBackend, WireguardMode};
use zos_runtime::host::find_program;
use zos_runtime::{StateFile, Versioned};
use zos_types::workload::{Network, Peer};

/// What `join` made on this machine, for `leave`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub version: u32,
    pub network: String,
    pub ifname: String,
    pub backend: WgBackend,
    /// The boringtun process (userspace only).
    #[serde(default)]
    pub pid: Option<i32>,
    /// This machine's address in the network, with its subnet's length.
    pub address: Ipv4Net,
    /// Routed through the interface: the network's range.
    pub route: Ipv4Net,
}

impl Versioned for Joined {
    const VERSION: u32 = 1;
    const PROGRAM: &'static str = "zos";
}

/// The join state file of `name` in `store`: `<store>/joined/<name>.json`.
fn state_file(store: &NetworkStore, name: &str) -> StateFile<Joined> {
    StateFile::new(store.dir().join("joined").join(format!("{name}.json")))
}

/// The interface of a network on this machine: `zw` and 8 hex digits of a hash of the store
/// and the name (unique per grid, twin and network; 10 bytes, under the kernel's 15).
pub fn ifname(store: &NetworkStore, name: &str) -> String {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    let key = format!("{}/{name}", store.dir().display());
    for b in key.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("zw{h:08x}")
}

fn link_exists(ifname: &str) -> bool {
    Path::new("/sys/class/net").join(ifname).exists()
}

/// Runs `ip args…`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(find_program("ip"))
        .args(args)
        .output()
        .context("cannot run ip: install iproute2")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether what `j` records is all there: the interface, and boringtun for userspace.
fn intact(j: &Joined) -> bool {
    link_exists(&j.ifname)
        && match (j.backend, j.pid) {
            (WgBackend::Kernel, _) => true,
            (WgBackend::Userspace, Some(pid)) => wireguard::is_our_process(pid, &j.ifname),
            (WgBackend::Userspace, None) => false,
        }
}

/// Joins this machine to network `rec` (whose access it has); answers what was made, or what
/// was there already when it is joined.
pub async fn join(store: &NetworkStore, rec: &NetworkRecord) -> anyhow::Result<(Joined, bool)> {
    let access = rec.access.as_ref().with_context(|| {
        format!(
            "this machine has no access to network {:?}: run `zos network add-access {}`",
            rec.name, rec.name
        )
    })?;
    let node = rec
        .nodes
        .iter()
        .find(|n| n.node_id == access.node_id)
        .context("the access node is no longer part of the network")?;
    let file = state_file(store, &rec.name);
    if let Some(j) = file.load()? {
        if intact(&j) {
            return Ok((j, false));
        }
        // Half there (a reboot, a killed boringtun): remove what is left and join again.
        leave_parts(&j).await?;
    }
    let ifname = ifname(store, &rec.name);
    if link_exists(&ifname) {
        bail!(
            "interface {ifname} exists but no join of {:?} made it",
            rec.name
        );
    }
    let backend = WireguardMode::Auto.resolve();
    let mut j = Joined {
        version: Joined::VERSION,
        network: rec.name.clone(),
        ifname: ifname.clone(),
        backend,
        pid: None,
        address: Ipv4Net::new(dot_one(access.subnet), access.subnet.prefix_len())?,
        route: rec.ip_range,
    };
    let net = Network {
        ip_range: rec.ip_range,
        subnet: access.subnet,
        wireguard_private_key: access.private_key.clone(),
        wireguard_listen_port: 0,
        peers: vec![Peer {
            subnet: node.subnet,
            wireguard_public_key: node.public_key.clone(),
            allowed_ips: vec![IpNet::V4(rec.ip_range)],
            endpoint: node.endpoint.clone(),
        }],
    };
    let made = make(store, &mut j, &net, &file).await;
    if let Err(e) = made {
        if let Err(undo) = leave_parts(&j).await {
            tracing::warn!(error = %undo, "undoing a failed join was incomplete");
        }
        let _ = file.remove();
        return Err(e);
    }
    Ok((j, true))
}

/// Makes the interface of `j`, recording it first, then configures it as `net` says.
async fn make(
    store: &NetworkStore,
    j: &mut Joined,
    net: &Network,
    file: &StateFile<Joined>,
) -> anyhow::Result<()> {
    let host = Ns::Host(None);
    match j.backend {
        WgBackend::Kernel => ip(&["link", "add", &j.ifname, "type", "wireguard"])?,
        WgBackend::Userspace => {
            let log = log_path(store, &j.network);
            let bt = find_program("boringtun-cli");
            j.pid = Some(wireguard::start_userspace(&host, &bt, &j.ifname, &log).await?);
        }
    }
    file.save(j)?;
    let wg = find_program("wg");
    wireguard::sync(&host, &wg, j.backend, &j.ifname, net, true, true).await?;
    ip(&["addr", "add", &j.address.to_string(), "dev", &j.ifname])?;
    ip(&["link", "set", &j.ifname, "mtu", &WG_MTU.to_string(), "up"])?;
    ip(&["route", "replace", &j.route.to_string(), "dev", &j.ifname])?;
    Ok(())
}

/// Removes the interface (with its address and routes) and stops boringtun.
async fn leave_parts(j: &Joined) -> anyhow::Result<()> {
    if link_exists(&j.ifname)
        && let Err(e) = ip(&["link", "del", &j.ifname])
        && link_exists(&j.ifname)
    {
        return Err(e);
    }
    // Stopping boringtun removes its tun device too; the PID is checked against its command line.
    wireguard::stop_userspace(j.pid, &j.ifname, Duration::from_secs(5)).await;
    if let Some(pid) = j.pid
        && wireguard::is_our_process(pid, &j.ifname)
    {
        bail!("boringtun ({pid}) of {} did not stop", j.ifname);
    }
    Ok(())
}

/// Takes this machine out of network `name`: answers what was removed, `None` when it was not
/// joined.
pub async fn leave(store: &NetworkStore, name: &str) -> anyhow::Result<Option<Joined>> {
    let file = state_file(store, name);
    let Some(j) = file.load()? else {
        return Ok(None);
    };
    leave_parts(&j).await?;
    file.remove()?;
    Ok(Some(j))
}

/// Where the boringtun log of a join is.
pub fn log_path(store: &NetworkStore, name: &str) -> PathBuf {
    store.dir().join("joined").join(format!("{name}.log"))
}

/// Takes this machine out of every network of the grid at `grid_url` it joined, whatever the
/// twin (`zos devnet down`: the grid goes, and an interface into its networks would stay behind
/// with its route and process). Answers the networks left.
pub async fn leave_grid(root: &Path, grid_url: &str) -> anyhow::Result<Vec<String>> {
    let grid = root.join(zos_client::workflow::network::grid_id(grid_url));
    let mut left = Vec::new();
    for twin_dir in std::fs::read_dir(&grid).into_iter().flatten().flatten() {
        let joined = twin_dir.path().join("joined");
        for e in std::fs::read_dir(&joined).into_iter().flatten().flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(j) = StateFile::<Joined>::new(&p).load()? else {
                continue;
            };
            leave_parts(&j).await?;
            StateFile::<Joined>::new(&p).remove()?;
            left.push(j.network);
        }
    }
    Ok(left)
}
