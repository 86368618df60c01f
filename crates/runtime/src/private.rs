//! Files and directories that hold tenant secrets (the deployment store, VM records and seeds
//! with SSH keys and environment, WireGuard keys): made readable by root only at creation,
//! never widened and narrowed afterwards, so no reader ever sees them open.
//!
//! A file is created with `O_CREAT | O_EXCL` and mode 0600 (a stale file of the same name is
//! removed first, since an existing file keeps its old mode); a directory with mode 0700.
//! [`write_atomic`] is the one atomic write: temporary file, fsync, rename, fsync of the
//! directory, so a crash at any point leaves the old content or the new, never a torn file.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Mode of files holding secrets.
pub const FILE_MODE: u32 = 0o600;
/// Mode of directories holding such files.
pub const DIR_MODE: u32 = 0o700;

/// Creates `path` (replacing any file there) for writing, mode 0600.
pub fn create_file(path: &Path) -> io::Result<File> {
    create_file_mode(path, FILE_MODE)
}

/// Creates `path` (replacing any file there) for writing with permission bits `mode`, set
/// exactly whatever the umask.
pub fn create_file_mode(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Makes directory `path` and its missing parents, each new one mode 0700.
pub fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// The temporary file [`write_atomic`] writes before renaming it over `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Writes `data` to `path` atomically: a 0600 temporary file is written and flushed, renamed
/// over `path`, and the directory is flushed so the rename itself survives a crash.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, FILE_MODE)
}

/// [`write_atomic`] with permission bits `mode` (a read-only key file, say). The temporary
/// file is removed when a step fails.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let tmp = tmp_path(path);
    let written = create_file_mode(&tmp, mode).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// The permission bits of `path` (not following a symbolic link).
pub fn mode_of(path: &Path) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::symlink_metadata(path)?.permissions().mode() & 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        mode_of(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn secrets_are_owner_only_from_creation_even_over_a_stale_open_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&d.path().join("a")), DIR_MODE);
        assert_eq!(mode(&dir), DIR_MODE);
        let p = dir.join("secret.json");
        // A stale temporary file left world-readable must not keep its mode.
        let stale = dir.join("secret.json.tmp");
        std::fs::write(&stale, "old").unwrap();
        std::fs::set_permissions(&stale, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        write_atomic(&p, b"key").unwrap();
        assert_eq!(mode(&p), FILE_MODE);
        assert_eq!(std::fs::read(&p).unwrap(), b"key");
        assert!(!stale.exists());
    }
}
