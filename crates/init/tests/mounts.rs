//! The runtime mounts of zos-init in a private mount namespace: two flists mounted by real
//! `zos-flist-mount` processes (FUSE, every block checked), stacked read-only with the
//! initramfs's own tree by a real overlay; a tampered block is found before anything runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::{BlockStore, DirStore, Flist};
use zos_init::mounts::{self, FlistMount, FlistMounter};

fn pack_dir(src: &Path, out: &Path, store: Arc<dyn BlockStore>) {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(pack(
            &Source::Dir(src.to_owned()),
            out,
            store,
            &PackOptions::default(),
            &|_: &Progress| {},
        ))
        .unwrap();
}

fn tree(root: &Path, files: &[(&str, &[u8])]) {
    for (p, data) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
}

/// Stops the mount processes (SIGTERM: they unmount) when the test ends, whatever happened.
struct Mounters(Vec<i32>);

impl Drop for Mounters {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        for pid in &self.0 {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(*pid), None);
        }
    }
}

#[test]
fn runtime_flists_are_mounted_verified_and_stacked_read_only() {
    if !zos_testkit::require_root("runtime_flists_are_mounted_verified_and_stacked_read_only") {
        return;
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (modprobe fuse)"
    );
    let binary = zos_testkit::workspace_binary("zos-flist-mount")
        .expect("zos-flist-mount is not built: cargo build --workspace --bins");
    let t = tempfile::tempdir().unwrap();
    let store_dir = t.path().join("store");
    let store = DirStore::new(&store_dir);
    let big: Vec<u8> = (0..(3u32 << 19)).map(|i| (i * 7 + i / 512) as u8).collect();
    tree(
        &t.path().join("base"),
        &[
            ("usr/bin/tool", b"base tool"),
            ("usr/share/zos/both", b"from zos-base"),
            ("usr/share/base-only", b"base"),
        ],
    );
    tree(
        &t.path().join("zos"),
        &[("usr/bin/zosd", &big), ("usr/share/zos/both", b"from zos")],
    );
    tree(
        &t.path().join("initramfs-usr"),
        &[("lib/modules/6.1/modules.dep", b"fuse.ko:\n")],
    );
    let (base_fl, zos_fl) = (t.path().join("zos-base.fl"), t.path().join("zos.fl"));
    pack_dir(&t.path().join("base"), &base_fl, Arc::new(store.clone()));
    pack_dir(&t.path().join("zos"), &zos_fl, Arc::new(store.clone()));

    let t_path = t.path().to_owned();
    // A thread of its own in a private mount namespace: nothing it mounts is seen outside, and
    // it all goes with the namespace.
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNS).unwrap();
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        run(
            &t_path, &binary, &store_dir, &base_fl, &zos_fl, &store, &big,
        );
    })
    .join()
    .expect("the mount namespace thread failed");
}

