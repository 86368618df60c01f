//! The node's console screen (`zos_zui`), fed by zosd: every second the facts it shows are
//! read again (registration, uplink, addresses, capacity, workloads, the last errors) and sent
//! to whoever draws it (`zosd --console` on a terminal).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zos_provision::Engine;
use zos_types::registry::NodeRegistration;
use zos_zui::{ErrorLog, Screen, Uplink};

use crate::config::NodeConfig;
use crate::registrar::RegistrarStatus;

/// How often the screen's facts are read again.
pub const EVERY: Duration = Duration::from_secs(1);

/// Where the screen's facts go: the drawing side's watch, and the layer that keeps the last
/// errors (installed in zosd's `tracing` subscriber).
#[derive(Debug, Clone)]
pub struct Feed {
    pub screen: watch::Sender<Screen>,
    pub errors: ErrorLog,
}

impl Feed {
    /// A feed whose screen starts as [`Screen::booting`] for `cfg`.
    pub fn new(cfg: &NodeConfig, errors: ErrorLog) -> (Self, watch::Receiver<Screen>) {
        let (screen, rx) = watch::channel(Screen::booting(
            cfg.farm_id,
            &cfg.runmode.to_string(),
            crate::version::running(),
            &cfg.grid,
            now(),
        ));
        (Self { screen, errors }, rx)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What the screen is made from, once the engine runs.
#[derive(Debug)]
pub struct Sources {
    pub facts: NodeRegistration,
    pub status: watch::Receiver<RegistrarStatus>,
    pub connected: watch::Receiver<bool>,
    pub engine: Arc<Engine>,
}

/// Sends a new screen every [`EVERY`] until `stop`.
pub async fn feed(feed: Feed, src: Sources, stop: CancellationToken) {
    let mut uplink = Uplink::Waiting;
    let mut was = None;
    loop {
        let t = now();
        let status = src.status.borrow().clone();
        let connected = *src.connected.borrow();
        if status.node_id.is_some() && was != Some(connected) {
            uplink = if connected {
                Uplink::Up { since: t }
            } else {
                Uplink::Down { since: t }
            };
            was = Some(connected);
        }
        let engine = src.engine.clone();
        let (used, counts) = tokio::task::spawn_blocking(move || {
            (
                engine.usage().map(|u| u.workloads).unwrap_or_default(),
                engine.workload_counts().unwrap_or_default(),
            )
        })
        .await
        .unwrap_or_default();
        feed.screen.send_modify(|s| {
            s.now = t;
            s.node_id = status.node_id;
            s.twin_id = status.twin_id;
            s.uplink = uplink.clone();
            s.grid_error = status.last_error.clone();
            s.addresses = src
                .facts
                .interfaces
                .iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        i.ips.iter().map(|ip| ip.to_string()).collect(),
                    )
                })
                .collect();
            s.limited = src.facts.limited.clone();
            s.capacity_total = src.facts.capacity;
            s.capacity_used = used;
            s.workloads = counts;
            s.errors = feed.errors.snapshot();
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
