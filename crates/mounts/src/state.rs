//! The versioned record of the node's flist mounts (`mounts.json` in the flist state directory),
//! kept in a [`StateFile`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zos_runtime::{StateFile, Versioned};

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

impl Versioned for State {
    const VERSION: u32 = STATE_VERSION;
    const OLDEST: u32 = 0;
}

impl State {
    /// Reads the record; a missing file is an empty record.
    pub fn load(path: &Path) -> Result<State, FlistError> {
        Ok(StateFile::new(path).load()?.unwrap_or(State {
            version: STATE_VERSION,
            mounts: BTreeMap::new(),
        }))
    }

    /// Writes the record atomically (temporary file, fsync, rename, fsync of the directory),
    /// mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), FlistError> {
        Ok(StateFile::new(path).save(self)?)
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
