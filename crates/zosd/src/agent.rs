//! The node agent: brings the subsystems up in order and runs until told to stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::HashMap;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zos_client::GridClient;
use zos_types::registry::NodeRegistration;
use zos_types::workload::WorkloadType;
use zos_types::{Identity, TwinId};

use crate::api::NodeApi;
use crate::client_view::ClientView;
use crate::config::NodeConfig;
use crate::identity;
use crate::registrar::{Registrar, RegistrarConfig, RegistrarStatus, StorageFacts, registration};
use crate::system::System;
use crate::uplink::Uplink;
use zos_mounts::{
    FlistConfig, FlistError, FlistManager, FlistUrlPolicy, GridFarmHosts, ProcessFlists,
};
use zos_net::{LinuxNetworker, NetworkConfig, Networker, PublicSetup};
use zos_provision::{
    Engine, EngineConfig, GatewayManager, GridView, IpManager, Manager, NetworkManager, Store,
    VmmConsoles, ZdbManager, ZdbProcesses, ZlogsManager, ZmachineConfig, ZmachineManager,
    volume_manager, zmount_manager,
};
use zos_runtime::error_chain;
use zos_storage::{BtrfsStorage, StorageConfig, StorageStart};
use zos_vmm::{QemuVmm, Vmm, VmmConfig};

/// How often the cache quota follows the cache's usage.
const CACHE_ADJUST_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// The mount name of the guest image flist.
const GUEST_MOUNT: &str = "zos-guest";
/// Resolvers machines are given.
const DEFAULT_NAMESERVERS: [&str; 2] = ["1.1.1.1", "8.8.8.8"];

/// Mounts the guest image flist, retrying until it works (the hub may not have it yet); a
/// mount of content the URL no longer holds is replaced.
async fn mount_guest(flists: Arc<ProcessFlists>, url: String, stop: CancellationToken) {
    let mut delay = std::time::Duration::from_secs(2);
    loop {
        match flists.mount(GUEST_MOUNT, &url).await {
            Ok(m) => {
                info!(url = %url, sha256 = %m.sha256, mountpoint = %m.mountpoint.display(), "guest image mounted");
                return;
            }
            Err(e @ (FlistError::Changed { .. } | FlistError::Conflict { .. })) => {
                info!(reason = %error_chain(&e), "guest image changed: mounting the new one");
                if let Err(e) = flists.unmount(GUEST_MOUNT).await {
                    warn!(error = %error_chain(&e), "cannot unmount the old guest image");
                }
                continue;
            }
            Err(e) => {
                warn!(url = %url, error = %error_chain(&e), retry_in = ?delay, "cannot mount the guest image");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(15));
    }
}

/// How often the public config is read again even without an event.
const PUBLIC_CONFIG_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Applies the public config the grid holds for `node`, when it differs from the node's;
/// answers whether it changed.
async fn follow_public_config<N: Networker>(
    client: &GridClient,
    node: zos_types::NodeId,
    iface: Option<&str>,
    net: &N,
) -> bool {
    let config = match client.get_node(node).await {
        Ok(n) => n.public_config,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot read this node's public config");
            return false;
        }
    };
    let want = match (config, iface) {
        (Some(config), Some(iface)) => Some(PublicSetup {
            config,
            exit_iface: iface.to_string(),
        }),
        (Some(_), None) => {
            warn!(
                "the farmer set a public config, but this node was booted without public_iface=: \
                 public IPs stay unavailable until it is given the interface to use"
            );
            None
        }
        (None, _) => None,
    };
    match net.public_setup().await {
        Ok(have) if have == want => return false,
        Ok(_) => {}
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot read the node's public setup");
            return false;
        }
    }
    match net.setup_node(want.clone()).await {
        Ok(()) => {
            info!(public = ?want.map(|p| p.config), "public config applied");
            true
        }
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot apply the public config");
            false
        }
    }
}

