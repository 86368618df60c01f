//! A whole grid on one machine: the grid on loopback, a farmer with a farm, and N nodes, each a
//! test host in its own network namespace, joined to the grid by veth pairs on a bridge.
//!
//! Processes are started detached so a devnet outlives the command that made it
//! (`zos devnet up`); [`down`] removes every process, namespace and link it made, using the
//! state file written by [`up`]. Tests wrap the state in a [`DevnetGuard`] that does the same
//! when dropped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use zos_client::GridClient;
use zos_types::registry::{AddFarmIp, NodeFilter, PublicConfig};
use zos_types::{FarmId, Identity, NodeId, TwinId};

use crate::netns::{self, Bridge, Netns};
use crate::process::{alive, kill_and_wait, wait_until};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// What `zos devnet up` is asked for.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Short name (1 to 5 of a-z, 0-9) that prefixes every namespace, link and node prefix.
    pub name: String,
    /// Where the state file, logs, keys and node state go.
    pub dir: PathBuf,
    pub nodes: usize,
    pub report_interval: Duration,
    pub grid_bin: PathBuf,
    pub zosd_bin: PathBuf,
    /// How long to wait for every node to be online before giving up.
    pub wait: Duration,
    /// The disks each node gets: sparse files on loop devices.
    pub disks: Vec<DiskPlan>,
}

/// One disk every node of a devnet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// `ssd` or `hdd`.
    pub ssd: bool,
    pub size: u64,
}

impl DiskPlan {
    /// Two SSDs of 16 GiB and one HDD of 64 GiB (sparse: they cost what is written).
    pub fn defaults() -> Vec<DiskPlan> {
        use zos_types::capacity::GIB;
        vec![
            DiskPlan {
                ssd: true,
                size: 16 * GIB,
            },
            DiskPlan {
                ssd: true,
                size: 16 * GIB,
            },
            DiskPlan {
                ssd: false,
                size: 64 * GIB,
            },
        ]
    }
}

impl std::str::FromStr for DiskPlan {
    type Err = String;
    /// `ssd:16G` or `hdd:1T`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, size) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected ssd:SIZE or hdd:SIZE"))?;
        let ssd = match kind {
            "ssd" => true,
            "hdd" => false,
            _ => return Err(format!("{kind:?} is not ssd or hdd")),
        };
        let size = zos_types::capacity::parse_bytes(size)
            .filter(|b| *b >= 256 * zos_types::capacity::MIB)
            .ok_or_else(|| format!("{size:?} is not a size of at least 256M"))?;
        Ok(DiskPlan { ssd, size })
    }
}

/// A disk of a devnet node: a sparse file attached to a loop device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetDisk {
    pub file: PathBuf,
    #[serde(default)]
    pub device: Option<PathBuf>,
    pub ssd: bool,
}

/// One node of a devnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetNode {
    pub index: usize,
    pub netns: String,
    /// The root-namespace end of its veth pair, on the devnet bridge.
    pub host_if: String,
    /// Its address on the devnet bridge.
    pub address: String,
    /// The root-namespace end of its second NIC (`eth1`), on the public bridge.
    #[serde(default)]
    pub public_if: String,
    /// Its public address (the public config the farmer gives it).
    #[serde(default)]
    pub public_address: String,
    /// Prefix of the names the node makes in global spaces.
    pub prefix: String,
    pub state_dir: PathBuf,
    /// Where its storage pools are mounted.
    pub mount_root: PathBuf,
    #[serde(default)]
    pub disks: Vec<DevnetDisk>,
    pub log: PathBuf,
    pub pid: i32,
    #[serde(default)]
    pub twin_id: Option<TwinId>,
    #[serde(default)]
    pub node_id: Option<NodeId>,
}

