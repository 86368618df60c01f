//! The metadata file at the root of each pool: what the pool is, kept so the answer never changes
//! (a [`StateFile`]).

use std::path::Path;

use serde::{Deserialize, Serialize};
use zos_runtime::{StateFile, Versioned};

use super::{DiskKind, StorageError};

/// File name of the metadata at a pool's root.
pub const POOL_META_FILE: &str = ".zos-pool.json";
/// The version this build writes and reads.
pub const POOL_META_VERSION: u32 = 1;

/// The content of [`POOL_META_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMeta {
    pub version: u32,
    /// SSD or HDD, decided when the pool was made.
    pub kind: DiskKind,
}

impl PoolMeta {
    pub fn new(kind: DiskKind) -> Self {
        PoolMeta {
            version: POOL_META_VERSION,
            kind,
        }
    }

    /// Reads the metadata of the pool mounted at `root`; `None` when the file is missing (a pool
    /// whose making was interrupted). Versions newer than this build are refused.
    pub fn load(root: &Path) -> Result<Option<PoolMeta>, StorageError> {
        Ok(StateFile::new(root.join(POOL_META_FILE)).load()?)
    }

    /// Writes the metadata atomically (temporary file, fsync, rename, fsync of the pool root).
    pub fn store(&self, root: &Path) -> Result<(), StorageError> {
        Ok(StateFile::new(root.join(POOL_META_FILE)).save(self)?)
    }
}

impl Versioned for PoolMeta {
    const VERSION: u32 = POOL_META_VERSION;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PoolMeta::load(dir.path()).unwrap(), None);
        PoolMeta::new(DiskKind::Hdd).store(dir.path()).unwrap();
        assert_eq!(
            PoolMeta::load(dir.path()).unwrap(),
            Some(PoolMeta::new(DiskKind::Hdd))
        );
        let text = std::fs::read_to_string(dir.path().join(POOL_META_FILE)).unwrap();
        assert!(
            text.contains("\"version\": 1") && text.contains("\"hdd\""),
            "{text}"
        );

        std::fs::write(
            dir.path().join(POOL_META_FILE),
            r#"{"version": 2, "kind": "ssd", "more": 1}"#,
        )
        .unwrap();
        let err = PoolMeta::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");

        std::fs::write(dir.path().join(POOL_META_FILE), "garbage").unwrap();
        assert!(PoolMeta::load(dir.path()).is_err());
    }
}
