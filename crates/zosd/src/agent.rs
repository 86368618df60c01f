//! The node agent: brings the subsystems up in order and runs until told to stop.

use std::path::PathBuf;
use std::sync::Arc;

use std::collections::HashMap;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zos_client::GridClient;
use zos_types::workload::WorkloadType;

use crate::api::NodeApi;
use crate::client_view::ClientView;
use crate::config::NodeConfig;
use crate::identity;
use crate::registrar::{Registrar, RegistrarConfig, StorageFacts, registration};
use crate::system::System;
use crate::uplink::Uplink;
use crate::version::VERSION;
use zos_mounts::{
    FlistConfig, FlistError, FlistManager, FlistUrlPolicy, GridFarmHosts, ProcessFlists,
};
use zos_net::{LinuxNetworker, NetworkConfig, Networker, PublicSetup};
use zos_provision::{
    Engine, EngineConfig, GridView, IpManager, Manager, NetworkManager, Store, ZmachineConfig,
    ZmachineManager, volume_manager, zmount_manager,
};
use zos_runtime::error_chain;
use zos_storage::{BtrfsStorage, StorageConfig};
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

/// Applies the public config the grid holds for `node`, when it differs from the node's.
async fn follow_public_config<N: Networker>(
    client: &GridClient,
    node: zos_types::NodeId,
    iface: Option<&str>,
    net: &N,
) {
    let config = match client.get_node(node).await {
        Ok(n) => n.public_config,
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot read this node's public config");
            return;
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
        Ok(have) if have == want => return,
        Ok(_) => {}
        Err(e) => {
            warn!(error = %error_chain(&e), "cannot read the node's public setup");
            return;
        }
    }
    match net.setup_node(want.clone()).await {
        Ok(()) => info!(public = ?want.map(|p| p.config), "public config applied"),
        Err(e) => warn!(error = %error_chain(&e), "cannot apply the public config"),
    }
}