fn run(
    t: &Path,
    binary: &Path,
    store_dir: &Path,
    base_fl: &Path,
    zos_fl: &Path,
    store: &DirStore,
    big: &[u8],
) {
    let mounter = FlistMounter {
        binary: binary.to_owned(),
        cache: t.join("cache"),
        cache_bytes: 1 << 30,
        stores: vec![format!("dir://{}", store_dir.display())],
        ready_timeout: Duration::from_secs(60),
    };
    let mut guard = Mounters(Vec::new());
    let mut mount = |name: &str, fl: &Path, m: &FlistMounter| -> FlistMount {
        let got = mounts::mount_flist(m, name, fl, &t.join("mnt").join(name)).unwrap();
        guard.0.push(got.pid);
        got
    };
    let base = mount("zos-base", base_fl, &mounter);
    let zos = mount("zos", zos_fl, &mounter);
    let table = std::fs::read_to_string("/proc/thread-self/mounts").unwrap();
    assert!(
        table.contains(&format!(
            "zos-zos-base {} fuse ro",
            base.mountpoint.display()
        )),
        "{table}"
    );

    // zos over zos-base over the initramfs's own tree, read-only.
    let usr = t.join("usr");
    std::fs::create_dir_all(&usr).unwrap();
    let layers: Vec<PathBuf> = vec![
        zos.mountpoint.join("usr"),
        base.mountpoint.join("usr"),
        t.join("initramfs-usr"),
    ];
    mounts::overlay_ro(&layers, &usr).unwrap();
    assert_eq!(
        std::fs::read_to_string(usr.join("share/zos/both")).unwrap(),
        "from zos"
    );
    assert_eq!(
        std::fs::read_to_string(usr.join("share/base-only")).unwrap(),
        "base"
    );
    assert_eq!(
        std::fs::read_to_string(usr.join("bin/tool")).unwrap(),
        "base tool"
    );
    assert!(usr.join("lib/modules/6.1/modules.dep").is_file());
    assert_eq!(
        mounts::read_through(&usr.join("bin/zosd")).unwrap(),
        big.len() as u64
    );
    assert_eq!(std::fs::read(usr.join("bin/zosd")).unwrap(), big);
    let e = std::fs::write(usr.join("bin/evil"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = std::fs::write(usr.join("bin/tool"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    nix::mount::umount2(&usr, nix::mount::MntFlags::empty()).unwrap();

    // A single layer is a read-only bind mount.
    mounts::overlay_ro(&[base.mountpoint.join("usr")], &usr).unwrap();
    assert_eq!(
        std::fs::read_to_string(usr.join("bin/tool")).unwrap(),
        "base tool"
    );
    assert_eq!(
        std::fs::write(usr.join("x"), "x")
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EROFS)
    );
    nix::mount::umount2(&usr, nix::mount::MntFlags::empty()).unwrap();
    // Layer names that would change the overlay options are refused.
    let e = mounts::overlay_ro(&[PathBuf::from("/a:b"), PathBuf::from("/c")], &usr).unwrap_err();
    assert!(e.contains("cannot be named"), "{e}");

    // A block of zosd tampered with in the store: read through a fresh cache, the check before
    // start fails with EIO instead of handing out wrong bytes.
    let f = Flist::open(zos_fl).unwrap();
    let mut ino = 1;
    for p in ["usr", "bin", "zosd"] {
        ino = f.lookup(ino, p.as_bytes()).unwrap().ino;
    }
    let bad = f.get(ino).unwrap().blocks[1];
    let p = store.path_of(&bad.id);
    let mut data = std::fs::read(&p).unwrap();
    data[100] ^= 0x55;
    std::fs::write(&p, &data).unwrap();
    let fresh = FlistMounter {
        cache: t.join("cache2"),
        ..mounter.clone()
    };
    let tampered = mount("zos-tampered", zos_fl, &fresh);
    let e = mounts::read_through(&tampered.mountpoint.join("usr/bin/zosd")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(guard);
    let table = std::fs::read_to_string("/proc/thread-self/mounts").unwrap();
    assert!(!table.contains("zos-zos"), "{table}");
}

#[test]
fn a_mounter_that_never_gets_ready_is_stopped() {
    let t = tempfile::tempdir().unwrap();
    let m = FlistMounter {
        binary: PathBuf::from("/bin/false"),
        cache: t.path().join("cache"),
        cache_bytes: 1,
        stores: vec![],
        ready_timeout: Duration::from_secs(10),
    };
    let e =
        mounts::mount_flist(&m, "x", &t.path().join("x.fl"), &t.path().join("mnt")).unwrap_err();
    assert!(e.contains("ended before it was ready"), "{e}");
    let m = FlistMounter {
        binary: PathBuf::from("/nonexistent/zos-flist-mount"),
        ..m
    };
    let e =
        mounts::mount_flist(&m, "x", &t.path().join("x.fl"), &t.path().join("mnt")).unwrap_err();
    assert!(e.contains("cannot start"), "{e}");
}
