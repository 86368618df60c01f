//! The node agent: brings the subsystems up in order and runs until told to stop.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::identity;
use crate::registrar::{Registrar, RegistrarConfig, StorageFacts};
use crate::storage::{BtrfsStorage, StorageConfig};
use crate::system::System;

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
    let registrar = Registrar::new(
        &cfg.grid,
        identity,
        system,
        RegistrarConfig {
            farm_id: cfg.farm_id,
            report_interval: cfg.report_interval,
            zos_version: VERSION.into(),
            storage,
        },
    )
    .context("preparing the grid client")?;
    let pools = Arc::new(pools);
    let cache_task = {
        let (pools, stop) = (pools.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(CACHE_ADJUST_EVERY) => {}
                }
                if let Err(e) = pools.cache_adjust().await {
                    warn!(error = %crate::registrar::error_chain(&e), "cannot adjust the cache quota");
                }
            }
        })
    };
    registrar.run(stop.clone()).await;
    let _ = cache_task.await;
    info!("zosd stopped");
    Ok(())
}
