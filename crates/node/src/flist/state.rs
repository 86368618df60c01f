//! The versioned record of the node's flist mounts (`mounts.json` in the flist state directory).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FlistError, MountInfo};

/// File name of the record inside the flist state directory.
pub const STATE_FILE: &str = "mounts.json";
/// The record's format version. A file with a higher version (from a newer zosd) is refused,
/// never rewritten.
pub const STATE_VERSION: u32 = 1;

/// One recorded mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    pub url: String,
    pub sha256: String,
    pub mountpoint: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rw_dir: Option<PathBuf>,
    /// The mount process, once it said it is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

impl Entry {
    pub fn info(&self, name: &str) -> MountInfo {
        MountInfo {
            name: name.into(),
            url: self.url.clone(),
            sha256: self.sha256.clone(),
            mountpoint: self.mountpoint.clone(),
            rw_dir: self.rw_dir.clone(),
            pid: self.pid,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct State {
    pub version: u32,
    pub mounts: BTreeMap<String, Entry>,
}

impl State {
    /// Reads the record; a missing file is an empty record.
    pub fn load(path: &Path) -> Result<State, FlistError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    version: STATE_VERSION,
                    mounts: BTreeMap::new(),
                });
            }
            Err(source) => {
                return Err(FlistError::Io {
                    what: "cannot read",
                    path: path.into(),
                    source,
                });
            }
        };
        // Look at the version first, so that a newer format is named as such.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let bad = |reason: String| FlistError::State {
            path: path.into(),
            reason,
        };
        let v: Version = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if v.version > STATE_VERSION {
            return Err(bad(format!(
                "format version {} is newer than this zosd's {STATE_VERSION}: upgrade zosd",
                v.version
            )));
        }
        serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))
    }

    /// Writes the record atomically (temporary file, fsync, rename, fsync of the directory).
    pub fn save(&self, path: &Path) -> Result<(), FlistError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let io = |what: &'static str, p: &Path| {
            let p = p.to_owned();
            move |source| FlistError::Io {
                what,
                path: p,
                source,
            }
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".mounts-")
            .tempfile_in(dir)
            .map_err(io("cannot create a temporary file in", dir))?;
        let text = serde_json::to_vec_pretty(self).expect("the state serializes");
        tmp.write_all(&text)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(io("cannot write", tmp.path()))?;
        tmp.persist(path).map_err(|e| FlistError::Io {
            what: "cannot replace",
            path: path.into(),
            source: e.error,
        })?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("cannot flush directory", dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_newer_versions_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(STATE_FILE);
        assert_eq!(State::load(&p).unwrap().mounts.len(), 0);
        let mut s = State::load(&p).unwrap();
        s.mounts.insert(
            "vm1".into(),
            Entry {
                url: "http://hub/x".into(),
                sha256: "a".repeat(64),
                mountpoint: "/run/zos-flist/n1-vm1".into(),
                rw_dir: None,
                pid: Some(42),
            },
        );
        s.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), s);
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary left"
        );

        std::fs::write(&p, br#"{"version": 2, "mounts": {}, "more": 1}"#).unwrap();
        let err = State::load(&p).unwrap_err().to_string();
        assert!(err.contains("upgrade zosd"), "{err}");
        std::fs::write(&p, b"{garbage").unwrap();
        assert!(State::load(&p).is_err());
    }
}
