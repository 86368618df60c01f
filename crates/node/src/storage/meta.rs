//! The metadata file at the root of each pool: what the pool is, kept so the answer never changes.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

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
        let path = root.join(POOL_META_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("reading", &path)(e)),
        };
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let bad = |reason: String| StorageError::Meta {
            path: path.clone(),
            reason,
        };
        let v: Versioned = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if v.version != POOL_META_VERSION {
            return Err(bad(format!(
                "version {} is not {POOL_META_VERSION}, the one this zosd understands",
                v.version
            )));
        }
        let meta: PoolMeta = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        Ok(Some(meta))
    }

    /// Writes the metadata atomically (temporary file, fsync, rename).
    pub fn store(&self, root: &Path) -> Result<(), StorageError> {
        let path = root.join(POOL_META_FILE);
        let tmp = root.join(format!("{POOL_META_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(|e| StorageError::Meta {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(StorageError::io("creating", &tmp))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(StorageError::io("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(StorageError::io("renaming", &tmp))?;
        Ok(())
    }
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
