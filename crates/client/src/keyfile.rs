//! Storing an identity in a key file on disk.
//!
//! The file holds [`Identity::to_key_file`] text. It is written atomically with
//! [`zos_runtime::private::write_atomic_mode`]: a temporary file in the same directory is
//! written, flushed to disk and renamed over the target, and the directory is flushed too, so a
//! crash leaves either the old file or the new one, never a torn one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use zos_runtime::private;

use zos_types::Identity;
use zos_types::identity::IdentityError;

/// Mode of a node's key file: read-only for its owner.
pub const NODE_KEY_MODE: u32 = 0o400;
/// Mode of a person's key file: read-write for its owner.
pub const USER_KEY_MODE: u32 = 0o600;
/// Mode of a key file's directory when this module creates it.
pub const KEY_DIR_MODE: u32 = private::DIR_MODE;

/// Failures to save or load a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot create key directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key file {path} is not valid")]
    Invalid {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
    #[error("key file path {path} has no file name")]
    NoFileName { path: PathBuf },
}

/// Writes `identity` to `path` atomically with permission bits `mode` (for example
/// [`NODE_KEY_MODE`] or [`USER_KEY_MODE`]), creating missing parent directories with mode
/// [`KEY_DIR_MODE`]. An existing file at `path` is replaced.
pub fn save_identity(path: &Path, identity: &Identity, mode: u32) -> Result<(), KeyFileError> {
    if path.file_name().is_none() {
        return Err(KeyFileError::NoFileName { path: path.into() });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        private::create_dir(&dir).map_err(|source| KeyFileError::CreateDir {
            path: dir.clone(),
            source,
        })?;
    }
    let text = zeroize::Zeroizing::new(identity.to_key_file());
    private::write_atomic_mode(path, text.as_bytes(), mode).map_err(|source| KeyFileError::Write {
        path: path.into(),
        source,
    })
}

/// Reads the identity stored at `path` by [`save_identity`].
pub fn load_identity(path: &Path) -> Result<Identity, KeyFileError> {
    let text =
        zeroize::Zeroizing::new(
            fs::read_to_string(path).map_err(|source| KeyFileError::Read {
                path: path.into(),
                source,
            })?,
        );
    Identity::from_key_file(&text).map_err(|source| KeyFileError::Invalid {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        private::mode_of(p).unwrap()
    }

    #[test]
    fn save_then_load_restores_the_identity_with_the_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let path = dir.join("node.key");
        let id = Identity::from_seed([4; 32]);
        save_identity(&path, &id, NODE_KEY_MODE).unwrap();
        assert_eq!(mode_of(&path), 0o400);
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&tmp.path().join("a")), 0o700);
        let back = load_identity(&path).unwrap();
        assert_eq!(back.public_key(), id.public_key());

        // Replacing works even over a read-only file, and leaves no temporary file behind.
        let other = Identity::from_seed([5; 32]);
        save_identity(&path, &other, USER_KEY_MODE).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(
            load_identity(&path).unwrap().public_key(),
            other.public_key()
        );
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node.key")]);
    }

    #[test]
    fn load_errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing.key");
        let err = load_identity(&missing).unwrap_err();
        assert!(matches!(err, KeyFileError::Read { .. }));
        assert!(err.to_string().contains("missing.key"), "{err}");

        let garbage = tmp.path().join("garbage.key");
        fs::write(&garbage, "not a key file").unwrap();
        let err = load_identity(&garbage).unwrap_err();
        assert!(matches!(err, KeyFileError::Invalid { .. }));
        assert!(err.to_string().contains("garbage.key"), "{err}");
    }

    #[test]
    fn save_into_an_unwritable_place_fails_and_names_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        // A regular file where the directory should be.
        let blocker = tmp.path().join("blocker");
        fs::write(&blocker, "").unwrap();
        let path = blocker.join("x.key");
        let err = save_identity(&path, &Identity::from_seed([1; 32]), USER_KEY_MODE).unwrap_err();
        assert!(err.to_string().contains("blocker"), "{err}");
        assert!(save_identity(Path::new("/"), &Identity::from_seed([1; 32]), 0o600).is_err());
    }
}
