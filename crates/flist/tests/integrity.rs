//! Tampered blocks, a mount process killed while filling the cache, and dedup.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use zos_flist::mount::MountOptions;
use zos_flist::pack::{PackOptions, Progress, Source, pack};
use zos_flist::{BlockCache, BlockStore, DirStore, Flist};

fn pack_dir(src: &Path, out: &Path, store: Arc<dyn BlockStore>) -> Progress {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(pack(
            &Source::Dir(src.to_owned()),
            out,
            store,
            &PackOptions::default(),
            &|_: &Progress| {},
        ))
        .unwrap()
}

fn block_of(fl: &Path, path: &[&str], index: usize) -> zos_flist::BlockRef {
    let f = Flist::open(fl).unwrap();
    let mut ino = 1;
    for p in path {
        ino = f.lookup(ino, p.as_bytes()).unwrap().ino;
    }
    f.get(ino).unwrap().blocks[index]
}

#[test]
fn tampered_block_is_an_io_error_and_never_cached() {
    if !can_mount("tampered_block_is_an_io_error_and_never_cached") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_noise(&src.join("victim"), 3 << 19, 1);
    write_noise(&src.join("other"), 3 << 19, 2);
    std::fs::write(src.join("small"), "fine").unwrap();
    let ds = DirStore::new(t.path().join("store"));
    let fl = t.path().join("x.fl");
    pack_dir(&src, &fl, Arc::new(ds.clone()));

    // corrupt the middle block of "victim" in the store
    let bad = block_of(&fl, &["victim"], 1);
    let p = ds.path_of(&bad.id);
    let mut data = std::fs::read(&p).unwrap();
    data[100] ^= 0x55;
    std::fs::write(&p, &data).unwrap();

    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let opts = MountOptions {
        readahead_blocks: 0,
        ..MountOptions::default()
    };
    let m = zos_flist::mount(&fl, &mnt, Arc::new(ds.clone()), cache.clone(), &opts).unwrap();
    let err = std::fs::read(mnt.join("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // the blocks before the bad one still read; the bad one fails again (not cached)
    let mut f = std::fs::File::open(mnt.join("victim")).unwrap();
    let mut first = vec![0u8; 1 << 19];
    f.read_exact(&mut first).unwrap();
    assert_eq!(first, std::fs::read(src.join("victim")).unwrap()[..1 << 19]);
    let mut next = vec![0u8; 4096];
    assert_eq!(
        f.read(&mut next).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    // other files read fine
    assert_eq!(
        sha256_file(&mnt.join("other")).unwrap(),
        sha256_file(&src.join("other")).unwrap()
    );
    assert_eq!(std::fs::read_to_string(mnt.join("small")).unwrap(), "fine");
    assert!(!cache.contains(&bad.id), "the bad block is not cached");
    let report = cache.check().unwrap();
    assert!(report.bad.is_empty(), "{report:?}");
    assert_eq!(report.usage.blocks, 5, "every good block read is cached");

    // a valid block of another file served under the victim's id is refused too
    let good = block_of(&fl, &["other"], 0);
    std::fs::copy(ds.path_of(&good.id), &p).unwrap();
    drop(m);
    let m = zos_flist::mount(&fl, &mnt, Arc::new(ds), cache.clone(), &opts).unwrap();
    let err = std::fs::read(mnt.join("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(!cache.contains(&bad.id));
    drop(m);
}

fn spawn_mount(fl: &Path, cache: &Path, store: &Path, mnt: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_zos-flist-mount"))
        .arg("--flist")
        .arg(fl)
        .arg("--cache")
        .arg(cache)
        .arg("--cache-size")
        .arg("2G")
        .arg("--store")
        .arg(format!("dir://{}", store.display()))
        .arg(mnt)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = Child {
        child,
        mountpoint: mnt.to_owned(),
    };
    // the process says "ready <mountpoint>" once mounted
    let mut line = String::new();
    let mut out = c.child.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    assert!(line.starts_with("ready "), "mount process said {line:?}");
    assert!(wait_mounted(mnt, 5));
    c
}

#[test]
fn killed_mount_process_leaves_a_usable_cache() {
    if !can_mount("killed_mount_process_leaves_a_usable_cache") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    write_noise(&src.join("big"), 160 << 20, 7);
    write_noise(&src.join("medium"), 9 << 20, 8);
    std::fs::write(src.join("note"), "hello").unwrap();
    let store = t.path().join("store");
    let fl = t.path().join("x.fl");
    pack_dir(&src, &fl, Arc::new(DirStore::new(&store)));
    let cache_dir = t.path().join("cache");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();

    let mut first = spawn_mount(&fl, &cache_dir, &store, &mnt);
    // read part of the big file so read-ahead is filling the cache, then kill -9
    let mut f = std::fs::File::open(mnt.join("big")).unwrap();
    let mut buf = vec![0u8; 24 << 20];
    f.read_exact(&mut buf).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    first.child.wait().unwrap();
    drop(f);
    // the dead mount is still there: the next process must cope with it
    assert!(std::fs::metadata(mnt.join("note")).is_err());

    let mut second = spawn_mount(&fl, &cache_dir, &store, &mnt);
    assert_same_tree(&src, &mnt);
    let cache = BlockCache::open(&cache_dir, 2 << 30).unwrap();
    let report = cache.check().unwrap();
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert_eq!(
        report.temp_files, 0,
        "leftovers of the killed process were removed"
    );
    assert!(report.usage.blocks >= 320);

    // SIGTERM unmounts cleanly
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = second.child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(!zos_flist::mount::is_mount_point(&mnt));
}

#[test]
fn flists_that_share_files_share_blocks_in_store_and_cache() {
    if !can_mount("flists_that_share_files_share_blocks_in_store_and_cache") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir_all(a.join("lib")).unwrap();
    std::fs::create_dir_all(b.join("opt/copy")).unwrap();
    write_noise(&a.join("lib/shared.so"), 5 << 20, 42);
    write_noise(&a.join("only-a"), 1 << 20, 1);
    std::fs::copy(a.join("lib/shared.so"), b.join("opt/copy/shared.so")).unwrap();
    write_noise(&b.join("only-b"), 2 << 20, 2);
    let store_dir = t.path().join("store");
    let store: Arc<dyn BlockStore> = Arc::new(DirStore::new(&store_dir));
    let count = |d: &Path| -> usize {
        std::fs::read_dir(d)
            .unwrap()
            .map(|s| std::fs::read_dir(s.unwrap().path()).unwrap().count())
            .sum()
    };
    let pa = pack_dir(&a, &t.path().join("a.fl"), store.clone());
    assert_eq!((pa.blocks, pa.blocks_uploaded), (12, 12));
    assert_eq!(count(&store_dir), 12);
    let pb = pack_dir(&b, &t.path().join("b.fl"), store.clone());
    assert_eq!(pb.blocks, 14);
    assert_eq!(
        pb.blocks_present, 10,
        "the shared file's blocks were already there"
    );
    assert_eq!(pb.blocks_uploaded, 4);
    assert_eq!(count(&store_dir), 16);

    let cache = BlockCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let opts = MountOptions {
        readahead_blocks: 0,
        ..MountOptions::default()
    };
    let mounts: Vec<(PathBuf, zos_flist::MountHandle)> = ["a", "b"]
        .iter()
        .map(|n| {
            let m = t.path().join(format!("mnt-{n}"));
            std::fs::create_dir(&m).unwrap();
            let h = zos_flist::mount(
                &t.path().join(format!("{n}.fl")),
                &m,
                store.clone(),
                cache.clone(),
                &opts,
            )
            .unwrap();
            (m, h)
        })
        .collect();
    let want = sha256_file(&a.join("lib/shared.so")).unwrap();
    assert_eq!(
        sha256_file(&mounts[0].0.join("lib/shared.so")).unwrap(),
        want
    );
    assert_eq!(cache.usage().unwrap().blocks, 10);
    assert_eq!(
        sha256_file(&mounts[1].0.join("opt/copy/shared.so")).unwrap(),
        want
    );
    assert_eq!(
        cache.usage().unwrap().blocks,
        10,
        "the second flist reads the same cached blocks"
    );
    assert_same_tree(&a, &mounts[0].0);
    assert_same_tree(&b, &mounts[1].0);
    assert_eq!(cache.usage().unwrap().blocks, 16);
}