/// Runs the node until `stop` is cancelled.
pub async fn run(
    cfg: NodeConfig,
    system: Arc<dyn System>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    info!(farm = cfg.farm_id, runmode = %cfg.runmode, grid = %cfg.grid, prefix = %cfg.prefix, version = VERSION, "zosd starting");
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
    let state_dir = cfg
        .state_dir
        .clone()
        .unwrap_or_else(|| started.state_dir.clone());
    // Every secret of the node and its tenants lives below: root only.
    zos_runtime::private::create_dir(&state_dir)
        .with_context(|| format!("creating state directory {}", state_dir.display()))?;
    let identity = identity::load_or_create(&state_dir)?;
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
        zos_version: VERSION.into(),
        storage,
        prefix: cfg.prefix.clone(),
    };
    // What the engine may hand out: the machine as registered, less what the system keeps.
    let facts =
        registration(system.as_ref(), &reg_cfg).context("reading the machine's capacity")?;
    // Uptime reports carry what the workloads use, once the engine exists.
    let engine_cell: Arc<std::sync::OnceLock<Arc<Engine>>> = Arc::default();
    let usage = {
        let cell = engine_cell.clone();
        Arc::new(move || cell.get().and_then(|e| e.usage().ok()).map(|u| u.workloads))
    };
    let registrar = Registrar::new(&cfg.grid, identity.clone(), system, reg_cfg)
        .context("preparing the grid client")?
        .with_usage(usage);
    let status = registrar.subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(registrar.run(stop.clone()));

    let pools = Arc::new(pools);
    {
        let (pools, stop) = (pools.clone(), stop.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(CACHE_ADJUST_EVERY) => {}
                }
                if let Err(e) = pools.cache_adjust().await {
                    warn!(error = %error_chain(&e), "cannot adjust the cache quota");
                }
            }
        });
    }

    // Network: what the state file records comes back first (tunnels are adopted, not remade),
    // then the node's own setup with the public config it had.
    let net_cfg = NetworkConfig::new(
        &cfg.prefix,
        state_dir.clone(),
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

    // Flists and virtual machines: mounts and VMs that outlived the last zosd are adopted.
    // Flist URLs (of deployments, and the routes inside flists): the hub or the farm's hosts.
    let flist_policy = FlistUrlPolicy::new(
        &cfg.grid,
        Arc::new(GridFarmHosts {
            client: GridClient::new(&cfg.grid)?,
            farm: cfg.farm_id,
        }),
    )
    .map_err(anyhow::Error::msg)?;
    let flists = Arc::new(
        ProcessFlists::new(FlistConfig::new(&state_dir, &cfg.grid, &cfg.prefix))
            .context("opening the flist state")?
            .with_url_policy(flist_policy.clone()),
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
    let vm_run = if cfg.prefix.is_empty() {
        PathBuf::from("/run/zos-vmm")
    } else {
        PathBuf::from(format!("/run/zos-vmm-{}", cfg.prefix))
    };
    let vmm = Arc::new(
        QemuVmm::open(VmmConfig::new(&cfg.prefix, state_dir.clone(), vm_run))
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
    // The guest image: the operator's own directory, or files of the guest flist, which the
    // zmachine manager copies out without following links (`guest_mount`).
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

    // Provisioning: the store, the managers, the engine and its worker.
    let store = Arc::new(
        Store::open(&state_dir.join("provision.sqlite")).context("opening the deployment store")?,
    );
    let client = GridClient::new(&cfg.grid)?.with_identity(identity.clone());
    let view = Arc::new(ClientView::new(client));
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
            ZmachineConfig {
                kernel: guest.join("vmlinux"),
                initramfs: guest.join("initramfs.cpio"),
                guest_mount,
                state_dir: state_dir.join("zmachine"),
                nameservers: DEFAULT_NAMESERVERS
                    .iter()
                    .map(|a| a.parse().expect("valid address"))
                    .collect(),
            },
        )),
    );
    let (node_tx, node_rx) = watch::channel(None);
    let engine = Arc::new(
        Engine::new(
            store,
            managers,
            view.clone(),
            node_rx,
            EngineConfig {
                total: facts.capacity,
                reserved: facts.reserved,
                limited: facts.limited.clone(),
            },
        )
        .with_flist_policy(flist_policy),
    );
    let _ = engine_cell.set(engine.clone());
    let pending = engine
        .reconcile()
        .context("queueing the reconciliation of stored deployments")?;
    info!(deployments = pending, "reconciling stored deployments");
    tasks.spawn(engine.clone().run(stop.clone()));
    let api = Arc::new(
        NodeApi::new(engine.clone(), pools.clone(), net.clone(), status.clone())
            .with_consoles(vmm.clone()),
    );
    let public_changed = Arc::new(tokio::sync::Notify::new());

    // The public config follows what the farmer set on the grid.
    {
        let (stop, mut status) = (stop.clone(), status.clone());
        let (net, changed) = (net.clone(), public_changed.clone());
        let client = GridClient::new(&cfg.grid)?;
        let iface = cfg.public_iface.clone();
        tasks.spawn(async move {
            let node = loop {
                if let Some(id) = status.borrow_and_update().node_id {
                    break id;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = status.changed() => if r.is_err() { return },
                }
            };
            loop {
                follow_public_config(&client, node, iface.as_deref(), net.as_ref()).await;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(PUBLIC_CONFIG_EVERY) => {}
                }
            }
        });
    }

    // The uplink starts once the node knows its twin; the engine learns its node id.
    {
        let (stop, mut status) = (stop.clone(), status.clone());
        let grid_url = cfg.grid.clone();
        tasks.spawn(async move {
            let twin = loop {
                let s = status.borrow_and_update().clone();
                if let Some(id) = s.node_id {
                    let _ = node_tx.send(Some(id));
                }
                if let (Some(twin), Some(_)) = (s.twin_id, s.node_id) {
                    break twin;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = status.changed() => if r.is_err() { return },
                }
            };
            let uplink = Uplink {
                grid_url,
                identity,
                twin,
                api,
                engine,
                view,
                public_config_changed: public_changed,
                pool: crate::uplink::PoolLimits::default(),
            };
            uplink.run(stop).await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            warn!(error = %e, "a zosd task ended abnormally");
        }
    }
    info!("zosd stopped");
    Ok(())
}
