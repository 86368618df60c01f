//! Bringing a devnet up, and starting and stopping its grid and nodes one by one (tests restart
//! them to check recovery).

use std::fs::File;
use std::process::Command;
use std::time::Duration;

use zos_client::GridClient;
use zos_runtime::supervise;
use zos_types::registry::{AddFarmIp, NodeFilter, PublicConfig};
use zos_types::{Identity, TwinId};

use crate::down::down;
use crate::error::{DevnetError, Result};
use crate::netns::{self, Bridge, Netns};
use crate::process::{alive, spawn_detached, wait_until};
use crate::state::{
    DevnetDisk, DevnetNode, DevnetOptions, DevnetState, FAUCET_TOKENS, STATE_VERSION, validate_name,
};

/// A port on 127.0.0.1 that is free right now.
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(DevnetError::Port)
}

/// Brings a fresh devnet up (data left in `opts.dir` by an earlier one is removed first). On
/// failure, whatever was made is removed again.
pub async fn up(opts: &DevnetOptions) -> Result<DevnetState> {
    validate_name(&opts.name)?;
    let vms = opts.vms.as_ref().map_or(0, |v| v.count);
    if opts.nodes > 50 || vms > 8 || opts.nodes + vms == 0 {
        return Err(DevnetError::NodeCount(opts.nodes + vms));
    }
    if let Some(v) = &opts.vms {
        for f in [
            "vmlinuz",
            "initramfs.cpio.zst",
            "zos-base.fl",
            "zos.fl",
            "blocks",
        ] {
            if !v.image.join(f).exists() {
                return Err(DevnetError::Image {
                    path: v.image.join(f),
                    reason: "it is missing".into(),
                });
            }
        }
    }
    if let Some(s) = &opts.supervised {
        if opts.vms.is_some() {
            return Err(DevnetError::SupervisedWithVms);
        }
        for bin in [&s.init_bin, &s.mounter] {
            if !bin.is_file() {
                return Err(DevnetError::MissingBinary(bin.clone()));
            }
        }
    }
    let bridge_name = format!("{}br", opts.name);
    if netns::link_exists(&bridge_name) || DevnetState::state_file(&opts.dir).exists() {
        return Err(DevnetError::AlreadyUp {
            name: opts.name.clone(),
            bridge: bridge_name,
            dir: opts.dir.clone(),
        });
    }
    for bin in [&opts.grid_bin, &opts.zosd_bin] {
        if !bin.is_file() {
            return Err(DevnetError::MissingBinary(bin.clone()));
        }
    }
    std::fs::create_dir_all(&opts.dir).map_err(DevnetError::io("creating", &opts.dir))?;
    // No devnet is up in `dir`: data an earlier one left (an older `down` kept its grid
    // database) belongs to a grid that is gone; a devnet always starts fresh.
    crate::down::clear_data(&opts.dir)?;

    // Subnet choice and bridge creation happen under one lock so parallel devnets do not collide.
    const LOCK: &str = "/run/lock/zos-devnet.lock";
    let lock = File::create(LOCK).map_err(DevnetError::io("opening", LOCK))?;
    lock.lock().map_err(DevnetError::io("locking", LOCK))?;
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
        vms: Vec::new(),
        dnsmasq_pid: 0,
        release_keys: None,
        supervised: opts.supervised.clone(),
        billing: opts.billing.clone(),
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

async fn build(state: &mut DevnetState, opts: &DevnetOptions, gateway: &str) -> Result<()> {
    if let Some(v) = &opts.vms {
        crate::vms::write_release_keys(state, &v.release_key)?;
    }
    if let Some(s) = &opts.supervised {
        crate::vms::write_release_keys(state, &s.release_key)?;
    }
    start_grid(state).await?;
    state.save()?;

    let farmer = Identity::generate()?;
    zos_client::keyfile::save_identity(&state.farmer_key, &farmer, 0o600)?;
    let client = GridClient::new(&state.grid_url)?.with_identity(farmer);
    let twin = client
        .create_twin(None)
        .await
        .map_err(DevnetError::FarmerTwin)?;
    let client = client.with_twin(twin.id);
    let farm = client
        .create_farm(&format!("devnet-{}", state.name))
        .await
        .map_err(DevnetError::Farm)?;
    if twin.id != 1 {
        return Err(DevnetError::FarmerNotAdmin(twin.id));
    }
    state.farmer_twin = twin.id;
    state.farm_id = farm.id;
    state.save()?;

    if let Some(s) = &opts.supervised {
        let version = crate::supervised::publish_runtime(state, s, None, None).await?;
        tracing::info!(%version, "zosd published as the devnet's dev release");
    }
    for i in 1..=opts.nodes {
        add_node(state, opts, gateway, i)?;
    }
    if let Some(v) = &opts.vms {
        let version = crate::vms::publish_image(state, v).await?;
        tracing::info!(%version, "node image published as the devnet's dev release");
        crate::vms::start_dhcp(state, v)?;
        state.save()?;
        for i in 1..=v.count {
            crate::vms::add_vm(state, v, i)?;
        }
    }
    public_addresses(state, opts).await?;
    if let Some(v) = &opts.vms {
        crate::vms::wait_vms_online(state, v.wait).await?;
    }
    Ok(())
}

/// The farm's public IPs and each node's public config, on the public bridge (once every node
/// is online).
async fn public_addresses(state: &mut DevnetState, opts: &DevnetOptions) -> Result<()> {
    let farmer = state.farmer_client()?;
    let base = public_base(&state.public_subnet);
    let gw4 = format!("{base}.1");
    for k in 0..PUBLIC_IPS {
        farmer
            .add_farm_ip(
                state.farm_id,
                &AddFarmIp {
                    ip: addr(format!("{base}.{}/24", 100 + k))?,
                    gateway: addr(gw4.clone())?,
                },
            )
            .await
            .map_err(DevnetError::FarmIps)?;
    }
    wait_online(state, opts.wait).await?;
    for n in &state.nodes {
        let Some(id) = n.node_id else { continue };
        farmer
            .set_public_config(
                id,
                &PublicConfig {
                    ipv4: addr(format!("{}/24", n.public_address))?,
                    gw4: addr(gw4.clone())?,
                    ipv6: None,
                    gw6: None,
                    domain: Some(n.domain(&state.name)),
                },
            )
            .await
            .map_err(|source| DevnetError::PublicConfig { node: id, source })?;
    }
    Ok(())
}

/// Makes node `i` of the devnet: its namespace, disks and links, then starts its zosd.
fn add_node(state: &mut DevnetState, opts: &DevnetOptions, gateway: &str, i: usize) -> Result<()> {
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
        zosd_args: Vec::new(),
    };
    let ns = Netns::create(&node.netns)?;
    state.nodes.push(node);
    let node = state.nodes.last_mut().unwrap();
    std::fs::create_dir_all(&node.mount_root)
        .map_err(DevnetError::io("creating", &node.mount_root))?;
    for (d, plan) in opts.disks.iter().enumerate() {
        let kind = if plan.ssd { "ssd" } else { "hdd" };
        let file = node.state_dir.join(format!("disk{d}-{kind}.img"));
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(plan.size))
            .map_err(DevnetError::io("creating", &file))?;
        node.disks.push(DevnetDisk {
            file: file.clone(),
            device: None,
            ssd: plan.ssd,
        });
        let device = crate::disk::attach(&file).map_err(DevnetError::io("attaching", &file))?;
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
    Ok(())
}

