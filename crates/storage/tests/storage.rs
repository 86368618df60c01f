//! Storage on real loop devices and real btrfs: pools, cache, volumes, virtual disks, zdb.
//!
//! Needs root (skips loudly without). Tests share the kernel's loop devices, so they take a
//! lock here and run in the `serial-root` nextest group. Every disk, mount and file a test
//! makes belongs to a `TestDisks`, which removes them when the test ends, also on failure.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use zos_storage::{
    BtrfsStorage, CacheBacking, CachePolicy, DiskKind, DiskSpec, DiskState, POOL_META_FILE,
    Storage, StorageConfig, StorageError, StorageStart, owns_label,
};
use zos_testkit::disk::{self, TestDisks};
use zos_types::capacity::{GIB, MIB};

const PREFIX: &str = "t-";

/// One storage test at a time in this process (`cargo test` runs tests on threads); nextest
/// runs each in its own process and serializes them with the `serial-root` group.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn spec(d: &zos_testkit::disk::LoopDisk, kind: Option<DiskKind>) -> DiskSpec {
    DiskSpec {
        path: d.device().to_path_buf(),
        kind,
    }
}

/// A test host's storage configuration: small cache and tmpfs so 1 GiB pools are enough.
fn config(disks: &TestDisks, specs: &[DiskSpec], prefix: &str) -> StorageConfig {
    StorageConfig {
        cache: CachePolicy {
            initial: 64 * MIB,
            step: 64 * MIB,
            min: 64 * MIB,
        },
        tmpfs_size: 16 * MIB,
        ..StorageConfig::only(specs, disks.mount_root(), prefix)
    }
}

async fn start(cfg: StorageConfig) -> (BtrfsStorage, StorageStart) {
    BtrfsStorage::start(cfg).await.expect("storage starts")
}

fn fs_type(path: &Path) -> nix::sys::statfs::FsType {
    nix::sys::statfs::statfs(path).unwrap().filesystem_type()
}

fn pool_of(start: &StorageStart, device: &Path) -> (String, DiskKind, bool) {
    let r = start
        .disks
        .iter()
        .find(|r| r.device == device)
        .unwrap_or_else(|| panic!("no report for {}: {:?}", device.display(), start.disks));
    match &r.state {
        DiskState::Pool {
            pool,
            kind,
            created,
        } => (pool.clone(), *kind, *created),
        other => panic!("{} is not a pool: {other:?}", device.display()),
    }
}

fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test]
async fn pools_are_made_and_found_again_after_restart_and_reboot() {
    if !disk::can_use_loop_devices("pools_are_made_and_found_again") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("pools").unwrap();
    disks.add("ssd1", GIB).unwrap();
    disks.add("ssd2", GIB).unwrap();
    disks.add("hdd1", 2 * GIB).unwrap();
    let specs = |d: &TestDisks, ssd2: DiskKind| {
        vec![
            spec(d.disk("ssd1"), Some(DiskKind::Ssd)),
            spec(d.disk("ssd2"), Some(ssd2)),
            spec(d.disk("hdd1"), Some(DiskKind::Hdd)),
        ]
    };

    // First boot: three empty disks become three pools.
    let (storage, first) = start(config(&disks, &specs(&disks, DiskKind::Ssd), PREFIX)).await;
    assert_eq!(first.limited, None);
    let mut labels = Vec::new();
    for (name, kind) in [
        ("ssd1", DiskKind::Ssd),
        ("ssd2", DiskKind::Ssd),
        ("hdd1", DiskKind::Hdd),
    ] {
        let dev = disks.disk(name).device();
        let (label, k, created) = pool_of(&first, dev);
        assert!(owns_label(PREFIX, &label), "{label}");
        assert_eq!((k, created), (kind, true), "{name}");
        let seen = disk::blkid(dev).unwrap().unwrap();
        assert!(
            seen.contains("TYPE=btrfs") && seen.contains(&format!("LABEL={label}")),
            "{seen}"
        );
        labels.push(label);
    }
    // SRU and HRU are the btrfs device sizes; the cache is the system's reservation.
    assert_eq!(first.capacity.sru, 2 * GIB);
    assert_eq!(first.capacity.hru, 2 * GIB);
    assert_eq!(first.capacity.reserved_sru, 64 * MIB);
    assert_eq!(first.capacity.used_sru, 64 * MIB);
    assert_eq!(first.capacity.used_hru, 0);
    // The state lives in a btrfs subvolume on an SSD pool, with the initial quota.
    assert_eq!(
        fs_type(&first.state_dir),
        nix::sys::statfs::BTRFS_SUPER_MAGIC
    );
    let CacheBacking::Pool {
        pool: cache_pool,
        quota,
        ..
    } = &first.cache.backing
    else {
        panic!("cache not on a pool: {:?}", first.cache);
    };
    assert_eq!(*quota, 64 * MIB);
    assert!(labels[..2].contains(cache_pool));
    write_file(&first.state_dir.join("seed"), b"node identity");

    let vol = storage.volume_create("data", 128 * MIB).await.unwrap();
    write_file(&vol.path.join("file"), b"volume data");
    let vd = storage.disk_create("vd", 32 * MIB).await.unwrap();
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&vd.path)
            .unwrap();
        f.seek(SeekFrom::Start(MIB)).unwrap();
        f.write_all(b"disk data").unwrap();
        f.sync_all().unwrap();
    }
    let pools = storage.pools().await.unwrap();
    assert_eq!(pools.len(), 3);
    let used: u64 = pools.iter().map(|p| p.used).sum();
    assert_eq!(used, 64 * MIB + 128 * MIB + 32 * MIB);
    drop(storage);

    // zosd restarts: everything is still mounted and is found again.
    let (storage, second) = start(config(&disks, &specs(&disks, DiskKind::Ssd), PREFIX)).await;
    for (i, name) in ["ssd1", "ssd2", "hdd1"].iter().enumerate() {
        let (label, _, created) = pool_of(&second, disks.disk(name).device());
        assert_eq!((label.as_str(), created), (labels[i].as_str(), false));
    }
    assert_eq!(second.state_dir, first.state_dir);
    assert_eq!(
        (
            second.capacity.sru,
            second.capacity.hru,
            second.capacity.reserved_sru
        ),
        (2 * GIB, 2 * GIB, 64 * MIB)
    );
    assert_eq!(second.capacity.used_sru, 64 * MIB + 128 * MIB + 32 * MIB);
    let again = storage.volume_get("data").await.unwrap().unwrap();
    assert_eq!(
        (again.size, again.pool.as_str()),
        (128 * MIB, vol.pool.as_str())
    );
    drop(storage);

    // Reboot: nothing mounted, loop devices attached anew. The override for ssd2 now says
    // HDD, but a pool keeps the kind it was made with.
    disks.reboot().unwrap();
    assert!(disk::mounts_under(disks.dir()).unwrap().is_empty());
    let (storage, third) = start(config(&disks, &specs(&disks, DiskKind::Hdd), PREFIX)).await;
    for (i, name) in ["ssd1", "ssd2", "hdd1"].iter().enumerate() {
        let (label, kind, created) = pool_of(&third, disks.disk(name).device());
        assert_eq!(label, labels[i]);
        assert!(!created);
        assert_eq!(
            kind,
            if *name == "hdd1" {
                DiskKind::Hdd
            } else {
                DiskKind::Ssd
            }
        );
    }
    assert_eq!(third.capacity, second.capacity);
    assert_eq!(third.limited, None);
    assert_eq!(
        std::fs::read(third.state_dir.join("seed")).unwrap(),
        b"node identity"
    );
    let vol = storage.volume_get("data").await.unwrap().unwrap();
    assert_eq!(vol.size, 128 * MIB);
    assert_eq!(
        std::fs::read(vol.path.join("file")).unwrap(),
        b"volume data"
    );
    let vd = storage.disk_get("vd").await.unwrap().unwrap();
    assert_eq!(vd.size, 32 * MIB);
    let bytes = std::fs::read(&vd.path).unwrap();
    assert_eq!(&bytes[MIB as usize..MIB as usize + 9], b"disk data");
    // The kind is written in the pool itself.
    let meta =
        std::fs::read_to_string(disks.mount_root().join(&labels[1]).join(POOL_META_FILE)).unwrap();
    assert!(
        meta.contains("\"ssd\"") && meta.contains("\"version\": 1"),
        "{meta}"
    );
}