/// Runs the node until `stop` is cancelled: storage, the grid registration, the network, flist
/// mounts, virtual machines, the deployment engine, then the tasks that follow the grid.
/// With a `console` feed, the node's console screen is fed from then on.
pub async fn run(
    cfg: NodeConfig,
    system: Arc<dyn System>,
    console: Option<crate::console::Feed>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    info!(farm = cfg.farm_id, runmode = %cfg.runmode, grid = %cfg.grid, prefix = %cfg.prefix, version = crate::version::running(), "zosd starting");
    let (pools, started) = start_storage(&cfg).await?;
    let (state_dir, identity) = open_state(&cfg, &started)?;
    let mut tasks = tokio::task::JoinSet::new();
    // Uptime reports carry what the workloads use, once the engine exists.
    let engine_cell: Arc<std::sync::OnceLock<Arc<Engine>>> = Arc::default();
    let (facts, status) = start_registrar(
        &cfg,
        system,
        &started,
        &identity,
        engine_cell.clone(),
        &mut tasks,
        &stop,
    )?;
    let pools = Arc::new(pools);
    tasks.spawn(adjust_cache(pools.clone(), stop.clone()));
    let net = start_network(&cfg, &state_dir, &identity).await?;
    let flist_policy = flist_url_policy(&cfg)?;
    let flists = start_flists(&cfg, &state_dir, flist_policy.clone()).await?;
    let vmm = start_vmm(&cfg, &state_dir).await?;
    let parts = Subsystems {
        pools,
        net,
        flists,
        vmm,
    };
    let zmachine = zmachine_config(&cfg, &state_dir, &parts.flists, &mut tasks, &stop);

    // Provisioning: the store, the managers, the engine and its worker.
    let store = open_store(&state_dir)?;
    let view = Arc::new(ClientView::new(
        GridClient::new(&cfg.grid)?.with_identity(identity.clone()),
    ));
    let (node_tx, node_rx) = watch::channel(None);
    let gateways = gateway_manager(&cfg, &state_dir, &identity, &parts.net, &view)?;
    let zdb = zdb_manager(&cfg, &state_dir, &identity, &parts.pools)?;
    tasks.spawn(keep_zdb_running(zdb.clone(), ZDB_CHECK, stop.clone()));
    let managers = managers(&parts, &view, zmachine, &gateways, &zdb, &state_dir);
    let engine = engine(store, managers, &view, node_rx, &facts, flist_policy);
    let _ = engine_cell.set(engine.clone());
    match gateways.restore().await {
        Ok(0) => {}
        Ok(n) => info!(routes = n, "web gateway routes served again"),
        Err(e) => warn!(error = %error_chain(&e), "cannot serve the stored gateway routes"),
    }
    tasks.spawn(crate::gateway::recheck_names(
        gateways.clone(),
        engine.clone(),
        cfg.name_recheck,
        stop.clone(),
    ));
    let pending = engine
        .reconcile()
        .context("queueing the reconciliation of stored deployments")?;
    info!(deployments = pending, "reconciling stored deployments");
    tasks.spawn(engine.clone().run(stop.clone()));
    let api = node_api(&parts, &engine, &status);
    let public_changed = Arc::new(tokio::sync::Notify::new());
    tasks.spawn(follow_public_config_task(
        GridClient::new(&cfg.grid)?,
        cfg.public_iface.clone(),
        parts.net,
        gateways,
        public_changed.clone(),
        status.clone(),
        stop.clone(),
    ));
    let (grid_url, pool, runmode) = (
        cfg.grid.clone(),
        crate::uplink::PoolLimits::default(),
        cfg.runmode,
    );
    let (connected, uplink_rx) = watch::channel(false);
    if let Some(feed) = console {
        let sources = crate::console::Sources {
            facts: facts.clone(),
            status: status.clone(),
            connected: connected.subscribe(),
            engine: engine.clone(),
        };
        tasks.spawn(crate::console::feed(feed, sources, stop.clone()));
    }
    let channel = crate::health::Channel::new(
        cfg.channel_dir
            .clone()
            .unwrap_or_else(|| crate::health::run_dir(&cfg.prefix, &state_dir)),
        crate::version::running(),
        identity::key_path(&state_dir),
    );
    let release_notice = Arc::new(tokio::sync::Notify::new());
    tasks.spawn(crate::health::follow(
        channel,
        status.clone(),
        uplink_rx,
        release_notice.clone(),
        engine.clone(),
        stop.clone(),
    ));
    tasks.spawn(async move {
        let Some(twin) = registered_twin(status, node_tx, &stop).await else {
            return;
        };
        let uplink = Uplink {
            grid_url,
            identity,
            twin,
            api,
            engine,
            view,
            public_config_changed: public_changed,
            pool,
            connected,
            runmode,
            release_notice,
        };
        uplink.run(stop).await;
    });
    join(tasks).await;
    info!("zosd stopped");
    Ok(())
}

