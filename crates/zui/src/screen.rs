//! What the console screen shows.

use std::collections::BTreeMap;

use serde::Serialize;
use zos_types::Capacity;

use crate::errors::LoggedError;

/// The state of the node's uplink to the grid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Uplink {
    /// Not tried yet: the node is not registered.
    Waiting,
    /// Connected since this unix time.
    Up { since: i64 },
    /// Not connected, since this unix time.
    Down { since: i64 },
}

/// Workloads of one type, counted by the state of their last result.
pub type WorkloadCounts = BTreeMap<String, BTreeMap<String, usize>>;

/// Everything the screen shows, at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Screen {
    /// When these facts were read (unix seconds).
    pub now: i64,
    pub node_id: Option<u32>,
    pub twin_id: Option<u32>,
    pub farm_id: u32,
    pub runmode: String,
    pub version: String,
    /// The upgrade in progress, as the node's supervisor tells it (`None`: none known).
    pub upgrade: Option<String>,
    pub grid: String,
    pub uplink: Uplink,
    /// The last failure talking to the grid, cleared by the next success.
    pub grid_error: Option<String>,
    /// The node's interfaces and their addresses (`zos: 10.1.2.3/24`).
    pub addresses: Vec<(String, Vec<String>)>,
    /// Why the node takes no workloads, if it does not.
    pub limited: Option<String>,
    pub capacity_total: Capacity,
    pub capacity_used: Capacity,
    /// Workloads by type, then by state.
    pub workloads: WorkloadCounts,
    /// The last warnings and errors, newest last, of every subsystem.
    pub errors: Vec<LoggedError>,
}

impl Screen {
    /// A screen with nothing known yet but what the node was started with.
    pub fn booting(farm_id: u32, runmode: &str, version: &str, grid: &str, now: i64) -> Self {
        Self {
            now,
            node_id: None,
            twin_id: None,
            farm_id,
            runmode: runmode.into(),
            version: version.into(),
            upgrade: None,
            grid: grid.into(),
            uplink: Uplink::Waiting,
            grid_error: None,
            addresses: Vec::new(),
            limited: None,
            capacity_total: Capacity::ZERO,
            capacity_used: Capacity::ZERO,
            workloads: WorkloadCounts::new(),
            errors: Vec::new(),
        }
    }

    /// Workloads of every type in `state`.
    pub fn count_in(&self, state: &str) -> usize {
        self.workloads
            .values()
            .map(|by| by.get(state).copied().unwrap_or(0))
            .sum()
    }
}