/// `text` as an address or network; the devnet makes them from its subnets.
fn addr<T: std::str::FromStr>(text: String) -> Result<T> {
    text.parse().map_err(|_| DevnetError::Address(text))
}

/// The name the farmer publishes the guest image under on a devnet's hub.
pub const GUEST_FLIST: &str = "zos-guest.fl";

/// The name the farmer publishes the sample web application under on a devnet's hub
/// (`scripts/build-sample.sh`); `examples/vm.yaml` names it `1/web.fl` (the farmer is twin 1).
pub const SAMPLE_FLIST: &str = "web.fl";

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
pub async fn start_grid(state: &mut DevnetState) -> Result<()> {
    if state.grid_running() {
        return Err(DevnetError::GridRunning(state.grid_pid));
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
    match &state.billing {
        // By default a devnet does not bill (its twins have no money, and machines would pause
        // after an hour); its faucet lets anyone try deposits and accounts.
        None => {
            cmd.arg("--no-billing")
                .args(["--faucet", &FAUCET_TOKENS.to_string()]);
        }
        // Billing on: each period billed as soon as it ends, looked for every second.
        Some(b) => {
            cmd.args(["--billing-period-secs", &b.period_secs.max(1).to_string()])
                .args(["--billing-delay-secs", "0"])
                .args(["--billing-tick-secs", "1"])
                .args(["--grace-secs", &b.grace_secs.to_string()])
                .args(["--faucet", &b.faucet_tokens.to_string()]);
        }
    }
    if let Some(keys) = &state.release_keys {
        cmd.arg("--release-keys")
            .arg(format!("dev={}", keys.display()));
    }
    state.grid_pid = spawn_detached(cmd, &state.dir.join("grid.log"))?;
    // Our own child until it is reaped, so its PID alone names it here (before it executes the
    // grid, its command line is still ours).
    let pid = state.grid_pid;
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        let ready = ready.clone();
        async move { (ready.exists() || !alive(pid)).then_some(()) }
    })
    .await;
    if ok.is_none() || !ready.exists() {
        return Err(DevnetError::GridDidNotStart(state.dir.join("grid.log")));
    }
    Ok(())
}