/// Everything a devnet made, written to `<dir>/devnet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetState {
    pub version: u32,
    pub name: String,
    pub dir: PathBuf,
    /// The grid as users reach it (loopback).
    pub grid_url: String,
    /// The grid as nodes reach it (the bridge address).
    pub grid_node_url: String,
    pub grid_port: u16,
    pub grid_pid: i32,
    pub grid_bin: PathBuf,
    pub zosd_bin: PathBuf,
    pub report_interval_secs: u64,
    pub bridge: String,
    pub subnet: String,
    /// The devnet's stand-in for the public internet: nodes' second NICs, the farm's public IPs.
    #[serde(default)]
    pub public_bridge: String,
    #[serde(default)]
    pub public_subnet: String,
    pub farmer_key: PathBuf,
    pub farmer_twin: TwinId,
    pub farm_id: FarmId,
    pub nodes: Vec<DevnetNode>,
}

impl DevnetState {
    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join("devnet.json")
    }

    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = Self::state_file(dir);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("no devnet state at {}: is a devnet up?", path.display()))?;
        let state: Self =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        if state.version != STATE_VERSION {
            bail!(
                "{} has version {}, this build reads {}",
                path.display(),
                state.version,
                STATE_VERSION
            );
        }
        Ok(state)
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let path = Self::state_file(&self.dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    pub fn farmer(&self) -> anyhow::Result<Identity> {
        Ok(zos_client::keyfile::load_identity(&self.farmer_key)?)
    }

    /// A client of the grid as the farmer.
    pub fn farmer_client(&self) -> anyhow::Result<GridClient> {
        Ok(GridClient::new(&self.grid_url)?
            .with_identity(self.farmer()?)
            .with_twin(self.farmer_twin))
    }
}

fn validate_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 5
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        bail!("devnet name {name:?} must be 1 to 5 of a-z, 0-9");
    }
    Ok(())
}

/// Starts `cmd` in its own process group with output to `log`, not waiting for it.
fn spawn_detached(mut cmd: Command, log: &Path) -> anyhow::Result<i32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening log {}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(child.id() as i32)
}

