//! [`DevnetError`]: why a devnet could not be made, used or removed.

use std::path::PathBuf;
use std::time::Duration;

use zos_client::ClientError;
use zos_client::keyfile::KeyFileError;
use zos_runtime::StateError;
use zos_types::identity::IdentityError;
use zos_types::{NodeId, TwinId};

use crate::cmd::CmdError;

/// Why a devnet could not be made, used or removed.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("devnet name {name:?} must be 1 to 5 of a-z, 0-9")]
    Name { name: String },
    #[error("a devnet has 1 to 50 nodes, not {0}")]
    NodeCount(usize),
    #[error(
        "devnet {name:?} is already up (bridge {bridge} or {} exists): run `zos devnet down` first",
        .dir.display()
    )]
    AlreadyUp {
        name: String,
        bridge: String,
        dir: PathBuf,
    },
    #[error("{} not found: build the workspace first (cargo build)", .0.display())]
    MissingBinary(PathBuf),
    #[error("no devnet state at {}: is a devnet up?", .0.display())]
    NoState(PathBuf),
    #[error(transparent)]
    State(#[from] StateError),
    /// A file or directory operation (`what`: creating, opening log, attaching, …) failed.
    #[error("{what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} the devnet's hub")]
    Hub {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the node image's {} is unusable: {reason} (rebuild it with scripts/build-node.sh)", .path.display())]
    Image { path: PathBuf, reason: String },
    #[error("publishing the node image as the devnet's release: {0}")]
    Publish(String),
    #[error(
        "the node VMs did not all come online and answer over the relay within {timeout:?}: see their serial consoles {}",
        .serials.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    VmsNotOnline {
        timeout: Duration,
        serials: Vec<PathBuf>,
    },
    #[error("finding a free port on 127.0.0.1")]
    Port(#[source] std::io::Error),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("creating the farmer twin")]
    FarmerTwin(#[source] ClientError),
    #[error("creating the farm")]
    Farm(#[source] ClientError),
    #[error("the farmer got twin {0} on a fresh grid, expected 1 (the grid's admin twin)")]
    FarmerNotAdmin(TwinId),
    #[error("adding the farm's public IPs")]
    FarmIps(#[source] ClientError),
    #[error("setting the public config of node {node}")]
    PublicConfig {
        node: NodeId,
        #[source]
        source: ClientError,
    },
    #[error("{0:?} is not an address of the devnet's public subnet")]
    Address(String),
    #[error("the grid already runs as pid {0}")]
    GridRunning(i32),
    #[error("the grid did not start; see {}", .0.display())]
    GridDidNotStart(PathBuf),
    #[error("node {index} already runs as pid {pid}")]
    NodeRunning { index: usize, pid: i32 },
    #[error("node {index}: zos-init did not start; see {}", .log.display())]
    InitDidNotStart { index: usize, log: PathBuf },
    #[error(
        "a devnet runs node VMs or supervised namespace nodes, not both: they would take the same dev releases"
    )]
    SupervisedWithVms,
    #[error(
        "the devnet's grid trusts no release keys: bring it up with supervised nodes or node VMs"
    )]
    NoReleaseKeys,
    #[error("no node {0} in this devnet")]
    NoNode(usize),
    #[error(
        "not every node came online within {timeout:?}; see the node logs in {}",
        .dir.display()
    )]
    NotOnline { timeout: Duration, dir: PathBuf },
    #[error(
        "node {index} did not answer over the relay within {timeout:?}; see {}",
        .log.display()
    )]
    NoAnswer {
        index: usize,
        timeout: Duration,
        log: PathBuf,
    },
    #[error(
        "{} is still mounted: unmount it (or run `zos devnet down`) before its data is removed",
        .0.display()
    )]
    StillMounted(PathBuf),
    #[error("devnet {name} was not fully removed: {}", .problems.join("; "))]
    NotRemoved { name: String, problems: Vec<String> },
}

impl DevnetError {
    /// An I/O failure of `what` (creating, attaching, …) on `path`.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }

    pub(crate) fn hub<E: std::error::Error + Send + Sync + 'static>(
        what: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |source| Self::Hub {
            what,
            source: Box::new(source),
        }
    }
}

/// What devnet calls answer.
pub(crate) type Result<T, E = DevnetError> = std::result::Result<T, E>;