/// Waits for every task; one that panicked is logged.
async fn join(mut tasks: tokio::task::JoinSet<()>) {
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            warn!(error = %e, "a zosd task ended abnormally");
        }
    }
}

/// The node's state directory (the configured one, or the one storage keeps) and the node's
/// identity stored in it.
fn open_state(cfg: &NodeConfig, started: &StorageStart) -> anyhow::Result<(PathBuf, Identity)> {
    let state_dir = cfg
        .state_dir
        .clone()
        .unwrap_or_else(|| started.state_dir.clone());
    // Every secret of the node and its tenants lives below: root only.
    zos_runtime::private::create_dir(&state_dir)
        .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    let identity = identity::load_or_create(&state_dir)?;
    Ok((state_dir, identity))
}

/// The deployment store in the state directory.
fn open_store(state_dir: &Path) -> anyhow::Result<Arc<Store>> {
    let store =
        Store::open(&state_dir.join("provision.sqlite")).context("opening the deployment store")?;
    Ok(Arc::new(store))
}

/// The node's command API over the engine and the subsystems.
fn node_api(
    parts: &Subsystems,
    engine: &Arc<Engine>,
    status: &watch::Receiver<RegistrarStatus>,
) -> Arc<NodeApi<BtrfsStorage, LinuxNetworker>> {
    Arc::new(
        NodeApi::new(
            engine.clone(),
            parts.pools.clone(),
            parts.net.clone(),
            status.clone(),
        )
        .with_consoles(parts.vmm.clone()),
    )
}

/// Starts the storage pools on the configured disks (all of the host's, when none is named).
async fn start_storage(cfg: &NodeConfig) -> anyhow::Result<(BtrfsStorage, StorageStart)> {
    let storage_cfg = if cfg.disks.is_empty() {
        StorageConfig {
            prefix: cfg.prefix.clone(),
            mount_root: cfg.mount_root.clone(),
            ..StorageConfig::host()
        }
    } else {
        StorageConfig::only(&cfg.disks, &cfg.mount_root, &cfg.prefix)
    };
    let (pools, started) = BtrfsStorage::start(storage_cfg)
        .await
        .context("starting storage")?;
    for d in &started.disks {
        info!(device = %d.device.display(), size = d.size, state = ?d.state, "disk");
    }
    if let Some(why) = &started.limited {
        warn!(reason = %why, "node runs limited: it takes no deployments");
    }
    Ok((pools, started))
}

/// Reads what the machine offers and spawns the registrar, whose uptime reports carry the
/// workloads' usage once the engine is in `engine_cell`; answers the registered capacity and
/// the registration status to follow.
fn start_registrar(
    cfg: &NodeConfig,
    system: Arc<dyn System>,
    started: &StorageStart,
    identity: &Identity,
    engine_cell: Arc<std::sync::OnceLock<Arc<Engine>>>,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<(NodeRegistration, watch::Receiver<RegistrarStatus>)> {
    let storage = StorageFacts {
        sru: started.capacity.sru,
        hru: started.capacity.hru,
        reserved_sru: started.capacity.reserved_sru,
        limited: started.limited.clone(),
    };
    let reg_cfg = RegistrarConfig {
        farm_id: cfg.farm_id,
        admission: cfg.admission,
        report_interval: cfg.report_interval,
        zos_version: crate::version::running().into(),
        storage,
        prefix: cfg.prefix.clone(),
    };
    // What the engine may hand out: the machine as registered, less what the system keeps.
    let facts =
        registration(system.as_ref(), &reg_cfg).context("reading the machine's capacity")?;
    let engine_for_contracts = engine_cell.clone();
    let usage = Arc::new(move || {
        engine_cell
            .get()
            .and_then(|e| e.usage().ok())
            .map(|u| u.workloads)
    });
    let contracts = Arc::new(move || {
        engine_for_contracts
            .get()
            .and_then(|e| e.contract_usage().ok())
            .unwrap_or_default()
    });
    let registrar = Registrar::new(&cfg.grid, identity.clone(), system, reg_cfg)
        .context("preparing the grid client")?
        .with_usage(usage)
        .with_contract_usage(contracts);
    let status = registrar.subscribe();
    tasks.spawn(registrar.run(stop.clone()));
    Ok((facts, status))
}

/// Keeps the cache quota following the cache's usage until `stop`.
async fn adjust_cache(pools: Arc<BtrfsStorage>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CACHE_ADJUST_EVERY) => {}
        }
        if let Err(e) = pools.cache_adjust().await {
            warn!(error = %error_chain(&e), "cannot adjust the cache quota");
        }
    }
}