/// A port on 127.0.0.1 that is free right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Brings a devnet up. On failure, whatever was made is removed again.
pub async fn up(opts: &DevnetOptions) -> anyhow::Result<DevnetState> {
    validate_name(&opts.name)?;
    if !(1..=50).contains(&opts.nodes) {
        bail!("a devnet has 1 to 50 nodes, not {}", opts.nodes);
    }
    let bridge_name = format!("{}br", opts.name);
    if netns::link_exists(&bridge_name) || DevnetState::state_file(&opts.dir).exists() {
        bail!(
            "devnet {:?} is already up (bridge {bridge_name} or {} exists): run `zos devnet down` first",
            opts.name,
            opts.dir.display()
        );
    }
    for bin in [&opts.grid_bin, &opts.zosd_bin] {
        if !bin.is_file() {
            bail!(
                "{} not found: build the workspace first (cargo build)",
                bin.display()
            );
        }
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;

    // Subnet choice and bridge creation happen under one lock so parallel devnets do not collide.
    let lock =
        File::create("/run/lock/zos-devnet.lock").context("opening /run/lock/zos-devnet.lock")?;
    lock.lock()?;
    let third = netns::free_subnet()?;
    let subnet = format!("10.213.{third}.0/24");
    let gateway = format!("10.213.{third}.1");
    let bridge = Bridge::create(&bridge_name, &format!("{gateway}/24"))?;
    let pub_third = netns::free_subnet()?;
    let public_bridge = Bridge::create(
        &format!("{}pb", opts.name),
        &format!("10.213.{pub_third}.1/24"),
    )?;
    drop(lock);

    let port = free_port()?;
    let mut state = DevnetState {
        version: STATE_VERSION,
        name: opts.name.clone(),
        dir: opts.dir.clone(),
        grid_url: format!("http://127.0.0.1:{port}"),
        grid_node_url: format!("http://{gateway}:{port}"),
        grid_port: port,
        grid_pid: 0,
        grid_bin: opts.grid_bin.clone(),
        zosd_bin: opts.zosd_bin.clone(),
        report_interval_secs: opts.report_interval.as_secs().max(1),
        bridge: bridge.keep(),
        subnet,
        public_bridge: public_bridge.keep(),
        public_subnet: format!("10.213.{pub_third}.0/24"),
        farmer_key: opts.dir.join("farmer.key"),
        farmer_twin: 0,
        farm_id: 0,
        nodes: Vec::new(),
    };
    state.save()?;
    match build(&mut state, opts, &gateway).await {
        Ok(()) => Ok(state),
        Err(e) => {
            if let Err(clean) = down(&state) {
                tracing::warn!(error = %clean, "cleanup after a failed devnet up was incomplete");
            }
            Err(e)
        }
    }
}

async fn build(state: &mut DevnetState, opts: &DevnetOptions, gateway: &str) -> anyhow::Result<()> {
    start_grid(state).await?;
    state.save()?;

    let farmer = Identity::generate()?;
    zos_client::keyfile::save_identity(&state.farmer_key, &farmer, 0o600)?;
    let client = GridClient::new(&state.grid_url)?.with_identity(farmer);
    let twin = client
        .create_twin(None)
        .await
        .context("creating the farmer twin")?;
    let client = client.with_twin(twin.id);
    let farm = client
        .create_farm(&format!("devnet-{}", state.name))
        .await
        .context("creating the farm")?;
    if twin.id != 1 {
        bail!(
            "the farmer got twin {} on a fresh grid, expected 1 (the grid's admin twin)",
            twin.id
        );
    }
    state.farmer_twin = twin.id;
    state.farm_id = farm.id;
    state.save()?;

    for i in 1..=opts.nodes {
        let node = DevnetNode {
            index: i,
            netns: format!("{}-n{i}", state.name),
            host_if: format!("{}n{i}", state.name),
            address: format!(
                "{}.{}",
                gateway.rsplit_once('.').map(|(a, _)| a).unwrap_or(gateway),
                10 + i
            ),
            public_if: format!("{}p{i}", state.name),
            public_address: format!("{}.{}", public_base(&state.public_subnet), 10 + i),
            prefix: format!("{}n{i}", state.name),
            state_dir: state.dir.join(format!("node{i}")),
            mount_root: state.dir.join(format!("node{i}/mnt")),
            disks: Vec::new(),
            log: state.dir.join(format!("node{i}.log")),
            pid: 0,
            twin_id: None,
            node_id: None,
        };
        let ns = Netns::create(&node.netns)?;
        state.nodes.push(node);
        let node = state.nodes.last_mut().unwrap();
        std::fs::create_dir_all(&node.mount_root)?;
        for (d, plan) in opts.disks.iter().enumerate() {
            let kind = if plan.ssd { "ssd" } else { "hdd" };
            let file = node.state_dir.join(format!("disk{d}-{kind}.img"));
            let f = std::fs::File::create(&file)
                .with_context(|| format!("creating {}", file.display()))?;
            f.set_len(plan.size)?;
            node.disks.push(DevnetDisk {
                file: file.clone(),
                device: None,
                ssd: plan.ssd,
            });
            let device = crate::disk::attach(&file)
                .with_context(|| format!("attaching {}", file.display()))?;
            node.disks.last_mut().unwrap().device = Some(device);
        }
        let node = state.nodes.last().unwrap();
        netns::attach(
            &state.bridge,
            &ns,
            &node.host_if,
            &format!("{}/24", node.address),
            gateway,
        )?;
        netns::attach_bare(&state.public_bridge, ns.name(), &node.public_if, PUBLIC_NIC)?;
        ns.keep();
        state.save()?;
        start_node(state, i)?;
        state.save()?;
    }
    // The farm's public IPs and each node's public config, on the public bridge.
    let farmer = state.farmer_client()?;
    let base = public_base(&state.public_subnet);
    let gw4 = format!("{base}.1");
    for k in 0..PUBLIC_IPS {
        farmer
            .add_farm_ip(
                state.farm_id,
                &AddFarmIp {
                    ip: format!("{base}.{}/24", 100 + k).parse()?,
                    gateway: gw4.parse()?,
                },
            )
            .await
            .context("adding the farm's public IPs")?;
    }
    wait_online(state, opts.wait).await?;
    for n in &state.nodes {
        let Some(id) = n.node_id else { continue };
        farmer
            .set_public_config(
                id,
                &PublicConfig {
                    ipv4: format!("{}/24", n.public_address).parse()?,
                    gw4: gw4.parse()?,
                    ipv6: None,
                    gw6: None,
                    domain: None,
                },
            )
            .await
            .with_context(|| format!("setting the public config of node {id}"))?;
    }
    Ok(())
}

/// The name the farmer publishes the guest image under on a devnet's hub.
pub const GUEST_FLIST: &str = "zos-guest.fl";

/// Where a devnet's nodes find the guest image: the farmer's [`GUEST_FLIST`] on the hub.
pub fn guest_flist_url(grid: &str, farmer_twin: TwinId) -> String {
    format!(
        "{}/api/v1/hub/flists/{farmer_twin}/{GUEST_FLIST}",
        grid.trim_end_matches('/')
    )
}

/// The interface name of a node's second NIC, for public traffic.
pub const PUBLIC_NIC: &str = "eth1";
/// How many public IPv4 addresses a devnet's farm gets (`.100` onwards of the public subnet).
pub const PUBLIC_IPS: u8 = 16;

/// `10.213.7` of `10.213.7.0/24`.
fn public_base(subnet: &str) -> String {
    subnet
        .split_once('/')
        .map_or(subnet, |(a, _)| a)
        .rsplit_once('.')
        .map_or(subnet, |(a, _)| a)
        .to_string()
}

/// Starts (or restarts) the grid of `state` on its data dir and port.
pub async fn start_grid(state: &mut DevnetState) -> anyhow::Result<()> {
    if state.grid_pid > 0 && alive(state.grid_pid) {
        bail!("the grid already runs as pid {}", state.grid_pid);
    }
    let ready = state.dir.join("grid.ready");
    let _ = std::fs::remove_file(&ready);
    let gateway = state
        .grid_node_url
        .trim_start_matches("http://")
        .to_string();
    let mut cmd = Command::new(&state.grid_bin);
    cmd.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{}", state.grid_port)])
        .args(["--listen", &gateway])
        .arg("--data-dir")
        .arg(state.dir.join("grid"))
        .arg("--ready-file")
        .arg(&ready)
        // The farmer is the first twin of a devnet's fresh grid; it administers grace periods.
        .args(["--admin-twin", "1"]);
    state.grid_pid = spawn_detached(cmd, &state.dir.join("grid.log"))?;
    let pid = state.grid_pid;
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        let ready = ready.clone();
        async move { (ready.exists() || !alive(pid)).then_some(()) }
    })
    .await;
    if ok.is_none() || !ready.exists() {
        bail!(
            "the grid did not start; see {}",
            state.dir.join("grid.log").display()
        );
    }
    Ok(())
}