#[tokio::test]
async fn volumes_enforce_their_limit_grow_and_never_shrink() {
    if !disk::can_use_loop_devices("volumes_enforce_their_limit") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("volumes").unwrap();
    disks.add("ssd", GIB).unwrap();
    let (storage, _) = start(config(
        &disks,
        &[spec(disks.disk("ssd"), Some(DiskKind::Ssd))],
        PREFIX,
    ))
    .await;

    let vol = storage.volume_create("v", 32 * MIB).await.unwrap();
    // Writing past the limit fails with "disk quota exceeded".
    let path = vol.path.join("big");
    let chunk = vec![0x5au8; MIB as usize];
    let mut f = std::fs::File::create(&path).unwrap();
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => written += MIB,
            Err(e) => break e,
        }
        assert!(
            written <= 64 * MIB,
            "wrote {written} bytes into a 32 MiB volume"
        );
    };
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert!((16 * MIB..=32 * MIB).contains(&written), "wrote {written}");
    drop(f);

    // Grow: more room, and writes go through again.
    let grown = storage.volume_grow("v", 96 * MIB).await.unwrap();
    assert_eq!(grown.size, 96 * MIB);
    write_file(&vol.path.join("more"), &vec![1u8; 16 * MIB as usize]);

    // Shrink: refused, and the volume is as it was.
    let err = storage.volume_grow("v", 32 * MIB).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Shrink { current, requested, .. } if current == 96 * MIB && requested == 32 * MIB),
        "{err}"
    );
    let now = storage.volume_get("v").await.unwrap().unwrap();
    assert_eq!(now.size, 96 * MIB);
    assert_eq!(
        std::fs::metadata(vol.path.join("more")).unwrap().len(),
        16 * MIB
    );

    // More than the pool holds: refused with a clear error, nothing made or changed.
    let err = storage.volume_create("huge", 2 * GIB).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NoSpace {
                kind: DiskKind::Ssd,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no ssd pool has"), "{err}");
    let err = storage.volume_grow("v", 2 * GIB).await.unwrap_err();
    assert!(matches!(err, StorageError::NoSpace { .. }), "{err}");
    assert_eq!(
        storage.volume_get("v").await.unwrap().unwrap().size,
        96 * MIB
    );
    let names: Vec<String> = storage
        .volume_list()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["v"]);
    // The space that is left can be reserved to the byte, and not one byte more.
    let pool = &storage.pools().await.unwrap()[0];
    let free = pool.free();
    assert_eq!(pool.used, 64 * MIB + 96 * MIB);
    let err = storage.volume_create("rest", free + 1).await.unwrap_err();
    assert!(
        matches!(err, StorageError::NoSpace { most_free, .. } if most_free == free),
        "{err}"
    );
    storage.volume_create("rest", free).await.unwrap();
    assert_eq!(storage.pools().await.unwrap()[0].free(), 0);

    // Bad names and sizes change nothing.
    for bad in ["../escape", "a/b", ".", "", "-x"] {
        assert!(matches!(
            storage.volume_create(bad, MIB).await,
            Err(StorageError::InvalidName(_))
        ));
    }
    assert!(matches!(
        storage.volume_create("tiny", 1).await,
        Err(StorageError::InvalidSize { .. })
    ));
    assert!(matches!(
        storage.volume_create("v", MIB).await,
        Err(StorageError::Exists { .. })
    ));
    assert!(!disks.mount_root().join("escape").exists());

    // Delete: gone, its reservation freed, and deleting again is fine.
    storage.volume_delete("rest").await.unwrap();
    storage.volume_delete("v").await.unwrap();
    storage.volume_delete("v").await.unwrap();
    assert_eq!(storage.volume_get("v").await.unwrap(), None);
    assert!(!vol.path.exists());
    assert_eq!(storage.pools().await.unwrap()[0].used, 64 * MIB);
}

