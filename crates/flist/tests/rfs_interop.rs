//! Cross-check against the original tooling, when a build of it is at hand.
//!
//! Set `ZOS_RFS_CHECK` to a program built from the rfs sources that offers
//! `pack <out.fl> <store dir> <src dir>`, `unpack <in.fl> <cache dir> <target dir>` and
//! `ls <in.fl>` through rfs's own library (docs/flist.md says how it was made). Without it
//! these tests skip and say so: the original needs git dependencies CI cannot fetch.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use zos_flist::mount::MountOptions;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::{BlockCache, DirStore, Flist};

fn rfs() -> Option<PathBuf> {
    match std::env::var_os("ZOS_RFS_CHECK") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("SKIP rfs interop: ZOS_RFS_CHECK is not set (no rfs build at hand)");
            None
        }
    }
}

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/hostname"), "zos\n").unwrap();
    std::fs::write(root.join("etc/empty"), "").unwrap();
    std::fs::write(root.join("etc/conf.d/owned"), "x").unwrap();
    std::os::unix::fs::chown(root.join("etc/conf.d/owned"), Some(1234), Some(5678)).unwrap();
    write_noise(&root.join("big"), (3 << 20) + 12345, 9);
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rfs_flist_mounts_here() {
    let Some(rfs) = rfs() else { return };
    if !can_mount("rfs_flist_mounts_here") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    let store = t.path().join("store");
    let fl = t.path().join("rfs.fl");
    run(Command::new(&rfs)
        .arg("pack")
        .arg(&fl)
        .arg(&store)
        .arg(&src));
    let flist = Flist::open(&fl).unwrap();
    assert_eq!(flist.format_version(), None, "rfs writes no zos format tag");
    let owned = flist
        .lookup(
            flist
                .lookup(flist.lookup(1, b"etc").unwrap().ino, b"conf.d")
                .unwrap()
                .ino,
            b"owned",
        )
        .unwrap();
    assert_eq!(
        (owned.attrs.uid, owned.attrs.gid),
        (1234, 5678),
        "rfs writes uid and gid apart"
    );
    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let routed = zos_flist::serve::stores_for(&flist, &[]).unwrap();
    let _m = zos_flist::mount(&fl, &mnt, routed, cache, &MountOptions::default()).unwrap();
    let (a, _) = survey(&src);
    let (b, _) = survey(&mnt);
    assert_eq!(a, b);

    // the same content packed here gives the same blocks (same ids and keys)
    let ours = t.path().join("ours.fl");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(pack(
            &Source::Dir(src.clone()),
            &ours,
            Arc::new(DirStore::new(t.path().join("store2"))),
            &PackOptions::default(),
            &|_: &Progress| {},
        ))
        .unwrap();
    let ours = Flist::open(&ours).unwrap();
    for name in [&b"big"[..], b"bin"] {
        let (x, y) = (
            flist.lookup(1, name).unwrap(),
            ours.lookup(1, name).unwrap(),
        );
        assert_eq!(x.blocks, y.blocks);
    }
    let bb = |f: &Flist| {
        f.lookup(f.lookup(1, b"bin").unwrap().ino, b"busybox")
            .unwrap()
            .blocks
            .clone()
    };
    assert_eq!(bb(&flist), bb(&ours));
}

#[test]
fn our_flist_reads_in_rfs() {
    let Some(rfs) = rfs() else { return };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP our_flist_reads_in_rfs: needs root to chown");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    tree(&src);
    // rfs 2.0.x reads only the flat store layout
    let store = DirStore::flat(t.path().join("store"));
    let fl = t.path().join("zos.fl");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(pack(
            &Source::Dir(src.clone()),
            &fl,
            Arc::new(store),
            &PackOptions::default(),
            &|_: &Progress| {},
        ))
        .unwrap();
    let ls = Command::new(&rfs).arg("ls").arg(&fl).output().unwrap();
    assert!(ls.status.success());
    let ls = String::from_utf8(ls.stdout).unwrap();
    assert!(ls.contains("/etc/conf.d/owned ino="), "{ls}");
    assert!(
        ls.contains("uid=1234 gid=1234"),
        "rfs reads gid from the uid column: {ls}"
    );
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run(Command::new(&rfs)
        .arg("unpack")
        .arg(&fl)
        .arg(t.path().join("rfs-cache"))
        .arg(&out));
    let (a, _) = survey(&src);
    let (b, _) = survey(&out);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (p, sa) in &a {
        let sb = &b[p];
        assert_eq!(sa.hash, sb.hash, "content of {p}");
        assert_eq!(sa.target, sb.target, "link of {p}");
        assert_eq!(sa.mode & 0o170777, sb.mode & 0o170777, "mode of {p}");
        assert_eq!(sa.uid, sb.uid, "owner of {p}");
    }
    let _ = std::fs::metadata(&out).unwrap().mode();
}
