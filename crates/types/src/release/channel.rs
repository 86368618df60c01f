//! The local channel between zosd and zos-init (docs/upgrade.md, "The local channel with
//! zosd"): what zosd writes in `/run/zos` for zos-init, which upgrades it live. zos-init lives
//! in the initramfs and does not change across upgrades while zosd does: readers ignore fields
//! they do not know, and fields are only ever added.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{NodeId, TwinId};

/// Where zosd says who the node is, in the runtime directory.
pub const NODE_FILE: &str = "node.json";
/// Where zosd says how it is.
pub const HEALTH_FILE: &str = "health.json";
/// What zosd writes to ask zos-init to check the grid for a release now.
pub const CHECK_FILE: &str = "check-release";
/// The node's runtime directory.
pub const RUN_DIR: &str = "/run/zos";
/// The environment variable zos-init sets for every service of a release it starts: the
/// release's version, which zosd reports as its own (its registration, `health.json`, its
/// `version` answer) since the same zosd binary may ship in several releases.
pub const VERSION_ENV: &str = "ZOS_RELEASE_VERSION";

/// Who the node is (`node.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    pub node_id: NodeId,
    pub twin_id: TwinId,
    /// The node's key file (`zos_client::keyfile` format), root-only.
    pub key: PathBuf,
    /// The version of the zosd that wrote it.
    pub version: String,
}

/// How zosd is (`health.json`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Health {
    /// The version of the zosd that wrote it.
    pub version: String,
    /// The grid has the node registered with this version.
    #[serde(default)]
    pub registered: bool,
    /// The uplink to the grid is connected.
    #[serde(default)]
    pub uplink: bool,
    /// The reconciliation of the stored deployments at start has finished.
    #[serde(default)]
    pub reconciled: bool,
    /// The workloads that are `ok`, by workload id (`twin-contract-name`).
    #[serde(default)]
    pub ok: BTreeSet<String>,
}