#[tokio::test]
async fn virtual_disks_are_sparse_nocow_and_never_over_provisioned() {
    if !disk::can_use_loop_devices("virtual_disks_are_sparse") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("vdisks").unwrap();
    disks.add("small", GIB).unwrap();
    disks.add("big", 12 * GIB).unwrap();
    let (storage, _) = start(config(
        &disks,
        &[
            spec(disks.disk("small"), Some(DiskKind::Ssd)),
            spec(disks.disk("big"), Some(DiskKind::Ssd)),
        ],
        PREFIX,
    ))
    .await;
    let pools = storage.pools().await.unwrap();
    let small = pools.iter().find(|p| p.size == GIB).unwrap().name.clone();
    let big = pools
        .iter()
        .find(|p| p.size == 12 * GIB)
        .unwrap()
        .name
        .clone();

    // 10 GiB does not fit in the 1 GiB pool; it goes to the big one, and is sparse there.
    let vd = storage.disk_create("vm-root", 10 * GIB).await.unwrap();
    assert_eq!(vd.pool, big);
    assert_eq!(vd.size, 10 * GIB);
    assert_eq!(std::fs::metadata(&vd.path).unwrap().len(), 10 * GIB);
    assert!(disk::allocated_bytes(&vd.path).unwrap() < MIB, "{vd:?}");
    let attrs = std::process::Command::new("lsattr")
        .arg(&vd.path)
        .output()
        .unwrap();
    let attrs = String::from_utf8_lossy(&attrs.stdout);
    assert!(
        attrs.split_whitespace().next().unwrap().contains('C'),
        "no-CoW missing: {attrs}"
    );
    // The whole 12 GiB pool, with a 10 GiB disk on it, takes less than 1 GiB of the host.
    let host = disk::allocated_bytes(disks.disk("big").file()).unwrap();
    assert!(host < GIB, "the big pool's backing file takes {host} bytes");

    // Writing allocates what is written, no more.
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&vd.path)
            .unwrap();
        f.seek(SeekFrom::Start(5 * GIB)).unwrap();
        f.write_all(&vec![7u8; 4 * MIB as usize]).unwrap();
        f.sync_all().unwrap();
    }
    let after = storage.disk_get("vm-root").await.unwrap().unwrap();
    assert!(
        after.allocated >= 4 * MIB && after.allocated < 8 * MIB,
        "{after:?}"
    );
    assert_eq!(after.size, 10 * GIB);

    // A second 10 GiB disk fits nowhere: sizes are reserved, not over-provisioned.
    let err = storage.disk_create("vm2", 10 * GIB).await.unwrap_err();
    assert!(matches!(err, StorageError::NoSpace { .. }), "{err}");
    assert!(storage.disk_get("vm2").await.unwrap().is_none());
    // 1.5 GiB fits only on the big pool (about 1.9 GiB left there, 1 GiB on the small one).
    let d2 = storage.disk_create("d2", 1536 * MIB).await.unwrap();
    assert_eq!(d2.pool, big);

    // Grow works, shrink is refused and leaves the disk as it was.
    let grown = storage.disk_grow("d2", 1792 * MIB).await.unwrap();
    assert_eq!(grown.size, 1792 * MIB);
    assert_eq!(std::fs::metadata(&d2.path).unwrap().len(), 1792 * MIB);
    let err = storage.disk_grow("d2", 256 * MIB).await.unwrap_err();
    assert!(matches!(err, StorageError::Shrink { .. }), "{err}");
    assert_eq!(std::fs::metadata(&d2.path).unwrap().len(), 1792 * MIB);
    let err = storage.disk_grow("d2", 3 * GIB).await.unwrap_err();
    assert!(matches!(err, StorageError::NoSpace { .. }), "{err}");
    assert_eq!(
        storage.disk_get("d2").await.unwrap().unwrap().size,
        1792 * MIB
    );

    // Now the small pool has the most room, and gets the next disk.
    let d3 = storage.disk_create("d3", 512 * MIB).await.unwrap();
    assert_eq!(d3.pool, small);

    let listed: Vec<String> = storage
        .disk_list()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(listed.len(), 3);
    storage.disk_delete("d2").await.unwrap();
    storage.disk_delete("d2").await.unwrap();
    assert!(!d2.path.exists());
    assert!(matches!(
        storage.disk_create("../../x", MIB).await,
        Err(StorageError::InvalidName(_))
    ));
}

