//! The `Storage` conformance suite, run against the fake and against btrfs on loop devices.
//!
//! Both runs see the same layout: two SSD pools and one HDD pool of 1 GiB each, a 64 MiB cache
//! on an SSD pool; the limited runs one HDD pool only. The real run needs root and fails (never skips) without it; it takes loop
//! devices, so nextest runs it in the `serial-root` group.

use zos_storage::{BtrfsStorage, CachePolicy, DiskKind, DiskSpec, MemoryStorage, StorageConfig};
use zos_testkit::disk::TestDisks;
use zos_types::capacity::{GIB, MIB};

const LAYOUT: [(&str, DiskKind); 3] = [
    ("ssd1", DiskKind::Ssd),
    ("ssd2", DiskKind::Ssd),
    ("hdd1", DiskKind::Hdd),
];
const CACHE: u64 = 64 * MIB;

/// One real run at a time in this process (`cargo test` runs tests on threads); nextest runs
/// each in its own process and serializes them with the `serial-root` group.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test host's storage: the loop devices of `specs`, a small cache and tmpfs.
fn config(disks: &TestDisks, specs: &[DiskSpec]) -> StorageConfig {
    StorageConfig {
        cache: CachePolicy {
            initial: CACHE,
            step: CACHE,
            min: CACHE,
        },
        tmpfs_size: 16 * MIB,
        ..StorageConfig::only(specs, disks.mount_root(), "t-")
    }
}

#[tokio::test]
async fn fake_keeps_the_storage_contract() {
    let pools: Vec<(&str, DiskKind, u64)> = LAYOUT.iter().map(|(n, k)| (*n, *k, GIB)).collect();
    let s = MemoryStorage::new(&pools, CACHE);
    zos_storage::conformance::run(&s).await;
}

#[tokio::test]
async fn fake_without_ssd_keeps_the_limited_contract() {
    let s = MemoryStorage::new(&[("hdd1", DiskKind::Hdd, GIB)], CACHE);
    zos_storage::conformance::run_limited(&s).await;
}

#[tokio::test]
async fn real_without_ssd_keeps_the_limited_contract() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real storage conformance run needs root (loop devices, btrfs)"
    );
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("conformance-limited").expect("test disks");
    let d = disks.add("hdd1", GIB).expect("loop disk");
    let specs = [DiskSpec {
        path: d.device().to_path_buf(),
        kind: Some(DiskKind::Hdd),
    }];
    let (s, start) = BtrfsStorage::start(config(&disks, &specs))
        .await
        .expect("storage starts");
    assert!(start.limited.is_some());
    zos_storage::conformance::run_limited(&s).await;
}

#[tokio::test]
async fn real_keeps_the_storage_contract() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real storage conformance run needs root (loop devices, btrfs)"
    );
    let _serial = SERIAL.lock().await;
    let mut disks = TestDisks::new("conformance").expect("test disks");
    let mut specs = Vec::new();
    for (name, kind) in LAYOUT {
        let d = disks.add(name, GIB).expect("loop disk");
        specs.push(DiskSpec {
            path: d.device().to_path_buf(),
            kind: Some(kind),
        });
    }
    let (s, _) = BtrfsStorage::start(config(&disks, &specs))
        .await
        .expect("storage starts");
    zos_storage::conformance::run(&s).await;
}
