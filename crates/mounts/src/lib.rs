//! Flist mounts of the node: what the zmachine manager uses to get a container's root file
//! system.
//!
//! [`FlistManager`] is the seam. [`ProcessFlists`] is the real implementation: it downloads a
//! flist from a hub URL (checking the hash a `by-hash` URL names), keeps it in the node's state
//! directory under its SHA-256, and runs each mount as its own `zos-flist-mount` process
//! (detached, in its own process group, so it outlives zosd) reading through one block cache
//! shared by every mount. Mounts are recorded in a versioned state file; at start,
//! [`FlistManager::reconcile`] adopts the mount processes that still serve and remakes the others.
//! `MemoryFlists` (feature `fake`) is the fake, for tests of the managers above it.
//!
//! Mount points are `<mount root>/<node prefix><name>`: on a devnet several nodes share one
//! kernel, so every mount point carries the node's prefix. See `docs/flist.md` (Node).

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(any(test, feature = "fake"))]
mod fake;
pub mod open;
mod policy;
mod process;
mod state;

use std::future::Future;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "fake"))]
pub use fake::MemoryFlists;
pub use open::OpenError;
pub use policy::{FarmFlistHosts, FlistUrlError, FlistUrlPolicy, GridFarmHosts};
pub use process::{FlistConfig, ProcessFlists};
pub use state::{STATE_FILE, STATE_VERSION};

/// Longest mount name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// One flist mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    /// The caller's name for the mount (a workload id), without the node prefix.
    pub name: String,
    /// Where the flist came from.
    pub url: String,
    /// SHA-256 of the .fl file, lower-case hex.
    pub sha256: String,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// For writable mounts: the directory holding the changes (`upper/`, `work/`, `lower/`).
    pub rw_dir: Option<PathBuf>,
    /// The mount process (none in the fake).
    pub pid: Option<i32>,
}

/// What [`FlistManager::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Mounts whose process was still serving.
    pub adopted: Vec<String>,
    /// Mounts whose process was gone and that were mounted again.
    pub remade: Vec<String>,
    /// Mounts that could not be remade, with why (they stay recorded; the next reconcile tries
    /// again).
    pub failed: Vec<(String, String)>,
}

/// Why a flist operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FlistError {
    #[error("flist mount name {name:?}: {reason}")]
    Name { name: String, reason: String },
    #[error("cannot fetch flist {url}")]
    Fetch {
        url: String,
        #[source]
        source: Box<zos_flist::hub::HubError>,
    },
    #[error("flist mount {name} already exists with {existing}; unmount it first")]
    Conflict { name: String, existing: String },
    #[error("flist {url} now has SHA-256 {got}, not the {recorded} mount {name} was made with")]
    Changed {
        name: String,
        url: String,
        recorded: String,
        got: String,
    },
    #[error("mount process for {name} failed: {detail}")]
    Process { name: String, detail: String },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("flist mount {name} is not mounted")]
    NotMounted { name: String },
    #[error("{path} of flist mount {name}")]
    Open {
        name: String,
        path: String,
        #[source]
        source: OpenError,
    },
    #[error(transparent)]
    State(#[from] zos_runtime::StateError),
    #[error("flist mount {name} cannot read its blocks: {detail}")]
    NoBlockStore { name: String, detail: String },
    #[error("writable mount {name}: directory {path} {reason}")]
    RwDir {
        name: String,
        path: PathBuf,
        reason: String,
    },
}

/// The global name of mount `name` of a node with `prefix`: `<prefix>-<name>`, or `name` alone
/// on real hardware (no prefix). The dash keeps node `n1`'s `10-…` apart from node `n11`'s `0-…`.
pub fn global_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}-{name}")
    }
}

/// Checks a mount name: 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `.`, `_`, `-`,
/// not starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<(), FlistError> {
    let bad = |reason: &str| FlistError::Name {
        name: name.into(),
        reason: reason.into(),
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad(&format!("must be 1 to {MAX_NAME_LEN} characters")));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("may only hold ASCII letters, digits, '.', '_' and '-'"));
    }
    if name.starts_with(['.', '-']) {
        return Err(bad("must not start with '.' or '-'"));
    }
    Ok(())
}

/// The node's flist mounts.
pub trait FlistManager: Send + Sync {
    /// Mounts the flist at `url` read-only as `name` (or answers the existing mount of the same
    /// flist under that name).
    fn mount(
        &self,
        name: &str,
        url: &str,
    ) -> impl Future<Output = Result<MountInfo, FlistError>> + Send;

    /// Mounts the flist at `url` writable as `name`, keeping changes in `rw_dir` (on the
    /// workload's storage volume): mounting again with the same `rw_dir` shows the same changes.
    fn mount_writable(
        &self,
        name: &str,
        url: &str,
        rw_dir: &Path,
    ) -> impl Future<Output = Result<MountInfo, FlistError>> + Send;

    /// Unmounts `name` and removes its mount point and process; succeeds when it is not mounted.
    /// A writable mount's `rw_dir` is left to its owner.
    fn unmount(&self, name: &str) -> impl Future<Output = Result<(), FlistError>> + Send;

    /// Opens regular file `path` (relative, e.g. `image.raw`) of the read-only mount `name` for
    /// zosd itself to read: checked in the flist's metadata, then opened without following any
    /// link or leaving the mount ([`open`]). `None` when the flist has no such entry; an entry
    /// that is anything but a regular file inside the flist is [`FlistError::Open`].
    fn open_file(
        &self,
        name: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<std::fs::File>, FlistError>> + Send;

    /// The mount `name`, if recorded.
    fn get(&self, name: &str)
    -> impl Future<Output = Result<Option<MountInfo>, FlistError>> + Send;

    /// Every recorded mount, by name.
    fn list(&self) -> impl Future<Output = Result<Vec<MountInfo>, FlistError>> + Send;

    /// Makes every recorded mount serve: adopts the live ones, remakes the others. Called at
    /// start, and safe to call at any time.
    fn reconcile(&self) -> impl Future<Output = Result<Reconciled, FlistError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "12-34-vm", "x.y_z", &"n".repeat(MAX_NAME_LEN)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "..",
            "a b",
            &"n".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