/// Writes a DOS partition table with one partition, as a disk partitioned elsewhere has.
fn write_mbr(device: &Path) {
    let mut mbr = [0u8; 512];
    let entry = &mut mbr[446..462];
    entry[4] = 0x83; // Linux
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&4096u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .unwrap();
    f.write_all(&mbr).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test]
async fn disks_that_hold_anything_else_are_left_untouched() {
    if !disk::can_use_loop_devices("foreign_disks_are_left_untouched") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("foreign").unwrap();
    disks.add("ssd", GIB).unwrap();
    disks.add("ext4", 512 * MIB).unwrap();
    disks.add("xfs", 512 * MIB).unwrap();
    disks.add("btrfs", 512 * MIB).unwrap();
    disks.add("mbr", 256 * MIB).unwrap();
    disks.add("junk", 256 * MIB).unwrap();
    disks.add("other-node", GIB).unwrap();
    disk::make_fs(disks.disk("ext4").device(), "ext4", "photos").unwrap();
    disk::make_fs(disks.disk("xfs").device(), "xfs", "backup").unwrap();
    disk::make_fs(disks.disk("btrfs").device(), "btrfs", "home").unwrap();
    write_mbr(disks.disk("mbr").device());
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(disks.disk("junk").device())
            .unwrap();
        f.seek(SeekFrom::Start(300_000)).unwrap();
        f.write_all(b"some bytes that are no file system").unwrap();
        f.sync_all().unwrap();
    }
    // Another node on the same kernel made a pool on "other-node".
    {
        let other = config(
            &disks,
            &[spec(disks.disk("other-node"), Some(DiskKind::Ssd))],
            "o-",
        );
        let (_storage, s) = start(other).await;
        assert_eq!(s.disks.len(), 1);
        disks.unmount_all().unwrap();
    }

    let foreign = ["ext4", "xfs", "btrfs", "mbr", "junk", "other-node"];
    let before: Vec<(Vec<u8>, Option<String>)> = foreign
        .iter()
        .map(|n| {
            let dev = disks.disk(n).device();
            (
                disk::read_head(dev, 2 * MIB as usize).unwrap(),
                disk::blkid(dev).unwrap(),
            )
        })
        .collect();

    let mut specs = vec![spec(disks.disk("ssd"), Some(DiskKind::Ssd))];
    specs.extend(
        foreign
            .iter()
            .map(|n| spec(disks.disk(n), Some(DiskKind::Ssd))),
    );
    let (storage, s) = start(config(&disks, &specs, PREFIX)).await;
    assert_eq!(storage.pools().await.unwrap().len(), 1);
    assert_eq!(s.capacity.sru, GIB);
    for n in foreign {
        let dev = disks.disk(n).device();
        let report = s.disks.iter().find(|r| r.device == dev).unwrap();
        let DiskState::Foreign { reason } = &report.state else {
            panic!("{n} was not left alone: {report:?}");
        };
        let expected = match n {
            "ext4" => "ext4",
            "xfs" => "xfs",
            "btrfs" => "labelled \"home\"",
            "mbr" => "dos partition table",
            "junk" => "not blank",
            _ => "another zos node",
        };
        assert!(reason.contains(expected), "{n}: {reason}");
    }
    // Byte for byte as before, and mounted nowhere.
    for (n, (head, id)) in foreign.iter().zip(before) {
        let dev = disks.disk(n).device();
        assert_eq!(
            disk::read_head(dev, 2 * MIB as usize).unwrap(),
            head,
            "{n} changed"
        );
        assert_eq!(disk::blkid(dev).unwrap(), id, "{n} changed");
        assert!(
            !disk::mounts()
                .unwrap()
                .iter()
                .any(|m| Path::new(&m.source) == dev),
            "{n} is mounted"
        );
    }
}

