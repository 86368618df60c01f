//! The node's own twin key, made on first start and kept in the state directory.

use std::path::{Path, PathBuf};

use tracing::info;
use zos_types::Identity;

/// Where the node keeps its key, inside its state directory.
pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity").join("node.key")
}

/// Errors loading or creating the node key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityStoreError {
    #[error(
        "node key {path} exists but cannot be read; it is never replaced silently: move it away to make a new identity"
    )]
    Load {
        path: PathBuf,
        source: zos_client::keyfile::KeyFileError,
    },
    #[error("cannot store a new node key at {path}")]
    Save {
        path: PathBuf,
        source: zos_client::keyfile::KeyFileError,
    },
    #[error("cannot make a new key")]
    Generate(#[source] zos_types::identity::IdentityError),
}

/// Loads the node's key, or makes one on first start (file mode 0400).
pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityStoreError> {
    let path = key_path(state_dir);
    if path.exists() {
        let id = zos_client::keyfile::load_identity(&path).map_err(|source| {
            IdentityStoreError::Load {
                path: path.clone(),
                source,
            }
        })?;
        info!(key = %id.public_key(), path = %path.display(), "node identity loaded");
        return Ok(id);
    }
    let id = Identity::generate().map_err(IdentityStoreError::Generate)?;
    zos_client::keyfile::save_identity(&path, &id, 0o400).map_err(|source| {
        IdentityStoreError::Save {
            path: path.clone(),
            source,
        }
    })?;
    info!(key = %id.public_key(), path = %path.display(), "new node identity created");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn a_damaged_key_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityStoreError::Load { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key");
    }
}