/// Stops the grid (SIGTERM), keeping its data.
pub fn stop_grid(state: &mut DevnetState) {
    if state.grid_pid > 0 {
        kill_and_wait(state.grid_pid, Duration::from_secs(10));
        state.grid_pid = 0;
    }
}

/// Starts zosd for node `index` (1-based) in its namespace.
pub fn start_node(state: &mut DevnetState, index: usize) -> anyhow::Result<()> {
    let report = state.report_interval_secs;
    let grid = state.grid_node_url.clone();
    let farmer_twin = state.farmer_twin;
    let farm = state.farm_id;
    let zosd = state.zosd_bin.clone();
    // The farmer admits its own nodes (the farm's admission is `signed`, the default).
    let admission = zos_types::registry::AdmissionToken::sign(
        &state.farmer()?,
        farm,
        zos_types::auth::unix_now() + 365 * 86_400,
    );
    let node = state
        .nodes
        .iter_mut()
        .find(|n| n.index == index)
        .with_context(|| format!("no node {index} in this devnet"))?;
    if node.pid > 0 && alive(node.pid) {
        bail!("node {index} already runs as pid {}", node.pid);
    }
    // Only the network namespace: zosd's mounts (pools, flists) belong to the host's mount
    // namespace, as on a real node, and outlive any one zosd process.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", node.netns))
        .arg("--")
        .arg(&zosd)
        .args(["--cmdline", "/dev/null"])
        .args(["--grid", &grid])
        .args(["--farm-id", &farm.to_string()])
        .args(["--admission", &admission.to_string()])
        .args(["--runmode", "dev"])
        .arg("--mount-root")
        .arg(&node.mount_root)
        .args(["--report-interval", &format!("{report}s")])
        .args(["--prefix", &node.prefix]);
    if !node.public_if.is_empty() {
        cmd.args(["--public-iface", PUBLIC_NIC]);
    }
    // The guest image of container-mode VMs: the farmer's flist on the devnet's hub (publish it
    // with `scripts/build-guest.sh --flist F --hub --push zos-guest.fl` as the farmer).
    cmd.args(["--guest-flist", &guest_flist_url(&grid, farmer_twin)]);
    for d in &node.disks {
        if let Some(dev) = &d.device {
            cmd.arg("--disk").arg(format!(
                "{}:{}",
                dev.display(),
                if d.ssd { "ssd" } else { "hdd" }
            ));
        }
    }
    node.pid = spawn_detached(cmd, &node.log)?;
    Ok(())
}