#[tokio::test]
async fn a_node_without_ssd_runs_limited() {
    if !disk::can_use_loop_devices("a_node_without_ssd_runs_limited") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("nossd").unwrap();
    disks.add("hdd", GIB).unwrap();
    let specs = [spec(disks.disk("hdd"), Some(DiskKind::Hdd))];
    let (storage, s) = start(config(&disks, &specs, PREFIX)).await;
    let reason = s.limited.clone().expect("limited");
    assert!(reason.contains("no ssd"), "{reason}");
    assert_eq!(storage.limited(), Some(reason.clone()));
    assert_eq!(fs_type(&s.state_dir), nix::sys::statfs::TMPFS_MAGIC);
    assert!(s.state_dir.starts_with(disks.mount_root()));
    assert!(matches!(s.cache.backing, CacheBacking::Tmpfs { size } if size == 16 * MIB));
    assert_eq!(
        (s.capacity.sru, s.capacity.hru, s.capacity.reserved_sru),
        (0, GIB, 0)
    );
    write_file(&s.state_dir.join("seed"), b"x");

    for err in [
        storage.volume_create("v", MIB).await.unwrap_err(),
        storage.disk_create("d", MIB).await.unwrap_err(),
        storage.zdb_allocate(MIB).await.unwrap_err(),
    ] {
        assert!(
            matches!(&err, StorageError::Limited(r) if *r == reason),
            "{err}"
        );
    }
    drop(storage);

    // A restart finds the same tmpfs (same boot) and is still limited.
    let (_storage, again) = start(config(&disks, &specs, PREFIX)).await;
    assert_eq!(again.state_dir, s.state_dir);
    assert!(again.limited.is_some());
    assert!(again.state_dir.join("seed").exists());
    assert_eq!(again.capacity.hru, GIB);
}

#[tokio::test]
async fn zdb_devices_take_hdd_pools_one_each() {
    if !disk::can_use_loop_devices("zdb_devices_take_hdd_pools") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("zdb").unwrap();
    disks.add("ssd", GIB).unwrap();
    disks.add("hdd", GIB).unwrap();
    let specs = [
        spec(disks.disk("ssd"), Some(DiskKind::Ssd)),
        spec(disks.disk("hdd"), Some(DiskKind::Hdd)),
    ];
    let (storage, s) = start(config(&disks, &specs, PREFIX)).await;
    let (hdd_pool, _, _) = pool_of(&s, disks.disk("hdd").device());
    let err = storage.zdb_allocate(2 * GIB).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NoSpace {
                kind: DiskKind::Hdd,
                ..
            }
        ),
        "{err}"
    );
    let z = storage.zdb_allocate(256 * MIB).await.unwrap();
    assert_eq!(z.id, hdd_pool);
    assert_eq!(z.size, GIB);
    assert!(z.path.is_dir());
    write_file(&z.path.join("data"), &vec![3u8; MIB as usize]);
    assert!(matches!(
        storage.zdb_allocate(MIB).await,
        Err(StorageError::NoSpace { .. })
    ));
    let listed = storage.zdb_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    storage.zdb_release(&z.id).await.unwrap();
    assert!(storage.zdb_list().await.unwrap().is_empty());
    assert!(!z.path.exists());
    storage.zdb_allocate(MIB).await.unwrap();
}

