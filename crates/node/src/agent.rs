//! The node agent: brings the subsystems up in order and runs until told to stop.

use std::sync::Arc;

use std::collections::HashMap;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zos_client::GridClient;
use zos_types::workload::WorkloadType;

use crate::api::NodeApi;
use crate::config::NodeConfig;
use crate::identity;
use crate::provision::{Engine, EngineConfig, Manager, Store, volume_manager, zmount_manager};
use crate::registrar::{Registrar, RegistrarConfig, StorageFacts, error_chain, registration};
use crate::storage::{BtrfsStorage, StorageConfig};
use crate::system::System;
use crate::uplink::{ClientView, Uplink};

/// How often the cache quota follows the cache's usage.
const CACHE_ADJUST_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// The version of this build, reported to the grid.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

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
    std::fs::create_dir_all(&state_dir)
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
        report_interval: cfg.report_interval,
        zos_version: VERSION.into(),
        storage,
    };
    // What the engine may hand out: the machine as registered, less what the system keeps.
    let facts =
        registration(system.as_ref(), &reg_cfg).context("reading the machine's capacity")?;
    let registrar = Registrar::new(&cfg.grid, identity.clone(), system, reg_cfg)
        .context("preparing the grid client")?;
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
    let (node_tx, node_rx) = watch::channel(None);
    let engine = Arc::new(Engine::new(
        store,
        managers,
        view.clone(),
        node_rx,
        EngineConfig {
            total: facts.capacity,
            reserved: facts.reserved,
            limited: facts.limited.clone(),
        },
    ));
    let pending = engine
        .reconcile()
        .context("queueing the reconciliation of stored deployments")?;
    info!(deployments = pending, "reconciling stored deployments");
    tasks.spawn(engine.clone().run(stop.clone()));
    let api = Arc::new(NodeApi::new(engine.clone(), pools.clone(), status.clone()));

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
