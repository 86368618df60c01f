//! The node agent: brings the subsystems up in order and runs until told to stop.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::NodeConfig;
use crate::identity;
use crate::registrar::{Registrar, RegistrarConfig, StorageFacts};
use crate::system::System;

/// The version of this build, reported to the grid.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the node until `stop` is cancelled.
pub async fn run(
    cfg: NodeConfig,
    system: Arc<dyn System>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    info!(farm = cfg.farm_id, runmode = %cfg.runmode, grid = %cfg.grid, prefix = %cfg.prefix, version = VERSION, "zosd starting");
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
    let identity = identity::load_or_create(&cfg.state_dir)?;
    let storage = StorageFacts {
        limited: Some("no storage pools configured on this node".into()),
        ..StorageFacts::default()
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
    registrar.run(stop.clone()).await;
    info!("zosd stopped");
    Ok(())
}