/// Opens the network: what the state file records comes back first (tunnels are adopted, not
/// remade), then the node's own setup with the public config it had.
async fn start_network(
    cfg: &NodeConfig,
    state_dir: &Path,
    identity: &Identity,
) -> anyhow::Result<Arc<LinuxNetworker>> {
    let net_cfg = NetworkConfig::new(
        &cfg.prefix,
        state_dir.to_path_buf(),
        state_dir.join("wireguard"),
        &identity.public_key().to_string(),
    );
    let net = Arc::new(LinuxNetworker::open(net_cfg).context("opening the network state")?);
    let report = net
        .reconcile()
        .await
        .context("bringing the node's networks back")?;
    net.setup_node(net.public_setup().await?)
        .await
        .context("setting up the node's network")?;
    info!(
        backend = ?net.backend(),
        networks = report.networks,
        adopted = report.adopted,
        restarted = report.restarted,
        ports = report.ports,
        failed = report.failed.len(),
        "network ready"
    );
    for f in &report.failed {
        warn!(what = %f, "not brought back");
    }
    Ok(net)
}

/// Which flist URLs (of deployments, and the routes inside flists) the node mounts: the hub's
/// or the farm's hosts.
fn flist_url_policy(cfg: &NodeConfig) -> anyhow::Result<FlistUrlPolicy> {
    FlistUrlPolicy::new(
        &cfg.grid,
        Arc::new(GridFarmHosts {
            client: GridClient::new(&cfg.grid)?,
            farm: cfg.farm_id,
        }),
    )
    .map_err(anyhow::Error::msg)
}

/// Opens the flist state; mounts that outlived the last zosd are adopted.
async fn start_flists(
    cfg: &NodeConfig,
    state_dir: &Path,
    policy: FlistUrlPolicy,
) -> anyhow::Result<Arc<ProcessFlists>> {
    let flists = Arc::new(
        ProcessFlists::new(FlistConfig::new(state_dir, &cfg.grid, &cfg.prefix))
            .context("opening the flist state")?
            .with_url_policy(policy),
    );
    match flists.reconcile().await {
        Ok(r) => info!(
            adopted = r.adopted.len(),
            remade = r.remade.len(),
            failed = r.failed.len(),
            "flist mounts back"
        ),
        Err(e) => warn!(error = %error_chain(&e), "cannot bring flist mounts back"),
    }
    Ok(flists)
}

/// Opens the virtual machine state; machines that outlived the last zosd are adopted.
async fn start_vmm(cfg: &NodeConfig, state_dir: &Path) -> anyhow::Result<Arc<QemuVmm>> {
    let vm_run = if cfg.prefix.is_empty() {
        PathBuf::from("/run/zos-vmm")
    } else {
        PathBuf::from(format!("/run/zos-vmm-{}", cfg.prefix))
    };
    let vmm = Arc::new(
        QemuVmm::open(VmmConfig::new(&cfg.prefix, state_dir.to_path_buf(), vm_run))
            .context("opening the virtual machine state")?,
    );
    let vms = vmm
        .reconcile()
        .await
        .context("bringing the virtual machines back")?;
    info!(
        kvm = vmm.uses_kvm(),
        adopted = vms.adopted.len(),
        restarted = vms.restarted.len(),
        failed = vms.failed.len(),
        "virtual machines back"
    );
    for f in &vms.failed {
        warn!(what = %f, "not brought back");
    }
    Ok(vmm)
}

