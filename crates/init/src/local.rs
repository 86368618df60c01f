//! The local channel between zosd and zos-init: three small files in the runtime directory
//! (`/run/zos`, a tmpfs only root writes), which zosd writes and zos-init reads.
//!
//! - [`NODE_FILE`] (`node.json`, [`NodeFile`]): written by zosd once the node is registered:
//!   its node id, its twin, where its key is, the version zosd runs. zos-init needs the node id
//!   to ask the grid which release *this* node runs, and the key to sign its upgrade reports.
//! - [`HEALTH_FILE`] (`health.json`, [`Health`]): rewritten by zosd (atomically: a temporary
//!   file renamed over it) whenever one of its facts changes: its version, registered, uplink
//!   up, reconcile finished, and the ids of the workloads that are `ok`. The health gate of an
//!   upgrade reads it (see [`crate::gate`]).
//! - [`CHECK_FILE`] (`check-release`): zosd writes it (any content, usually the time) when its
//!   uplink tells it something that may mean a new release (it connected, or the grid said
//!   so); zos-init checks the grid for a release soon after the file changes.
//!
//! zos-init stays the same across upgrades (it lives in the initramfs) while zosd changes, so
//! zos-init ignores fields it does not know; a file that is missing, oversize or malformed is
//! "nothing known" with the reason logged, never a decision.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

pub use zos_types::release::channel::{CHECK_FILE, HEALTH_FILE, NODE_FILE};
/// The largest file of the channel read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

pub use zos_types::release::channel::{Health, NodeFile};

/// Why a file of the channel is not usable.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_FILE_BYTES} bytes: ignored")]
    TooLarge { path: PathBuf },
    #[error("{path} is malformed: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LocalError {
    /// Whether the file is simply not there (yet).
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, LocalError> {
    let io = |source| LocalError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(LocalError::Format {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(LocalError::TooLarge {
            path: path.to_owned(),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(LocalError::TooLarge {
            path: path.to_owned(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| LocalError::Format {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads `node.json` in `dir`.
pub fn read_node(dir: &Path) -> Result<NodeFile, LocalError> {
    let path = dir.join(NODE_FILE);
    let n: NodeFile = read_json(&path)?;
    if !n.key.is_absolute() {
        return Err(LocalError::Format {
            path,
            reason: format!("the key path {} is not absolute", n.key.display()),
        });
    }
    Ok(n)
}

/// Reads `health.json` in `dir`.
pub fn read_health(dir: &Path) -> Result<Health, LocalError> {
    read_json(&dir.join(HEALTH_FILE))
}

/// When `check-release` in `dir` last changed; None when it is not there.
pub fn check_stamp(dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(dir.join(CHECK_FILE))
        .and_then(|m| m.modified())
        .ok()
}

/// Writes `value` as `name` in `dir` atomically (a temporary file renamed over it): how zosd
/// writes the files of the channel.
pub fn write_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), LocalError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| LocalError::Write {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec(value).map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_files_are_read_and_hostile_ones_refused() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_node(d.path()).unwrap_err().is_missing());
        assert!(read_health(d.path()).unwrap_err().is_missing());
        let node = NodeFile {
            node_id: 7,
            twin_id: 12,
            key: "/var/cache/zos/identity/node.key".into(),
            version: "1.0.0".into(),
        };
        write_atomic(d.path(), NODE_FILE, &node).unwrap();
        assert_eq!(read_node(d.path()).unwrap(), node);
        // A newer zosd may say more: zos-init reads what it knows.
        std::fs::write(
            d.path().join(HEALTH_FILE),
            r#"{"version":"1.1.0","registered":true,"uplink":true,"reconciled":true,"ok":["3-1"],"later":1}"#,
        )
        .unwrap();
        let h = read_health(d.path()).unwrap();
        assert!(h.registered && h.uplink && h.reconciled);
        assert_eq!(h.ok, BTreeSet::from(["3-1".to_string()]));

        std::fs::write(d.path().join(HEALTH_FILE), "{\"version\": 3}").unwrap();
        let e = read_health(d.path()).unwrap_err().to_string();
        assert!(e.contains("malformed"), "{e}");
        std::fs::write(
            d.path().join(HEALTH_FILE),
            vec![b' '; MAX_FILE_BYTES as usize + 1],
        )
        .unwrap();
        let e = read_health(d.path()).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::remove_file(d.path().join(HEALTH_FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join(HEALTH_FILE)).unwrap();
        let e = read_health(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");

        let relative = NodeFile {
            key: "node.key".into(),
            ..node
        };
        write_atomic(d.path(), NODE_FILE, &relative).unwrap();
        let e = read_node(d.path()).unwrap_err().to_string();
        assert!(e.contains("not absolute"), "{e}");

        assert_eq!(check_stamp(d.path()), None);
        std::fs::write(d.path().join(CHECK_FILE), "1").unwrap();
        assert!(check_stamp(d.path()).is_some());
    }
}
