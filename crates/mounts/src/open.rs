//! Reading a file of a tenant's flist without leaving it.
//!
//! zosd runs as root and some flist files are read by zosd itself (a VM-mode flist's
//! `image.raw`, the guest image's kernel and initramfs). The FUSE mount serves symbolic links as
//! they are, absolute ones included, so a plain `open` of `<mountpoint>/image.raw` could read any
//! host file. Two checks stand between a flist and the host:
//!
//! 1. **Metadata**: [`entry_size`] looks the path up in the flist's `.fl` file (already validated
//!    by [`zos_flist::Flist::open`]): every component must be a directory of the flist and the
//!    last one a regular file (a zos hard link resolves to another regular file of the same
//!    flist; the format cannot name anything outside it).
//! 2. **Open**: [`open_beneath`] opens the path relative to a directory descriptor of the mount
//!    root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV |
//!    RESOLVE_NO_MAGICLINKS)`, as `O_PATH` first (opening a FIFO or device could block or touch
//!    hardware), checks with `fstat` that it is a regular file, then reopens that very inode for
//!    reading through `/proc/self/fd`. Where `openat2` is missing (`ENOSYS`, Linux < 5.6) each
//!    component is opened with `O_NOFOLLOW` and checked to be on the root's file system.
//!
//! Callers get an open [`File`], never a path, so nothing resolves the name again.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use zos_flist::meta::ROOT_INO;
use zos_flist::{Flist, Kind};

/// Why a file of a flist was not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "is not a plain relative path inside the flist (no \"..\", \".\" or leading \"/\" allowed)"
    )]
    BadPath,
    #[error(
        "is a {kind} in the flist, not a regular file: the node reads only regular files from \
         a flist (a link could point at a host file); put the file itself in the flist"
    )]
    NotRegular { kind: String },
    #[error(
        "leads out of the flist (a symbolic link, \"..\" or another file system on the way): \
         the node reads only files inside the flist; put the file itself in the flist"
    )]
    Escapes,
    #[error("is not what the flist's metadata says ({detail}): the mount does not serve the flist")]
    Mismatch { detail: String },
    #[error("the flist's metadata cannot be read")]
    Metadata(#[source] Box<zos_flist::FormatError>),
    #[error("cannot open {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The components of `rel`, each a plain name; anything else is [`OpenError::BadPath`].
pub(crate) fn components(rel: &str) -> Result<Vec<&str>, OpenError> {
    let parts: Vec<&str> = Path::new(rel)
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().ok_or(OpenError::BadPath),
            _ => Err(OpenError::BadPath),
        })
        .collect::<Result<_, _>>()?;
    if parts.is_empty() {
        return Err(OpenError::BadPath);
    }
    Ok(parts)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "directory",
        Kind::File => "regular file",
        Kind::Symlink => "symbolic link",
        Kind::Char => "character device",
        Kind::Block => "block device",
        Kind::Fifo => "FIFO",
        Kind::Socket => "socket",
    }
}

/// The size of regular file `rel` as the flist's metadata records it; `None` when the flist has
/// no such entry. A directory on the way that is not one, or a last entry that is not a
/// regular file, is an error that says what it is.
pub fn entry_size(fl: &Flist, rel: &str) -> Result<Option<u64>, OpenError> {
    let parts = components(rel)?;
    let mut ino = ROOT_INO;
    for (i, name) in parts.iter().enumerate() {
        let Some(node) = fl.lookup(ino, name.as_bytes()) else {
            return Ok(None);
        };
        let last = i + 1 == parts.len();
        let kind = node.attrs.kind();
        if !last && kind != Kind::Dir {
            return Err(OpenError::NotRegular {
                kind: format!("{} on the way", kind_name(kind)),
            });
        }
        if last {
            let data = fl.resolve(node.ino).unwrap_or(node);
            if data.attrs.kind() != Kind::File {
                return Err(OpenError::NotRegular {
                    kind: kind_name(data.attrs.kind()).into(),
                });
            }
            return Ok(Some(data.attrs.size));
        }
        ino = node.ino;
    }
    unreachable!("components() answers at least one part")
}

fn io_err(path: PathBuf) -> impl FnOnce(Errno) -> OpenError {
    move |e| OpenError::Io {
        path,
        source: e.into(),
    }
}

/// Opens regular file `rel` below the directory `root` for reading, following no symbolic
/// link, never leaving `root` and never crossing into another file system. `None` when it
/// does not exist.
pub fn open_beneath(root: &Path, rel: &str) -> Result<Option<File>, OpenError> {
    components(rel)?;
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err(root.to_path_buf()))?;
    let how = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_XDEV
        | ResolveFlags::NO_MAGICLINKS;
    let fd = match rustix::fs::openat2(&dir, rel, how, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(Errno::NOSYS) => match open_nofollow(&dir, rel)? {
            Some(fd) => fd,
            None => return Ok(None),
        },
        Err(e) => return refusal(e, root, rel),
    };
    reopen_regular(fd, &root.join(rel)).map(Some)
}

/// What an `openat2` error means for the caller.
fn refusal<T>(e: Errno, root: &Path, rel: &str) -> Result<Option<T>, OpenError> {
    match e {
        Errno::NOENT => Ok(None),
        // ELOOP: a symlink (RESOLVE_NO_SYMLINKS, O_NOFOLLOW); EXDEV: out of `root` or onto
        // another file system; ENOTDIR: a non-directory where a directory should be.
        Errno::LOOP | Errno::XDEV | Errno::NOTDIR => Err(OpenError::Escapes),
        e => Err(io_err(root.join(rel))(e)),
    }
}