/// The zmachine manager's settings, with the guest image in the operator's own directory, or
/// in files of the guest flist (mounted by a spawned task), which the manager copies out without
/// following links.
fn zmachine_config(
    cfg: &NodeConfig,
    state_dir: &Path,
    flists: &Arc<ProcessFlists>,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: &CancellationToken,
) -> ZmachineConfig {
    let (guest, guest_mount) = match (&cfg.guest_dir, &cfg.guest_flist) {
        (Some(dir), _) => (dir.clone(), None),
        (None, Some(url)) => {
            tasks.spawn(mount_guest(flists.clone(), url.clone(), stop.clone()));
            (
                flists.mountpoint(GUEST_MOUNT),
                Some(GUEST_MOUNT.to_string()),
            )
        }
        (None, None) => {
            warn!("no guest_flist= given: container-mode machines cannot boot on this node");
            (
                flists.mountpoint(GUEST_MOUNT),
                Some(GUEST_MOUNT.to_string()),
            )
        }
    };
    ZmachineConfig {
        kernel: guest.join("vmlinux"),
        initramfs: guest.join("initramfs.cpio"),
        guest_mount,
        guest_flist: cfg.guest_flist.clone().filter(|_| cfg.guest_dir.is_none()),
        guest_wait: zos_provision::zmachine::GUEST_WAIT,
        state_dir: state_dir.join("zmachine"),
        nameservers: DEFAULT_NAMESERVERS
            .iter()
            .map(|a| a.parse().expect("valid address"))
            .collect(),
    }
}

/// The node's subsystems, up, with what outlived the last zosd adopted.
struct Subsystems {
    pools: Arc<BtrfsStorage>,
    net: Arc<LinuxNetworker>,
    flists: Arc<ProcessFlists>,
    vmm: Arc<QemuVmm>,
}

/// The deployment engine over `store`, handing out the registered capacity less what the system
/// keeps.
fn engine(
    store: Arc<Store>,
    managers: HashMap<WorkloadType, Arc<dyn Manager>>,
    view: &Arc<ClientView>,
    node: watch::Receiver<Option<zos_types::NodeId>>,
    facts: &NodeRegistration,
    flist_policy: FlistUrlPolicy,
) -> Arc<Engine> {
    Arc::new(
        Engine::new(
            store,
            managers,
            view.clone(),
            node,
            EngineConfig {
                total: facts.capacity,
                reserved: facts.reserved,
                limited: facts.limited.clone(),
            },
        )
        .with_flist_policy(flist_policy),
    )
}

/// The manager of gateway workloads, over the node's web gateway process.
fn gateway_manager(
    cfg: &NodeConfig,
    state_dir: &Path,
    identity: &Identity,
    net: &Arc<LinuxNetworker>,
    view: &Arc<ClientView>,
) -> anyhow::Result<Arc<GatewayManager<LinuxNetworker>>> {
    let host = crate::gateway::NodeGateway::new(
        net.clone(),
        zos_net::names::Names::new(&cfg.prefix).public_ns(),
        state_dir,
        crate::health::run_dir(&cfg.prefix, state_dir).join("gateway"),
        cfg.acme.clone(),
        *identity.seed(),
    );
    let resolver = crate::gateway::DnsResolver::new(&cfg.dns).map_err(anyhow::Error::msg)?;
    Ok(Arc::new(
        GatewayManager::new(
            net.clone(),
            view.clone() as Arc<dyn GridView>,
            Arc::new(host),
            Arc::new(resolver),
            state_dir.join("gateway-routes.json"),
        )
        .context("opening the gateway table")?,
    ))
}

/// How often the zdb servers are checked (and a dead one started again).
const ZDB_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// The manager of zdb workloads: a `zos-zdb` per HDD device in the `ndmz` namespace (looked for
/// beside zosd, then on `PATH`), its admin password from the node's seed.
fn zdb_manager(
    cfg: &NodeConfig,
    state_dir: &Path,
    identity: &Identity,
    pools: &Arc<BtrfsStorage>,
) -> anyhow::Result<Arc<ZdbManager<BtrfsStorage>>> {
    let program = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(zos_provision::zdb::PROGRAM)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(zos_provision::zdb::PROGRAM));
    let servers = ZdbProcesses::new(
        program,
        Some(zos_net::names::Names::new(&cfg.prefix).ndmz_ns()),
        std::net::IpAddr::V4(zos_provision::zdb::ADDRESS),
        crate::health::run_dir(&cfg.prefix, state_dir).join("zdb"),
        zos_provision::zdb::admin_password(identity.seed()),
    );
    Ok(Arc::new(
        ZdbManager::new(pools.clone(), Arc::new(servers), state_dir.join("zdb.json"))
            .context("opening the zdb state")?,
    ))
}

