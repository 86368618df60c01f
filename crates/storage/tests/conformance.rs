//! The `Storage` conformance suite, run against the fake and against btrfs on loop devices.
//!
//! Both runs see the same layout: two SSD pools and one HDD pool of 1 GiB each, a 64 MiB cache
//! on an SSD pool. The real run needs root and fails (never skips) without it; it takes loop
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

#[tokio::test]
async fn fake_keeps_the_storage_contract() {
    let pools: Vec<(&str, DiskKind, u64)> = LAYOUT.iter().map(|(n, k)| (*n, *k, GIB)).collect();
    let s = MemoryStorage::new(&pools, CACHE);
    zos_storage::conformance::run(&s).await;
}

#[tokio::test]
async fn real_keeps_the_storage_contract() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the real storage conformance run needs root (loop devices, btrfs)"
    );
    let mut disks = TestDisks::new("conformance").expect("test disks");
    let mut specs = Vec::new();
    for (name, kind) in LAYOUT {
        let d = disks.add(name, GIB).expect("loop disk");
        specs.push(DiskSpec {
            path: d.device().to_path_buf(),
            kind: Some(kind),
        });
    }
    let cfg = StorageConfig {
        cache: CachePolicy {
            initial: CACHE,
            step: CACHE,
            min: CACHE,
        },
        tmpfs_size: 16 * MIB,
        ..StorageConfig::only(&specs, disks.mount_root(), "t-")
    };
    let (s, _) = BtrfsStorage::start(cfg).await.expect("storage starts");
    zos_storage::conformance::run(&s).await;
}