/// Stops the grid (SIGTERM), keeping its data.
pub fn stop_grid(state: &mut DevnetState) {
    if state.grid_pid > 0 {
        supervise::stop_blocking(
            state.grid_pid,
            &state.grid_marker(),
            Duration::from_secs(10),
        );
        state.grid_pid = 0;
    }
}

/// Starts zosd for node `index` (1-based) in its namespace; on a supervised devnet, the node's
/// zos-init, which starts zosd from the release.
pub fn start_node(state: &mut DevnetState, index: usize) -> Result<()> {
    let at = node_at(state, index)?;
    if state.node_running(&state.nodes[at]) {
        return Err(DevnetError::NodeRunning {
            index,
            pid: state.nodes[at].pid,
        });
    }
    let args = zosd_args(state, &state.nodes[at])?;
    if let Some(s) = state.supervised.clone() {
        crate::supervised::write_config(state, &s, &state.nodes[at], args)?;
        state.nodes[at].pid = crate::supervised::start(state, &s, &state.nodes[at])?;
        return Ok(());
    }
    let node = &mut state.nodes[at];
    // Only the network namespace: zosd's mounts (pools, flists) belong to the host's mount
    // namespace, as on a real node, and outlive any one zosd process.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", node.netns))
        .arg("--")
        .arg(&state.zosd_bin)
        .args(args);
    node.pid = spawn_detached(cmd, &node.log)?;
    Ok(())
}

