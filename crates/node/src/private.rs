//! Files and directories that hold tenant secrets (the deployment store, VM records and seeds
//! with SSH keys and environment, WireGuard keys): made readable by root only at creation,
//! never widened and narrowed afterwards, so no reader ever sees them open.
//!
//! A file is created with `O_CREAT | O_EXCL` and mode 0600 (a stale file of the same name is
//! removed first, since an existing file keeps its old mode); a directory with mode 0700.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of files holding secrets.
pub const FILE_MODE: u32 = 0o600;
/// Mode of directories holding such files.
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` (replacing any file there) for writing, mode 0600.
pub fn create_file(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Makes directory `path` and its missing parents, each new one mode 0700.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Writes `data` to `path` atomically (a 0600 temporary file renamed over it).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = create_file(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
pub(crate) fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_owner_only_from_creation_even_over_a_stale_open_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode_of(&d.path().join("a")), DIR_MODE);
        assert_eq!(mode_of(&dir), DIR_MODE);
        let p = dir.join("secret.json");
        // A stale temporary file left world-readable must not keep its mode.
        let stale = dir.join("secret.json.tmp");
        std::fs::write(&stale, "old").unwrap();
        std::fs::set_permissions(&stale, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        write_atomic(&p, b"key").unwrap();
        assert_eq!(mode_of(&p), FILE_MODE);
        assert_eq!(std::fs::read(&p).unwrap(), b"key");
        assert!(!stale.exists());
    }
}