/// Stops zosd of node `index`: SIGTERM, or SIGKILL at once when `crash` is set.
pub fn stop_node(state: &mut DevnetState, index: usize, crash: bool) -> anyhow::Result<()> {
    let node = state
        .nodes
        .iter_mut()
        .find(|n| n.index == index)
        .with_context(|| format!("no node {index} in this devnet"))?;
    if node.pid > 0 {
        if crash {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(node.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        kill_and_wait(node.pid, Duration::from_secs(10));
        node.pid = 0;
    }
    Ok(())
}

/// Waits until the grid lists every node of the devnet online, and records their ids.
pub async fn wait_online(state: &mut DevnetState, timeout: Duration) -> anyhow::Result<()> {
    let client = GridClient::new(&state.grid_url)?;
    let filter = NodeFilter {
        farm_id: Some(state.farm_id),
        online: Some(true),
        ..NodeFilter::default()
    };
    let want = state.nodes.len();
    let nodes = wait_until(timeout, Duration::from_millis(200), || {
        let client = client.clone();
        let filter = filter.clone();
        async move {
            client
                .list_nodes(&filter)
                .await
                .ok()
                .filter(|n| n.len() >= want)
        }
    })
    .await;
    let Some(nodes) = nodes else {
        bail!(
            "not every node came online within {timeout:?}; see the node logs in {}",
            state.dir.display()
        );
    };
    for n in &mut state.nodes {
        // The node's key lives on its cache, inside one of its pools.
        let key_file = crate::disk::mounts_under(&n.mount_root)?
            .into_iter()
            .map(|m| m.join("zos-cache/identity/node.key"))
            .find(|p| p.exists());
        let Some(key_file) = key_file else { continue };
        let key = zos_client::keyfile::load_identity(&key_file)?.public_key();
        if let Some(twin) = client.twin_by_key(&key).await? {
            n.twin_id = Some(twin.id);
            n.node_id = nodes.iter().find(|x| x.twin_id == twin.id).map(|x| x.id);
        }
    }
    state.save()?;
    // Online means registered; ready means its uplink answers requests over the relay.
    let farmer = state.farmer_client()?;
    for n in &state.nodes {
        let Some(twin) = n.twin_id else { continue };
        let answered = wait_until(timeout, Duration::from_millis(200), || {
            let farmer = farmer.clone();
            async move {
                farmer
                    .node(twin)
                    .call::<zos_types::node_api::Version>(&())
                    .await
                    .ok()
            }
        })
        .await;
        if answered.is_none() {
            bail!(
                "node {} did not answer over the relay within {timeout:?}; see {}",
                n.index,
                n.log.display()
            );
        }
    }
    Ok(())
}

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
pub fn down(state: &DevnetState) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for n in &state.nodes {
        if n.pid > 0 {
            kill_and_wait(n.pid, Duration::from_secs(10));
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
        kill_and_wait(state.grid_pid, Duration::from_secs(10));
    }
    for bridge in [&state.bridge, &state.public_bridge] {
        if !bridge.is_empty()
            && let Err(e) = netns::delete_link(bridge)
        {
            problems.push(format!("bridge {bridge}: {e}"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "devnet {} was not fully removed: {}",
            state.name,
            problems.join("; ")
        );
    }
    let _ = std::fs::remove_file(DevnetState::state_file(&state.dir));
    Ok(())
}

/// A devnet for a test: removed, with its directory, when dropped.
#[derive(Debug)]
pub struct DevnetGuard {
    pub state: DevnetState,
    _dir: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A directory removed on drop.
    #[derive(Debug)]
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl DevnetGuard {
    /// Brings up a devnet named after the test process with `nodes` nodes, using the binaries
    /// built beside the test executable.
    pub async fn up(nodes: usize, report_interval: Duration) -> anyhow::Result<Self> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let bin = |b: &str| {
            crate::workspace_binary(b)
                .with_context(|| format!("{b} is not built: run `cargo build --workspace` first"))
        };
        let (grid_bin, zosd_bin) = (bin("zos-grid")?, bin("zosd")?);
        // Names are `t` and 4 base-36 digits from the process and a counter; parallel test
        // processes can still meet on one, so a name in use is skipped for the next.
        let mut last = None;
        for _ in 0..8 {
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let name = format!(
                "t{}",
                base36(std::process::id().wrapping_mul(31).wrapping_add(n * 7919))
            );
            let dir =
                std::env::temp_dir().join(format!("zos-devnet-{name}-{}", std::process::id()));
            if netns::link_exists(&format!("{name}br")) || dir.exists() {
                continue;
            }
            let opts = DevnetOptions {
                name,
                dir: dir.clone(),
                nodes,
                report_interval,
                grid_bin: grid_bin.clone(),
                zosd_bin: zosd_bin.clone(),
                wait: Duration::from_secs(60),
                disks: DiskPlan::defaults(),
            };
            let guard_dir = tempfile_dir::TempDir(dir);
            match up(&opts).await {
                Ok(state) => {
                    return Ok(Self {
                        state,
                        _dir: Some(guard_dir),
                    });
                }
                Err(e) if format!("{e:#}").contains("is already up") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free devnet name")))
    }
}

/// The last 4 base-36 digits of `n`.
fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 4];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl DevnetGuard {
    /// Takes the devnet down and answers the namespaces of its nodes that are left (none when
    /// `down` removed everything the nodes made).
    pub fn down_leftovers(self) -> Vec<String> {
        let prefixes: Vec<String> = self.state.nodes.iter().map(|n| n.prefix.clone()).collect();
        drop(self);
        netns::list_netns()
            .into_iter()
            .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
            .collect()
    }
}

impl Drop for DevnetGuard {
    fn drop(&mut self) {
        if let Err(e) = down(&self.state) {
            eprintln!("devnet cleanup: {e:#}");
        }
    }
}
