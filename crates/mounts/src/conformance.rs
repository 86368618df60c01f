//! The contract of the [`FlistManager`] seam, as one suite that every implementation must pass.
//!
//! `tests/conformance.rs` runs [`run`] twice: against `MemoryFlists` (feature `fake`) and
//! against `ProcessFlists` with real FUSE mounts of flists served by a grid's hub on loopback.
//! It states what `zos-provision` relies on: a mount shows in `get` and `list`; mounting the
//! same again answers the same mount, anything else under that name is a conflict; bad names,
//! URLs and writable directories are refused and leave nothing; `open_file` reads regular files
//! of the flist only, answers `None` for a missing one and refuses hostile paths, links and
//! directories; unmount is idempotent; `reconcile` adopts live mounts. The real implementation
//! is the reference. Compiled only with the `conformance` feature.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{FlistError, FlistManager, MountInfo};

/// The read-only mount whose files the suite opens. A fake that serves files from a directory
/// finds them at its mount point for this name.
pub const NAME: &str = "cf-a";
/// A second read-only mount of the same flist.
pub const SECOND: &str = "cf-b";
/// A writable mount of the other flist.
pub const WRITABLE: &str = "cf-rw";

/// What the suite mounts and expects to find.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// A flist holding `file` (a regular file with `contents`), `dir` (a directory), `link` (a
    /// symbolic link) and `link_on_the_way` (a path through a symbolic link to a directory).
    pub url: String,
    /// Another flist (its content does not matter).
    pub other_url: String,
    pub file: String,
    pub contents: Vec<u8>,
    pub dir: String,
    pub link: String,
    pub link_on_the_way: String,
    /// An absolute directory for the writable mount's changes.
    pub rw_dir: PathBuf,
}

/// Runs every check in order on a manager with no mounts; it ends with none again.
pub async fn run<F: FlistManager>(f: &F, fx: &Fixture) {
    check_empty(f).await;
    check_refusals(f, fx).await;
    check_mounts(f, fx).await;
    check_open_file(f, fx).await;
    check_writable(f, fx).await;
    check_reconcile(f).await;
    check_unmount(f).await;
    check_empty(f).await;
}

async fn names<F: FlistManager>(f: &F) -> Vec<String> {
    f.list()
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect()
}

/// Nothing is mounted; unmounting or opening what is not mounted behaves.
pub async fn check_empty<F: FlistManager>(f: &F) {
    assert_eq!(names(f).await, Vec::<String>::new(), "mounts left over");
    for name in [NAME, SECOND, WRITABLE] {
        assert_eq!(f.get(name).await.unwrap(), None);
        f.unmount(name)
            .await
            .expect("unmounting what is not mounted succeeds");
        let r = f.open_file(name, "x").await;
        assert!(matches!(r, Err(FlistError::NotMounted { .. })), "{r:?}");
    }
}

/// Bad names, URLs and writable directories: each its own error, nothing recorded.
pub async fn check_refusals<F: FlistManager>(f: &F, fx: &Fixture) {
    let long = "n".repeat(crate::MAX_NAME_LEN + 1);
    for name in ["", ".x", "-x", "a/b", "..", "a b", long.as_str()] {
        let bad = |r: Result<(), FlistError>| matches!(r, Err(FlistError::Name { .. }));
        assert!(bad(f.mount(name, &fx.url).await.map(drop)), "{name:?}");
        let writable = f.mount_writable(name, &fx.url, &fx.rw_dir).await;
        assert!(bad(writable.map(drop)), "{name:?}");
        assert!(bad(f.unmount(name).await), "{name:?}");
        assert!(bad(f.open_file(name, &fx.file).await.map(drop)), "{name:?}");
    }
    for url in [
        "",
        "not a url",
        "ftp://127.0.0.1/x.fl",
        "file:///etc/passwd",
    ] {
        let r = f.mount(NAME, url).await;
        assert!(matches!(r, Err(FlistError::Fetch { .. })), "{url:?}: {r:?}");
    }
    for rw in [
        Path::new("relative/rw"),
        Path::new("/a,b"),
        Path::new("/a:b"),
    ] {
        let r = f.mount_writable(WRITABLE, &fx.other_url, rw).await;
        assert!(matches!(r, Err(FlistError::RwDir { .. })), "{rw:?}: {r:?}");
    }
    assert_eq!(
        names(f).await,
        Vec::<String>::new(),
        "a refusal left a mount"
    );
}

fn same_mount(a: &MountInfo, b: &MountInfo) {
    assert_eq!(
        (&a.name, &a.url, &a.sha256, &a.mountpoint, &a.rw_dir),
        (&b.name, &b.url, &b.sha256, &b.mountpoint, &b.rw_dir)
    );
}