/// The flags of `node`'s zosd: the devnet's grid, farm and admission, the node's mount root,
/// name prefix, public NIC, disks and own extra arguments.
fn zosd_args(state: &DevnetState, node: &DevnetNode) -> Result<Vec<String>> {
    let grid = &state.grid_node_url;
    // The farmer admits its own nodes (the farm's admission is `signed`, the default).
    let admission = zos_types::registry::AdmissionToken::sign(
        &state.farmer()?,
        state.farm_id,
        zos_types::auth::unix_now() + 365 * 86_400,
    );
    let mut args: Vec<String> = [
        "--cmdline",
        "/dev/null",
        "--grid",
        grid,
        "--farm-id",
        &state.farm_id.to_string(),
        "--admission",
        &admission.to_string(),
        "--runmode",
        "dev",
        "--mount-root",
        &node.mount_root.display().to_string(),
        "--report-interval",
        &format!("{}s", state.report_interval_secs),
        "--prefix",
        &node.prefix,
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    if !node.public_if.is_empty() {
        args.extend(["--public-iface".to_string(), PUBLIC_NIC.to_string()]);
    }
    args.extend(node.zosd_args.iter().cloned());
    // The guest image of container-mode VMs: the farmer's flist on the devnet's hub (publish it
    // with `scripts/build-guest.sh --flist F --hub --push zos-guest.fl` as the farmer).
    args.extend([
        "--guest-flist".to_string(),
        guest_flist_url(grid, state.farmer_twin),
    ]);
    for d in &node.disks {
        if let Some(dev) = &d.device {
            args.push("--disk".into());
            args.push(format!(
                "{}:{}",
                dev.display(),
                if d.ssd { "ssd" } else { "hdd" }
            ));
        }
    }
    Ok(args)
}

/// Stops zosd of node `index`: SIGTERM, or SIGKILL at once when `crash` is set. On a
/// supervised devnet this stops the node's zos-init, and with it everything the node runs
/// (its workloads too: they live in its PID namespace).
pub fn stop_node(state: &mut DevnetState, index: usize, crash: bool) -> Result<()> {
    let at = node_at(state, index)?;
    let node = &state.nodes[at];
    if node.pid > 0 {
        let grace = if crash {
            Duration::ZERO
        } else {
            state.node_grace()
        };
        supervise::stop_blocking(node.pid, &state.node_marker(node), grace);
        state.nodes[at].pid = 0;
    }
    Ok(())
}

/// Where node `index` (1-based) is in `state.nodes`.
fn node_at(state: &DevnetState, index: usize) -> Result<usize> {
    state
        .nodes
        .iter()
        .position(|n| n.index == index)
        .ok_or(DevnetError::NoNode(index))
}

/// Waits until the grid lists every node of the devnet online, and records their ids.
pub async fn wait_online(state: &mut DevnetState, timeout: Duration) -> Result<()> {
    let client = GridClient::new(&state.grid_url)?;
    let filter = NodeFilter {
        farm_id: Some(state.farm_id),
        online: Some(true),
        ..NodeFilter::default()
    };
    let want = state.nodes.len();
    let snapshot = state.clone();
    let nodes = wait_until(timeout, Duration::from_millis(200), || {
        let (client, filter, snapshot) = (client.clone(), filter.clone(), &snapshot);
        async move {
            let nodes: Vec<_> = client
                .list_nodes(&filter)
                .await
                .ok()?
                .into_iter()
                .filter(|n| crate::vms::vm_of(snapshot, n).is_none())
                .collect();
            (nodes.len() >= want).then_some(nodes)
        }
    })
    .await;
    let Some(nodes) = nodes else {
        return Err(DevnetError::NotOnline {
            timeout,
            dir: state.dir.clone(),
        });
    };
    for n in &mut state.nodes {
        // The node's key lives on its cache, inside one of its pools.
        let key_file = match snapshot.supervised {
            Some(_) => crate::supervised::key_file(n),
            None => crate::disk::mounts_under(&n.mount_root)
                .map_err(DevnetError::io("reading the mounts under", &n.mount_root))?
                .into_iter()
                .map(|m| m.join("zos-cache/identity/node.key"))
                .find(|p| p.exists()),
        };
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
            return Err(DevnetError::NoAnswer {
                index: n.index,
                timeout,
                log: n.log.clone(),
            });
        }
    }
    Ok(())
}

/// The command line that runs `index`'s zosd as the devnet does (in the node's network
/// namespace, with its flags), for a caller that runs it itself: with `extra` flags appended,
/// under a terminal for `--console`. Stop the devnet's own zosd of the node first.
pub fn zosd_command(state: &DevnetState, index: usize, extra: &[&str]) -> Result<Vec<String>> {
    let node = &state.nodes[node_at(state, index)?];
    let mut cmd = vec![
        "nsenter".to_string(),
        format!("--net=/run/netns/{}", node.netns),
        "--".into(),
        state.zosd_bin.display().to_string(),
    ];
    cmd.extend(zosd_args(state, node)?);
    cmd.extend(extra.iter().map(|s| s.to_string()));
    Ok(cmd)
}