/// The fallback without `openat2`: one component at a time with `O_NOFOLLOW`, each on the file
/// system of `dir`.
pub(crate) fn open_nofollow(dir: &OwnedFd, rel: &str) -> Result<Option<OwnedFd>, OpenError> {
    let dev = rustix::fs::fstat(dir)
        .map_err(io_err(PathBuf::from(".")))?
        .st_dev;
    let parts = components(rel)?;
    let mut cur: Option<OwnedFd> = None;
    for (i, name) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if !last {
            flags |= OFlags::DIRECTORY;
        }
        let at = cur.as_ref().map_or(dir.as_fd(), |f| f.as_fd());
        let fd = match rustix::fs::openat(at, *name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return refusal(e, Path::new("."), rel),
        };
        let st = rustix::fs::fstat(&fd).map_err(io_err(PathBuf::from(rel)))?;
        if st.st_dev != dev || FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(OpenError::Escapes);
        }
        cur = Some(fd);
    }
    Ok(cur)
}

/// Checks that the `O_PATH` descriptor `fd` is a regular file and opens that same inode for
/// reading.
fn reopen_regular(fd: OwnedFd, path: &Path) -> Result<File, OpenError> {
    let st = rustix::fs::fstat(&fd).map_err(io_err(path.to_path_buf()))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft == FileType::Symlink {
        // O_PATH | O_NOFOLLOW answers a last component that is a link as the link itself.
        return Err(OpenError::Escapes);
    }
    if ft != FileType::RegularFile {
        return Err(OpenError::NotRegular {
            kind: format!("{ft:?}").to_lowercase(),
        });
    }
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = File::open(&proc).map_err(|source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let again = rustix::fs::fstat(&file).map_err(io_err(path.to_path_buf()))?;
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
        return Err(OpenError::Escapes);
    }
    Ok(file)
}

/// Opens regular file `rel` of the flist `fl` mounted at `mountpoint`: checked in the metadata
/// first, then opened with [`open_beneath`], and its size compared with the metadata's.
pub fn open_checked(fl: &Flist, mountpoint: &Path, rel: &str) -> Result<Option<File>, OpenError> {
    let Some(size) = entry_size(fl, rel)? else {
        return Ok(None);
    };
    let Some(file) = open_beneath(mountpoint, rel)? else {
        return Err(OpenError::Mismatch {
            detail: "the mount has no such file".into(),
        });
    };
    let got = file
        .metadata()
        .map_err(|source| OpenError::Io {
            path: mountpoint.join(rel),
            source,
        })?
        .len();
    if got != size {
        return Err(OpenError::Mismatch {
            detail: format!("{got} bytes, the flist says {size}"),
        });
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read(f: File) -> String {
        let mut s = String::new();
        (&f).read_to_string(&mut s).unwrap();
        s
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("root");
        std::fs::create_dir_all(r.join("d")).unwrap();
        std::fs::write(r.join("d/file"), "inside").unwrap();
        std::fs::write(t.path().join("host-secret"), "secret").unwrap();
        std::os::unix::fs::symlink(t.path().join("host-secret"), r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../host-secret", r.join("climb")).unwrap();
        std::os::unix::fs::symlink("d/file", r.join("inner")).unwrap();
        std::os::unix::fs::symlink(t.path(), r.join("dirlink")).unwrap();
        t
    }

    #[test]
    fn regular_files_open_and_everything_else_is_refused() {
        let t = tree();
        let root = t.path().join("root");
        assert_eq!(
            read(open_beneath(&root, "d/file").unwrap().unwrap()),
            "inside"
        );
        assert!(open_beneath(&root, "missing").unwrap().is_none());
        for link in ["abs", "climb", "inner", "dirlink/host-secret"] {
            let e = open_beneath(&root, link).unwrap_err();
            assert!(matches!(e, OpenError::Escapes), "{link}: {e:?}");
        }
        for bad in [
            "../host-secret",
            "/etc/passwd",
            "d/../d/file",
            "./d/file",
            "",
        ] {
            let e = open_beneath(&root, bad).unwrap_err();
            assert!(matches!(e, OpenError::BadPath), "{bad}: {e:?}");
        }
        let e = open_beneath(&root, "d").unwrap_err();
        assert!(matches!(e, OpenError::NotRegular { .. }), "{e:?}");
    }

    #[test]
    fn the_nofollow_fallback_refuses_the_same_links() {
        let t = tree();
        let root = t.path().join("root");
        let dir = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let fd = open_nofollow(&dir, "d/file").unwrap().unwrap();
        assert_eq!(read(reopen_regular(fd, &root).unwrap()), "inside");
        assert!(open_nofollow(&dir, "missing").unwrap().is_none());
        for link in ["abs", "climb", "inner", "dirlink/host-secret"] {
            let e = open_nofollow(&dir, link).unwrap_err();
            assert!(matches!(e, OpenError::Escapes), "{link}: {e:?}");
        }
    }

    #[test]
    fn another_file_system_below_the_root_is_refused() {
        if !zos_testkit::require_root("another_file_system_below_the_root_is_refused") {
            return;
        }
        let t = tree();
        let root = t.path().join("root");
        let sub = root.join("other");
        std::fs::create_dir_all(&sub).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        std::fs::write(sub.join("file"), "other fs").unwrap();
        let e = open_beneath(&root, "other/file");
        let dir = rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let e2 = open_nofollow(&dir, "other/file");
        nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(matches!(e, Err(OpenError::Escapes)), "{e:?}");
        assert!(matches!(e2, Err(OpenError::Escapes)), "{e2:?}");
    }
}