/// Mounts show in `get` and `list`; the same mount again is the same; anything else under a
/// taken name is a conflict that changes nothing.
pub async fn check_mounts<F: FlistManager>(f: &F, fx: &Fixture) {
    let a = f.mount(NAME, &fx.url).await.expect("mount");
    assert_eq!(
        (a.name.as_str(), a.url.as_str(), a.rw_dir.as_ref()),
        (NAME, fx.url.as_str(), None)
    );
    assert!(
        a.sha256.len() == 64
            && a.sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "sha256 {:?}",
        a.sha256
    );
    assert!(a.mountpoint.is_absolute(), "{:?}", a.mountpoint);
    same_mount(&f.get(NAME).await.unwrap().expect("get"), &a);
    let again = f.mount(NAME, &fx.url).await.expect("mount again");
    same_mount(&again, &a);
    assert_eq!(again.pid, a.pid, "mounting again started another process");
    // The same flist under another name: another mount point, the same flist hash.
    let b = f.mount(SECOND, &fx.url).await.expect("second mount");
    assert_eq!(b.sha256, a.sha256);
    assert_ne!(b.mountpoint, a.mountpoint);
    assert_eq!(names(f).await, vec![NAME.to_string(), SECOND.to_string()]);
    // A taken name with another flist or writable: refused, the mount as it was.
    let r = f.mount(NAME, &fx.other_url).await;
    assert!(matches!(r, Err(FlistError::Conflict { .. })), "{r:?}");
    let r = f.mount_writable(NAME, &fx.url, &fx.rw_dir).await;
    assert!(matches!(r, Err(FlistError::Conflict { .. })), "{r:?}");
    same_mount(
        &f.get(NAME).await.unwrap().expect("get after conflicts"),
        &a,
    );
    assert_eq!(names(f).await.len(), 2);
}

async fn read_all(file: std::fs::File) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        (&file).read_to_end(&mut v).map(|_| v)
    })
    .await
    .expect("read task")
    .expect("read")
}

/// `open_file` answers regular files with their content, `None` for a missing entry, and
/// refuses every path that is not a plain relative path to a regular file.
pub async fn check_open_file<F: FlistManager>(f: &F, fx: &Fixture) {
    let file = f
        .open_file(NAME, &fx.file)
        .await
        .expect("open")
        .expect("the file");
    assert!(
        read_all(file).await == fx.contents,
        "content of {}",
        fx.file
    );
    assert!(
        f.open_file(NAME, "missing-entry")
            .await
            .expect("open missing")
            .is_none()
    );
    let climb = format!("../{}", fx.file);
    let inner_climb = format!("{}/../{}", fx.dir, fx.file);
    let dotted = format!("./{}", fx.file);
    let absolute = format!("/{}", fx.file);
    let hostile = [
        "",
        ".",
        "..",
        "/etc/passwd",
        &climb,
        &inner_climb,
        &dotted,
        &absolute,
        &fx.dir,
        &fx.link,
        &fx.link_on_the_way,
    ];
    for path in hostile {
        let r = f.open_file(NAME, path).await;
        assert!(matches!(r, Err(FlistError::Open { .. })), "{path:?}: {r:?}");
    }
}

/// A writable mount records its directory; the same again is the same, another directory or a
/// read-only mount under its name is a conflict.
pub async fn check_writable<F: FlistManager>(f: &F, fx: &Fixture) {
    let w = f
        .mount_writable(WRITABLE, &fx.other_url, &fx.rw_dir)
        .await
        .expect("writable mount");
    assert_eq!(w.rw_dir.as_deref(), Some(fx.rw_dir.as_path()));
    same_mount(&f.get(WRITABLE).await.unwrap().expect("get"), &w);
    same_mount(
        &f.mount_writable(WRITABLE, &fx.other_url, &fx.rw_dir)
            .await
            .expect("again"),
        &w,
    );
    let elsewhere = fx.rw_dir.join("elsewhere");
    let r = f.mount_writable(WRITABLE, &fx.other_url, &elsewhere).await;
    assert!(matches!(r, Err(FlistError::Conflict { .. })), "{r:?}");
    let r = f.mount(WRITABLE, &fx.other_url).await;
    assert!(matches!(r, Err(FlistError::Conflict { .. })), "{r:?}");
    same_mount(
        &f.get(WRITABLE).await.unwrap().expect("get after conflicts"),
        &w,
    );
}

/// With every mount serving, `reconcile` adopts them all and remakes nothing.
pub async fn check_reconcile<F: FlistManager>(f: &F) {
    let before = f.list().await.unwrap();
    let r = f.reconcile().await.expect("reconcile");
    let mut adopted = r.adopted.clone();
    adopted.sort();
    assert_eq!(
        adopted,
        vec![NAME.to_string(), SECOND.to_string(), WRITABLE.to_string()]
    );
    assert!(r.remade.is_empty() && r.failed.is_empty(), "{r:?}");
    let after = f.list().await.unwrap();
    assert_eq!(before.len(), after.len());
    for (a, b) in before.iter().zip(&after) {
        same_mount(a, b);
    }
}

/// Unmount removes one mount and leaves the others; a second unmount succeeds.
pub async fn check_unmount<F: FlistManager>(f: &F) {
    f.unmount(SECOND).await.expect("unmount");
    f.unmount(SECOND).await.expect("unmount again");
    assert_eq!(f.get(SECOND).await.unwrap(), None);
    assert_eq!(names(f).await, vec![NAME.to_string(), WRITABLE.to_string()]);
    assert!(
        f.open_file(NAME, "missing-entry").await.unwrap().is_none(),
        "the other mount went"
    );
    for name in [NAME, WRITABLE] {
        f.unmount(name).await.expect("unmount");
    }
}