#[tokio::test]
async fn the_cache_quota_follows_its_usage() {
    if !disk::can_use_loop_devices("the_cache_quota_follows_its_usage") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("cache").unwrap();
    disks.add("ssd", GIB).unwrap();
    let (storage, s) = start(config(
        &disks,
        &[spec(disks.disk("ssd"), Some(DiskKind::Ssd))],
        PREFIX,
    ))
    .await;
    let quota = |c: &zos_storage::CacheInfo| match c.backing {
        CacheBacking::Pool { quota, .. } => quota,
        CacheBacking::Tmpfs { .. } => panic!("tmpfs"),
    };
    assert_eq!(quota(&s.cache), 64 * MIB);
    // 48 of 64 MiB is over 60 %: one step more.
    write_file(&s.state_dir.join("blocks"), &vec![9u8; 48 * MIB as usize]);
    let c = storage.cache_adjust().await.unwrap();
    assert_eq!(quota(&c), 128 * MIB);
    assert_eq!(storage.capacity().await.unwrap().reserved_sru, 128 * MIB);
    // Emptied: back down to the minimum.
    std::fs::remove_file(s.state_dir.join("blocks")).unwrap();
    let c = storage.cache_adjust().await.unwrap();
    assert_eq!(quota(&c), 64 * MIB);
    assert_eq!(storage.capacity().await.unwrap().reserved_sru, 64 * MIB);
}

#[test]
fn disk_specs_from_test_disks_are_loop_devices() {
    // Guards the rule that tests only ever hand storage their own loop devices.
    if !disk::can_use_loop_devices("disk_specs_are_loop_devices") {
        return;
    }
    let _serial = SERIAL.blocking_lock();
    let mut disks = TestDisks::new("specs").unwrap();
    let d = disks.add("x", 64 * MIB).unwrap();
    let s = spec(d, None);
    assert!(
        s.path.to_string_lossy().starts_with("/dev/loop"),
        "{}",
        s.path.display()
    );
    let file: PathBuf = d.file().to_path_buf();
    assert!(
        disk::loop_devices()
            .unwrap()
            .iter()
            .any(|(dev, f)| dev == &s.path && f == &file)
    );
}

#[tokio::test]
async fn a_pool_written_by_a_newer_zosd_is_left_as_it_was() {
    if !disk::can_use_loop_devices("a_pool_written_by_a_newer_zosd") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("newer").unwrap();
    disks.add("ssd", GIB).unwrap();
    let specs = [spec(disks.disk("ssd"), Some(DiskKind::Ssd))];
    let (storage, s) = start(config(&disks, &specs, PREFIX)).await;
    let (label, _, _) = pool_of(&s, disks.disk("ssd").device());
    let meta = disks.mount_root().join(&label).join(POOL_META_FILE);
    let newer = r#"{"version": 2, "kind": "ssd", "tier": "fast"}"#;
    write_file(&meta, newer.as_bytes());
    drop(storage);
    disks.unmount_all().unwrap();

    let (storage, s) = start(config(&disks, &specs, PREFIX)).await;
    let report = &s.disks[0];
    assert!(
        matches!(&report.state, DiskState::Failed { error } if error.contains("version 2")),
        "{report:?}"
    );
    assert!(storage.pools().await.unwrap().is_empty());
    assert!(s.limited.is_some());
    let dev = disks.disk("ssd").device();
    assert!(
        !disk::mounts()
            .unwrap()
            .iter()
            .any(|m| Path::new(&m.source) == dev),
        "the pool was left mounted"
    );
    drop(storage);
    disks.unmount_all().unwrap();
    // Mount it by hand: the newer metadata is untouched.
    let at = disks.dir().join("look");
    std::fs::create_dir_all(&at).unwrap();
    nix::mount::mount(
        Some(dev),
        &at,
        Some("btrfs"),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(at.join(POOL_META_FILE)).unwrap(),
        newer
    );
}