/// Keeps the zdb servers of the devices holding namespaces running: at start (a rebooted node
/// serves its namespaces before any workload is looked at again), then every `every`.
async fn keep_zdb_running(
    zdb: Arc<ZdbManager<BtrfsStorage>>,
    every: std::time::Duration,
    stop: CancellationToken,
) {
    loop {
        match zdb.keep_running().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(servers = n, "zdb servers running"),
            Err(e) => warn!(error = %error_chain(&e), "a zdb server is not running"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The engine's manager of each workload type.
fn managers(
    parts: &Subsystems,
    view: &Arc<ClientView>,
    zmachine: ZmachineConfig,
    gateways: &Arc<GatewayManager<LinuxNetworker>>,
    zdb: &Arc<ZdbManager<BtrfsStorage>>,
    state_dir: &Path,
) -> HashMap<WorkloadType, Arc<dyn Manager>> {
    let Subsystems {
        pools,
        net,
        flists,
        vmm,
    } = parts;
    let mut managers: HashMap<WorkloadType, Arc<dyn Manager>> = HashMap::new();
    managers.insert(
        WorkloadType::Zmount,
        Arc::new(zmount_manager(pools.clone())),
    );
    managers.insert(
        WorkloadType::Volume,
        Arc::new(volume_manager(pools.clone())),
    );
    managers.insert(
        WorkloadType::Network,
        Arc::new(NetworkManager::new(net.clone())),
    );
    managers.insert(
        WorkloadType::Ip,
        Arc::new(IpManager::new(
            net.clone(),
            view.clone() as Arc<dyn GridView>,
        )),
    );
    managers.insert(
        WorkloadType::Zmachine,
        Arc::new(ZmachineManager::new(
            net.clone(),
            pools.clone(),
            flists.clone(),
            vmm.clone(),
            zmachine,
        )),
    );
    managers.insert(
        WorkloadType::Zlogs,
        Arc::new(ZlogsManager::new(
            net.clone(),
            Arc::new(VmmConsoles(vmm.clone())),
            state_dir.join("zlogs"),
        )),
    );
    managers.insert(WorkloadType::Zdb, zdb.clone());
    for kind in [
        WorkloadType::GatewayNameProxy,
        WorkloadType::GatewayFqdnProxy,
    ] {
        managers.insert(kind, gateways.clone());
    }
    managers
}

/// Waits until the node is registered; `None` when told to stop (or the registrar is gone)
/// first.
async fn registered_node(
    status: &mut watch::Receiver<RegistrarStatus>,
    stop: &CancellationToken,
) -> Option<zos_types::NodeId> {
    loop {
        if let Some(id) = status.borrow_and_update().node_id {
            return Some(id);
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = status.changed() => if r.is_err() { return None },
        }
    }
}

/// The public config follows what the farmer set on the grid: read again on `changed` and
/// every [`PUBLIC_CONFIG_EVERY`], once the node is registered.
async fn follow_public_config_task(
    client: GridClient,
    iface: Option<String>,
    net: Arc<LinuxNetworker>,
    gateways: Arc<GatewayManager<LinuxNetworker>>,
    changed: Arc<tokio::sync::Notify>,
    mut status: watch::Receiver<RegistrarStatus>,
    stop: CancellationToken,
) {
    let Some(node) = registered_node(&mut status, &stop).await else {
        return;
    };
    loop {
        if follow_public_config(&client, node, iface.as_deref(), net.as_ref()).await {
            // The gateway listens on the node's public address: it moves with it.
            match gateways.readdress().await {
                Ok(n) => info!(routes = n, "web gateway follows the public config"),
                Err(e) => {
                    warn!(error = %error_chain(&e), "the web gateway cannot follow the public config")
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(PUBLIC_CONFIG_EVERY) => {}
        }
    }
}

/// Waits until the node knows its twin (the uplink starts then), telling the engine its node id
/// on `node_tx` as soon as it is known; `None` when told to stop (or the registrar is gone)
/// first.
async fn registered_twin(
    mut status: watch::Receiver<RegistrarStatus>,
    node_tx: watch::Sender<Option<zos_types::NodeId>>,
    stop: &CancellationToken,
) -> Option<TwinId> {
    loop {
        let s = status.borrow_and_update().clone();
        if let Some(id) = s.node_id {
            let _ = node_tx.send(Some(id));
        }
        if let (Some(twin), Some(_)) = (s.twin_id, s.node_id) {
            return Some(twin);
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = status.changed() => if r.is_err() { return None },
        }
    }
}
