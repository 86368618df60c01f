//! Pack a busybox root file system, mount it, and compare everything with the source.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use zos_flist::mount::MountOptions;
use zos_flist::pack::{PackOptions, Phase, Progress, Source, pack};
use zos_flist::{BlockCache, BlockStore, DirStore, Flist, Kind};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pack_to(src: Source, out: &Path, store: Arc<dyn BlockStore>) -> (Progress, Vec<Progress>) {
    let seen = Mutex::new(Vec::new());
    let opts = PackOptions {
        tags: vec![("description".into(), "busybox test root".into())],
        ..PackOptions::default()
    };
    let done = rt()
        .block_on(pack(&src, out, store, &opts, &|p: &Progress| {
            seen.lock().unwrap().push(p.clone())
        }))
        .unwrap();
    (done, seen.into_inner().unwrap())
}

#[test]
fn busybox_root_round_trip_through_the_mount() {
    if !can_mount("busybox_root_round_trip_through_the_mount") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("rootfs");
    std::fs::create_dir(&src).unwrap();
    busybox_tree(&src, 300 << 20);
    let store: Arc<dyn BlockStore> = Arc::new(DirStore::new(t.path().join("store")));
    let fl = t.path().join("busybox.fl");
    let t0 = std::time::Instant::now();
    let (done, progress) = pack_to(Source::Dir(src.clone()), &fl, store.clone());
    eprintln!("pack: {:?}", t0.elapsed());
    assert_eq!(done.phase, Phase::Done);
    assert_eq!(done.bytes_done, done.bytes_total, "{done:?}");
    assert!(done.blocks_uploaded >= 600, "{done:?}");
    assert!(progress.len() > 3, "progress is reported as the pack goes");
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].bytes_done <= w[1].bytes_done)
    );

    // the metadata reads back and agrees with the source
    let flist = Flist::open(&fl).unwrap();
    let busybox = flist
        .lookup(flist.lookup(1, b"bin").unwrap().ino, b"busybox")
        .unwrap();
    assert_eq!(busybox.attrs.perm(), 0o4755);
    assert_eq!(busybox.nlink, 2);
    let info = zos_flist::inspect(&fl).unwrap();
    assert_eq!(info.totals.hardlinks, 1);
    assert_eq!(info.totals.devices, 2);
    assert!(info.totals.symlinks > 100);
    assert_eq!(info.tags["description"], "busybox test root");
    assert!(
        info.entries
            .iter()
            .any(|e| e.path == "/dev/null" && e.device == Some((1, 3)))
    );
    assert!(
        info.entries
            .iter()
            .any(|e| e.path == "/usr/bin/busybox-hard"
                && e.hardlink_to.as_deref() == Some("/bin/busybox"))
    );
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["totals"]["hardlinks"], 1);

    // mount through the flist's own routes and compare every path
    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let routed = zos_flist::serve::stores_for(&flist, &[]).unwrap();
    let m = zos_flist::mount(&fl, &mnt, routed, cache.clone(), &MountOptions::default()).unwrap();
    let t0 = std::time::Instant::now();
    assert_same_tree(&src, &mnt);
    eprintln!("compare through the mount: {:?}", t0.elapsed());
    // hard links share an inode in the mount
    let a = std::fs::metadata(mnt.join("bin/busybox")).unwrap();
    let b = std::fs::metadata(mnt.join("usr/bin/busybox-hard")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    // the mount is read-only and a symlink loop is an error, not a hang
    assert!(std::fs::write(mnt.join("etc/new"), "x").is_err());
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("etc/passwd"))
            .is_err()
    );
    let e = std::fs::read(mnt.join("data/loop-a")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    // the busybox binary from the mount runs
    let out = std::process::Command::new(mnt.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(out.success());
    drop(m);
    assert!(
        !zos_flist::mount::is_mount_point(&mnt),
        "dropping the handle unmounts"
    );
    let report = cache.check().unwrap();
    assert!(report.bad.is_empty());
    assert!(report.usage.blocks >= 600);
}

#[test]
fn tarball_round_trip_and_writable_overlay() {
    if !can_mount("tarball_round_trip_and_writable_overlay") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("rootfs");
    std::fs::create_dir(&src).unwrap();
    busybox_tree(&src, 3 << 20);
    std::fs::remove_file(src.join("dev/sock")).unwrap(); // tar does not archive sockets
    for (name, z) in [("root.tar", ""), ("root.tar.gz", "z")] {
        let tarball = t.path().join(name);
        let st = std::process::Command::new("tar")
            .arg(format!("-c{z}f"))
            .arg(&tarball)
            .args(["--numeric-owner", "-C"])
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let store: Arc<dyn BlockStore> = Arc::new(DirStore::new(t.path().join("store")));
        let fl = t.path().join(format!("{name}.fl"));
        let (done, _) = pack_to(Source::detect(&tarball), &fl, store.clone());
        assert_eq!(done.phase, Phase::Done);
        let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
        let mnt = t.path().join(format!("mnt-{z}"));
        std::fs::create_dir(&mnt).unwrap();
        let m = zos_flist::mount(
            &fl,
            &mnt,
            store.clone(),
            cache.clone(),
            &MountOptions::default(),
        )
        .unwrap();
        assert_same_tree(&src, &mnt);
        drop(m);

        // writable: changes land in the upper layer, the flist stays as it was
        let rw = t.path().join(format!("rw-{z}"));
        let merged = t.path().join(format!("merged-{z}"));
        std::fs::create_dir(&merged).unwrap();
        let w = zos_flist::mount_writable(
            &fl,
            &merged,
            &rw,
            store.clone(),
            cache.clone(),
            &MountOptions::default(),
        )
        .unwrap();
        std::fs::write(merged.join("etc/hostname"), "changed\n").unwrap();
        std::fs::write(merged.join("etc/new-file"), "new\n").unwrap();
        std::fs::remove_file(merged.join("data/small")).unwrap();
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/hostname")).unwrap(),
            "changed\n"
        );
        assert_eq!(
            std::fs::read_to_string(rw.join("upper/etc/new-file")).unwrap(),
            "new\n"
        );
        assert_eq!(
            std::fs::read_to_string(rw.join("lower/etc/hostname")).unwrap(),
            "zos\n"
        );
        assert!(merged.join("bin/busybox").is_file());
        drop(w);
        assert!(!zos_flist::mount::is_mount_point(&merged));
        assert!(!zos_flist::mount::is_mount_point(&rw.join("lower")));
        let w =
            zos_flist::mount_writable(&fl, &merged, &rw, store, cache, &MountOptions::default())
                .unwrap();
        assert_eq!(
            std::fs::read_to_string(merged.join("etc/hostname")).unwrap(),
            "changed\n",
            "changes survive a remount"
        );
        assert!(!merged.join("data/small").exists());
        drop(w);
    }
}

#[test]
fn pack_refuses_bad_sources_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlockStore> = Arc::new(DirStore::new(t.path().join("store")));
    let out = t.path().join("x.fl");
    // a tarball with an entry that climbs out of the root
    let evil = t.path().join("evil.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&evil).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // bypass the builder's path check to write a hostile name
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.finish().unwrap();
    }
    let err = rt()
        .block_on(pack(
            &Source::Tar(evil),
            &out,
            store.clone(),
            &PackOptions::default(),
            &|_: &Progress| {},
        ))
        .unwrap_err();
    assert!(err.to_string().contains("leaves the archive root"), "{err}");
    assert!(!out.exists());
    // a missing source
    let err = rt()
        .block_on(pack(
            &Source::Dir(t.path().join("nope")),
            &out,
            store,
            &PackOptions::default(),
            &|_: &Progress| {},
        ))
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(!out.exists());
    let _ = Kind::Dir;
}
